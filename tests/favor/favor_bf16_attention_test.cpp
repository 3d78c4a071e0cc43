// Covers performer/favor/favor_bf16_attention.hpp: the reusable suites (conformance, bad
// input, determinism, extreme values' contract) on the portable backend and on the one this CPU
// picks; its error against exact attention in double next to float FAVOR+'s with the same
// projection; a bound on its distance from float FAVOR+ run on the same rounded inputs; the
// backends against each other (the fast ones report themselves skipped where the CPU lacks them).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include <performer/favor/favor_attention.hpp>
#include <performer/favor/favor_bf16_attention.hpp>
#include <performer/softmax/softmax_attention.hpp>
#include <performer/testing/bad_input.hpp>
#include <performer/testing/conformance.hpp>
#include <performer/testing/determinism.hpp>
#include <performer/testing/extreme_values.hpp>
#include <performer/testing/helpers.hpp>

#include "support/bf16.hpp"

namespace performer::test {
// Named as well as anonymous: the unity build compiles several test files as one.
namespace favor_bf16_attention_test {
namespace {

using bf16_favor = favor_bf16_attention<>;

/// Causal attention on the layout of the suites' maker: blocks of 16 in waves of 3, chunks of 4,
/// on several threads however small the blocks.
/// Chunks of 5 in blocks of 16 (5, 5, 5, 1): odd chunks, whose last key has no partner in the
/// fold's pairs of keys, are folded into states that later chunks read.
constexpr favor_options causal_layout{
    .block = 16, .chunk = 5, .wave_blocks = 3, .parallel_block_work = 1};

/// Blocks of 7 tokens and segments of at least 4: the suites' short sequences are cut into
/// ragged blocks and split into segments, as long ones are.
template <bf16_backend Backend>
struct bf16_maker {
  using attention_type = bf16_favor;
  static constexpr std::string_view forward_name = "favor_bf16_attention::forward";
  static constexpr bool fixed_head_width = true;
  // Invariances that re-block the keys (padding, permutation) change each key's weight
  // relative to its block's maximum before it is rounded, so results move by bfloat16's
  // rounding, not float's: each run is within rounding_bound() max|v| (0.0239; see
  // StaysWithinTheRoundingBoundOfFloatFavor) of float FAVOR+, so two runs within twice that,
  // and the suites' values are at most 1 in size: 0.05.
  static constexpr double tolerance = 5e-2;
  static attention_type make(index_t head_dim) {
    return attention_type(
        head_dim, 64, /*seed=*/7, {}, {},
        {.block = 7, .segments = 2, .min_segment = 4, .backend = Backend, .causal = causal_layout});
  }
  static std::vector<conformance::overflow_input<float>> overflow_inputs(attention_type& /*a*/,
                                                                         index_t head_dim,
                                                                         index_t d_v) {
    return conformance::logit_overflow_inputs<float>(head_dim, d_v);
  }
};

using bf16_makers =
    ::testing::Types<bf16_maker<bf16_backend::portable>, bf16_maker<bf16_backend::automatic>>;

/// Entries uniform in [-0.5, 0.5], the benchmarks' inputs (bench/workloads.hpp), where FAVOR+
/// approximates softmax well (docs/algorithms.md §5.7).
row_matrix<float> uniform(index_t n, index_t d, std::uint64_t seed) {
  return conformance::random_matrix<float>(n, d, seed, 0.5);
}

/// Relative Frobenius error of out against the double reference.
double error_against(const row_matrix<float>& out, const row_matrix<double>& exact) {
  return (out.cast<double>() - exact).norm() / exact.norm();
}

template <class A>
row_matrix<float> run(const A& a, const row_matrix<float>& q, const row_matrix<float>& k,
                      const row_matrix<float>& v, const attention_mask& mask = {}) {
  typename A::workspace_type ws;
  row_matrix<float> out(q.rows(), v.cols());
  a.forward(q, k, v, out, mask, ws);
  return out;
}

// A macro, not a function: GTEST_SKIP returns from the function it is written in, so a helper
// would let the test body go on (and throw) on a CPU without the backend.
#define SKIP_UNLESS_AVAILABLE(b)                                                   \
  if (!bf16_available(b))                                                          \
  GTEST_SKIP() << "this CPU or OS does not run bf16_backend::" << bf16_name(b)

constexpr index_t n = 1024, d = 64, m = 256;
const attention_mask causal{true, {}};

class FavorBf16 : public ::testing::TestWithParam<bf16_backend> {};

// The target: bfloat16's error against exact attention within 0.005 of float's, at m =
// 256, both with the projection of one seed; bidirectional and causal.
TEST_P(FavorBf16, ErrorAgainstExactIsWithinHalfAPercentOfFloats) {
  SKIP_UNLESS_AVAILABLE(GetParam());
  const auto q = uniform(n, d, 1), k = uniform(n, d, 2), v = uniform(n, d, 3);
  for (const attention_mask& mask : {attention_mask{}, causal}) {
    row_matrix<double> exact(n, d);
    softmax_attention<double>::workspace_type sws;
    softmax_attention<double>{}.forward(q.cast<double>(), k.cast<double>(), v.cast<double>(), exact,
                                        mask, sws);
    const double float_error =
        error_against(run(favor_attention<float>(d, m, 5), q, k, v, mask), exact);
    const double bf16_error = error_against(
        run(bf16_favor(d, m, 5, {}, {}, {.backend = GetParam()}), q, k, v, mask), exact);
    EXPECT_LE(std::abs(bf16_error - float_error), 0.005)
        << "causal " << mask.causal << ": float " << float_error << ", bfloat16 " << bf16_error;
    EXPECT_LT(float_error, 0.5) << "the reference comparison is meaningless";
  }
}

// Float FAVOR+ on the same rounded q, k, v and W computes the same estimator; what differs is
// the rounding of the weighted key features, the query features and [S z]: three factors of
// each term of num and den, and the exponentials of its two features (bf16::exp_row), so every
// output is within rounding_bound() max|v| (2 delta / (1 - delta),
// delta = (1 + e_exp)^2 (1 + 2^-8)^3 - 1: 0.0239 max|v|, tests/support/bf16.hpp), a little more
// for the order of the projections' sums (projection_order_eps), plus float's own rounding
// (1e-5).
TEST_P(FavorBf16, StaysWithinTheRoundingBoundOfFloatFavor) {
  SKIP_UNLESS_AVAILABLE(GetParam());
  struct shape {
    index_t n, d, d_v, m, block;
  };
  // The shape; then odd widths, depths and feature counts, one token, d_v = 1 and
  // d_v = 65 (a partial last column register or AMX tile everywhere), ragged blocks.
  for (const shape s : {shape{n, d, d, m, 100}, shape{1, 3, 1, 5, 7}, shape{37, 5, 3, 33, 8},
                        shape{300, 17, 40, 31, 64}, shape{130, 64, 65, 256, 512}}) {
    const auto q = rounded(uniform(s.n, s.d, 1)), k = rounded(uniform(s.n, s.d, 2)),
               v = rounded(uniform(s.n, s.d_v, 3));
    bf16_favor a(s.d, s.m, 5, {}, {}, {.block = s.block, .backend = GetParam()});
    favor_attention<float> f(s.d, s.m, 5);
    f.projection().set_matrix(rounded(f.projection().matrix()));
    const row_matrix<float> ours = run(a, q, k, v), theirs = run(f, q, k, v);
    // The projections' summation order moves a kernel value by a factor within exp(+-e), as in
    // CausalStaysWithinTheRoundingBoundOfFloatCausalFavor.
    const double e = projection_order_eps(q, k, f.projection().matrix());
    const double bound = (rounding_bound(e) + 1e-5) * v.cwiseAbs().maxCoeff();
    const double worst = (ours - theirs).cwiseAbs().maxCoeff();
    EXPECT_LE(worst, bound) << "n " << s.n << " d " << s.d << " d_v " << s.d_v << " m " << s.m;
    // Rounding must show: an implementation that kept float features would pass the bound
    // trivially, and so would this test of it. (One token's output is its own value: exact.)
    if (s.n > 1) {
      EXPECT_GT(worst, 1e-6) << "n " << s.n << " d " << s.d << " m " << s.m;
    }
  }
}

// The causal path is float FAVOR+'s causal pass on bf16_projection's features, with the fold
// of each chunk's keys into the state and the carried product phi(Q_c) [S z] in bfloat16. Run
// on the same rounded q, k, v and W, and the same layout, float causal FAVOR+ differs in two
// ways. (1) The order the projections' exact bfloat16 products are summed: each projection x.w
// moves by at most gamma = d 2^-24 sum_i |x_i w_i| (a float sum of d terms), each exponent
// (x.w - max) s by 2 s gamma, a feature by a factor within exp(+-2 s gamma), and a kernel value
// phi(q).phi(k) by a factor within exp(+-e), e = 4 s gamma. (2) In the carried product, each
// term of num and den has three factors rounded to bfloat16 (the query feature, the weighted
// key feature, [S z]), as in StaysWithinTheRoundingBoundOfFloatFavor, and two features from
// bf16::exp_row. So every term moves by at most delta = exp(e) (1 + e_exp)^2 (1 + 2^-8)^3 - 1
// of itself (tests/support/bf16.hpp), and each output by 2 delta / (1 - delta) max|v|, plus
// float's own rounding of the sums (1e-5 max|v| is far above it at these sizes).
TEST_P(FavorBf16, CausalStaysWithinTheRoundingBoundOfFloatCausalFavor) {
  SKIP_UNLESS_AVAILABLE(GetParam());
  struct shape {
    index_t n, d, d_v, m;
  };
  for (const shape s :
       {shape{n, d, d, m}, shape{1, 3, 1, 5}, shape{37, 5, 3, 33}, shape{300, 17, 40, 31}}) {
    const auto q = rounded(uniform(s.n, s.d, 1)), k = rounded(uniform(s.n, s.d, 2)),
               v = rounded(uniform(s.n, s.d_v, 3));
    const bf16_favor a(s.d, s.m, 5, {}, {}, {.backend = GetParam(), .causal = causal_layout});
    favor_attention<float> f(s.d, s.m, 5, {}, {}, causal_layout);
    const row_matrix<float> w = rounded(f.projection().matrix());
    ASSERT_TRUE(w == rounded(a.projection().matrix())) << "one seed, one projection";
    f.projection().set_matrix(w);
    const row_matrix<float> ours = run(a, q, k, v, causal), theirs = run(f, q, k, v, causal);
    const double e = projection_order_eps(q, k, w);
    const double v_max = v.cwiseAbs().maxCoeff();
    const double worst = (ours - theirs).cwiseAbs().maxCoeff();
    EXPECT_LE(worst, (rounding_bound(e) + 1e-5) * v_max)
        << "n " << s.n << " d " << s.d << " d_v " << s.d_v << " m " << s.m;
    // Against the same pass with float products on the same features (causal_type, whose
    // projection is the same bfloat16 product): only (2) is left, and past the first chunk,
    // where the carried product starts, it must show.
    const bf16_favor::causal_type same_features(s.d, s.m, 5, bf16_projection<>({}, GetParam()), {},
                                                causal_layout);
    const double rounding_only = (ours - run(same_features, q, k, v, causal)).cwiseAbs().maxCoeff();
    EXPECT_LE(rounding_only, (rounding_bound() + 1e-5) * v_max) << "n " << s.n;
    if (s.n > causal_layout.chunk) {
      EXPECT_GT(rounding_only, 1e-6) << "n " << s.n;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Backends, FavorBf16,
                         ::testing::Values(bf16_backend::portable, bf16_backend::avx512_bf16,
                                           bf16_backend::amx),
                         [](const auto& info) { return std::string(bf16_name(info.param)); });

/// One input for the backends to agree on: 300 queries over 500 keys, or causal, 500 tokens.
struct backend_case {
  row_matrix<float> q, k, v;
  attention_mask mask;

  explicit backend_case(bool is_causal)
      : q(uniform(is_causal ? 500 : 300, d, 1)),
        k(uniform(500, d, 2)),
        v(uniform(500, 40, 3)),
        mask{is_causal, {}} {}

  [[nodiscard]] row_matrix<float> with(bf16_backend b) const {
    return run(bf16_favor(d, m, 5, {}, {}, {.backend = b, .causal = causal_layout}), q, k, v, mask);
  }
};

// AVX512-BF16 sums in the portable code's order: the same bits.
TEST(FavorBf16Backends, Avx512Bf16GivesThePortableBits) {
  SKIP_UNLESS_AVAILABLE(bf16_backend::avx512_bf16);
  for (const bool is_causal : {false, true}) {
    const backend_case c(is_causal);
    EXPECT_TRUE(c.with(bf16_backend::portable) == c.with(bf16_backend::avx512_bf16))
        << "causal " << is_causal;
  }
}

// AMX sums in an order of its own: the same estimate within the rounding bounds.
TEST(FavorBf16Backends, AmxMatchesPortableWithinTheRoundingBound) {
  SKIP_UNLESS_AVAILABLE(bf16_backend::amx);
  for (const bool is_causal : {false, true}) {
    const backend_case c(is_causal);
    const auto portable = c.with(bf16_backend::portable), amx = c.with(bf16_backend::amx);
    // Both are within rounding_bound(e) max|v| of float FAVOR+ on the rounded inputs (e from
    // the projections' summation order, as in CausalStaysWithinTheRoundingBoundOfFloatCausalFavor),
    // so within twice that of each other; an AMX tile that summed the wrong operands would be
    // off by the values' size.
    const double e =
        projection_order_eps(c.q, c.k, rounded(bf16_favor(d, m, 5).projection().matrix()));
    EXPECT_LE((portable - amx).cwiseAbs().maxCoeff(),
              2.0 * (rounding_bound(e) + 1e-5) * c.v.cwiseAbs().maxCoeff())
        << "causal " << is_causal;
    EXPECT_FALSE(portable == amx) << "AMX's own summation order should show in some bits";
  }
}

TEST(FavorBf16Backends, UnavailableBackendIsRefusedAtConstruction) {
  for (const bf16_backend b : {bf16_backend::avx512_bf16, bf16_backend::amx}) {
    if (bf16_available(b)) {
      EXPECT_EQ(bf16_favor(d, m, 5, {}, {}, {.backend = b}).options().backend, b);
    } else {
      PERFORMER_EXPECT_INVALID("bf16_resolve", "does not run it",
                               bf16_favor(d, m, 5, {}, {}, {.backend = b}));
    }
  }
  EXPECT_EQ(bf16_favor(d, m).options().backend, bf16_resolve(bf16_backend::automatic));
}

TEST(FavorBf16BadInput, RefusesBadOptions) {
  PERFORMER_EXPECT_INVALID("favor_bf16_attention", "block (0)",
                           bf16_favor(d, 16, 0, {}, {}, {.block = 0}));
  PERFORMER_EXPECT_INVALID("favor_bf16_attention", "segments (0)",
                           bf16_favor(d, 16, 0, {}, {}, {.segments = 0}));
  PERFORMER_EXPECT_INVALID("favor_bf16_attention", "min_segment (-1)",
                           bf16_favor(d, 16, 0, {}, {}, {.min_segment = -1}));
  PERFORMER_EXPECT_INVALID("bf16_projection", "one feature per projection (M = m), not 32",
                           favor_bf16_attention<doubled_features>(d, 16));
  // The causal layout is favor_attention's, checked by it.
  PERFORMER_EXPECT_INVALID("favor_attention", "chunk (0)",
                           bf16_favor(d, 16, 0, {}, {}, {.causal = {.chunk = 0}}));
}

// A finite key can round to infinity (bfloat16's largest is below float's): that is an
// overflow, reported as the result's, not as a non-finite input.
TEST(FavorBf16BadInput, AFiniteKeyThatRoundsToInfinityIsAnOverflow) {
  const auto q = uniform(64, d, 1), v = uniform(64, d, 3);
  auto k = uniform(64, d, 2);
  k(37, 5) = std::numeric_limits<float>::max();
  ASSERT_TRUE(std::isinf(detail::bf16::widen(detail::bf16::round(k(37, 5)))));
  for (const attention_mask& mask : {attention_mask{}, causal}) {
    PERFORMER_EXPECT_INVALID("favor_bf16_attention::forward", "the result overflowed",
                             (void)run(bf16_favor(d, m, 5), q, k, v, mask));
  }
}

}  // namespace
}  // namespace favor_bf16_attention_test
}  // namespace performer::test

namespace performer::conformance {
using performer::test::favor_bf16_attention_test::bf16_makers;
INSTANTIATE_TYPED_TEST_SUITE_P(favor_bf16, attention_conformance, bf16_makers);
INSTANTIATE_TYPED_TEST_SUITE_P(favor_bf16, attention_bad_input, bf16_makers);
INSTANTIATE_TYPED_TEST_SUITE_P(favor_bf16, attention_determinism, bf16_makers);
INSTANTIATE_TYPED_TEST_SUITE_P(favor_bf16, attention_extreme_values, bf16_makers);
}  // namespace performer::conformance

#undef SKIP_UNLESS_AVAILABLE  // the favor tests build in unity batches: keep it to this file
