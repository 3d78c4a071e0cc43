// performer_sweep: the project's main job. Measures the machine's fp32 GEMM peak (and bf16, where
// the CPU has bfloat16 instructions), then runs a set of kernels over sequence lengths, each
// configuration in a child process (so that one configuration's memory never leaks into
// another's figures), prints a table with progress while it works, and writes CSV, JSON and a
// gnuplot script to an absolute path it prints.
// Each child measures its kernel's first call's memory with the counting allocator, then times
// the kernel and its ceiling (the same matrix products alone, bench/ceilings.hpp) interleaved.
// Configurations whose estimated memory exceeds the cap are skipped, with the reason printed.
//
// With --m M1,M2,... the kernels with random features run once per m (the others once), which
// gives the error-vs-m curve.
//
// --protein runs the protein demonstration instead: a 2-block encoder (d_model 512, 8 heads)
// with materialized exact, tiled exact and FAVOR+ attention at 8,192 to 65,536 residues, one
// timed pass each, then how many sequences of each length fit in the memory cap at once.
//
// Usage: performer_sweep [--quick | --full | --protein] [--threads T] [--cap-gib G]
//                        [--only k1,k2] [--n N1,N2,...] [--m M1,M2,...] [--d D]
//                        [--qk-scale S] [--out DIR] [--no-plots] [--list]

// The counting allocator replaces malloc for the whole executable: defined here, once.
#define PERFORMER_DEFINE_COUNTING_ALLOCATOR
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <unistd.h>

#include <performer/testing/counting_allocator.hpp>

#include "child.hpp"
#include "report.hpp"

namespace {

using performer::bench::find_kernel;
using performer::bench::idx;
using performer::bench::result;
using performer::bench::seconds_since;

#ifndef PERFORMER_BENCH_FLAGS
#define PERFORMER_BENCH_FLAGS "unknown"
#endif
#ifndef PERFORMER_BENCH_BUILD_DIR
#define PERFORMER_BENCH_BUILD_DIR "."
#endif

std::string self_path() {
  char buf[4096];
  const ssize_t len = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (len <= 0) return "performer_sweep";
  buf[len] = '\0';
  return buf;
}

/// Runs a child and parses its key=value line; fields named info.* go to `info`.
bool run_and_parse(const std::string& cmd, std::map<std::string, double>& values,
                   std::map<std::string, double>& info, std::string& failure) {
  FILE* pipe = popen(cmd.c_str(), "r");
  if (pipe == nullptr) {
    failure = "could not start child";
    return false;
  }
  std::string line;
  char buf[512];
  while (std::fgets(buf, sizeof(buf), pipe) != nullptr) line += buf;
  const int status = pclose(pipe);
  if (status != 0) {
    failure = "child failed (status " + std::to_string(status) + ")";
    return false;
  }
  std::istringstream in(line);
  std::string field;
  while (in >> field) {
    const auto eq = field.find('=');
    if (eq == std::string::npos) continue;
    const std::string key = field.substr(0, eq);
    const double value = std::stod(field.substr(eq + 1));
    if (key.rfind("info.", 0) == 0) {
      info[key.substr(5)] = value;
    } else {
      values[key] = value;
    }
  }
  return true;
}

/// The 1-minute load average: how many jobs were competing for the cores (-1: unknown).
double load_average() {
  std::ifstream in("/proc/loadavg");
  double load = -1;
  in >> load;
  return load;
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

[[noreturn]] void usage(const std::string& bad) {
  std::cerr << "unknown option " << bad
            << "\nusage: performer_sweep [--quick|--full|--protein] [--threads T] [--cap-gib G] "
               "[--only k1,k2] [--n N1,N2] [--m M1,M2] [--d D] [--qk-scale S] [--out DIR] "
               "[--no-plots] [--list]\n";
  std::exit(2);
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.size() == 9 && args[0] == "--child") {
    return performer::bench::run_child(
        args[1], {std::stol(args[2]), std::stol(args[3]), std::stol(args[4])}, std::stoi(args[5]),
        std::stod(args[6]), std::stod(args[7]), std::stoul(args[8]));
  }
  if (args.size() == 2 && args[0] == "--child-peak")
    return performer::bench::run_peak_child(std::stoi(args[1]));
  bool full = false;
  bool protein = false;
  bool plots = true;
  performer::bench::run_facts facts;
  facts.qk_scale = performer::bench::qk_scale;
  std::string out_dir;
  std::vector<std::string> only;
  std::vector<idx> lengths;
  std::vector<idx> feature_counts;
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
      facts.threads = std::stoi(next());
    } else if (args[i] == "--cap-gib") {
      facts.cap_gib = std::stod(next());
    } else if (args[i] == "--d") {
      facts.d = std::stol(next());
    } else if (args[i] == "--out") {
      out_dir = next();
    } else if (args[i] == "--only") {
      only = split(next());
    } else if (args[i] == "--n") {
      for (const auto& s : split(next())) lengths.push_back(std::stol(s));
    } else if (args[i] == "--m") {
      for (const auto& s : split(next())) feature_counts.push_back(std::stol(s));
    } else if (args[i] == "--qk-scale") {
      facts.qk_scale = std::stod(next());
    } else if (args[i] == "--no-plots") {
      plots = false;
    } else if (args[i] == "--list") {
      for (const auto& k : performer::bench::all_kernels()) {
        std::cout << std::left << std::setw(20) << k.name << k.description << "\n";
      }
      return 0;
    } else {
      usage(args[i]);
    }
  }
  if (facts.threads < 1 || facts.d < 1 || !(facts.qk_scale > 0)) {
    std::cerr << "--threads and --d must be at least 1, --qk-scale positive\n";
    return 2;
  }
  if (feature_counts.empty()) feature_counts.push_back(256);
  if (std::any_of(feature_counts.begin(), feature_counts.end(), [](idx m) { return m < 1; })) {
    std::cerr << "--m values must be at least 1\n";
    return 2;
  }
  // The protein demonstration gets its own folder, so that it does not replace a sweep's files.
  if (out_dir.empty()) {
    out_dir =
        std::string(PERFORMER_BENCH_BUILD_DIR) + "/sweep-results" + (protein ? "/protein" : "");
  }
  std::error_code failed;
  const auto out_path = std::filesystem::absolute(out_dir).lexically_normal();
  std::filesystem::create_directories(out_path, failed);
  if (failed) {
    std::cerr << "cannot create " << out_path.string() << ": " << failed.message() << "\n";
    return 1;
  }
  facts.out_dir = out_path.string();
  if (!facts.out_dir.empty() && facts.out_dir.back() == '/') facts.out_dir.pop_back();
  facts.mode = protein ? "protein" : full ? "full" : "quick";
  facts.machine = cpu_model();
  facts.flags = PERFORMER_BENCH_FLAGS;
  facts.memory_method = performer::bench::memory_method();

  const auto kernels = performer::bench::all_kernels();
  if (protein) {
    if (only.empty()) only = {"protein_exact", "protein_tiled", "protein_favor"};
    if (lengths.empty()) lengths = {8192, 16384, 32768, 65536};
  }
  if (only.empty()) {
    for (const auto& k : kernels) {
      if (k.family != "protein") only.push_back(k.name);
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

  struct planned {
    std::string kernel;
    idx n, m;
  };
  std::vector<planned> plan;
  for (const auto& name : only) {
    const auto& k = find_kernel(kernels, name);
    // Explicit lengths (--n, --protein) are run as given; otherwise each kernel's own limit.
    for (const idx n : lengths) {
      if (!lengths_given && n > (full ? k.full_max_n : k.quick_max_n)) continue;
      for (const idx m : feature_counts) {
        plan.push_back({name, n, m});
        if (!k.uses_m) break;
      }
    }
  }

  const std::string exe = self_path();
  // With one thread the ratios use CPU time (see run_child); the peak is measured alike.
  facts.by_cpu = facts.threads == 1;
  const std::string clock = facts.by_cpu ? "cpu_" : "wall_";
  std::string peak_sizes, bf16_sizes, bf16_backend;
  {
    std::map<std::string, double> values, info;
    std::string failure;
    std::cerr << "measuring the machine's fp32 and bf16 GEMM peaks..." << std::flush;
    if (run_and_parse("'" + exe + "' --child-peak " + std::to_string(facts.threads), values, info,
                      failure)) {
      facts.peak_gflops = values[facts.by_cpu ? "peak_cpu" : "peak_wall"];
      facts.bf16_peak_gflops = values[facts.by_cpu ? "bf16_peak_cpu" : "bf16_peak_wall"];
      for (const idx size : performer::bench::peak_sizes) {
        peak_sizes += (peak_sizes.empty() ? "" : ", ") + std::to_string(size) + ": " +
                      performer::bench::fixed(values[clock + std::to_string(size)], 1);
        bf16_sizes += (bf16_sizes.empty() ? "" : ", ") + std::to_string(size) + ": " +
                      performer::bench::fixed(values["bf16_" + clock + std::to_string(size)], 1);
      }
      bf16_backend = performer::bf16_name(
          static_cast<performer::bf16_backend>(static_cast<int>(values["bf16_backend"])));
    }
    std::cerr << "\r" << std::string(56, ' ') << "\r";
  }
  const double load_start = load_average();
  std::cout << "performer_sweep: " << facts.mode << " run, d = " << facts.d
            << ", threads = " << facts.threads << ", q and k uniform in [-" << facts.qk_scale
            << ", " << facts.qk_scale << "], v in [-1, 1], memory cap " << facts.cap_gib << " GiB\n"
            << "machine: " << facts.machine << ", compiler: " << __VERSION__
            << ", flags: " << facts.flags << ", load average " << load_start << "\n"
            << "machine fp32 GEMM peak: "
            << (facts.peak_gflops > 0
                    ? performer::bench::fixed(facts.peak_gflops, 1) +
                          " GFLOP/s, the best median of 5 square float products, with Eigen or (where "
                          "the CPU has AVX-512F) performer's kernel, " +
                          std::to_string(facts.threads) +
                          (facts.threads == 1 ? " thread" : " threads") + ", by " +
                          (facts.by_cpu ? "CPU" : "wall") + " time (size: GFLOP/s " + peak_sizes +
                          ")"
                    : "not measured (its child failed): no % peak")
            << "\n"
            << "machine bf16 GEMM peak: "
            << (facts.bf16_peak_gflops > 0
                    ? performer::bench::fixed(facts.bf16_peak_gflops, 1) +
                          " GFLOP/s, the same with bfloat16 products and float sums on the " +
                          bf16_backend + " backend (size: GFLOP/s " + bf16_sizes + ")"
                    : std::string("none (no bfloat16 instructions, or the child failed): "
                                  "bfloat16 rows are over the fp32 peak"))
            << "\n"
            << "memory: " << facts.memory_method << "\n"
            << "results: " << facts.out_dir << "\n\n";

  std::vector<result> results;
  const auto started = std::chrono::steady_clock::now();
  for (std::size_t i = 0; i < plan.size(); ++i) {
    const auto& [name, n, m] = plan[i];
    const auto& k = find_kernel(kernels, name);
    result r{name, k.family, n, m, k.uses_m, {}, {}, {}};
    const double inputs =
        4.0 * static_cast<double>(n) * static_cast<double>(facts.d) * sizeof(float);
    const double needed = k.extra_bytes({n, facts.d, m}) + inputs;
    std::cerr << "\r[" << std::setw(3) << i + 1 << "/" << plan.size() << ", " << std::setw(4)
              << static_cast<int>(seconds_since(started)) << " s] " << std::left << std::setw(20)
              << name << " N = " << std::setw(8) << n << " m = " << std::setw(5) << m << std::right
              << std::flush;
    if (needed > facts.cap_gib * 1024 * 1024 * 1024) {
      std::ostringstream why;
      why << "needs ~" << std::fixed << std::setprecision(1) << needed / (1024.0 * 1024 * 1024)
          << " GiB > cap";
      r.skipped = why.str();
    } else {
      std::ostringstream cmd;
      cmd << "'" << exe << "' --child " << name << " " << n << " " << facts.d << " " << m << " "
          << facts.threads << " " << min_seconds << " " << facts.qk_scale << " " << min_reps;
      run_and_parse(cmd.str(), r.values, r.info, r.skipped);
    }
    results.push_back(r);
  }
  const double total = seconds_since(started);
  std::cerr << "\r" << std::string(72, ' ') << "\r";

  performer::bench::print_table(results, facts);
  const double load_end = load_average();
  std::cout << "\nsweep time: " << performer::bench::fixed(total, 0)
            << " s, load average at the end " << load_end << "\n";
  const double cores = std::thread::hardware_concurrency();
  if (std::max(load_start, load_end) > cores) {
    std::cout << "the load average exceeded the " << cores
              << " cores: other jobs shared the machine, so wall times (median ms, tokens/s, "
              << (facts.by_cpu ? "GFLOP/s) are inflated; % ceil and % peak compare CPU time, "
                                 "which that inflates far less\n"
                               : "GFLOP/s, % ceil, % peak) are noisy; compare within the run\n");
  }
  performer::bench::write_results(results, facts);
  std::cout << "wrote " << facts.out_dir << "/results.json and " << facts.out_dir
            << "/results.csv\n";
  if (protein) performer::bench::protein_summary(results, facts);
  if (plots) performer::bench::draw_plots(results, facts);
  return 0;
}
