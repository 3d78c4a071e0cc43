// The sweep's child side: one configuration per process (bench/sweep.cpp starts it as
// `performer_sweep --child ...`), so that its memory is its own. It measures the first call's
// memory, then times the kernel and its ceiling alternately and prints one key=value line.
// Also the machine-peak child (`--child-peak`).
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <ctime>
#include <iomanip>
#include <iostream>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "kernels.hpp"

namespace performer::bench {

inline void set_threads(int threads) {
  Eigen::setNbThreads(threads);
#ifdef _OPENMP
  omp_set_num_threads(threads);
#endif
}

inline const kernel_info& find_kernel(const std::vector<kernel_info>& kernels,
                                      const std::string& name) {
  for (const auto& k : kernels) {
    if (k.name == name) return k;
  }
  std::cerr << "unknown kernel '" << name << "' (try --list)\n";
  std::exit(2);
}

inline double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

/// CPU time of the whole process (all threads), in seconds.
inline double cpu_seconds() {
  timespec t{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
}

/// Wall and CPU time of one call of f.
struct timing {
  double wall, cpu;
};
template <class F>
timing time_call(F&& f) {
  const auto t0 = std::chrono::steady_clock::now();
  const double c0 = cpu_seconds();
  f();
  const double cpu = cpu_seconds() - c0;
  return {seconds_since(t0), cpu};
}

/// Child: build the workload, measure its first call's memory, then time it and its ceiling
/// alternately (so that both see the same machine load), and print one key=value line.
inline int run_child(const std::string& name, const config& c, int threads, double min_seconds,
                     double scale, std::size_t min_reps) {
  set_threads(threads);
  qk_scale = scale;
  const auto kernels = all_kernels();
  const auto work = find_kernel(kernels, name).make(c);
  const double peak = first_call_peak_bytes(work);
  // The first call's error, flops and facts (later calls rewrite the same output).
  const double error = work.error ? work.error() : -1.0;
  const double flops = work.flops();
  const auto info = work.info ? work.info() : std::map<std::string, double>{};
  std::optional<workload> ceiling;
  if (work.ceiling) {
    ceiling = work.ceiling();
    ceiling->run();  // warm-up, as the kernel's first call was
  }
  // Ratios compare one thread's CPU time, which time other jobs take from the process does not
  // inflate; with several threads, idle or spinning threads would, so wall time is used.
  const bool by_cpu = threads == 1;
  std::vector<double> wall, cpu, ceiling_wall, ceiling_cpu, ratios;
  const auto start = std::chrono::steady_clock::now();
  while (wall.size() < min_reps || (seconds_since(start) < min_seconds && wall.size() < 50)) {
    const timing k = time_call(work.run);
    wall.push_back(k.wall);
    cpu.push_back(k.cpu);
    if (ceiling) {
      const timing c = time_call(ceiling->run);
      ceiling_wall.push_back(c.wall);
      ceiling_cpu.push_back(c.cpu);
      ratios.push_back(by_cpu ? c.cpu / k.cpu : c.wall / k.wall);
    }
  }
  std::cout << std::setprecision(9) << "median_s=" << median(wall)
            << " min_s=" << *std::min_element(wall.begin(), wall.end()) << " cpu_s=" << median(cpu)
            << " reps=" << wall.size() << " peak_bytes=" << peak << " flops=" << flops
            << " error=" << error
            << " tokens=" << (work.tokens > 0 ? work.tokens : static_cast<double>(c.n))
            << " ratio_by_cpu=" << (by_cpu ? 1 : 0);
  if (ceiling) {
    // Pairs run back to back: the median of their ratios resists load that changes over the run.
    std::cout << " ceiling_s=" << median(ceiling_wall) << " ceiling_cpu_s=" << median(ceiling_cpu)
              << " ceiling_ratio=" << median(ratios) << " ceiling_flops=" << ceiling->flops();
  }
  for (const auto& [key, value] : info) std::cout << " info." << key << "=" << value;
  std::cout << "\n";
  return 0;
}

/// GFLOP/s of `product`, a size^3 matrix product, median of `runs` after one warm-up, by wall
/// time and by the CPU time `cpu_seconds()` reads.
template <class Product, class Clock>
std::pair<double, double> square_product_gflops(index_t size, Product&& product,
                                                Clock cpu_seconds, int runs) {
  product();
  std::vector<double> wall, cpu;
  for (int r = 0; r < runs; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    const double c0 = cpu_seconds();
    product();
    cpu.push_back(cpu_seconds() - c0);
    wall.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(wall.begin(), wall.end());
  std::sort(cpu.begin(), cpu.end());
  const double s = static_cast<double>(size);
  const double flops = 2.0 * s * s * s;
  return {flops / wall[wall.size() / 2] / 1e9, flops / cpu[cpu.size() / 2] / 1e9};
}

/// A size^3 float GEMM with Eigen on its current thread count (square_product_gflops).
template <class Clock>
std::pair<double, double> square_gemm_gflops(index_t size, Clock cpu_seconds, int runs = 5) {
  const row_matrix<T> a = conformance::random_matrix<T>(size, size, 11);
  const row_matrix<T> b = conformance::random_matrix<T>(size, size, 12);
  row_matrix<T> c(size, size);
  return square_product_gflops(size, [&] { c.noalias() = a * b; }, cpu_seconds, runs);
}

/// The same for C = A B with bfloat16 A and B and float sums on `backend`, A's rows split over
/// the threads in panels of 96 (as favor_bf16 splits its blocks). A is packed and B laid out
/// once, outside the timing.
template <class Clock>
std::pair<double, double> square_bf16_gflops(index_t size, bf16_backend backend,
                                             Clock cpu_seconds, int runs = 5) {
  namespace bf = detail::bf16;
  const row_matrix<T> a = conformance::random_matrix<T>(size, size, 11);
  const row_matrix<T> b = conformance::random_matrix<T>(size, size, 12);
  const index_t pairs = (size + 1) / 2;
  bf::aligned_buffer<bf::pair> a_pairs(static_cast<std::size_t>(size * pairs));
  for (index_t i = 0; i < size; ++i) bf::pack_row(&a(i, 0), size, a_pairs.data() + i * pairs);
  bf::packed_rhs b_pairs;
  b_pairs.assign(size, size, [&](index_t k, index_t j) { return b(k, j); });
  row_matrix<T> c(size, size);
  constexpr index_t panel = 96;
  const auto product = [&] {
    detail::parallel_for((size + panel - 1) / panel, [&](index_t p, index_t /*lane*/) {
      const index_t r0 = p * panel;
      bf::product({a_pairs.data() + r0 * pairs, std::min(panel, size - r0), pairs, 1}, b_pairs,
                  c.data() + r0 * size, size, backend, /*accumulate=*/false);
    });
  };
  return square_product_gflops(size, product, cpu_seconds, runs);
}

/// The same for C = A B on performer's float kernel (detail::fp32::product, which
/// favor_attention<float> runs where the CPU has AVX-512F), A's rows split as above. The kernel
/// reads A and B where they lie: nothing is packed.
template <class Clock>
std::pair<double, double> square_fp32_gflops(index_t size, Clock cpu_seconds, int runs = 5) {
  const row_matrix<T> a = conformance::random_matrix<T>(size, size, 11);
  const row_matrix<T> b = conformance::random_matrix<T>(size, size, 12);
  row_matrix<T> c(size, size);
  constexpr index_t panel = 96;
  const auto product = [&] {
    detail::parallel_for((size + panel - 1) / panel, [&](index_t p, index_t /*lane*/) {
      const index_t r0 = p * panel;
      detail::fp32::product({&a(r0, 0), std::min(panel, size - r0), size, 1},
                            {b.data(), size, size, size}, &c(r0, 0), size,
                            /*accumulate=*/false);
    });
  };
  return square_product_gflops(size, product, cpu_seconds, runs);
}

/// Square sizes the machine peak is measured at; the peak is the best of their medians, so
/// that no single size's packing or cache fit sets it.
inline constexpr index_t peak_sizes[] = {512, 1024, 2048};

/// Prints `<prefix>wall_<size>=` and `<prefix>cpu_<size>=` for each peak size, then
/// `<prefix>peak_wall=` and `<prefix>peak_cpu=`, the best of the (wall, CPU) GFLOP/s that
/// `measure(size)` gave.
template <class Measure>
void print_peak(const std::string& prefix, Measure&& measure) {
  double best_wall = 0;
  double best_cpu = 0;
  for (const index_t size : peak_sizes) {
    const auto [wall, cpu] = measure(size);
    best_wall = std::max(best_wall, wall);
    best_cpu = std::max(best_cpu, cpu);
    std::cout << " " << prefix << "wall_" << size << "=" << wall << " " << prefix << "cpu_" << size
              << "=" << cpu;
  }
  std::cout << " " << prefix << "peak_wall=" << best_wall << " " << prefix
            << "peak_cpu=" << best_cpu;
}

/// Child: square float products at each peak size on this thread count, Eigen's GEMM and,
/// where the CPU has AVX-512F, performer's float kernel (eigen_* and own_*); the peak is the
/// best median of either, in wall time and in CPU time. Then, where the CPU has bfloat16
/// instructions, the same with bfloat16 products on the backend favor_bf16 runs
/// (bf16_backend::automatic; bf16_peak_*): the portable backend's rate is no machine peak.
inline int run_peak_child(int threads) {
  set_threads(threads);
  std::cout << std::setprecision(9);
  const bool own = detail::avx512f_available();
  print_peak("", [own](index_t size) {
    auto best = square_gemm_gflops(size, cpu_seconds);
    std::cout << " eigen_wall_" << size << "=" << best.first;
    if (own) {
      const auto kernel = square_fp32_gflops(size, cpu_seconds);
      std::cout << " own_wall_" << size << "=" << kernel.first;
      best = {std::max(best.first, kernel.first), std::max(best.second, kernel.second)};
    }
    return best;
  });
  const bf16_backend backend = bf16_resolve(bf16_backend::automatic);
  if (backend != bf16_backend::portable) {
    print_peak("bf16_",
               [&](index_t size) { return square_bf16_gflops(size, backend, cpu_seconds); });
    std::cout << " bf16_backend=" << static_cast<int>(backend);
  }
  std::cout << "\n";
  return 0;
}

}  // namespace performer::bench
