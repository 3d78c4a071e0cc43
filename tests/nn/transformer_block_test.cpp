// The shared block: against an independent double reference built from its own parameters, the
// same weights with each exact mechanism, a user-defined mechanism, masks, stacks, bad input.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include <performer/performer.hpp>
#include <performer/testing/conformance.hpp>

#include "reference.hpp"
#include "user_attention.hpp"

namespace {

using performer::block_config;
using performer::index;
using performer::row_matrix;
using performer::transformer_block;
using performer::conformance::random_matrix;
using performer::conformance::relative_difference;

row_matrix<double> layer_norm_ref(const row_matrix<double>& x, const Eigen::RowVectorXd& gain,
                                  const Eigen::RowVectorXd& bias, double eps) {
  row_matrix<double> out(x.rows(), x.cols());
  for (index i = 0; i < x.rows(); ++i) {
    const double mean = x.row(i).mean();
    double var = 0;
    for (index c = 0; c < x.cols(); ++c) var += (x(i, c) - mean) * (x(i, c) - mean);
    var /= static_cast<double>(x.cols());
    for (index c = 0; c < x.cols(); ++c) {
      out(i, c) = (x(i, c) - mean) / std::sqrt(var + eps) * gain(c) + bias(c);
    }
  }
  return out;
}

/// The block written out directly from its definition, in double, with naive attention.
template <class P>
row_matrix<double> block_ref(const block_config& cfg, const P& p, const row_matrix<double>& x,
                             const std::vector<std::uint8_t>& keep = {}) {
  const auto d = [](const auto& m) { return m.template cast<double>().eval(); };
  const index dh = cfg.d_model / cfg.heads;
  const bool pre = cfg.norm == performer::norm_placement::pre;
  const auto attn_sub = [&](const row_matrix<double>& h) {
    row_matrix<double> q = (h * d(p.w_q)).rowwise() + d(p.b_q);
    row_matrix<double> k = (h * d(p.w_k)).rowwise() + d(p.b_k);
    row_matrix<double> v = (h * d(p.w_v)).rowwise() + d(p.b_v);
    row_matrix<double> ctx(h.rows(), cfg.d_model);
    for (index head = 0; head < cfg.heads; ++head) {
      ctx.middleCols(head * dh, dh) = performer::test::naive_attention(
          q.middleCols(head * dh, dh), k.middleCols(head * dh, dh), v.middleCols(head * dh, dh),
          cfg.causal, keep);
    }
    return row_matrix<double>((ctx * d(p.w_o)).rowwise() + d(p.b_o));
  };
  const auto ffn_sub = [&](const row_matrix<double>& h) {
    row_matrix<double> a = (h * d(p.w_ff1)).rowwise() + d(p.b_ff1);
    for (index i = 0; i < a.rows(); ++i) {
      for (index c = 0; c < a.cols(); ++c) {
        const double z = a(i, c);
        a(i, c) = cfg.ffn_activation == performer::activation::relu
                      ? std::max(z, 0.0)
                      : 0.5 * z * (1.0 + std::erf(z / std::sqrt(2.0)));
      }
    }
    return row_matrix<double>((a * d(p.w_ff2)).rowwise() + d(p.b_ff2));
  };
  const double eps = cfg.layer_norm_eps;
  if (pre) {
    row_matrix<double> y = x + attn_sub(layer_norm_ref(x, d(p.norm1_gain), d(p.norm1_bias), eps));
    return y + ffn_sub(layer_norm_ref(y, d(p.norm2_gain), d(p.norm2_bias), eps));
  }
  row_matrix<double> y = layer_norm_ref(x + attn_sub(x), d(p.norm1_gain), d(p.norm1_bias), eps);
  return layer_norm_ref(y + ffn_sub(y), d(p.norm2_gain), d(p.norm2_bias), eps);
}

/// Non-trivial biases and gains, so the reference comparison exercises every parameter.
template <class Block>
void randomise_parameters(Block& block, std::uint64_t seed) {
  using T = typename Block::scalar_type;
  auto p = block.parameters();
  std::uint64_t s = seed;
  for (auto* v : {&p.b_q, &p.b_k, &p.b_v, &p.b_o, &p.norm1_bias, &p.norm2_bias, &p.b_ff1, &p.b_ff2}) {
    *v = random_matrix<T>(1, v->cols(), ++s, 0.1);
  }
  for (auto* g : {&p.norm1_gain, &p.norm2_gain}) {
    *g = random_matrix<T>(1, g->cols(), ++s, 0.2).array() + T(1);
  }
  block.set_parameters(p);
}

template <class T>
struct block_case : ::testing::Test {};
using scalars = ::testing::Types<float, double>;
TYPED_TEST_SUITE(block_case, scalars);

TYPED_TEST(block_case, MatchesIndependentReferenceInEveryArrangement) {
  using T = TypeParam;
  // float: projections and FFN sums of ~64 terms carry ~1e-6 relative rounding each.
  const double tol = std::is_same_v<T, float> ? 2e-5 : 1e-12;
  for (const auto norm : {performer::norm_placement::pre, performer::norm_placement::post}) {
    for (const auto act : {performer::activation::gelu, performer::activation::relu}) {
      for (const bool causal : {false, true}) {
        block_config cfg{.d_model = 32, .heads = 4, .d_ff = 48, .causal = causal, .norm = norm,
                         .ffn_activation = act};
        transformer_block<performer::softmax_attention<T>> block(cfg, {}, 7);
        randomise_parameters(block, 99);
        const auto x = random_matrix<T>(300, 32, 5);  // > 256 rows: the FFN runs in two blocks
        std::vector<std::uint8_t> keep(300, 1);
        keep[4] = keep[100] = keep[299] = 0;
        const auto y = block.forward(x, keep);
        const auto ref = block_ref(block.config(), block.parameters(), x.template cast<double>(), keep);
        EXPECT_LE(relative_difference(y.template cast<double>(), ref), tol)
            << "pre=" << (norm == performer::norm_placement::pre) << " relu="
            << (act == performer::activation::relu) << " causal=" << causal;
      }
    }
  }
}

TYPED_TEST(block_case, SameWeightsSameOutputWithEitherExactMechanism) {
  using T = TypeParam;
  const block_config cfg{.d_model = 64, .heads = 8, .causal = true};
  transformer_block<performer::softmax_attention<T>> plain(cfg, {}, 3);
  transformer_block<performer::tiled_softmax_attention<T>> tiled(cfg, performer::tiled_softmax_attention<T>(16, 32), 3);
  // Same seed, same parameters: initialisation does not depend on the mechanism.
  EXPECT_EQ(plain.parameters().w_q, tiled.parameters().w_q);
  EXPECT_EQ(plain.parameters().w_ff2, tiled.parameters().w_ff2);
  const auto x = random_matrix<T>(130, 64, 8);
  EXPECT_LE(relative_difference(plain.forward(x), tiled.forward(x)),
            (std::is_same_v<T, float> ? 1e-5 : 1e-13));
}

TEST(TransformerBlock, UserDefinedMechanismRunsInTheBlock) {
  const block_config cfg{.d_model = 16, .heads = 2, .d_ff = 24};
  transformer_block<performer::test::mean_attention<double>> block(cfg, {}, 11);
  randomise_parameters(block, 5);
  const auto x = random_matrix<double>(20, 16, 12);
  const auto y = block.forward(x);
  // Reference: the pre-LN block written out with uniform attention (every query gets the mean
  // of the values).
  auto p = block.parameters();
  const row_matrix<double> h = layer_norm_ref(x, p.norm1_gain, p.norm1_bias, cfg.layer_norm_eps);
  const row_matrix<double> v = (h * p.w_v).rowwise() + p.b_v;
  const Eigen::RowVectorXd mean_v = v.colwise().mean();
  row_matrix<double> ctx = mean_v.replicate(20, 1);
  row_matrix<double> r = x + row_matrix<double>((ctx * p.w_o).rowwise() + p.b_o);
  const row_matrix<double> h2 = layer_norm_ref(r, p.norm2_gain, p.norm2_bias, cfg.layer_norm_eps);
  row_matrix<double> a = (h2 * p.w_ff1).rowwise() + p.b_ff1;
  a = a.unaryExpr([](double z) { return 0.5 * z * (1.0 + std::erf(z / std::sqrt(2.0))); });
  r += row_matrix<double>((a * p.w_ff2).rowwise() + p.b_ff2);
  EXPECT_LE(relative_difference(y, r), 1e-12);
}

TEST(TransformerBlock, CausalBlockDoesNotLeakTheFuture) {
  const block_config cfg{.d_model = 32, .heads = 4, .causal = true};
  transformer_block<performer::tiled_softmax_attention<float>> block(cfg, performer::tiled_softmax_attention<float>(8, 8), 1);
  auto x = random_matrix<float>(40, 32, 2);
  const auto before = block.forward(x);
  x.row(25) *= 50.0F;
  const auto after = block.forward(x);
  EXPECT_EQ(before.topRows(25), after.topRows(25));
  EXPECT_GT(relative_difference(after.row(25), before.row(25)), 1e-3);
}

TEST(TransformerBlock, InitialisationIsSeededAndDeterministic) {
  const block_config cfg{.d_model = 16, .heads = 4};
  using block = transformer_block<performer::softmax_attention<float>>;
  const block a(cfg, {}, 42);
  const block b(cfg, {}, 42);
  const block c(cfg, {}, 43);
  EXPECT_EQ(a.parameters().w_k, b.parameters().w_k);
  EXPECT_EQ(a.parameters().w_ff1, b.parameters().w_ff1);
  EXPECT_NE(a.parameters().w_k, c.parameters().w_k);
  // Xavier-uniform bound sqrt(6 / (fan_in + fan_out)).
  EXPECT_LE(a.parameters().w_q.cwiseAbs().maxCoeff(), std::sqrt(6.0F / 32.0F));
  EXPECT_EQ(a.config().d_ff, 64);  // d_ff = 0 means 4 d_model
}

TEST(TransformerBlock, RejectsBadConfigurationAndInput) {
  using block = transformer_block<performer::softmax_attention<float>>;
  EXPECT_THROW(block({.d_model = 30, .heads = 4}, {}), performer::invalid_argument);
  EXPECT_THROW(block({.d_model = 0, .heads = 1}, {}), performer::invalid_argument);
  EXPECT_THROW(block({.d_model = 8, .heads = 0}, {}), performer::invalid_argument);
  EXPECT_THROW(block({.d_model = 8, .heads = 2, .d_ff = -1}, {}), performer::invalid_argument);
  EXPECT_THROW(block({.d_model = 8, .heads = 2, .layer_norm_eps = 0.0}, {}), performer::invalid_argument);
  block b({.d_model = 8, .heads = 2}, {});
  const row_matrix<float> empty(0, 8);
  EXPECT_THROW(static_cast<void>(b.forward(empty)), performer::invalid_argument);
  EXPECT_THROW(static_cast<void>(b.forward(random_matrix<float>(5, 7, 1))), performer::invalid_argument);
  const std::vector<std::uint8_t> short_mask(4, 1);
  EXPECT_THROW(static_cast<void>(b.forward(random_matrix<float>(5, 8, 1), short_mask)),
               performer::invalid_argument);
  auto x = random_matrix<float>(5, 8, 1);
  x(1, 1) = std::numeric_limits<float>::quiet_NaN();
  EXPECT_THROW(static_cast<void>(b.forward(x)), performer::invalid_argument);
  auto p = b.parameters();
  p.w_ff1.resize(8, 31);
  EXPECT_THROW(b.set_parameters(p), performer::invalid_argument);
  p = b.parameters();
  p.b_o(0) = std::numeric_limits<float>::infinity();
  EXPECT_THROW(b.set_parameters(p), performer::invalid_argument);
  try {
    block({.d_model = 30, .heads = 4}, {});
  } catch (const performer::invalid_argument& e) {
    EXPECT_STREQ(e.what(), "transformer_block: heads (4) does not divide d_model (30)");
  }
}

TEST(TransformerStack, EqualsItsBlocksAppliedInTurnThenTheFinalNorm) {
  const block_config cfg{.d_model = 16, .heads = 2, .causal = true};
  for (const index layers : {1, 2, 3}) {
    performer::transformer_stack<performer::softmax_attention<double>> stack(cfg, layers, performer::softmax_attention<double>{}, 9);
    const auto x = random_matrix<double>(12, 16, 4);
    row_matrix<double> h = x;
    for (index l = 0; l < layers; ++l) h = stack.layer(l).forward(h);
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
  for (const index layers : {1, 2}) {
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
  for (index i = 0; i < 2; ++i) {
    EXPECT_NEAR(y(i, 0), -r3, 1e-5F);
    for (index j = 1; j < 4; ++j) EXPECT_NEAR(y(i, j), 1.0F / r3, 1e-5F);
  }
}

}  // namespace
