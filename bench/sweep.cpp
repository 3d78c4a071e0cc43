// performer_sweep: the project's main job. Runs a set of attention kernels over sequence
// lengths, each configuration in a child process so that its peak memory is measured for real
// (the child's peak resident size beyond its inputs and outputs), prints a table with progress
// while it works, and writes JSON and CSV. Configurations whose estimated memory exceeds the
// cap are skipped, with the reason printed, instead of exhausting the machine.
//
// Usage: performer_sweep [--quick | --full] [--threads T] [--cap-gib G] [--only k1,k2]
//                        [--n N1,N2,...] [--d D] [--out DIR] [--list]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <map>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include <unistd.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "kernels.hpp"

namespace {

using idx = Eigen::Index;
using performer::bench::kernel_info;

#ifndef PERFORMER_BENCH_FLAGS
#define PERFORMER_BENCH_FLAGS "unknown"
#endif

/// Reads a "Vm...:  <n> kB" line of /proc/self/status, in bytes.
double proc_status_bytes(const std::string& key) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(key + ":", 0) == 0) {
      std::istringstream fields(line.substr(key.size() + 1));
      double kb = 0;
      fields >> kb;
      return kb * 1024.0;
    }
  }
  return 0;
}

void set_threads(int threads) {
  Eigen::setNbThreads(threads);
#ifdef _OPENMP
  omp_set_num_threads(threads);
#endif
}

const kernel_info& find_kernel(const std::vector<kernel_info>& kernels, const std::string& name) {
  for (const auto& k : kernels) {
    if (k.name == name) return k;
  }
  std::cerr << "unknown kernel '" << name << "' (try --list)\n";
  std::exit(2);
}

/// Child: build the workload, measure the peak beyond inputs, time it, print one result line.
int run_child(const std::string& name, idx n, idx d, int threads, double min_seconds) {
  set_threads(threads);
  const auto kernels = performer::bench::all_kernels();
  auto work = find_kernel(kernels, name).make(n, d);
  const double base = proc_status_bytes("VmRSS");
  {  // Reset the peak resident size to the current one (Linux >= 4.0), then run once.
    std::ofstream clear("/proc/self/clear_refs");
    clear << "5";
  }
  work.run();
  const double peak = proc_status_bytes("VmHWM");
  std::vector<double> times;
  const auto start = std::chrono::steady_clock::now();
  while (times.size() < 3 ||
         (std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() <
              min_seconds &&
          times.size() < 50)) {
    const auto t0 = std::chrono::steady_clock::now();
    work.run();
    times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(times.begin(), times.end());
  std::cout << std::setprecision(9) << "median_s=" << times[times.size() / 2]
            << " min_s=" << times.front() << " reps=" << times.size()
            << " peak_extra_bytes=" << std::max(0.0, peak - base) << " flops=" << work.flops
            << "\n";
  return 0;
}

struct result {
  std::string kernel;
  idx n = 0;
  std::map<std::string, double> values;
  std::string skipped;  // reason, when not run
};

std::string self_path() {
  char buf[4096];
  const ssize_t len = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (len <= 0) return "performer_sweep";
  buf[len] = '\0';
  return buf;
}

std::map<std::string, double> parse_line(const std::string& line) {
  std::map<std::string, double> values;
  std::istringstream in(line);
  std::string field;
  while (in >> field) {
    const auto eq = field.find('=');
    if (eq != std::string::npos) values[field.substr(0, eq)] = std::stod(field.substr(eq + 1));
  }
  return values;
}

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  }
  return "unknown";
}

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> parts;
  std::stringstream in(s);
  std::string item;
  while (std::getline(in, item, ',')) {
    if (!item.empty()) parts.push_back(item);
  }
  return parts;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.size() == 6 && args[0] == "--child") {
    return run_child(args[1], std::stol(args[2]), std::stol(args[3]), std::stoi(args[4]),
                     std::stod(args[5]));
  }
  bool full = false;
  int threads = 1;
  double cap_gib = 16;
  idx d = 64;
  std::string out_dir = "sweep-results";
  std::vector<std::string> only;
  std::vector<idx> lengths;
  for (std::size_t i = 0; i < args.size(); ++i) {
    const auto next = [&]() -> std::string {
      if (i + 1 >= args.size()) {
        std::cerr << args[i] << " needs a value\n";
        std::exit(2);
      }
      return args[++i];
    };
    if (args[i] == "--quick") {
      full = false;
    } else if (args[i] == "--full") {
      full = true;
    } else if (args[i] == "--threads") {
      threads = std::stoi(next());
    } else if (args[i] == "--cap-gib") {
      cap_gib = std::stod(next());
    } else if (args[i] == "--d") {
      d = std::stol(next());
    } else if (args[i] == "--out") {
      out_dir = next();
    } else if (args[i] == "--only") {
      only = split(next());
    } else if (args[i] == "--n") {
      for (const auto& s : split(next())) lengths.push_back(std::stol(s));
    } else if (args[i] == "--list") {
      for (const auto& k : performer::bench::all_kernels()) {
        std::cout << std::left << std::setw(16) << k.name << k.description << "\n";
      }
      return 0;
    } else {
      std::cerr << "unknown option " << args[i]
                << "\nusage: performer_sweep [--quick|--full] [--threads T] [--cap-gib G] "
                   "[--only k1,k2] [--n N1,N2] [--d D] [--out DIR] [--list]\n";
      return 2;
    }
  }
  if (threads < 1) {
    std::cerr << "--threads must be at least 1\n";
    return 2;
  }
  const auto kernels = performer::bench::all_kernels();
  if (only.empty()) {
    for (const auto& k : kernels) only.push_back(k.name);
  }
  const bool lengths_given = !lengths.empty();
  if (lengths.empty()) {
    lengths = full ? std::vector<idx>{256, 1024, 4096, 16384, 65536}
                   : std::vector<idx>{1024, 4096, 16384};
  }
  const double min_seconds = full ? 2.0 : 0.3;

  std::vector<std::pair<std::string, idx>> plan;
  for (const auto& name : only) {
    static_cast<void>(find_kernel(kernels, name));
    const idx quick_max = find_kernel(kernels, name).quick_max_n;
    for (const idx n : lengths) {
      if (full || n <= quick_max || lengths_given) plan.emplace_back(name, n);
    }
  }

  std::cout << "performer_sweep: " << (full ? "full" : "quick") << " run, d = " << d
            << ", threads = " << threads << ", memory cap " << cap_gib << " GiB\n"
            << "machine: " << cpu_model() << ", compiler: " << __VERSION__
            << ", flags: " << PERFORMER_BENCH_FLAGS << "\n"
            << "times are medians over repeated runs; memory is the measured peak resident "
               "size beyond inputs and outputs\n\n";

  const std::string exe = self_path();
  std::vector<result> results;
  for (std::size_t i = 0; i < plan.size(); ++i) {
    const auto& [name, n] = plan[i];
    const auto& k = find_kernel(kernels, name);
    result r{name, n, {}, {}};
    const double inputs = 4.0 * static_cast<double>(n) * static_cast<double>(d) * sizeof(float);
    const double needed = k.extra_bytes(n, d) + inputs;
    std::cerr << "\r[" << std::setw(2) << i + 1 << "/" << plan.size() << "] " << std::left
              << std::setw(14) << name << " N = " << std::setw(8) << n << std::right << std::flush;
    if (needed > cap_gib * 1024 * 1024 * 1024) {
      std::ostringstream why;
      why << "needs ~" << std::fixed << std::setprecision(1) << needed / (1024.0 * 1024 * 1024)
          << " GiB > cap";
      r.skipped = why.str();
    } else {
      std::ostringstream cmd;
      cmd << "'" << exe << "' --child " << name << " " << n << " " << d << " " << threads << " "
          << min_seconds;
      FILE* pipe = popen(cmd.str().c_str(), "r");
      std::string line;
      if (pipe != nullptr) {
        char buf[512];
        while (std::fgets(buf, sizeof(buf), pipe) != nullptr) line += buf;
        const int status = pclose(pipe);
        if (status == 0) {
          r.values = parse_line(line);
        } else {
          r.skipped = "child failed (status " + std::to_string(status) + ")";
        }
      } else {
        r.skipped = "could not start child";
      }
    }
    results.push_back(r);
  }
  std::cerr << "\r" << std::string(48, ' ') << "\r";

  // Table; a kernel's ceiling (its GEMMs alone) at the same N, when measured in this run,
  // gives the kernel's fraction of it.
  std::map<std::pair<std::string, idx>, double> rate;
  for (const auto& r : results) {
    if (r.skipped.empty() && r.values.at("flops") > 0) {
      rate[{r.kernel, r.n}] = r.values.at("flops") / r.values.at("median_s");
    }
  }
  std::cout << std::left << std::setw(14) << "kernel" << std::right << std::setw(9) << "N"
            << std::setw(13) << "median ms" << std::setw(14) << "tokens/s" << std::setw(10)
            << "GFLOP/s" << std::setw(9) << "% ceil" << std::setw(13) << "peak MiB" << "\n";
  for (const auto& r : results) {
    std::cout << std::left << std::setw(14) << r.kernel << std::right << std::setw(9) << r.n;
    if (!r.skipped.empty()) {
      std::cout << "   skipped: " << r.skipped << "\n";
      continue;
    }
    const double t = r.values.at("median_s");
    const double flops = r.values.at("flops");
    std::cout << std::fixed << std::setprecision(t < 0.01 ? 4 : 2) << std::setw(13) << t * 1e3
              << std::setw(14)
              << std::setprecision(0) << static_cast<double>(r.n) / t;
    if (flops > 0) {
      std::cout << std::setw(10) << std::setprecision(1) << flops / t / 1e9;
      const auto& ceiling_name = find_kernel(kernels, r.kernel).ceiling;
      const auto c = rate.find({ceiling_name, r.n});
      if (!ceiling_name.empty() && c != rate.end()) {
        std::cout << std::setw(8) << std::setprecision(0) << 100 * (flops / t) / c->second << "%";
      } else {
        std::cout << std::setw(9) << "-";
      }
    } else {
      std::cout << std::setw(10) << "-" << std::setw(9) << "-";
    }
    std::cout << std::setw(13) << std::setprecision(1)
              << r.values.at("peak_extra_bytes") / (1024.0 * 1024.0) << "\n";
    std::cout.unsetf(std::ios::fixed);
  }

  std::string mkdir = "mkdir -p '" + out_dir + "'";
  if (std::system(mkdir.c_str()) != 0) {
    std::cerr << "cannot create " << out_dir << "\n";
    return 1;
  }
  std::ofstream csv(out_dir + "/results.csv");
  std::ofstream json(out_dir + "/results.json");
  csv << "kernel,n,d,threads,median_s,min_s,reps,flops,peak_extra_bytes,skipped\n";
  json << "{\n  \"machine\": \"" << cpu_model() << "\",\n  \"compiler\": \"" << __VERSION__
       << "\",\n  \"flags\": \"" << PERFORMER_BENCH_FLAGS << "\",\n  \"threads\": " << threads
       << ",\n  \"d\": " << d << ",\n  \"results\": [\n";
  for (std::size_t i = 0; i < results.size(); ++i) {
    const auto& r = results[i];
    const auto get = [&](const char* key) {
      const auto it = r.values.find(key);
      return it == r.values.end() ? 0.0 : it->second;
    };
    csv << std::setprecision(9) << r.kernel << "," << r.n << "," << d << "," << threads << ","
        << get("median_s") << "," << get("min_s") << "," << get("reps") << "," << get("flops")
        << "," << get("peak_extra_bytes") << "," << r.skipped << "\n";
    json << std::setprecision(9) << "    {\"kernel\": \"" << r.kernel << "\", \"n\": " << r.n
         << ", \"median_s\": " << get("median_s") << ", \"min_s\": " << get("min_s")
         << ", \"reps\": " << get("reps") << ", \"flops\": " << get("flops")
         << ", \"peak_extra_bytes\": " << get("peak_extra_bytes") << ", \"skipped\": \""
         << r.skipped << "\"}" << (i + 1 < results.size() ? "," : "") << "\n";
  }
  json << "  ]\n}\n";
  std::cout << "\nwrote " << out_dir << "/results.json and " << out_dir << "/results.csv\n";
  return 0;
}
