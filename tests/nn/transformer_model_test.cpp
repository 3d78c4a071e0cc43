// transformer_model: embedding, positions, stack and head against the same steps written out in
// double from the model's parameters; tied heads; a causal model's logits at position i do not
// depend on later tokens; seeded initialisation; bad input.
#include <gtest/gtest.h>

#include <cstdint>
#include <limits>
#include <vector>

#include <performer/nn/transformer_model.hpp>
#include <performer/testing/expect_invalid.hpp>
#include <performer/testing/helpers.hpp>

#include "instances/instances.hpp"

namespace performer::test {
// Named as well as anonymous: the unity build compiles several test files as one.
namespace nn_transformer_model_test {
namespace {

using conformance::random_matrix;
using conformance::relative_difference;

template <class T>
using model = transformer_model<softmax_attention<T>>;

model_config small_config(bool causal, index_t max_positions, bool tied) {
  return {.vocab = 11,
          .layers = 2,
          .block = {.d_model = 16, .heads = 2, .d_ff = 24, .causal = causal},
          .max_positions = max_positions,
          .tie_output = tied};
}

/// Non-zero biases and embeddings of another seed, so the check sees every parameter.
template <class T>
void randomise(model<T>& m) {
  auto p = m.parameters();
  p.token_embedding = random_matrix<T>(p.token_embedding.rows(), p.token_embedding.cols(), 31);
  p.position_embedding = random_matrix<T>(p.position_embedding.rows(), p.position_embedding.cols(), 32);
  p.b_out = random_matrix<T>(1, p.b_out.cols(), 33, 0.1);
  m.set_parameters(p);
}

/// The model written out: the stack (tested against its blocks in transformer_stack_test) fed
/// the embedding sum formed here, and the head in double.
template <class T>
row_matrix<double> reference_logits(const model<T>& m, const std::vector<std::int64_t>& tokens) {
  const auto& p = m.parameters();
  const auto n = static_cast<index_t>(tokens.size());
  row_matrix<T> x(n, m.d_model());
  for (index_t i = 0; i < n; ++i) {
    x.row(i) = p.token_embedding.row(static_cast<index_t>(tokens[static_cast<std::size_t>(i)]));
    if (m.config().max_positions > 0) x.row(i) += p.position_embedding.row(i);
  }
  const row_matrix<double> h = m.stack().forward(x).template cast<double>();
  const row_matrix<double> w = m.config().tie_output
                                   ? row_matrix<double>(p.token_embedding.transpose().template cast<double>())
                                   : row_matrix<double>(p.w_out.template cast<double>());
  return (h * w).rowwise() + p.b_out.template cast<double>();
}

const std::vector<std::int64_t> tokens{3, 0, 10, 7, 7, 1, 4, 9, 2};

template <class T>
struct TransformerModel : ::testing::Test {};
using scalars = ::testing::Types<float, double>;
TYPED_TEST_SUITE(TransformerModel, scalars);

// Float: the head's sums of 16 products after the stack's ~1e-6 relative rounding.
TYPED_TEST(TransformerModel, EqualsItsStepsWrittenOut) {
  using T = TypeParam;
  const double tol = std::is_same_v<T, float> ? 1e-5 : 1e-12;
  for (const bool causal : {false, true}) {
    for (const index_t positions : {index_t{0}, index_t{20}}) {
      for (const bool tied : {false, true}) {
        model<T> m(small_config(causal, positions, tied), softmax_attention<T>{}, 5);
        randomise(m);
        const row_matrix<T> logits = m.forward(tokens);
        EXPECT_LE(relative_difference(logits.template cast<double>(), reference_logits(m, tokens)), tol)
            << "causal " << causal << ", positions " << positions << ", tied " << tied;
      }
    }
  }
}

TEST(TransformerModel, CausalLogitsIgnoreLaterTokens) {
  const model<double> m(small_config(true, 20, false), softmax_attention<double>{}, 6);
  auto changed = tokens;
  changed[5] = 8;
  const row_matrix<double> a = m.forward(tokens);
  const row_matrix<double> b = m.forward(changed);
  EXPECT_TRUE(conformance::same_bits(a.topRows(5), b.topRows(5)));
  EXPECT_GT((a.row(5) - b.row(5)).norm(), 1e-3);
  // An encoder sees the change everywhere.
  const model<double> e(small_config(false, 20, false), softmax_attention<double>{}, 6);
  EXPECT_GT((e.forward(tokens).row(0) - e.forward(changed).row(0)).norm(), 1e-6);
}

TEST(TransformerModel, SameSeedSameModelAndPartsFromTheirOwnSeeds) {
  const model<float> a(small_config(false, 20, false), softmax_attention<float>{}, 9);
  const model<float> b(small_config(false, 20, false), softmax_attention<float>{}, 9);
  const model<float> c(small_config(false, 20, false), softmax_attention<float>{}, 10);
  EXPECT_EQ(a.parameters().token_embedding, b.parameters().token_embedding);
  EXPECT_EQ(a.parameters().w_out, b.parameters().w_out);
  EXPECT_EQ(a.stack().layer(1).parameters().w_ff1, b.stack().layer(1).parameters().w_ff1);
  EXPECT_NE(a.parameters().token_embedding, c.parameters().token_embedding);
  EXPECT_NE(a.parameters().position_embedding.row(0), a.parameters().token_embedding.row(0));
  EXPECT_TRUE(a.parameters().b_out.isZero(0));
}

// no_init: nothing runs until the weights are set, then the model is the one they describe.
TEST(TransformerModel, NoInitThrowsUntilItsParametersAreSet) {
  const model<double> seeded(small_config(true, 20, false), softmax_attention<double>{}, 3);
  model<double> bare(small_config(true, 20, false), [](index_t) { return softmax_attention<double>{}; },
                     no_init);
  PERFORMER_EXPECT_INVALID("transformer_model::embed", "no parameters", (void)bare.forward(tokens));
  bare.set_parameters(seeded.parameters());
  PERFORMER_EXPECT_INVALID("transformer_block", "no parameters", (void)bare.forward(tokens));
  auto s = bare.start_decoding();
  row_matrix<double> logits(1, 11);
  PERFORMER_EXPECT_INVALID("transformer_block", "no parameters", bare.step(1, logits, s));
  for (index_t l = 0; l < 2; ++l) bare.stack().layer(l).set_parameters(seeded.stack().layer(l).parameters());
  EXPECT_EQ(bare.forward(tokens), seeded.forward(tokens));
}

TEST(TransformerModelBadInput, ConstructorSettersAndForward) {
  const char* ctor = "transformer_model";
  auto cfg = small_config(false, 8, false);
  cfg.vocab = 0;
  PERFORMER_EXPECT_INVALID(ctor, "vocab must be positive (got 0)", model<float>(cfg, softmax_attention<float>{}));
  cfg = small_config(false, -1, false);
  PERFORMER_EXPECT_INVALID(ctor, "max_positions must be >= 0 (got -1)", model<float>(cfg, softmax_attention<float>{}));
  cfg = small_config(false, 8, false);
  cfg.layers = 0;
  PERFORMER_EXPECT_INVALID("transformer_stack", "layers must be positive", model<float>(cfg, softmax_attention<float>{}));

  model<float> m(small_config(false, 8, true), softmax_attention<float>{});
  const char* embed = "transformer_model::embed";
  PERFORMER_EXPECT_INVALID(embed, "9 tokens but the model has positions for 8", m.forward(tokens));
  const std::vector<std::int64_t> bad_id{1, 11};
  PERFORMER_EXPECT_INVALID(embed, "token 1 is 11, outside [0, 11)", m.forward(bad_id));
  const std::vector<std::int64_t> negative{-1};
  PERFORMER_EXPECT_INVALID(embed, "token 0 is -1, outside [0, 11)", m.forward(negative));
  PERFORMER_EXPECT_INVALID(embed, "no tokens", m.forward(std::vector<std::int64_t>{}));
  row_matrix<float> logits(2, 10);
  decltype(m)::workspace_type ws;
  PERFORMER_EXPECT_INVALID("transformer_model::forward", "logits is 2x10, expected 2x11",
                           m.forward(bad_id, logits, {}, ws));
  row_matrix<float> hidden(2, 15);
  PERFORMER_EXPECT_INVALID(embed, "hidden is 2x15, expected 2x16", m.embed(bad_id, hidden, {}, ws));

  const char* set = "transformer_model::set_parameters";
  auto p = m.parameters();
  p.w_out = row_matrix<float>::Zero(16, 11);
  PERFORMER_EXPECT_INVALID(set, "w_out is 16x11, expected 0x0", m.set_parameters(p));  // tied
  p = m.parameters();
  p.token_embedding(3, 4) = std::numeric_limits<float>::infinity();
  PERFORMER_EXPECT_INVALID(set, "token_embedding (11x16) contains a NaN or an infinity", m.set_parameters(p));
  p = m.parameters();
  p.position_embedding.resize(9, 16);
  PERFORMER_EXPECT_INVALID(set, "position_embedding is 9x16, expected 8x16", m.set_parameters(p));
  EXPECT_TRUE(m.parameters().position_embedding.allFinite());  // nothing replaced
}

}  // namespace
}  // namespace nn_transformer_model_test
}  // namespace performer::test
