// Cross-attention in transformer_block (a decoder block attending to the encoder's memory):
// forward against the independent double reference (pre/post-LN, causal or not, padded memory
// tokens); forward_batch against each sequence alone; step() against the causal forward; the
// stack passing the memory to every layer; the sublayer really used; bad input and parameters.
#include <gtest/gtest.h>

#include <cstdint>
#include <limits>
#include <vector>

#include <performer/nn/transformer_block.hpp>
#include <performer/nn/transformer_model.hpp>
#include <performer/nn/transformer_stack.hpp>
#include <performer/testing/expect_invalid.hpp>
#include <performer/testing/helpers.hpp>

#include "nn/block_reference.hpp"
#include "instances/instances.hpp"

namespace performer::test {
// Named as well as anonymous: the unity build compiles several test files as one.
namespace nn_cross_attention_test {
namespace {

using conformance::random_matrix;
using conformance::relative_difference;

constexpr index_t d_model = 16, n = 30, m = 23;

block_config cross_config(bool causal, norm_placement norm = norm_placement::pre) {
  return {.d_model = d_model,
          .heads = 2,
          .d_ff = 24,
          .causal = causal,
          .norm = norm,
          .cross_attention = true};
}

/// Memory tokens 3 and 17 are padding.
std::vector<std::uint8_t> memory_keep() {
  std::vector<std::uint8_t> keep(m, 1);
  keep[3] = keep[17] = 0;
  return keep;
}

template <class T>
struct CrossAttention : ::testing::Test {};
using scalars = ::testing::Types<float, double>;
TYPED_TEST_SUITE(CrossAttention, scalars);

// Tolerances: the block's own sums (~16 to 24 terms per product) carry a few float roundings
// each, as in the self-attention block tests.
TYPED_TEST(CrossAttention, MatchesIndependentReference) {
  using T = TypeParam;
  const double tol = std::is_same_v<T, float> ? 2e-5 : 1e-12;
  for (const auto norm : {norm_placement::pre, norm_placement::post}) {
    for (const bool causal : {false, true}) {
      transformer_block<softmax_attention<T>> block(cross_config(causal, norm), {}, 7);
      randomise_parameters(block, 31);
      const row_matrix<T> x = random_matrix<T>(n, d_model, 1);
      row_matrix<T> memory = random_matrix<T>(m, d_model, 2);
      const auto keep = memory_keep();
      memory.row(3).setConstant(T(40));  // a padded memory token must change nothing
      row_matrix<T> y(n, d_model);
      typename decltype(block)::workspace_type ws;
      block.forward(x, memory, y, {}, keep, ws);
      const auto ref = block_ref(block.config(), block.parameters(), x.template cast<double>(), {},
                                 memory.template cast<double>(), keep);
      EXPECT_LE(relative_difference(y.template cast<double>(), ref), tol)
          << "pre " << (norm == norm_placement::pre) << " causal " << causal;
      // The sublayer matters: without it (the same other weights) the output is another.
      block_config plain = block.config();
      plain.cross_attention = false;
      EXPECT_GT(
          relative_difference(y.template cast<double>(),
                              block_ref(plain, block.parameters(), x.template cast<double>())),
          1e-2);
    }
  }
}

TYPED_TEST(CrossAttention, BatchEqualsEachSequenceAlone) {
  using T = TypeParam;
  const double tol = std::is_same_v<T, float> ? 1e-5 : 1e-13;
  constexpr index_t batch = 3;
  const std::vector<index_t> lengths{n, 11, 1};
  const std::vector<index_t> memory_lengths{5, m, 1};
  const transformer_block<favor_attention<T>> block(cross_config(true),
                                                    favor_attention<T>(8, 32, 3), 5);
  row_matrix<T> x = random_matrix<T>(batch * n, d_model, 3);
  row_matrix<T> memory = random_matrix<T>(batch * m, d_model, 4);
  for (index_t b = 0; b < batch; ++b) {  // padding that must not be read
    const auto i = static_cast<std::size_t>(b);
    x.middleRows(b * n + lengths[i], n - lengths[i])
        .setConstant(std::numeric_limits<T>::quiet_NaN());
    memory.middleRows(b * m + memory_lengths[i], m - memory_lengths[i])
        .setConstant(std::numeric_limits<T>::quiet_NaN());
  }
  row_matrix<T> y(batch * n, d_model);
  typename decltype(block)::workspace_type ws;
  block.forward_batch(x, batch, memory, y, lengths, memory_lengths, ws);
  for (index_t b = 0; b < batch; ++b) {
    const auto i = static_cast<std::size_t>(b);
    row_matrix<T> alone(lengths[i], d_model);
    block.forward(x.middleRows(b * n, lengths[i]), memory.middleRows(b * m, memory_lengths[i]),
                  alone, {}, {}, ws);
    EXPECT_LE(relative_difference(y.middleRows(b * n, lengths[i]), alone), tol) << "sequence " << b;
    EXPECT_TRUE(y.middleRows(b * n + lengths[i], n - lengths[i]).isZero(0)) << "sequence " << b;
  }
}

// Stepping token by token over one memory gives the causal forward's rows (FAVOR+ through its
// recurrent state, exact attention through its cache): 1e-5 in float, as the issue asks.
TYPED_TEST(CrossAttention, StepEqualsCausalForward) {
  using T = TypeParam;
  const double tol = std::is_same_v<T, float> ? 1e-5 : 1e-12;
  const auto check = [&](const auto& block) {
    const row_matrix<T> x = random_matrix<T>(n, d_model, 6);
    const row_matrix<T> memory = random_matrix<T>(m, d_model, 7);
    const auto keep = memory_keep();
    row_matrix<T> forward(n, d_model);
    typename std::decay_t<decltype(block)>::workspace_type ws;
    block.forward(x, memory, forward, {}, keep, ws);
    auto s = block.start_decoding(memory, keep);
    row_matrix<T> stepped(n, d_model);
    for (index_t i = 0; i < n; ++i) block.step(x.row(i), stepped.row(i), s);
    EXPECT_LE(relative_difference(stepped, forward), tol);
  };
  transformer_block<softmax_attention<T>> exact(cross_config(true), {}, 8);
  randomise_parameters(exact, 3);
  check(exact);
  check(transformer_block<favor_attention<T>>(cross_config(true), favor_attention<T>(8, 32, 4), 9));
}

TEST(CrossAttentionStack, EveryLayerAttendsToTheMemory) {
  const transformer_stack<softmax_attention<double>> stack(cross_config(false), 3,
                                                           softmax_attention<double>(), 4);
  const row_matrix<double> x = random_matrix<double>(n, d_model, 8);
  const row_matrix<double> memory = random_matrix<double>(m, d_model, 9);
  const auto keep = memory_keep();
  row_matrix<double> expected = x;
  for (index_t l = 0; l < stack.layers(); ++l) {
    expected =
        block_ref(stack.layer(l).config(), stack.layer(l).parameters(), expected, {}, memory, keep);
  }
  expected = layer_norm_ref(expected, stack.final_norm_gain(), stack.final_norm_bias(), 1e-5);
  row_matrix<double> y(n, d_model);
  typename decltype(stack)::workspace_type ws;
  stack.forward(x, memory, y, {}, keep, ws);
  EXPECT_LE(relative_difference(y, expected), 1e-12);
  // Decoding through the stack, one token at a time, over the same memory.
  const transformer_stack<softmax_attention<double>> causal(cross_config(true), 2,
                                                            softmax_attention<double>(), 5);
  causal.forward(x, memory, y, {}, keep, ws);
  auto s = causal.start_decoding(memory, keep);
  row_matrix<double> stepped(n, d_model);
  for (index_t i = 0; i < n; ++i) causal.step(x.row(i), stepped.row(i), s);
  EXPECT_LE(relative_difference(stepped, y), 1e-12);
}

TEST(CrossAttention, InitialisationKeepsTheSelfAttentionBlocksBits) {
  using block = transformer_block<softmax_attention<float>>;
  const block with(cross_config(false), {}, 42);
  block_config plain_config = cross_config(false);
  plain_config.cross_attention = false;
  const block plain(plain_config, {}, 42);
  EXPECT_EQ(with.parameters().w_q, plain.parameters().w_q);
  EXPECT_EQ(with.parameters().w_ff2, plain.parameters().w_ff2);
  EXPECT_EQ(with.parameters().w_ck.rows(), d_model);
  EXPECT_NE(with.parameters().w_ck, with.parameters().w_cq);
  EXPECT_EQ(plain.parameters().w_ck.size(), 0);
}

TEST(CrossAttention, RejectsAMissingOrMisplacedMemoryAndBadParameters) {
  using block = transformer_block<softmax_attention<float>>;
  const block cross(cross_config(false), {}, 1);
  block_config plain_config = cross_config(false);
  plain_config.cross_attention = false;
  const block plain(plain_config, {}, 1);
  const row_matrix<float> x = random_matrix<float>(n, d_model, 1);
  const row_matrix<float> memory = random_matrix<float>(m, d_model, 2);
  row_matrix<float> y = row_matrix<float>::Zero(n, d_model);  // finite: passed as a memory below
  block::workspace_type ws;
  constexpr const char* forward = "transformer_block::forward";
  PERFORMER_EXPECT_INVALID(forward, "needs the encoder's memory", cross.forward(x, y, {}, ws));
  PERFORMER_EXPECT_INVALID(forward, "no cross-attention", plain.forward(x, memory, y, {}, {}, ws));
  PERFORMER_EXPECT_INVALID(forward, "d_model is 16",
                           cross.forward(x, random_matrix<float>(m, 8, 3), y, {}, {}, ws));
  const std::vector<std::uint8_t> short_mask(m - 1, 1);
  PERFORMER_EXPECT_INVALID(forward, "memory_mask has 22 entries",
                           cross.forward(x, memory, y, {}, short_mask, ws));
  row_matrix<float> bad = memory;
  bad(5, 2) = std::numeric_limits<float>::infinity();
  PERFORMER_EXPECT_INVALID(forward, "memory", cross.forward(x, bad, y, {}, {}, ws));
  PERFORMER_EXPECT_INVALID(forward, "y overlaps memory",
                           cross.forward(x, y.topRows(m), y, {}, {}, ws));
  // 23 memory rows are not 2 sequences of one length.
  PERFORMER_EXPECT_INVALID("transformer_block::forward_batch", "2 sequence(s) of a positive length",
                           cross.forward_batch(x, 2, memory, y, {}, {}, ws));
  PERFORMER_EXPECT_INVALID("transformer_block::start_decoding", "needs the encoder's memory",
                           cross.start_decoding());
  // Parameters: cross-attention's on a block without it, and of the wrong shape on one with it.
  auto p = cross.parameters();
  block receiver = plain;
  PERFORMER_EXPECT_INVALID("transformer_block::set_parameters", "w_cq is given",
                           receiver.set_parameters(p));
  block cross_receiver = cross;
  p.b_cv.resize(5);
  PERFORMER_EXPECT_INVALID("transformer_block::set_parameters", "b_cv is 1x5",
                           cross_receiver.set_parameters(p));
}

TEST(CrossAttention, ModelRefusesCrossAttentionBlocks) {
  const model_config config{.vocab = 5, .layers = 1, .block = cross_config(true)};
  PERFORMER_EXPECT_INVALID("transformer_model", "need an encoder's memory",
                           transformer_model<softmax_attention<float>>(
                               config, [](index_t) { return softmax_attention<float>(); }, 1));
}

// Shared-QK LSH ignores k (its keys are its queries): attending to a memory would silently be
// self-attention, so the block refuses it; LSH with separate keys attends to the memory.
TEST(CrossAttention, SharedQkLshIsRefusedAndSeparateKeysWork) {
  using block = transformer_block<lsh_attention<float>>;
  PERFORMER_EXPECT_INVALID("transformer_block", "shared-QK",
                           block(cross_config(false), lsh_attention<float>(8), 1));
  const block separate(cross_config(false), lsh_attention<float>(8, {.shared_qk = false}), 1);
  const row_matrix<float> x = random_matrix<float>(n, d_model, 1);
  row_matrix<float> y(n, d_model);
  block::workspace_type ws;
  separate.forward(x, random_matrix<float>(m, d_model, 2), y, {}, {}, ws);
  const row_matrix<float> first = y;
  separate.forward(x, random_matrix<float>(m, d_model, 3), y, {}, {}, ws);
  EXPECT_GT(relative_difference(y, first), 1e-3);  // the memory is read
}

}  // namespace
}  // namespace nn_cross_attention_test
}  // namespace performer::test
