// Covers performer/nn/transformer_stack.hpp: a stack equals its blocks applied in turn and then
// the final LayerNorm, the final LayerNorm's parameters can be read and replaced, layers'
// weights and mechanisms come from one seed tree, aliasing, and huge rows.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include <performer/favor/favor_attention.hpp>
#include <performer/nn/transformer_stack.hpp>
#include <performer/random/detail/generator.hpp>
#include <performer/softmax/softmax_attention.hpp>
#include <performer/testing/helpers.hpp>
#include <performer/testing/oracle.hpp>

#include "instances/instances.hpp"

// Named as well as anonymous: the unity build compiles several test files as one.
namespace nn_transformer_stack_test {
namespace {

using performer::block_config;
using performer::index_t;
using performer::row_matrix;
using performer::conformance::random_matrix;
using performer::conformance::relative_difference;

template <class G, class B>
row_matrix<double> layer_norm_ref(const row_matrix<double>& x, const G& gain, const B& bias, double eps) {
  return performer::oracle::layer_norm(x, gain, bias, eps);
}

TEST(TransformerStack, EqualsItsBlocksAppliedInTurnThenTheFinalNorm) {
  const block_config cfg{.d_model = 16, .heads = 2, .causal = true};
  for (const index_t layers : {1, 2, 3}) {
    performer::transformer_stack<performer::softmax_attention<double>> stack(cfg, layers, performer::softmax_attention<double>{}, 9);
    const auto x = random_matrix<double>(12, 16, 4);
    row_matrix<double> h = x;
    for (index_t l = 0; l < layers; ++l) h = stack.layer(l).forward(h);
    const Eigen::RowVectorXd ones = Eigen::RowVectorXd::Ones(16);
    const Eigen::RowVectorXd zeros = Eigen::RowVectorXd::Zero(16);
    EXPECT_LE(relative_difference(stack.forward(x), layer_norm_ref(h, ones, zeros, cfg.layer_norm_eps)), 1e-13);
    if (layers > 1) {
      EXPECT_NE(stack.layer(0).parameters().w_q, stack.layer(1).parameters().w_q);
    }
  }
  EXPECT_THROW((performer::transformer_stack<performer::softmax_attention<double>>(cfg, 0, performer::softmax_attention<double>{})),
               performer::invalid_argument);
}

// Found by the fuzzer: with an even layer count no block saw x and y together, so aliasing
// went unchecked; and the final LayerNorm turned a finite row near FLT_MAX into NaN.
TEST(TransformerStack, RejectsAliasingForAnyLayerCountAndNormalisesHugeRows) {
  const block_config cfg{.d_model = 4, .heads = 1};
  for (const index_t layers : {1, 2}) {
    performer::transformer_stack<performer::softmax_attention<float>> stack(cfg, layers, performer::softmax_attention<float>{});
    auto x = random_matrix<float>(3, 4, 5);
    decltype(stack)::workspace_type ws;
    EXPECT_THROW(stack.forward(x, x, {}, ws), performer::invalid_argument);
  }
  performer::transformer_stack<performer::softmax_attention<float>> stack(cfg, 1, performer::softmax_attention<float>{});
  auto p = stack.layer(0).parameters();
  p.w_ff1.setZero();
  p.w_ff2.setZero();
  p.w_o.setZero();
  const float top = std::numeric_limits<float>::max();
  p.b_ff2 << std::numeric_limits<float>::lowest(), top, top, top;
  stack.layer(0).set_parameters(p);
  const row_matrix<float> x = row_matrix<float>::Zero(2, 4);
  const auto y = stack.forward(x);
  // LayerNorm of (-M, M, M, M): mean M/2, deviations (-3, 1, 1, 1) M/2, std sqrt(3) M/2.
  const float r3 = std::sqrt(3.0F);
  for (index_t i = 0; i < 2; ++i) {
    EXPECT_NEAR(y(i, 0), -r3, 1e-5F);
    for (index_t j = 1; j < 4; ++j) EXPECT_NEAR(y(i, j), 1.0F / r3, 1e-5F);
  }
}


TEST(TransformerStack, FinalNormCanBeReadAndReplaced) {
  const block_config cfg{.d_model = 8, .heads = 2};
  performer::transformer_stack<performer::softmax_attention<double>> stack(
      cfg, 2, performer::softmax_attention<double>{}, 3);
  EXPECT_EQ(stack.final_norm_gain(), Eigen::RowVectorXd::Ones(8));
  EXPECT_EQ(stack.final_norm_bias(), Eigen::RowVectorXd::Zero(8));
  const auto x = random_matrix<double>(10, 8, 4);
  row_matrix<double> h = x;
  for (index_t l = 0; l < 2; ++l) h = stack.layer(l).forward(h);
  const Eigen::RowVectorXd gain = random_matrix<double>(1, 8, 5).array() + 1.5;
  const Eigen::RowVectorXd bias = random_matrix<double>(1, 8, 6);
  stack.set_final_norm(gain, bias);
  EXPECT_EQ(stack.final_norm_gain(), gain);
  EXPECT_EQ(stack.final_norm_bias(), bias);
  EXPECT_LE(relative_difference(stack.forward(x), layer_norm_ref(h, gain, bias, cfg.layer_norm_eps)), 1e-13);
  EXPECT_THROW(stack.set_final_norm(Eigen::RowVectorXd::Ones(7), bias), performer::invalid_argument);
  Eigen::RowVectorXd nan = gain;
  nan(3) = std::numeric_limits<double>::quiet_NaN();
  EXPECT_THROW(stack.set_final_norm(gain, nan), performer::invalid_argument);
  EXPECT_EQ(stack.final_norm_gain(), gain);  // unchanged by the rejected calls
}

TEST(TransformerStack, LayersWeightsAndMechanismsComeFromOneSeedTree) {
  // Layer l's weights are drawn from layer_seed(seed, l) and a maker that takes a seed gets
  // derive_seed(layer_seed(seed, l), 1): so two layers differ, and a rebuilt stack is identical.
  using favor = performer::favor_attention<double>;
  const block_config cfg{.d_model = 16, .heads = 2};
  std::vector<std::uint64_t> seeds;
  const auto make = [&](index_t, std::uint64_t seed) {
    seeds.push_back(seed);
    return favor(8, 16, seed);
  };
  const performer::transformer_stack<favor> stack(cfg, 3, make, 42);
  ASSERT_EQ(seeds.size(), 3U);
  for (index_t l = 0; l < 3; ++l) {
    const std::uint64_t layer = performer::transformer_stack<favor>::layer_seed(42, l);
    EXPECT_EQ(layer, performer::detail::derive_seed(42, static_cast<std::uint64_t>(l)));
    EXPECT_EQ(seeds[static_cast<std::size_t>(l)], performer::detail::derive_seed(layer, 1));
    EXPECT_EQ(stack.layer(l).attention().projection().seed(), seeds[static_cast<std::size_t>(l)]);
    // The weights are those of a block made alone from the layer's seed.
    const performer::transformer_block<favor> alone(cfg, favor(8, 16, 0), layer);
    EXPECT_EQ(stack.layer(l).parameters().w_q, alone.parameters().w_q);
  }
  EXPECT_NE(stack.layer(0).attention().projection().matrix(), stack.layer(1).attention().projection().matrix());
  const performer::transformer_stack<favor> again(cfg, 3, make, 42);
  const auto x = random_matrix<double>(9, 16, 7);
  EXPECT_EQ(stack.forward(x), again.forward(x));
}

}  // namespace
}  // namespace nn_transformer_stack_test
