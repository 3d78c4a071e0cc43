// Backward passes against their forwards, side by side in one run (the training issue's
// targets: causal FAVOR+ backward at most 2.5x its forward, the tiled exact backward at most 3x):
// - <mechanism>/causal/N/backward: one head, float, d = d_v = 64, FAVOR+ m = 256, LSH with its
//   defaults, 1 thread;
//   pass "forward" is attention_gradient<A>::forward (what training runs: it also keeps what
//   the backward needs), "backward" the backward from that forward's result;
// - favor_backward_chunk/C: the causal FAVOR+ backward at N = 16,384 with
//   favor_options::backward_chunk = C (how its default was chosen).
// Run: build/<preset>/bench/bench_gradient --benchmark_repetitions=5
//      --benchmark_report_aggregates_only=true
#include <benchmark/benchmark.h>

#include <cstdint>

#include <performer/performer.hpp>
#include <performer/testing/helpers.hpp>

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace {

using performer::index_t;
using performer::row_matrix;

constexpr index_t head_dim = 64;
constexpr index_t features = 256;

template <class A>
A make() {
  if constexpr (requires { A(head_dim, features, std::uint64_t{1}); }) {
    return A(head_dim, features, 1);
  } else if constexpr (requires { A(head_dim); }) {
    return A(head_dim);
  } else {
    return A{};
  }
}

/// Times a's forward (keeping what the backward needs) or its backward on n tokens.
template <class A>
void time_pass(benchmark::State& state, const A& a, bool causal, index_t n, bool backward) {
#if defined(_OPENMP)
  omp_set_num_threads(1);
#endif
  using grad = performer::attention_gradient<A>;
  using performer::conformance::random_matrix;
  const auto q = random_matrix<float>(n, head_dim, 1), k = random_matrix<float>(n, head_dim, 2);
  const auto v = random_matrix<float>(n, head_dim, 3);
  const auto dout = random_matrix<float>(n, head_dim, 4);
  row_matrix<float> out(n, head_dim), dq(n, head_dim), dk(n, head_dim), dv(n, head_dim);
  typename A::workspace_type forward_ws;
  typename grad::workspace_type ws;
  typename grad::saved_type saved;
  const performer::attention_mask mask{.causal = causal};
  grad::forward(a, q, k, v, out, mask, forward_ws, saved);
  for (auto _ : state) {
    if (backward) {
      grad::backward(a, q, k, v, out, dout, dq, dk, dv, mask, ws, saved);
      benchmark::DoNotOptimize(dq.data());
    } else {
      grad::forward(a, q, k, v, out, mask, forward_ws, saved);
      benchmark::DoNotOptimize(out.data());
    }
  }
  state.counters["tokens_per_s"] =
      benchmark::Counter(static_cast<double>(n), benchmark::Counter::kIsIterationInvariantRate);
}

/// state.range(0): causal; range(1): N; range(2): 1 times the backward, 0 the forward.
template <class A>
void pass(benchmark::State& state) {
  time_pass(state, make<A>(), state.range(0) != 0, state.range(1), state.range(2) != 0);
}

using favor = performer::favor_attention<float>;
using tiled = performer::tiled_softmax_attention<float>;
using lsh = performer::lsh_attention<float>;

void shapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"causal", "N", "backward"})->Unit(benchmark::kMillisecond)->UseRealTime();
  for (const int causal : {0, 1}) {
    for (const int n : {4096, 16384}) {
      for (const int backward : {0, 1}) b->Args({causal, n, backward});
    }
  }
}

BENCHMARK(pass<favor>)->Name("favor")->Apply(shapes);

/// state.range(0): the causal backward's chunk.
void favor_backward_chunk(benchmark::State& state) {
  const favor a(head_dim, features, 1, {}, {}, {.backward_chunk = state.range(0)});
  time_pass(state, a, true, 16384, true);
}
BENCHMARK(favor_backward_chunk)
    ->ArgName("C")
    ->Arg(8)
    ->Arg(16)
    ->Arg(32)
    ->Arg(64)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(pass<tiled>)->Name("tiled_exact")->Apply(shapes);
BENCHMARK(pass<lsh>)->Name("lsh")->Apply(shapes);

}  // namespace
