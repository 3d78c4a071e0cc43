// Streaming decoding: the model's, the stack's and the block's step() against their causal
// forward (exact attention through a key/value cache, FAVOR+ through its recurrent state, with
// learned positions and rotary embedding); causal chosen per call; greedy and sampled
// generation against argmax and the softmax distribution; LSH's documented error; bad input.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include <performer/nn/head_decoder.hpp>
#include <performer/nn/sampling.hpp>
#include <performer/nn/transformer_model.hpp>
#include <performer/testing/counting_allocator.hpp>
#include <performer/testing/expect_invalid.hpp>
#include <performer/testing/helpers.hpp>

#include "instances/instances.hpp"

namespace performer::test {
// Named as well as anonymous: the unity build compiles several test files as one.
namespace nn_decoding_test {
namespace {

using conformance::random_matrix;
using conformance::relative_difference;

model_config lm_config(bool rotary, index_t positions) {
  return {.vocab = 13,
          .layers = 2,
          .block = {.d_model = 16, .heads = 2, .d_ff = 24, .causal = true, .rotary = rotary},
          .max_positions = positions};
}

const std::vector<std::int64_t> tokens{3, 0, 12, 7, 7, 1, 4, 9, 2, 11, 5, 5, 8, 6, 10, 0, 1};

/// Logits of every prefix, stepped one token at a time through one state.
template <class Model>
row_matrix<typename Model::scalar_type> stepped(const Model& m, const std::vector<std::int64_t>& t) {
  using T = typename Model::scalar_type;
  row_matrix<T> out(static_cast<index_t>(t.size()), m.config().vocab);
  auto s = m.start_decoding();
  for (std::size_t i = 0; i < t.size(); ++i) {
    m.step(t[i], out.row(static_cast<index_t>(i)), s);
  }
  return out;
}

template <class A>
struct Decoding : ::testing::Test {};
using decodable = ::testing::Types<softmax_attention<float>, softmax_attention<double>,
                                   tiled_softmax_attention<float>, favor_attention<float>,
                                   favor_attention<double>>;
TYPED_TEST_SUITE(Decoding, decodable);

template <class A>
A make_mechanism() {
  if constexpr (requires { A(8, 32, std::uint64_t{1}); }) {
    return A(8, 32, 1);  // FAVOR+: head width 8, m = 32
  } else {
    return A{};
  }
}

// The step and the batch pass do the same arithmetic in another order: float to 1e-5 relative
// (the bound; a few hundred roundings of 6e-8 each), double to 1e-12.
TYPED_TEST(Decoding, StepByStepEqualsTheCausalForward) {
  using A = TypeParam;
  using T = typename A::scalar_type;
  const double tol = std::is_same_v<T, float> ? 1e-5 : 1e-12;
  for (const bool rotary : {false, true}) {
    for (const index_t positions : {index_t{0}, index_t{32}}) {
      const transformer_model<A> m(lm_config(rotary, positions), make_mechanism<A>(), 7);
      const row_matrix<T> batch = m.forward(tokens);
      EXPECT_LE(relative_difference(stepped(m, tokens), batch), tol)
          << "rotary " << rotary << ", positions " << positions;
    }
  }
}

TYPED_TEST(Decoding, AStackStepsLikeItsCausalForwardWhateverItsConfig) {
  using A = TypeParam;
  using T = typename A::scalar_type;
  const double tol = std::is_same_v<T, float> ? 1e-5 : 1e-12;
  // An encoder's config: step() is causal by definition, forward(..., true) on request.
  block_config cfg{.d_model = 16, .heads = 2, .d_ff = 24, .causal = false, .rotary = true};
  const transformer_stack<A> stack(cfg, 3, make_mechanism<A>(), 3);
  const auto x = random_matrix<T>(11, 16, 5);
  row_matrix<T> batch(11, 16);
  typename transformer_stack<A>::workspace_type ws;
  stack.forward(x, batch, {}, ws, true);
  auto s = stack.start_decoding();
  row_matrix<T> rows(11, 16);
  for (index_t i = 0; i < 11; ++i) stack.step(x.row(i), rows.row(i), s);
  EXPECT_LE(relative_difference(rows, batch), tol);
  // And the per-call flag really switched the mask: the config's bidirectional pass differs.
  EXPECT_GT(relative_difference(stack.forward(x), batch), 1e-3);
}

// prime() folds a prefix without outputs: the next step must equal stepping every token.
TYPED_TEST(Decoding, PrimingAHeadEqualsSteppingThroughThePrefix) {
  using A = TypeParam;
  using T = typename A::scalar_type;
  const A a = make_mechanism<A>();
  const auto q = random_matrix<T>(9, 8, 21);
  const auto k = random_matrix<T>(9, 8, 22);
  const auto v = random_matrix<T>(9, 5, 23);
  head_decoder<A> stepped(a, 8, 5);
  head_decoder<A> primed(a, 8, 5);
  row_matrix<T> out(1, 5);
  for (index_t i = 0; i < 8; ++i) stepped.step(a, q.row(i), k.row(i), v.row(i), out);
  primed.prime(k.topRows(8), v.topRows(8));
  EXPECT_EQ(primed.position(), 8);
  row_matrix<T> expected(1, 5);
  stepped.step(a, q.row(8), k.row(8), v.row(8), expected);
  primed.step(a, q.row(8), k.row(8), v.row(8), out);
  EXPECT_LE(relative_difference(out, expected), 1e-6);
  const char* who = is_query_independent<A> ? "head_decoder::prime" : "favor_decoder::prime";
  PERFORMER_EXPECT_INVALID(who, "k is 2x7", primed.prime(random_matrix<T>(2, 7, 1), v.topRows(2)));
}

TEST(Decoding, PerCallCausalEqualsACausalConfig) {
  block_config cfg{.d_model = 16, .heads = 4, .d_ff = 24, .causal = false};
  const transformer_block<softmax_attention<double>> encoder(cfg, {}, 4);
  cfg.causal = true;
  const transformer_block<softmax_attention<double>> decoder(cfg, {}, 4);
  const auto x = random_matrix<double>(9, 16, 6);
  row_matrix<double> y(9, 16);
  typename transformer_block<softmax_attention<double>>::workspace_type ws;
  encoder.forward(x, y, {}, ws, true);
  EXPECT_EQ(y, decoder.forward(x));
  decoder.forward(x, y, {}, ws, false);
  EXPECT_EQ(y, encoder.forward(x));
  // forward_batch too, over two sequences.
  const auto xx = random_matrix<double>(18, 16, 8);
  row_matrix<double> yy(18, 16);
  encoder.forward_batch(xx, 2, yy, {}, ws, true);
  EXPECT_LE(relative_difference(yy.topRows(9), decoder.forward(xx.topRows(9))), 1e-13);
}

TEST(Decoding, FavorStepAllocatesNothingOnceWarm) {
  if (!counting::available) GTEST_SKIP() << "no counting allocator in this build (sanitizer)";
  const transformer_model<favor_attention<float>> m(lm_config(true, 0), favor_attention<float>(8, 32, 1), 2);
  auto s = m.start_decoding();
  row_matrix<float> logits(1, 13);
  for (const auto t : tokens) m.step(t, logits, s);
  const auto usage = counting::measure_heap([&] {
    for (int i = 0; i < 200; ++i) m.step(i % 13, logits, s);
  });
  EXPECT_EQ(usage.allocations, 0U);  // the state is the same size at every context length
}

TEST(Decoding, LshHasNoStepByStepDecoding) {
  const transformer_model<lsh_attention<float>> m(lm_config(false, 0), lsh_attention<float>(8), 1);
  PERFORMER_EXPECT_INVALID("head_decoder", "no step-by-step decoding", (void)m.start_decoding());
  PERFORMER_EXPECT_INVALID("head_decoder", "LSH attention",
                           (void)m.generate(std::vector<std::int64_t>{1, 2}, 3));
}

TEST(Generation, GreedyIsTheArgmaxOfTheForwardPass) {
  const transformer_model<softmax_attention<double>> m(lm_config(true, 32), {}, 11);
  const std::vector<std::int64_t> prompt{4, 2, 9};
  const auto out = m.generate(prompt, 8);
  ASSERT_EQ(out.size(), 8U);
  std::vector<std::int64_t> sequence = prompt;
  for (const auto t : out) {
    const row_matrix<double> logits = m.forward(sequence);
    index_t best = 0;
    logits.row(logits.rows() - 1).maxCoeff(&best);
    EXPECT_EQ(t, best) << "after " << sequence.size() << " tokens";
    sequence.push_back(t);
  }
  EXPECT_TRUE(m.generate(prompt, 0).empty());
}

// The callback sees each token as it is picked, in order, and stops the generation early.
TEST(Generation, TheCallbackSeesEveryTokenAndCanStop) {
  const transformer_model<favor_attention<float>> m(lm_config(true, 0), favor_attention<float>(8, 16, 3), 7);
  const std::vector<std::int64_t> prompt{5, 1};
  const sampling_options hot{.temperature = 1.5, .seed = 4};
  const auto full = m.generate(prompt, 12, hot);
  std::vector<std::int64_t> seen;
  std::vector<index_t> at;
  const auto all = m.generate(prompt, 12, hot, [&](std::int64_t t, index_t i) {
    seen.push_back(t);
    at.push_back(i);
    return true;
  });
  EXPECT_EQ(all, full);
  EXPECT_EQ(seen, full);
  for (std::size_t i = 0; i < at.size(); ++i) EXPECT_EQ(at[i], static_cast<index_t>(i));
  const auto first5 = m.generate(prompt, 12, hot, [](std::int64_t, index_t i) { return i < 4; });
  EXPECT_EQ(first5, std::vector<std::int64_t>(full.begin(), full.begin() + 5));
}

TEST(Generation, SamplingIsSeededAndFollowsTheSoftmax) {
  const transformer_model<favor_attention<double>> m(lm_config(false, 0), favor_attention<double>(8, 16, 2), 5);
  const std::vector<std::int64_t> prompt{1, 2, 3};
  const sampling_options hot{.temperature = 2.0, .seed = 9};
  EXPECT_EQ(m.generate(prompt, 20, hot), m.generate(prompt, 20, hot));
  EXPECT_NE(m.generate(prompt, 20, hot), m.generate(prompt, 20, {.temperature = 2.0, .seed = 10}));

  // The draw's frequencies against softmax(logits / t), computed here in double: 40,000 draws
  // give each probability a standard error below 0.0025; 0.012 is nearly 5 of them.
  row_matrix<double> logits(1, 5);
  logits << 0.3, -1.0, 2.0, 0.0, 1.1;
  for (const double t : {0.5, 1.0, 3.0}) {
    std::vector<double> p(5);
    double total = 0;
    for (index_t j = 0; j < 5; ++j) total += p[static_cast<std::size_t>(j)] = std::exp(logits(0, j) / t);
    detail::xoshiro256ss rng(17);
    std::vector<double> seen(5, 0.0);
    constexpr int draws = 40000;
    for (int i = 0; i < draws; ++i) seen[static_cast<std::size_t>(detail::sample_token(logits, t, rng))] += 1.0;
    for (std::size_t j = 0; j < 5; ++j) {
      EXPECT_NEAR(seen[j] / draws, p[j] / total, 0.012) << "temperature " << t << ", token " << j;
    }
  }
  detail::xoshiro256ss rng(1);
  EXPECT_EQ(detail::sample_token(logits, 0.0, rng), 2);  // greedy
}

TEST(DecodingBadInput, StepsStatesAndGeneration) {
  const transformer_model<softmax_attention<float>> m(lm_config(false, 4), {}, 1);
  const transformer_model<softmax_attention<float>> other({.vocab = 13, .layers = 3, .block = lm_config(false, 4).block}, {}, 1);
  row_matrix<float> logits(1, 13);
  row_matrix<float> wrong(1, 12);
  auto s = m.start_decoding();
  const char* step = "transformer_model::step";
  PERFORMER_EXPECT_INVALID(step, "token 0 is 13, outside [0, 13)", m.step(13, logits, s));
  PERFORMER_EXPECT_INVALID(step, "token 0 is -1", m.step(-1, logits, s));
  PERFORMER_EXPECT_INVALID(step, "logits is 1x12, expected 1x13", m.step(1, wrong, s));
  auto foreign = other.start_decoding();
  PERFORMER_EXPECT_INVALID("transformer_stack::step", "the state has 3 layers, expected 2",
                           m.step(1, logits, foreign));
  for (int i = 0; i < 4; ++i) m.step(i, logits, s);
  PERFORMER_EXPECT_INVALID(step, "position 4 but the model has positions for 4", m.step(1, logits, s));

  const char* gen = "transformer_model::generate";
  const std::vector<std::int64_t> prompt{1, 2};
  PERFORMER_EXPECT_INVALID(gen, "empty prompt", (void)m.generate({}, 1));
  PERFORMER_EXPECT_INVALID(gen, "count must be >= 0 (got -1)", (void)m.generate(prompt, -1));
  PERFORMER_EXPECT_INVALID(gen, "temperature must be finite and >= 0", (void)m.generate(prompt, 1, {.temperature = -1.0}));
  PERFORMER_EXPECT_INVALID(gen, "temperature must be finite and >= 0",
                           (void)m.generate(prompt, 1, {.temperature = std::nan("")}));
  PERFORMER_EXPECT_INVALID(gen, "need 5 positions but the model has 4", (void)m.generate(prompt, 4));
  EXPECT_EQ(m.generate(prompt, 3).size(), 3U);  // 2 + 3 - 1 = 4 positions: the last is not fed

  // The block: shapes, a foreign state, a state left failed by a throwing head.
  using block = transformer_block<favor_attention<float>>;
  const block b({.d_model = 8, .heads = 1, .d_ff = 8}, favor_attention<float>(8, 4, 1), 1);
  auto bs = b.start_decoding();
  row_matrix<float> x = random_matrix<float>(1, 8, 3);
  row_matrix<float> y(1, 8);
  const char* bstep = "transformer_block::step";
  PERFORMER_EXPECT_INVALID(bstep, "expected 1x8 each", b.step(random_matrix<float>(2, 8, 1), y, bs));
  PERFORMER_EXPECT_INVALID(bstep, "y overlaps x", b.step(x, x, bs));
  x(0, 3) = std::nanf("");
  PERFORMER_EXPECT_INVALID(bstep, "x", b.step(x, y, bs));
  typename block::decoder_state empty;
  PERFORMER_EXPECT_INVALID(bstep, "the state has 0 heads, expected 1", b.step(y, x, empty));
  bs.failed = true;
  PERFORMER_EXPECT_INVALID(bstep, "an earlier step failed part-way", b.step(random_matrix<float>(1, 8, 4), y, bs));
}

}  // namespace
}  // namespace nn_decoding_test
}  // namespace performer::test
