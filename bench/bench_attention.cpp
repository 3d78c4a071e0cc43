// Google Benchmark suite over every kernel the harness knows (bench/kernels.hpp: the library's
// registry, each mechanism bidirectional and causal, plus the GEMM ceilings, decoding steps and
// blocks) at d = 64, m = 256: N from 256 to 65,536 for the linear kernels and to 16,384 for the
// quadratic ones (PERFORMER_BENCH_FULL=1 in the environment: each kernel's full-run limit).
// Counters: tokens/s and GFLOP/s of the matrix products ("tokens", "GFLOP"), the heap bytes of
// the first call beyond inputs and outputs from the counting allocator ("peak_MiB"; resident-set
// growth where the allocator is unavailable), and for the approximate kernels the relative error
// against exact attention in double on 64 sampled rows ("rel_err"). The asymptotic complexity is
// fitted per kernel. The ceilings are the sweep's (performer_sweep) business.

// The counting allocator replaces malloc for the whole executable: defined here, once.
#define PERFORMER_DEFINE_COUNTING_ALLOCATOR
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <string>

#include <performer/testing/counting_allocator.hpp>

#include "kernels.hpp"

namespace {

void run_kernel(benchmark::State& state, const performer::bench::kernel_info& kernel) {
  const Eigen::Index n = state.range(0);
  const auto work = kernel.make({n, 64, 256});
  const double peak = performer::bench::first_call_peak_bytes(work);
  const double error = work.error ? work.error() : -1.0;
  const double flops = work.flops();
  for (auto _ : state) {
    work.run();
    benchmark::ClobberMemory();
  }
  state.SetComplexityN(n);
  const double tokens = work.tokens > 0 ? work.tokens : static_cast<double>(n);
  state.counters["tokens"] =
      benchmark::Counter(tokens, benchmark::Counter::kIsIterationInvariantRate);
  if (flops > 0) {
    state.counters["GFLOP"] =
        benchmark::Counter(flops / 1e9, benchmark::Counter::kIsIterationInvariantRate);
  }
  state.counters["peak_MiB"] = peak / (1024.0 * 1024.0);
  if (error >= 0) state.counters["rel_err"] = error;
}

const int registered = [] {
  const char* env = std::getenv("PERFORMER_BENCH_FULL");
  const bool full = env != nullptr && std::string(env) == "1";
  for (const auto& kernel : performer::bench::all_kernels()) {
    // The protein encoder is the sweep's --protein demonstration (minutes per configuration).
    if (kernel.family == "protein") continue;
    Eigen::Index max_n = full ? kernel.full_max_n : kernel.quadratic ? 16384 : 65536;
    if (!full && kernel.name.rfind("block", 0) == 0) max_n = 4096;
    auto* b = benchmark::RegisterBenchmark(kernel.name.c_str(), run_kernel, kernel);
    b->RangeMultiplier(4)->Range(256, max_n)->Unit(benchmark::kMillisecond)->UseRealTime();
    // A decoding step's cost does not depend on the context: fit a constant.
    b->Complexity(kernel.quadratic               ? benchmark::oNSquared
                  : kernel.name == "decode_step" ? benchmark::o1
                                                 : benchmark::oN);
  }
  return 0;
}();

}  // namespace

BENCHMARK_MAIN();
