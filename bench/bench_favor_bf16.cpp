// FAVOR+ bidirectional and causal in float (favor_attention<float>, on performer's own kernels
// and on Eigen's products) against bfloat16
// (favor_bf16_attention: causal, all but the chunks' own products in bfloat16) on each backend this
// CPU runs (the others reported as skipped, with the reason), one head, d = d_v = 64, m = 256, N =
// 16,384 and 1,048,576, the harness's inputs (bench/workloads.hpp: q and k uniform in [-0.5, 0.5],
// v in [-1, 1]). Counters: "rel_err" (against exact attention in double on 64 sampled rows, as
// bench_attention's), "GFLOP" (a rate: the products' 2 N m (2 d + 2 d_v + 1) flops per call:
// queries' and keys' projections, key state, output with its normaliser; the causal pass's chunk
// products are not counted, so the rates compare time). The threads are OpenMP's: run it with
// OMP_NUM_THREADS=1 and 2.
//   OMP_NUM_THREADS=1 bench_favor_bf16 --benchmark_repetitions=5
//   --benchmark_report_aggregates_only=true
#include <benchmark/benchmark.h>

#include <memory>
#include <string>

#include <performer/favor/favor_attention.hpp>
#include <performer/favor/favor_bf16_attention.hpp>

#include "workloads.hpp"

namespace {

using performer::bf16_backend;
using performer::favor_products;
using performer::index_t;
namespace bench = performer::bench;

constexpr index_t width = 64, features = 256;

template <class A>
void favor_pass(benchmark::State& state, A attention, bool causal) {
  const index_t n = state.range(0);
  auto buffers = std::make_unique<bench::head_buffers>(n, width);
  typename A::workspace_type ws;
  const performer::attention_mask mask{causal, {}};
  attention.forward(buffers->q, buffers->k, buffers->v, buffers->out, mask, ws);
  state.counters["rel_err"] = bench::sampled_error(*buffers, causal);
  for (auto _ : state) {
    attention.forward(buffers->q, buffers->k, buffers->v, buffers->out, mask, ws);
    benchmark::ClobberMemory();
  }
  const double flops = 2.0 * static_cast<double>(n) * features * (4 * width + 1);
  state.counters["GFLOP"] =
      benchmark::Counter(flops / 1e9, benchmark::Counter::kIsIterationInvariantRate);
}

// `automatic` runs performer's own float kernels where the CPU has AVX-512F, `eigen` Eigen's
// products (favor_options::products); the label says which ran.
void float_favor(benchmark::State& state, bool causal, performer::favor_products products) {
  const performer::favor_attention<float> attention(width, features, /*seed=*/1, {}, {},
                                                    {.products = products});
  state.SetLabel(attention.own_products() ? "own kernels" : "eigen");
  favor_pass(state, attention, causal);
}

void bf16_favor(benchmark::State& state, bf16_backend backend, bool causal) {
  if (!performer::bf16_available(backend)) {
    state.SkipWithError((std::string("this CPU or OS does not run bf16_backend::") +
                         std::string(performer::bf16_name(backend)))
                            .c_str());
    return;
  }
  favor_pass(
      state,
      performer::favor_bf16_attention<>(width, features, /*seed=*/1, {}, {}, {.backend = backend}),
      causal);
}

void lengths(benchmark::internal::Benchmark* b) {
  b->Arg(16384)->Arg(1 << 20)->Unit(benchmark::kMillisecond)->UseRealTime();
}

BENCHMARK_CAPTURE(float_favor, bidirectional, false, favor_products::automatic)->Apply(lengths);
BENCHMARK_CAPTURE(float_favor, eigen, false, favor_products::eigen)->Apply(lengths);
BENCHMARK_CAPTURE(bf16_favor, amx, bf16_backend::amx, false)->Apply(lengths);
BENCHMARK_CAPTURE(bf16_favor, avx512_bf16, bf16_backend::avx512_bf16, false)->Apply(lengths);
BENCHMARK_CAPTURE(bf16_favor, portable, bf16_backend::portable, false)->Apply(lengths);
BENCHMARK_CAPTURE(float_favor, causal, true, favor_products::automatic)->Apply(lengths);
BENCHMARK_CAPTURE(float_favor, eigen_causal, true, favor_products::eigen)->Apply(lengths);
BENCHMARK_CAPTURE(bf16_favor, amx_causal, bf16_backend::amx, true)->Apply(lengths);
BENCHMARK_CAPTURE(bf16_favor, avx512_bf16_causal, bf16_backend::avx512_bf16, true)->Apply(lengths);
BENCHMARK_CAPTURE(bf16_favor, portable_causal, bf16_backend::portable, true)->Apply(lengths);

}  // namespace
