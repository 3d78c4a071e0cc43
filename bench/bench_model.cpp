// Model-level benchmarks (issue 16), Google Benchmark:
// - block_batch/<mechanism>/threads: transformer_block::forward_batch over a batch of 4
//   sequences of 4,096 tokens, d_model 512, 8 heads, d_ff 2,048 (FAVOR+ m = 256), on 1 and 2
//   OpenMP threads (Eigen's products follow omp_get_max_threads);
// - decode_step/<mechanism>/context: one transformer_model::step of a 4-layer causal model
//   (d_model 512, 8 heads, rotary, vocabulary 32) whose per-head states already hold `context`
//   tokens (random keys and values primed into each head_decoder: a step's cost depends on the
//   state's size, not its contents). FAVOR+'s recurrent state against exact attention's
//   key/value cache (tiled exact kernel);
// - model_forward/<mechanism>/N/threads: transformer_model::forward of one sequence of N
//   tokens, 2 layers, d_model 512, 8 heads, d_ff 2,048, vocabulary 32, bidirectional (the
//   configuration tools/reference/bench_torch.py times in PyTorch).
// Each figure is a median over repetitions: run with --benchmark_repetitions=5
// --benchmark_report_aggregates_only=true.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <vector>

#include <performer/performer.hpp>

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace {

using performer::index_t;
using performer::row_matrix;

constexpr index_t d_model = 512;
constexpr index_t heads = 8;
constexpr index_t head_dim = d_model / heads;
constexpr index_t features = 256;

row_matrix<float> uniform(index_t rows, index_t cols, std::uint64_t seed) {
  performer::detail::xoshiro256ss rng(seed);
  row_matrix<float> m(rows, cols);
  for (index_t i = 0; i < m.size(); ++i) m.data()[i] = static_cast<float>(2 * rng.uniform() - 1);
  return m;
}

template <class A>
A make(std::uint64_t seed) {
  if constexpr (requires { A(head_dim, features, seed); }) {
    return A(head_dim, features, seed);
  } else {
    return A{};
  }
}

void set_threads([[maybe_unused]] benchmark::State& state, int threads) {
#if defined(_OPENMP)
  omp_set_num_threads(threads);
#else
  if (threads > 1) state.SkipWithError("built without OpenMP");
#endif
}

template <class A>
void block_batch(benchmark::State& state) {
  const auto threads = static_cast<int>(state.range(0));
  set_threads(state, threads);
  constexpr index_t batch = 4;
  constexpr index_t n = 4096;
  const performer::transformer_block<A> block({.d_model = d_model, .heads = heads, .d_ff = 2048},
                                              make<A>(1), 2);
  const row_matrix<float> x = uniform(batch * n, d_model, 3);
  row_matrix<float> y(batch * n, d_model);
  typename performer::transformer_block<A>::workspace_type ws;
  block.forward_batch(x, batch, y, {}, ws);  // warm the workspace
  for (auto _ : state) {
    block.forward_batch(x, batch, y, {}, ws);
    benchmark::ClobberMemory();
  }
  state.counters["tokens"] =
      benchmark::Counter(static_cast<double>(batch * n), benchmark::Counter::kIsIterationInvariantRate);
  set_threads(state, 1);
}

template <class A>
void decode_step(benchmark::State& state) {
  set_threads(state, 1);
  const index_t context = state.range(0);
  const performer::transformer_model<A> model(
      {.vocab = 32,
       .layers = 4,
       .block = {.d_model = d_model, .heads = heads, .d_ff = 2048, .causal = true, .rotary = true}},
      [](index_t, std::uint64_t seed) { return make<A>(seed); }, 4);
  auto s = model.start_decoding();
  // Keys of norm about 1 keep FAVOR+'s features and exact attention's weights in range.
  const row_matrix<float> k = uniform(context, head_dim, 5) * 0.2F;
  const row_matrix<float> v = uniform(context, head_dim, 6);
  for (auto& layer : s.stack.layers) {
    for (auto& head : layer.heads) head.prime(k, v);  // the positions follow the heads
  }
  row_matrix<float> logits(1, 32);
  std::int64_t token = 0;
  for (auto _ : state) {
    model.step(token, logits, s);
    token = (token + 7) % 32;
    benchmark::ClobberMemory();
  }
  state.counters["tokens"] = benchmark::Counter(1.0, benchmark::Counter::kIsIterationInvariantRate);
}

template <class A>
void model_forward(benchmark::State& state) {
  const index_t n = state.range(0);
  set_threads(state, static_cast<int>(state.range(1)));
  const performer::transformer_model<A> model(
      {.vocab = 32, .layers = 2, .block = {.d_model = d_model, .heads = heads, .d_ff = 2048}},
      [](index_t, std::uint64_t seed) { return make<A>(seed); }, 5);
  std::vector<std::int64_t> tokens(static_cast<std::size_t>(n));
  for (std::size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<std::int64_t>((i * 7) % 32);
  row_matrix<float> logits(n, 32);
  typename performer::transformer_model<A>::workspace_type ws;
  model.forward(tokens, logits, {}, ws);  // warm the workspace
  for (auto _ : state) {
    model.forward(tokens, logits, {}, ws);
    benchmark::ClobberMemory();
  }
  state.counters["tokens"] =
      benchmark::Counter(static_cast<double>(n), benchmark::Counter::kIsIterationInvariantRate);
  set_threads(state, 1);
}

using favor = performer::favor_attention<float>;
using exact = performer::tiled_softmax_attention<float>;

BENCHMARK(block_batch<favor>)->Name("block_batch/favor/threads")->Arg(1)->Arg(2)
    ->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(2.0);
BENCHMARK(model_forward<favor>)->Name("model_forward/favor/N/threads")
    ->ArgsProduct({{4096, 16384}, {1, 2}})->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(model_forward<exact>)->Name("model_forward/exact/N/threads")
    ->ArgsProduct({{4096, 16384}, {1, 2}})->Unit(benchmark::kMillisecond)->UseRealTime()
    ->Iterations(1);
BENCHMARK(decode_step<favor>)->Name("decode_step/favor/context")
    ->Arg(1024)->Arg(4096)->Arg(16384)->Arg(65536)->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(decode_step<exact>)->Name("decode_step/exact_kv_cache/context")
    ->Arg(1024)->Arg(65536)->Unit(benchmark::kMicrosecond)->UseRealTime();

}  // namespace
