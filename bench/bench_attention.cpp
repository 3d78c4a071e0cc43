// Google Benchmark suite over every kernel the harness knows (bench/kernels.hpp), N from 256 to
// 16,384 at d = 64, with rate counters (tokens/s and GFLOP/s, shown as "tokens" and "GFLOP") and the asymptotic complexity fitted by
// the library. The sweep program (performer_sweep) adds per-configuration peak memory and
// longer sequences.
#include <benchmark/benchmark.h>

#include "kernels.hpp"

namespace {

void run_kernel(benchmark::State& state, const performer::bench::kernel_info& kernel) {
  const Eigen::Index n = state.range(0);
  auto work = kernel.make(n, 64);
  for (auto _ : state) {
    work.run();
    benchmark::ClobberMemory();
  }
  state.SetComplexityN(n);
  state.counters["tokens"] = benchmark::Counter(static_cast<double>(n), benchmark::Counter::kIsIterationInvariantRate);
  if (work.flops > 0) {
    state.counters["GFLOP"] = benchmark::Counter(work.flops / 1e9, benchmark::Counter::kIsIterationInvariantRate);
  }
}

const int registered = [] {
  for (const auto& kernel : performer::bench::all_kernels()) {
    const Eigen::Index max_n = kernel.name.rfind("block", 0) == 0 ? 4096 : 16384;
    auto* b = benchmark::RegisterBenchmark(kernel.name.c_str(), run_kernel, kernel);
    b->RangeMultiplier(4)->Range(256, max_n)->Unit(benchmark::kMillisecond)->UseRealTime();
    b->Complexity(kernel.quadratic ? benchmark::oNSquared : benchmark::oN);
  }
  return 0;
}();

}  // namespace

BENCHMARK_MAIN();
