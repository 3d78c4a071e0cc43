// Covers performer/nn/transformer_block.hpp and nn/layers.hpp: the block against an independent
// double reference built from its own parameters (every arrangement: pre/post-LN, GELU/ReLU,
// causal, padding), the same weights with each exact mechanism, a user-written mechanism,
// causality, seeded initialisation and bad configuration.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include <performer/performer.hpp>
#include <performer/testing/counting_allocator.hpp>
#include <performer/testing/helpers.hpp>
#include <performer/testing/oracle.hpp>

#include "instances/instances.hpp"

#include "nn/block_reference.hpp"
#include "window_attention.hpp"

// Named as well as anonymous: the unity build compiles several test files as one.
namespace nn_transformer_block_test {
namespace {

using performer::block_config;
using performer::index_t;
using performer::row_matrix;
using performer::transformer_block;
using performer::conformance::random_matrix;
using performer::conformance::relative_difference;
using performer::test::block_ref;
using performer::test::layer_norm_ref;
using performer::test::randomise_parameters;

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

// Rotary embedding inside the block: q and k rotated after their projections. Tolerances as
// above (the rotation adds two rounded products per entry).
TYPED_TEST(block_case, RotaryMatchesIndependentReference) {
  using T = TypeParam;
  const double tol = std::is_same_v<T, float> ? 2e-5 : 1e-12;
  for (const auto pairs : {performer::rotary_pairing::half, performer::rotary_pairing::interleaved}) {
    for (const bool causal : {false, true}) {
      const block_config cfg{.d_model = 32, .heads = 4, .d_ff = 48, .causal = causal,
                             .rotary = true, .rotary_base = 100.0, .rotary_pairs = pairs};
      transformer_block<performer::softmax_attention<T>> block(cfg, {}, 7);
      randomise_parameters(block, 98);
      const auto x = random_matrix<T>(40, 32, 6);
      const auto y = block.forward(x);
      const auto ref = block_ref(block.config(), block.parameters(), x.template cast<double>());
      EXPECT_LE(relative_difference(y.template cast<double>(), ref), tol) << "causal " << causal;
      // And it is not the block without rotation.
      block_config plain = cfg;
      plain.rotary = false;
      EXPECT_GT(relative_difference(y.template cast<double>(),
                                    block_ref(plain, block.parameters(), x.template cast<double>())),
                1e-3);
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
  // A window wider than the sequence: the user's mechanism is then exact attention.
  transformer_block<window_attention<double>> block(cfg, window_attention<double>(100), 11);
  randomise_parameters(block, 5);
  const auto x = random_matrix<double>(20, 16, 12);
  const auto y = block.forward(x);
  // Reference: the pre-LN block written out with the oracle's exact attention per head.
  auto p = block.parameters();
  const row_matrix<double> h = layer_norm_ref(x, p.norm1_gain, p.norm1_bias, cfg.layer_norm_eps);
  const row_matrix<double> q = (h * p.w_q).rowwise() + p.b_q;
  const row_matrix<double> k = (h * p.w_k).rowwise() + p.b_k;
  const row_matrix<double> v = (h * p.w_v).rowwise() + p.b_v;
  row_matrix<double> ctx(20, 16);
  for (index_t head = 0; head < 2; ++head) {
    ctx.middleCols(head * 8, 8) = performer::oracle::softmax_attention(
        q.middleCols(head * 8, 8), k.middleCols(head * 8, 8), v.middleCols(head * 8, 8));
  }
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

// One block with FAVOR+ at N = 8,192 (d_model 256, 4 heads of 64): O(N d_model) for the
// block's own buffers, never N x N (256 MiB in float here), and one head's q, k, v and context
// at a time: N d_model + 4 N d_model / h, where projecting every head at once held 5 N d_model
// (on this project's machine: a peak of 20.1 MB against a bound of 20.3 on one thread, 23.1
// against 23.6 on two; projecting every head at once peaked at 45.1 and 48.1 MB).
TEST(TransformerBlock, PeakMemoryIsLinearInN) {
  if (!performer::counting::available) GTEST_SKIP() << "no counting allocator in this build";
  using T = float;
  constexpr index_t n = 8192;
  constexpr index_t d_model = 256;
  constexpr index_t heads = 4;
  constexpr index_t dh = d_model / heads;
  constexpr index_t d_ff = 4 * d_model;
  constexpr index_t ffn_rows = 256;  // transformer_block's feed-forward row block
  constexpr index_t m = 256;
  constexpr long long bytes = sizeof(T);
  Eigen::setNbThreads(1);
  const row_matrix<T> x = random_matrix<T>(n, d_model, 8);
  row_matrix<T> y(n, d_model);
  const performer::favor_attention<T> favor(d_model / heads, m, 7);
  const transformer_block<performer::favor_attention<T>> block(
      {.d_model = d_model, .heads = heads, .d_ff = d_ff}, favor, 9);
  const auto u = performer::counting::measure_heap([&] {
    decltype(block)::workspace_type ws;
    block.forward(x, y, {}, ws);
  });
  // normed (N x d_model), one head's q, k, v and context (N x dh each) and weights (d_model x 3
  // dh), the key states (2 (M d_v + M) scalars); then per lane (one per thread: the feed-forward's
  // row blocks and the attention's query blocks run in parallel), the feed-forward's normed and
  // hidden rows (ffn_rows x (d_model + d_ff)), the attention's scratch at head width 64
  // (favor/makers.hpp counts it field by field; bounded here by 2 B M + B d_v + C^2 + 6 B scalars,
  // B = 256, C = 32), Eigen's packing buffers for the largest of the products a lane runs, whose
  // size Eigen's blocking heuristic sets from this CPU's caches (hundreds of KB on a Xeon with 2
  // MiB of L2), and 256 KiB for smaller buffers (the figures in the comment above: 0.2 MB of slack
  // on one thread, 0.5 MB on two).
  const index_t lanes = performer::detail::lanes_for(n / ffn_rows);
  const auto packing = [&](index_t rows, index_t depth, index_t cols) {
    Eigen::Index kc = depth, mc = rows, nc = cols;
    Eigen::internal::computeProductBlockingSizes<T, T>(kc, mc, nc, Eigen::Index{1});
    return static_cast<long long>(kc * (mc + nc)) * bytes;
  };
  const long long packings =
      std::max({packing(n, d_model, 3 * dh), packing(n, dh, d_model),
                packing(ffn_rows, d_model, d_ff),
                packing(ffn_rows, d_ff, d_model), packing(256, 64, m), packing(m, 256, 64),
                packing(256, m, 64)});
  const long long per_lane = ffn_rows * (d_model + d_ff) * bytes +
                             (2 * 256 * m + 256 * 64 + 32 * 32 + 6 * 256) * bytes + packings +
                             (256LL << 10);
  const long long bound =
      (n * d_model + 4 * n * dh + 3 * d_model * dh) * bytes + 2 * (m * 64 + m) * bytes +
      lanes * per_lane;
  ASSERT_LT(bound, n * n * bytes / 8);
  EXPECT_LE(u.peak, bound) << u.peak << " bytes at peak on " << lanes << " lanes (" << packings
                           << " bytes of packing per lane)";
  EXPECT_TRUE(y.allFinite());
}

// A workspace serves forward() after forward() without reallocating: forward() keeps one head's
// buffers apart from the all-heads ones that cross-attention needs, so neither resizes the other.
// Eigen's own split of a large product over threads allocates its blocks on every call (12 and
// 18 allocations in three warm calls here on two threads), so it is off, as in the peak-memory
// test above.
TEST(TransformerBlock, WarmForwardAllocatesNothing) {
  if (!performer::counting::available) GTEST_SKIP() << "no counting allocator in this build";
  using favor = performer::favor_attention<float>;
  const int eigen_threads = Eigen::nbThreads();
  Eigen::setNbThreads(1);
  const row_matrix<float> x = random_matrix<float>(300, 32, 4);
  const row_matrix<float> memory = random_matrix<float>(40, 32, 5);
  row_matrix<float> y(300, 32);
  for (const bool cross : {false, true}) {
    const transformer_block<favor> block(
        {.d_model = 32, .heads = 4, .d_ff = 48, .cross_attention = cross}, favor(8, 16, 3), 6);
    decltype(block)::workspace_type ws;
    const auto run = [&] {
      if (cross) {
        block.forward(x, memory, y, {}, {}, ws);
      } else {
        block.forward(x, y, {}, ws);
      }
    };
    run();
    const auto usage = performer::counting::measure_heap([&] {
      for (int i = 0; i < 3; ++i) run();
    });
    EXPECT_EQ(usage.allocations, 0U) << "cross-attention " << cross;
  }
  Eigen::setNbThreads(eigen_threads);
}

}  // namespace
}  // namespace nn_transformer_block_test
