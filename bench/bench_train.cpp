// The training headline: one training step (forward, backward, AdamW) of a protein masked-LM
// (d_model 512, 8 heads, d_ff 2048, rotary positions, 25 tokens) at N residues, for materialized
// exact, tiled exact and FAVOR+ (m = 256) attention. For each it measures, with the counting
// allocator:
// - fixed: the heap the model, its trainer (a copy of the parameters, their gradients, AdamW's
//   two moments) hold before any step;
// - per sequence: the step's peak above that, with one sequence in flight (its tape: every
//   layer's activations, and what each head's backward keeps: P for materialized exact);
// - the step's time per sequence (median of --repeats steps);
// and the largest batch whose sequences fit a --cap-gib budget all in flight at once, as a
// framework's batched step holds them: (cap - fixed) / per sequence. (performer's trainer
// itself accumulates a batch's gradients one sequence at a time, so its own peak is one
// sequence's, whatever the batch.)
// Run: build/<preset>/bench/bench_train [--n 8192] [--layers 2] [--repeats 3] [--cap-gib 16]
//      [--threads 2] [--mechanisms exact,tiled,favor]
#define PERFORMER_DEFINE_COUNTING_ALLOCATOR

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <performer/performer.hpp>
#include <performer/testing/counting_allocator.hpp>

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace {

using namespace performer;

struct settings {
  index_t n = 8192, layers = 2, repeats = 3;
  double cap_gib = 16;
  int threads = 2;
  std::string mechanisms = "exact,tiled,favor";
};

constexpr index_t vocab = 25, mask_token = 24, d_model = 512, heads = 8;

model_config protein_config(const settings& s) {
  model_config c;
  c.vocab = vocab;
  c.layers = s.layers;
  c.block.d_model = d_model;
  c.block.heads = heads;
  c.block.d_ff = 4 * d_model;
  c.block.rotary = true;
  return c;
}

/// A synthetic protein: residues drawn uniformly from the 20 standard letters (ids 0..19),
/// corrupted by BERT's masked-LM recipe at 15%.
masked_lm_example protein(index_t n, std::uint64_t seed) {
  detail::xoshiro256ss rng(seed);
  std::vector<std::int64_t> residues(static_cast<std::size_t>(n));
  for (auto& r : residues) r = static_cast<std::int64_t>(rng.uniform() * 20);
  return masked_lm_targets(residues, mask_token, vocab, 0.15, seed + 1);
}

template <class A, class Make>
void measure(const char* name, const settings& s, Make make) {
  using clock = std::chrono::steady_clock;
  const long long before = counting::live_bytes.load();
  transformer_model<A> model(protein_config(s), make, 1);
  trainer<A> t(model, {.learning_rate = 1e-4, .max_grad_norm = 1.0});
  const long long fixed = counting::live_bytes.load() - before;
  const masked_lm_example e = protein(s.n, 7);
  const std::vector<std::vector<std::int64_t>> in{e.inputs}, target{e.targets};
  std::vector<double> seconds;
  long long peak = 0;
  double loss = 0;
  for (index_t r = 0; r < s.repeats; ++r) {
    const auto start = clock::now();
    const counting::heap_usage u = counting::measure_heap([&] { loss = t.step(in, target); });
    seconds.push_back(std::chrono::duration<double>(clock::now() - start).count());
    peak = std::max(peak, u.peak);
  }
  std::sort(seconds.begin(), seconds.end());
  const double gib = 1024.0 * 1024.0 * 1024.0;
  const double cap = s.cap_gib * gib;
  const long long fits = static_cast<long long>((cap - static_cast<double>(fixed)) /
                                                static_cast<double>(peak));
  std::printf("%-12s N %6lld  fixed %7.3f GiB  per sequence %7.3f GiB  largest batch in %.0f GiB"
              " %4lld  step %8.2f s/sequence (median of %lld)  loss %.3f\n",
              name, static_cast<long long>(s.n), static_cast<double>(fixed) / gib,
              static_cast<double>(peak) / gib, s.cap_gib, fits, seconds[seconds.size() / 2],
              static_cast<long long>(s.repeats), loss);
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  settings s;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string key = argv[i], value = argv[i + 1];
    if (key == "--n") s.n = std::atol(value.c_str());
    else if (key == "--layers") s.layers = std::atol(value.c_str());
    else if (key == "--repeats") s.repeats = std::atol(value.c_str());
    else if (key == "--cap-gib") s.cap_gib = std::atof(value.c_str());
    else if (key == "--threads") s.threads = std::atoi(value.c_str());
    else if (key == "--mechanisms") s.mechanisms = value;
    else {
      std::fprintf(stderr, "unknown option %s\n", key.c_str());
      return 2;
    }
  }
  if (s.n <= 0 || s.layers <= 0 || s.repeats <= 0 || s.cap_gib <= 0 || s.threads <= 0) {
    std::fprintf(stderr, "--n, --layers, --repeats, --cap-gib and --threads must be positive\n");
    return 2;
  }
  if (!counting::available) {
    std::fprintf(stderr, "no counting allocator in this build (sanitizers?): nothing to measure\n");
    return 1;
  }
#if defined(_OPENMP)
  omp_set_num_threads(s.threads);
#endif
  std::printf("protein masked-LM training step: d_model %lld, %lld heads, %lld layers, d_ff %lld, "
              "float, %d threads (%s)\n",
              static_cast<long long>(d_model), static_cast<long long>(heads),
              static_cast<long long>(s.layers), static_cast<long long>(4 * d_model), s.threads,
              PERFORMER_BENCH_FLAGS);
  const auto wants = [&](const char* m) { return s.mechanisms.find(m) != std::string::npos; };
  const index_t head_dim = d_model / heads;
  if (wants("exact")) {
    measure<softmax_attention<float>>("exact", s, [](index_t) { return softmax_attention<float>{}; });
  }
  if (wants("tiled")) {
    measure<tiled_softmax_attention<float>>("tiled exact", s,
                                            [](index_t) { return tiled_softmax_attention<float>{}; });
  }
  if (wants("favor")) {
    measure<favor_attention<float>>("FAVOR+", s, [head_dim](index_t, std::uint64_t seed) {
      return favor_attention<float>(head_dim, 256, seed);
    });
  }
  return 0;
}
