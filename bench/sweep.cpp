// performer_sweep: the project's main job. Runs a set of attention kernels over sequence
// lengths, each configuration in a child process so that its peak memory is measured for real
// (the child's peak resident size beyond its inputs and outputs), prints a table with progress
// while it works, and writes JSON and CSV. Configurations whose estimated memory exceeds the
// cap are skipped, with the reason printed, instead of exhausting the machine.
//
// With --m M1,M2,... the random-feature kernels run once per m (the exact ones once), which
// gives the error-vs-m curve. Plots (PNG) are drawn with gnuplot when it is installed.
//
// --protein runs the protein demonstration instead: a 2-block encoder (d_model 512, 8 heads)
// with materialized exact attention and with FAVOR+ at 8,192 to 65,536 residues, one timed pass
// each, then how many sequences of each length fit in the memory cap at once.
//
// Usage: performer_sweep [--quick | --full | --protein] [--threads T] [--cap-gib G]
//                        [--only k1,k2] [--n N1,N2,...] [--m M1,M2,...] [--d D]
//                        [--qk-scale S] [--out DIR] [--no-plots] [--list]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <map>
#include <sstream>
#include <string>
#include <tuple>
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
using performer::bench::proc_status_bytes;

#ifndef PERFORMER_BENCH_FLAGS
#define PERFORMER_BENCH_FLAGS "unknown"
#endif

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
int run_child(const std::string& name, const performer::bench::config& c, int threads,
              double min_seconds, double qk_scale, std::size_t min_reps) {
  set_threads(threads);
  performer::bench::qk_scale = qk_scale;
  const auto kernels = performer::bench::all_kernels();
  auto work = find_kernel(kernels, name).make(c);
  const double extra = performer::bench::peak_extra_bytes(work);
  // The error of the first run's output, before the timed runs (which rewrite it identically).
  const double error = work.error ? work.error() : -1.0;
  std::vector<double> times;
  const auto start = std::chrono::steady_clock::now();
  while (times.size() < min_reps ||
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
            << " peak_extra_bytes=" << extra << " flops=" << work.flops
            << " error=" << error << " tokens=" << (work.tokens > 0 ? work.tokens : static_cast<double>(c.n)) << "\n";
  return 0;
}

struct result {
  std::string kernel;
  idx n = 0;
  idx m = 0;
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

double value_or(const result& r, const char* key, double fallback) {
  const auto it = r.values.find(key);
  return it == r.values.end() ? fallback : it->second;
}

void write_results(const std::string& dir, const std::vector<result>& results, idx d,
                   int threads, double qk_scale) {
  std::ofstream csv(dir + "/results.csv");
  std::ofstream json(dir + "/results.json");
  csv << "kernel,n,d,m,threads,median_s,min_s,reps,flops,peak_extra_bytes,error,skipped\n";
  json << "{\n  \"machine\": \"" << cpu_model() << "\",\n  \"compiler\": \"" << __VERSION__
       << "\",\n  \"flags\": \"" << PERFORMER_BENCH_FLAGS << "\",\n  \"threads\": " << threads
       << ",\n  \"d\": " << d << ",\n  \"qk_scale\": " << qk_scale << ",\n  \"results\": [\n";
  for (std::size_t i = 0; i < results.size(); ++i) {
    const auto& r = results[i];
    const auto get = [&](const char* key) { return value_or(r, key, 0.0); };
    // A negative error means "not measured" (exact kernels).
    const double error = value_or(r, "error", -1.0);
    csv << std::setprecision(9) << r.kernel << "," << r.n << "," << d << "," << r.m << ","
        << threads << "," << get("median_s") << "," << get("min_s") << "," << get("reps") << ","
        << get("flops") << "," << get("peak_extra_bytes") << ","
        << (error >= 0 ? std::to_string(error) : "") << "," << r.skipped << "\n";
    json << std::setprecision(9) << "    {\"kernel\": \"" << r.kernel << "\", \"n\": " << r.n
         << ", \"m\": " << r.m << ", \"median_s\": " << get("median_s")
         << ", \"min_s\": " << get("min_s") << ", \"reps\": " << get("reps")
         << ", \"flops\": " << get("flops") << ", \"peak_extra_bytes\": " << get("peak_extra_bytes")
         << ", \"error\": " << (error >= 0 ? std::to_string(error) : "null")
         << ", \"skipped\": \"" << r.skipped << "\"}" << (i + 1 < results.size() ? "," : "")
         << "\n";
  }
  json << "  ]\n}\n";
}

/// Data files and a gnuplot script for time vs N and memory vs N (log-log, one line per kernel
/// at its first m) and error vs m (one line per kernel at the largest N run with several m);
/// runs gnuplot when it is installed, else says how to get the plots.
void draw_plots(const std::string& dir, const std::vector<result>& results) {
  std::map<std::string, std::vector<const result*>> by_kernel;
  for (const auto& r : results) {
    if (r.skipped.empty()) by_kernel[r.kernel].push_back(&r);
  }
  std::ostringstream time_plot;
  std::ostringstream memory_plot;
  std::ostringstream error_plot;
  for (const auto& [kernel, rows] : by_kernel) {
    const idx first_m = rows.front()->m;
    std::ofstream data(dir + "/" + kernel + ".dat");
    data << "# n median_ms peak_mib (m = " << first_m << ")\n";
    for (const auto* r : rows) {
      if (r->m != first_m) continue;
      data << r->n << " " << value_or(*r, "median_s", 0) * 1e3 << " "
           << value_or(*r, "peak_extra_bytes", 0) / (1024.0 * 1024.0) << "\n";
    }
    const std::string file = "'" + kernel + ".dat'";
    time_plot << (time_plot.tellp() > 0 ? ", " : "") << file << " using 1:2 with linespoints title '"
              << kernel << "'";
    // Memory below 1 MiB is noise of the measurement; log scale needs positive values.
    memory_plot << (memory_plot.tellp() > 0 ? ", " : "") << file
                << " using 1:($3 > 0.1 ? $3 : 0.1) with linespoints title '" << kernel << "'";
    idx error_n = 0;
    std::map<idx, int> ms_at;
    for (const auto* r : rows) {
      if (value_or(*r, "error", -1) >= 0 && ++ms_at[r->n] >= 2) error_n = std::max(error_n, r->n);
    }
    if (error_n > 0) {
      std::ofstream err(dir + "/" + kernel + "_error.dat");
      err << "# m relative_error (N = " << error_n << ")\n";
      for (const auto* r : rows) {
        if (r->n == error_n) err << r->m << " " << value_or(*r, "error", 0) << "\n";
      }
      error_plot << (error_plot.tellp() > 0 ? ", " : "") << "'" << kernel
                 << "_error.dat' using 1:2 with linespoints title '" << kernel << " (N = "
                 << error_n << ")'";
    }
  }
  if (by_kernel.empty()) return;
  std::ofstream gp(dir + "/plots.gp");
  gp << "set terminal png size 900,600 noenhanced\nset logscale xy\nset grid\nset key outside right\n"
     << "set xlabel 'N (tokens)'\n"
     << "set output 'time_vs_n.png'\nset ylabel 'median time (ms)'\n"
     << "set title 'Time per forward pass, one head'\nplot " << time_plot.str() << "\n"
     << "set output 'memory_vs_n.png'\nset ylabel 'peak memory beyond inputs and outputs (MiB)'\n"
     << "set title 'Measured peak memory'\nplot " << memory_plot.str() << "\n";
  if (error_plot.tellp() > 0) {
    gp << "set output 'error_vs_m.png'\nset xlabel 'm (random features)'\n"
       << "set ylabel 'relative error vs exact'\nset title 'Approximation error'\n"
       << "plot " << error_plot.str() << ", x**-0.5 * 2 dashtype 2 title 'slope -1/2'\n";
  }
  gp.close();
  if (std::system("command -v gnuplot > /dev/null 2>&1") == 0) {
    const std::string cmd = "cd '" + dir + "' && gnuplot plots.gp";
    if (std::system(cmd.c_str()) == 0) {
      std::cout << "plots: " << dir << "/time_vs_n.png, memory_vs_n.png"
                << (error_plot.tellp() > 0 ? ", error_vs_m.png" : "") << "\n";
      return;
    }
    std::cout << "gnuplot failed on " << dir << "/plots.gp\n";
    return;
  }
  std::cout << "plots: gnuplot is not installed; apt-get install gnuplot-nox, then run "
               "'gnuplot plots.gp' in " << dir << "\n";
}

/// The protein demonstration's answer: per sequence, the measured peak beyond inputs plus the
/// N x 512 input and output of the encoder, and how many sequences of that length fit in the
/// cap at once (each sequence in flight needs its own workspace, as a batch dimension would).
void protein_summary(const std::vector<result>& results, double cap_gib) {
  constexpr double gib = 1024.0 * 1024.0 * 1024.0;
  std::map<idx, std::map<std::string, const result*>> by_n;
  for (const auto& r : results) by_n[r.n][r.kernel] = &r;
  std::cout << std::defaultfloat << std::setprecision(6)
            << "\nprotein encoder (2 blocks, d_model 512, 8 heads), memory cap " << cap_gib
            << " GiB:\n"
            << std::right << std::setw(8) << "N" << std::setw(14) << "exact s/seq"
            << std::setw(14) << "FAVOR s/seq" << std::setw(15) << "exact GiB/seq"
            << std::setw(15) << "FAVOR GiB/seq" << std::setw(13) << "exact batch"
            << std::setw(13) << "FAVOR batch" << "\n";
  for (const auto& [n, kernels] : by_n) {
    const double io = 2.0 * static_cast<double>(n) * 512.0 * sizeof(float);
    std::cout << std::setw(8) << n;
    std::ostringstream time_cols, memory_cols, batch_cols;
    for (auto* column : {&time_cols, &memory_cols, &batch_cols}) *column << std::fixed;
    for (const char* name : {"protein_exact", "protein_favor"}) {
      const auto it = kernels.find(name);
      if (it == kernels.end() || !it->second->skipped.empty()) {
        const bool over = it != kernels.end() && it->second->skipped.find("cap") != std::string::npos;
        time_cols << std::setw(14) << (over ? "over cap" : "-");
        memory_cols << std::setw(15) << "-";
        batch_cols << std::setw(13) << (over ? "0" : "-");
        continue;
      }
      const double per_sequence = (value_or(*it->second, "peak_extra_bytes", 0) + io) / gib;
      time_cols << std::setw(14) << std::setprecision(2)
                << value_or(*it->second, "median_s", 0);
      memory_cols << std::setw(15) << std::setprecision(3) << per_sequence;
      batch_cols << std::setw(13) << std::setprecision(0) << std::floor(cap_gib / per_sequence);
    }
    std::cout << time_cols.str() << memory_cols.str() << batch_cols.str() << "\n";
  }
  std::cout.unsetf(std::ios::fixed);
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.size() == 9 && args[0] == "--child") {
    return run_child(args[1], {std::stol(args[2]), std::stol(args[3]), std::stol(args[4])},
                     std::stoi(args[5]), std::stod(args[6]), std::stod(args[7]),
                     std::stoul(args[8]));
  }
  bool full = false;
  bool protein = false;
  int threads = 1;
  double cap_gib = 16;
  idx d = 64;
  std::string out_dir = "sweep-results";
  std::vector<std::string> only;
  std::vector<idx> lengths;
  std::vector<idx> feature_counts;
  bool plots = true;
  double qk_scale = performer::bench::qk_scale;
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
    } else if (args[i] == "--protein") {
      protein = true;
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
    } else if (args[i] == "--m") {
      for (const auto& s : split(next())) feature_counts.push_back(std::stol(s));
    } else if (args[i] == "--qk-scale") {
      qk_scale = std::stod(next());
    } else if (args[i] == "--no-plots") {
      plots = false;
    } else if (args[i] == "--list") {
      for (const auto& k : performer::bench::all_kernels()) {
        std::cout << std::left << std::setw(16) << k.name << k.description << "\n";
      }
      return 0;
    } else {
      std::cerr << "unknown option " << args[i]
                << "\nusage: performer_sweep [--quick|--full] [--threads T] [--cap-gib G] "
                   "[--only k1,k2] [--n N1,N2] [--m M1,M2] [--d D] [--qk-scale S] [--out DIR] "
                   "[--no-plots] [--protein] [--list]\n";
      return 2;
    }
  }
  if (threads < 1 || d < 1 || !(qk_scale > 0)) {
    std::cerr << "--threads and --d must be at least 1, --qk-scale positive\n";
    return 2;
  }
  if (feature_counts.empty()) feature_counts.push_back(256);
  for (const idx m : feature_counts) {
    if (m < 1) {
      std::cerr << "--m values must be at least 1\n";
      return 2;
    }
  }
  const auto kernels = performer::bench::all_kernels();
  if (protein) {
    if (only.empty()) only = {"protein_exact", "protein_favor"};
    if (lengths.empty()) lengths = {8192, 16384, 32768, 65536};
  }
  if (only.empty()) {
    for (const auto& k : kernels) {
      if (k.name.rfind("protein_", 0) != 0) only.push_back(k.name);
    }
  }
  const bool lengths_given = !lengths.empty();
  if (lengths.empty()) {
    lengths = full ? std::vector<idx>{256, 1024, 4096, 16384, 65536, 262144, 1048576}
                   : std::vector<idx>{1024, 4096, 16384};
  }
  const double min_seconds = protein ? 0.0 : full ? 2.0 : 0.3;
  // An exact encoder pass at 32,768 tokens takes about a minute: protein runs time one pass.
  const std::size_t min_reps = protein ? 1 : 3;

  // Kernels whose description mentions no m (exact ones) run once, at the first m.
  struct planned {
    std::string kernel;
    idx n, m;
  };
  std::vector<planned> plan;
  for (const auto& name : only) {
    const auto& k = find_kernel(kernels, name);
    const bool uses_m = name.find("favor") != std::string::npos || name == "decode_step";
    // Explicit lengths (--n, --protein) are run as given; otherwise each kernel's own limit.
    for (const idx n : lengths) {
      const idx max_n = full ? performer::bench::full_max_n(k) : k.quick_max_n;
      if (!lengths_given && n > max_n) continue;
      for (const idx m : feature_counts) {
        plan.push_back({name, n, m});
        if (!uses_m) break;
      }
    }
  }

  std::cout << "performer_sweep: " << (protein ? "protein" : full ? "full" : "quick") << " run, d = " << d
            << ", threads = " << threads << ", q and k uniform in [-" << qk_scale << ", "
            << qk_scale << "], memory cap " << cap_gib << " GiB\n"
            << "machine: " << cpu_model() << ", compiler: " << __VERSION__
            << ", flags: " << PERFORMER_BENCH_FLAGS << "\n"
            << "times are medians over repeated runs; memory is the measured peak resident "
               "size beyond inputs and outputs; error is relative to exact attention in double "
               "on 64 sampled rows\n\n";

  const std::string exe = self_path();
  std::vector<result> results;
  const auto started = std::chrono::steady_clock::now();
  for (std::size_t i = 0; i < plan.size(); ++i) {
    const auto& [name, n, m] = plan[i];
    const auto& k = find_kernel(kernels, name);
    result r{name, n, m, {}, {}};
    const double inputs = 4.0 * static_cast<double>(n) * static_cast<double>(d) * sizeof(float);
    const double needed = k.extra_bytes({n, d, m}) + inputs;
    const double elapsed =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    std::cerr << "\r[" << std::setw(3) << i + 1 << "/" << plan.size() << ", " << std::setw(4)
              << static_cast<int>(elapsed) << " s] " << std::left << std::setw(16) << name
              << " N = " << std::setw(8) << n << " m = " << std::setw(5) << m << std::right
              << std::flush;
    if (needed > cap_gib * 1024 * 1024 * 1024) {
      std::ostringstream why;
      why << "needs ~" << std::fixed << std::setprecision(1) << needed / (1024.0 * 1024 * 1024)
          << " GiB > cap";
      r.skipped = why.str();
    } else {
      std::ostringstream cmd;
      cmd << "'" << exe << "' --child " << name << " " << n << " " << d << " " << m << " "
          << threads << " " << min_seconds << " " << qk_scale << " " << min_reps;
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
  const double total =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  std::cerr << "\r" << std::string(64, ' ') << "\r";

  // Table; a kernel's ceiling (its GEMMs alone) at the same N and m, when measured in this run,
  // gives the kernel's fraction of it.
  std::map<std::tuple<std::string, idx, idx>, double> rate;
  for (const auto& r : results) {
    if (r.skipped.empty() && r.values.at("flops") > 0) {
      rate[{r.kernel, r.n, r.m}] = r.values.at("flops") / r.values.at("median_s");
    }
  }
  const auto ceiling_rate = [&](const result& r) -> double {
    const auto& name = find_kernel(kernels, r.kernel).ceiling;
    if (name.empty()) return 0;
    auto c = rate.find({name, r.n, r.m});
    if (c == rate.end()) c = rate.find({name, r.n, feature_counts.front()});  // exact ceiling
    return c == rate.end() ? 0 : c->second;
  };
  std::cout << std::left << std::setw(16) << "kernel" << std::right << std::setw(9) << "N"
            << std::setw(6) << "m" << std::setw(13) << "median ms" << std::setw(14) << "tokens/s"
            << std::setw(10) << "GFLOP/s" << std::setw(9) << "% ceil" << std::setw(11)
            << "peak MiB" << std::setw(10) << "rel err" << "\n";
  for (const auto& r : results) {
    std::cout << std::left << std::setw(16) << r.kernel << std::right << std::setw(9) << r.n
              << std::setw(6) << r.m;
    if (!r.skipped.empty()) {
      std::cout << "   skipped: " << r.skipped << "\n";
      continue;
    }
    const double t = r.values.at("median_s");
    const double flops = r.values.at("flops");
    std::cout << std::fixed << std::setprecision(t < 0.01 ? 4 : 2) << std::setw(13) << t * 1e3
              << std::setw(14) << std::setprecision(0) << r.values.at("tokens") / t;
    if (flops > 0) {
      std::cout << std::setw(10) << std::setprecision(1) << flops / t / 1e9;
      const double c = ceiling_rate(r);
      if (c > 0) {
        std::cout << std::setw(8) << std::setprecision(0) << 100 * (flops / t) / c << "%";
      } else {
        std::cout << std::setw(9) << "-";
      }
    } else {
      std::cout << std::setw(10) << "-" << std::setw(9) << "-";
    }
    std::cout << std::setw(11) << std::setprecision(1)
              << r.values.at("peak_extra_bytes") / (1024.0 * 1024.0);
    const double err = r.values.count("error") != 0 ? r.values.at("error") : -1;
    if (err >= 0) {
      std::cout << std::setw(10) << std::setprecision(4) << err;
    } else {
      std::cout << std::setw(10) << "-";
    }
    std::cout << "\n";
    std::cout.unsetf(std::ios::fixed);
  }
  std::cout << "\nsweep time: " << std::fixed << std::setprecision(0) << total << " s\n";
  std::cout.unsetf(std::ios::fixed);

  std::string mkdir = "mkdir -p '" + out_dir + "'";
  if (std::system(mkdir.c_str()) != 0) {
    std::cerr << "cannot create " << out_dir << "\n";
    return 1;
  }
  write_results(out_dir, results, d, threads, qk_scale);
  std::cout << "wrote " << out_dir << "/results.json and " << out_dir << "/results.csv\n";
  if (protein) protein_summary(results, cap_gib);
  if (plots) draw_plots(out_dir, results);
  return 0;
}
