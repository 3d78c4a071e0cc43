// The sweep's output: the table with its legend and notes, CSV and JSON, one gnuplot chart
// per family, and the protein demonstration's batch table.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <Eigen/Core>

namespace performer::bench {

using idx = Eigen::Index;

/// One configuration's outcome: the child's key=value fields ("info.*" ones in `info`).
struct result {
  std::string kernel;
  std::string family;
  idx n = 0;
  idx m = 0;
  bool uses_m = false;
  std::map<std::string, double> values;
  std::map<std::string, double> info;
  std::string skipped;  // reason, when not run
};

/// What the whole run shares, for the header and the files.
struct run_facts {
  std::string mode, machine, flags, out_dir, memory_method;
  idx d = 64;
  int threads = 1;
  double qk_scale = 0.5, cap_gib = 16, peak_gflops = 0;
  /// Square bfloat16 products on favor_bf16's backend (0: the CPU has no bfloat16 instructions).
  double bf16_peak_gflops = 0;
  /// Whether % ceil and % peak compare CPU times (one thread) rather than wall times.
  bool by_cpu = true;
};

inline double value_or(const result& r, const char* key, double fallback) {
  const auto it = r.values.find(key);
  return it == r.values.end() ? fallback : it->second;
}

inline double gflops(const result& r) {
  const double flops = value_or(r, "flops", 0);
  return flops > 0 ? flops / value_or(r, "median_s", 1) / 1e9 : 0;
}

/// GFLOP/s as a fraction of the ceiling's: the median over interleaved (kernel, ceiling) pairs
/// of ceiling time / kernel time, times their flop ratio (1 when they are the same products).
/// 0 when there is no ceiling.
inline double ceiling_fraction(const result& r) {
  const double c_flops = value_or(r, "ceiling_flops", 0);
  const double ratio = value_or(r, "ceiling_ratio", 0);
  if (c_flops <= 0 || ratio <= 0 || gflops(r) <= 0) return 0;
  return ratio * value_or(r, "flops", 0) / c_flops;
}

/// Whether the kernel's products are bfloat16 ones (favor_bf16; protein_favor_bf16 counts no
/// flops, so it has no % peak).
inline bool is_bf16(const result& r) { return r.kernel.find("bf16") != std::string::npos; }

/// GFLOP/s as a fraction of the machine peak, both by the run's clock (CPU or wall time): the
/// bfloat16 peak for bfloat16 kernels where the CPU has one, else the fp32 peak.
inline double peak_fraction(const result& r, const run_facts& f) {
  const double flops = value_or(r, "flops", 0);
  const double t = value_or(r, f.by_cpu ? "cpu_s" : "median_s", 0);
  const double peak =
      is_bf16(r) && f.bf16_peak_gflops > 0 ? f.bf16_peak_gflops : f.peak_gflops;
  if (flops <= 0 || t <= 0 || peak <= 0) return 0;
  return flops / t / 1e9 / peak;
}

inline std::string fixed(double x, int digits) {
  std::ostringstream s;
  s << std::fixed << std::setprecision(digits) << x;
  return s.str();
}

inline std::string notes_of(const result& r) {
  std::string notes;
  for (const auto& [key, value] : r.info) {
    // M is news only where it is not m (doubled maps, elu + 1).
    if (key == "M" && r.uses_m && static_cast<idx>(value) == r.m) continue;
    const bool whole = value == std::floor(value);
    notes += (notes.empty() ? "" : " ") + key + "=" + fixed(value, whole ? 0 : 1);
  }
  const double flops = value_or(r, "flops", 0);
  const double c_flops = value_or(r, "ceiling_flops", 0);
  if (c_flops > 0 && std::abs(flops - c_flops) > 1e-9 * flops) notes += " (ceiling flops differ!)";
  return notes;
}

inline void print_table(const std::vector<result>& results, const run_facts& facts) {
  std::size_t name_width = 6;
  for (const auto& r : results) name_width = std::max(name_width, r.kernel.size());
  name_width += 2;
  const bool counted = facts.memory_method == "counting allocator";
  const std::string clock = facts.by_cpu ? "(by CPU time*)" : "(by wall time)";
  std::cout << "legend:\n"
            << "  median ms  median wall time of one call: a forward pass (decode_step, kv_step: "
               "one decoding step)\n"
            << "  tokens/s   tokens per call / median\n"
            << "  GFLOP/s    the call's matrix-product flops (2 per multiply-add; exps, gathers, "
               "matrix-vector normalisers not counted) / median\n"
            << "  % ceil     GFLOP/s over its ceiling's: the same products on the same shapes "
               "alone, timed interleaved with it "
            << clock << "\n"
            << "  % peak     GFLOP/s over the machine peak above " << clock << "\n"
            << (counted ? "  peak MiB   heap bytes the first call held beyond its inputs and "
                          "outputs (counting allocator)\n"
                        : "  RSS MiB    growth of the peak resident size in the first call "
                          "(counting allocator unavailable in this build: noise of several MiB)\n")
            << "  rel err    relative Frobenius error vs exact attention in double on 64 sampled "
               "rows\n"
            << "  notes      LSH: buckets per round and mean window (keys per query and round); "
               "M: features, where not m\n"
            << (facts.by_cpu ? "  *          one thread: CPU time leaves out the time other jobs "
                               "take from the process\n"
                             : "")
            << "\n";
  std::cout << std::left << std::setw(static_cast<int>(name_width)) << "kernel" << std::right
            << std::setw(9) << "N" << std::setw(6) << "m" << std::setw(12) << "median ms"
            << std::setw(13) << "tokens/s" << std::setw(9) << "GFLOP/s" << std::setw(8) << "% ceil"
            << std::setw(8) << "% peak" << std::setw(10) << (counted ? "peak MiB" : "RSS MiB")
            << std::setw(9) << "rel err"
            << "  notes\n";
  bool over_ceiling = false;
  bool bf16_rows = false;
  bool lsh_shared = false;
  bool lsh_qk_over_one = false;
  for (const auto& r : results) {
    std::cout << std::left << std::setw(static_cast<int>(name_width)) << r.kernel << std::right
              << std::setw(9) << r.n << std::setw(6) << (r.uses_m ? std::to_string(r.m) : "-");
    if (!r.skipped.empty()) {
      std::cout << "   skipped: " << r.skipped << "\n";
      continue;
    }
    const double t = value_or(r, "median_s", 0);
    const double rate = gflops(r);
    const double ceil = ceiling_fraction(r);
    std::string ceil_text = "-";
    if (ceil > 0) {
      ceil_text = fixed(100 * ceil, 0) + "%";
      if (ceil > 1.0) {
        ceil_text += "!";
        over_ceiling = true;
      }
    }
    const double mib = value_or(r, "peak_bytes", 0) / (1024.0 * 1024.0);
    const double err = value_or(r, "error", -1);
    std::string peak_text = "-";
    const double of_peak = peak_fraction(r, facts);
    // Without a bfloat16 peak, bfloat16 kernels go over the fp32 one, whose instructions they
    // do not run on: above it is then their point, not noise.
    const bool bf16 = is_bf16(r);
    if (of_peak > 0) {
      peak_text = fixed(100 * of_peak, 0) + "%";
      if (bf16) {
        peak_text += "b";
        bf16_rows = true;
      }
      if (of_peak > 1.0 && (!bf16 || facts.bf16_peak_gflops > 0)) {
        peak_text += "!";
        over_ceiling = true;
      }
    }
    std::cout << std::setw(12) << fixed(t * 1e3, t < 0.01 ? 4 : 2) << std::setw(13)
              << fixed(value_or(r, "tokens", 0) / t, 0) << std::setw(9)
              << (rate > 0 ? fixed(rate, 1) : "-") << std::setw(8) << ceil_text << std::setw(8)
              << peak_text << std::setw(10)
              << fixed(mib, mib < 1     ? 3
                            : mib < 100 ? 2
                                        : 1)
              << std::setw(9) << (err >= 0 ? fixed(err, 4) : "-") << "  " << notes_of(r) << "\n";
    if (r.kernel == "lsh" || r.kernel == "lsh_causal") lsh_shared = true;
    if (r.kernel.rfind("lsh_qk", 0) == 0 && err > 1) lsh_qk_over_one = true;
  }
  if (over_ceiling) {
    std::cout << "\n!: over 100%: the kernel and its reference differ by less than this run's "
                 "timing noise (shown as measured)";
  }
  if (bf16_rows) {
    std::cout << (facts.bf16_peak_gflops > 0
                      ? "\nb: bfloat16 products, counted as FAVOR+'s flops, over the machine "
                        "bf16 peak"
                      : "\nb: bfloat16 products, counted as FAVOR+'s flops, over the fp32 peak "
                        "(this CPU has no bfloat16 instructions)");
  }
  if (lsh_shared) {
    std::cout << "\nlsh, lsh_causal: no rel err: shared-QK attends with keys q/|q|, a different "
                 "model from exact attention on (q, k)";
  }
  if (lsh_qk_over_one) {
    std::cout << "\nlsh_qk rel err > 1: q and k are uniform random, so exact attention is nearly "
                 "uniform and its output near the mean of all values, which local windows cannot "
                 "reproduce; LSH suits peaked attention";
  }
  std::cout << "\n";
}

inline std::string json_escape(const std::string& s) {
  std::string out;
  for (const char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out;
}

inline void write_results(const std::vector<result>& results, const run_facts& f) {
  std::ofstream csv(f.out_dir + "/results.csv");
  std::ofstream json(f.out_dir + "/results.json");
  const std::vector<std::string> keys = {
      "median_s",      "min_s",         "cpu_s",         "reps",       "flops", "ceiling_s",
      "ceiling_cpu_s", "ceiling_ratio", "ceiling_flops", "peak_bytes", "tokens"};
  csv << "kernel,family,n,d,m,threads";
  for (const auto& k : keys) csv << "," << k;
  csv << ",gflops,ceiling_fraction,peak_fraction,error,notes,skipped\n";
  json << std::setprecision(9) << "{\n  \"mode\": \"" << f.mode << "\",\n  \"machine\": \""
       << json_escape(f.machine) << "\",\n  \"flags\": \"" << json_escape(f.flags)
       << "\",\n  \"threads\": " << f.threads << ",\n  \"d\": " << f.d
       << ",\n  \"qk_scale\": " << f.qk_scale << ",\n  \"machine_peak_gflops\": " << f.peak_gflops
       << ",\n  \"machine_bf16_peak_gflops\": " << f.bf16_peak_gflops
       << ",\n  \"ratios_by\": \"" << (f.by_cpu ? "cpu" : "wall") << " time\""
       << ",\n  \"memory_method\": \"" << json_escape(f.memory_method) << "\",\n  \"results\": [\n";
  for (std::size_t i = 0; i < results.size(); ++i) {
    const auto& r = results[i];
    const double error = value_or(r, "error", -1);
    const double peak = peak_fraction(r, f);
    csv << std::setprecision(9) << r.kernel << "," << r.family << "," << r.n << "," << f.d << ","
        << (r.uses_m ? std::to_string(r.m) : "") << "," << f.threads;
    json << std::setprecision(9) << "    {\"kernel\": \"" << r.kernel << "\", \"family\": \""
         << r.family << "\", \"n\": " << r.n
         << ", \"m\": " << (r.uses_m ? std::to_string(r.m) : "null");
    for (const auto& k : keys) {
      csv << "," << value_or(r, k.c_str(), 0);
      json << ", \"" << k << "\": " << value_or(r, k.c_str(), 0);
    }
    csv << "," << gflops(r) << "," << ceiling_fraction(r) << "," << peak << ","
        << (error >= 0 ? std::to_string(error) : "") << ",\"" << notes_of(r) << "\"," << r.skipped
        << "\n";
    json << ", \"gflops\": " << gflops(r) << ", \"ceiling_fraction\": " << ceiling_fraction(r)
         << ", \"peak_fraction\": " << peak
         << ", \"error\": " << (error >= 0 ? std::to_string(error) : "null") << ", \"info\": {";
    bool first = true;
    for (const auto& [key, value] : r.info) {
      json << (first ? "" : ", ") << "\"" << key << "\": " << value;
      first = false;
    }
    json << "}, \"skipped\": \"" << json_escape(r.skipped) << "\"}"
         << (i + 1 < results.size() ? "," : "") << "\n";
  }
  json << "  ]\n}\n";
}

/// One time chart and one memory chart per family (log-log, one line per kernel at its first
/// m), and error vs m (one line per kernel at the largest N run with several m). Runs gnuplot
/// when it is installed, else says how to get the charts.
inline void draw_plots(const std::vector<result>& results, const run_facts& f) {
  const std::map<std::string, std::string> titles = {
      {"softmax", "Exact softmax attention, one head, d = " + std::to_string(f.d)},
      {"favor", "FAVOR random-feature attention, one head, d = " + std::to_string(f.d)},
      {"lsh", "Reformer LSH attention, one head, d = " + std::to_string(f.d)},
      {"other", "Decoding steps (one head) and transformer blocks (d_model 512, 8 heads)"},
      {"protein", "Protein encoder (2 blocks, d_model 512, 8 heads)"}};
  std::map<std::string, std::map<std::string, std::vector<const result*>>> families;
  for (const auto& r : results) {
    if (r.skipped.empty()) families[r.family][r.kernel].push_back(&r);
  }
  if (families.empty()) return;
  std::ofstream gp(f.out_dir + "/plots.gp");
  gp << "set terminal png size 900,600 noenhanced\nset logscale xy\nset grid\nset key outside "
        "right\n";
  std::ostringstream error_plot;
  std::vector<std::string> charts;
  for (const auto& [family, kernels] : families) {
    std::ostringstream time_plot;
    std::ostringstream memory_plot;
    for (const auto& [kernel, rows] : kernels) {
      const idx first_m = rows.front()->m;
      std::ofstream data(f.out_dir + "/" + kernel + ".dat");
      data << "# n median_ms peak_mib"
           << (rows.front()->uses_m ? " (m = " + std::to_string(first_m) + ")" : "") << "\n";
      for (const auto* r : rows) {
        if (r->m != first_m) continue;
        data << r->n << " " << value_or(*r, "median_s", 0) * 1e3 << " "
             << value_or(*r, "peak_bytes", 0) / (1024.0 * 1024.0) << "\n";
      }
      const std::string file = "'" + kernel + ".dat'";
      time_plot << (time_plot.tellp() > 0 ? ", " : "") << file
                << " using 1:2 with linespoints title '" << kernel << "'";
      // A log scale needs positive values: below 1 KiB is drawn at 1 KiB.
      memory_plot << (memory_plot.tellp() > 0 ? ", " : "") << file
                  << " using 1:($3 > 0.001 ? $3 : 0.001) with linespoints title '" << kernel << "'";
      idx error_n = 0;
      std::map<idx, int> ms_at;
      for (const auto* r : rows) {
        if (value_or(*r, "error", -1) >= 0 && ++ms_at[r->n] >= 2) error_n = std::max(error_n, r->n);
      }
      if (error_n > 0) {
        std::ofstream err(f.out_dir + "/" + kernel + "_error.dat");
        err << "# m relative_error (N = " << error_n << ")\n";
        for (const auto* r : rows) {
          if (r->n == error_n) err << r->m << " " << value_or(*r, "error", 0) << "\n";
        }
        error_plot << (error_plot.tellp() > 0 ? ", " : "") << "'" << kernel
                   << "_error.dat' using 1:2 with linespoints title '" << kernel
                   << " (N = " << error_n << ")'";
      }
    }
    const auto title = titles.count(family) != 0 ? titles.at(family) : family;
    gp << "set xlabel 'N (tokens)'\nset output '" << family << "_time.png'\n"
       << "set ylabel 'median time per call (ms)'\nset title '" << title << ": time'\nplot "
       << time_plot.str() << "\nset output '" << family << "_memory.png'\n"
       << "set ylabel 'peak MiB beyond inputs and outputs (under 1 KiB: at 1 KiB)'\nset title '"
       << title << ": memory (" << f.memory_method << ")'\nplot " << memory_plot.str() << "\n";
    charts.push_back(family + "_time.png");
    charts.push_back(family + "_memory.png");
  }
  if (error_plot.tellp() > 0) {
    gp << "set output 'error_vs_m.png'\nset xlabel 'm (random features)'\n"
       << "set ylabel 'relative error vs exact'\nset title 'Approximation error, one head, d = "
       << f.d << "'\nplot " << error_plot.str() << ", x**-0.5 * 2 dashtype 2 title 'slope -1/2'\n";
    charts.push_back("error_vs_m.png");
  }
  gp.close();
  std::string list;
  for (const auto& c : charts) list += (list.empty() ? "" : ", ") + c;
  if (std::system("command -v gnuplot > /dev/null 2>&1") != 0) {
    std::cout << "charts: gnuplot is not installed (apt-get install gnuplot-nox), then run "
                 "'gnuplot plots.gp' in "
              << f.out_dir << " for " << list << "\n";
    return;
  }
  // gnuplot warns about a chart with one N (an "empty x range" it widens itself): keep its
  // messages in a log rather than in the sweep's output.
  const std::string cmd = "cd '" + f.out_dir + "' && gnuplot plots.gp 2> gnuplot.log";
  if (std::system(cmd.c_str()) == 0) {
    std::cout << "charts in " << f.out_dir << ": " << list << "\n";
  } else {
    std::cout << "gnuplot failed on " << f.out_dir << "/plots.gp (see gnuplot.log there)\n";
  }
}

/// The protein demonstration's answer: per sequence, the measured peak beyond inputs plus the
/// N x 512 input and output of the encoder, and how many sequences of that length fit in the
/// cap at once (each sequence in flight needs its own workspace, as a batch dimension would).
inline void protein_summary(const std::vector<result>& results, const run_facts& f) {
  constexpr double gib = 1024.0 * 1024.0 * 1024.0;
  const std::vector<std::pair<std::string, std::string>> columns = {
      {"protein_exact", "exact"}, {"protein_tiled", "tiled"}, {"protein_favor", "FAVOR"}};
  std::map<idx, std::map<std::string, const result*>> by_n;
  for (const auto& r : results) by_n[r.n][r.kernel] = &r;
  std::cout << "\nprotein encoder (2 blocks, d_model 512, 8 heads), memory cap "
            << std::defaultfloat << std::setprecision(6) << f.cap_gib
            << " GiB; per sequence: peak beyond input and output (" << f.memory_method
            << ") plus the N x 512 input and output; batch = sequences fitting the cap at once\n"
            << std::right << std::setw(8) << "N";
  for (const char* what : {" s/seq", " GiB/seq", " batch"}) {
    for (const auto& [kernel, label] : columns) std::cout << std::setw(15) << label + what;
  }
  std::cout << "\n";
  for (const auto& [n, kernels] : by_n) {
    const double io = 2.0 * static_cast<double>(n) * 512.0 * sizeof(float);
    std::ostringstream times, memory, batch;
    for (const auto& [kernel, label] : columns) {
      const auto it = kernels.find(kernel);
      if (it == kernels.end() || !it->second->skipped.empty()) {
        const bool over =
            it != kernels.end() && it->second->skipped.find("cap") != std::string::npos;
        times << std::setw(15) << (over ? "over cap" : "-");
        memory << std::setw(15) << "-";
        batch << std::setw(15) << (over ? "0" : "-");
        continue;
      }
      const double per_sequence = (value_or(*it->second, "peak_bytes", 0) + io) / gib;
      times << std::setw(15) << fixed(value_or(*it->second, "median_s", 0), 2);
      memory << std::setw(15) << fixed(per_sequence, 3);
      batch << std::setw(15) << fixed(std::floor(f.cap_gib / per_sequence), 0);
    }
    std::cout << std::setw(8) << n << times.str() << memory.str() << batch.str() << "\n";
  }
}

}  // namespace performer::bench
