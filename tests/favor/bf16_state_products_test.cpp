// Covers performer/favor/detail/bf16_state_products.hpp directly: value_scaling's exponent and
// factors, and the fold, the carried product and the chunk's scores against double sums of
// hand-rounded operands, within float's summation bound and farther than that bound from the
// unrounded sums (so the rounding is shown to happen in every product), at odd and even exponents
// and past float's exponent range (|e| > 126, where 2^e is not one float). Every backend; those
// this CPU lacks report themselves skipped.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <tuple>

#include <performer/core/detail/online_softmax.hpp>
#include <performer/favor/detail/bf16_state_products.hpp>

namespace performer::test {
// Named as well as anonymous: the unity build compiles several test files as one.
namespace favor_bf16_state_products_test {
namespace {

using detail::bf16::state_products;
using detail::bf16::value_scaling;

constexpr double float_eps = 0x1p-24;  // float's unit roundoff
constexpr double smallest_subnormal = 0x1p-149;

double rounded(float x) { return detail::bf16::widen(detail::bf16::round(x)); }

row_matrix<float> uniform(index_t rows, index_t cols, float lo, float hi, unsigned seed) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  return row_matrix<float>::NullaryExpr(rows, cols, [&] { return dist(gen); });
}

/// Values whose largest magnitude is 0.75 2^e, in [2^(e - 1), 2^e): value_scaling must find e.
row_matrix<float> values_of_exponent(index_t rows, index_t cols, int e, unsigned seed) {
  row_matrix<float> v = uniform(rows, cols, -0.7f, 0.7f, seed);
  v(rows / 2, cols / 2) = -0.75f;
  return v.unaryExpr([e](float x) { return std::ldexp(x, e); });
}

TEST(Bf16ValueScaling, BringsTheLargestValueIntoAHalfToOneInTwoNormalFactors) {
  for (const int e : {-148, -129, -127, -126, -4, 0, 1, 5, 126, 127, 128}) {
    // The largest magnitude is 2^(e - 1) itself for e = -148 (the smallest subnormal).
    const row_matrix<float> v = e == -148
                                    ? row_matrix<float>::Constant(2, 3, std::ldexp(1.0f, -149))
                                    : values_of_exponent(4, 3, e, 3);
    const value_scaling s(v);
    EXPECT_EQ(s.exponent, e);
    const double largest = std::ldexp(static_cast<double>(v.cwiseAbs().maxCoeff()), -s.exponent);
    EXPECT_GE(largest, 0.5) << e;
    EXPECT_LT(largest, 1.0) << e;
    for (const float f : {s.down[0], s.down[1], s.up[0], s.up[1]}) {
      EXPECT_TRUE(std::isnormal(f)) << e << ": factor " << f;
    }
    EXPECT_EQ(static_cast<double>(s.down[0]) * s.down[1], std::ldexp(1.0, -e));
    EXPECT_EQ(static_cast<double>(s.up[0]) * s.up[1], std::ldexp(1.0, e));
  }
  const value_scaling zero(row_matrix<float>::Zero(2, 2));
  EXPECT_EQ(zero.exponent, 0);
  EXPECT_EQ(zero.up[0] * zero.up[1], 1.0f);
}

/// A float sum computed in n roundings from `start` (each term an exact product of two bfloat16
/// values) is within n 2^-24 (|start| + sum |term|) of the exact sum: every partial sum is below
/// that total and rounds once.
struct exact_sum {
  double value = 0.0;
  double magnitude = 0.0;
  double unrounded = 0.0;  // the same sum from the operands before rounding

  void add(double rounded_term, double unrounded_term) {
    value += rounded_term;
    magnitude += std::fabs(rounded_term);
    unrounded += unrounded_term;
  }
};

class Bf16StateProducts : public ::testing::TestWithParam<std::tuple<bf16_backend, int>> {
 protected:
  void SetUp() override {
    if (!bf16_available(backend())) {
      GTEST_SKIP() << "this CPU or OS does not run bf16_backend::" << bf16_name(backend());
    }
  }
  [[nodiscard]] bf16_backend backend() const { return std::get<0>(GetParam()); }
  [[nodiscard]] int exponent() const { return std::get<1>(GetParam()); }

  // Past 32 features and 16 values: an AMX tile's and an AVX-512 register's edges; odd counts
  // leave a half-empty last pair.
  static constexpr index_t m = 37;
  static constexpr index_t d_v = 17;

  double worst_rounding_ = 0.0;  // the largest |result - unrounded sum| / bound seen
};

// Two chunks folded in turn, 7 keys (an odd last pair) then 8 with a higher shift, so the second
// fold first rescales the state. Each fold is checked against the state it started from.
TEST_P(Bf16StateProducts, FoldSumsTheRoundedWeightedKeysTimesTheRoundedScaledValues) {
  const row_matrix<float> v = values_of_exponent(15, d_v, exponent(), 11);
  const state_products products{backend(), value_scaling(v)};
  row_matrix<float> phi = uniform(15, m, 0.01f, 0.3f, 12);  // the fold takes addresses of rows
  const vector<float> log_k = uniform(15, 1, -2.0f, 1.0f, 13);
  favor_state<float> st;
  st.reset(m, d_v);
  for (const auto& [k0, keys, c] : {std::tuple{0, 7, 1.5f}, std::tuple{7, 8, 2.5f}}) {
    favor_state<float> before = st;
    before.raise(c);
    products.fold(phi.middleRows(k0, keys), log_k.segment(k0, keys), v.middleRows(k0, keys), st, c);
    ASSERT_EQ(st.shift, c);
    for (index_t f = 0; f < m; ++f) {
      exact_sum z;
      z.add(before.norm(f), before.norm(f));
      for (index_t l = 0; l <= d_v; ++l) {
        exact_sum s;
        if (l < d_v) s.add(before.sum(f, l), before.sum(f, l));
        for (index_t j = k0; j < k0 + keys; ++j) {
          const float weight = detail::shifted_exp(log_k(j), c);
          const float weighted = phi(j, f) * weight;
          if (l == d_v) {
            z.add(rounded(weighted), weighted);
            continue;
          }
          const double scaled = std::ldexp(static_cast<double>(v(j, l)), -exponent());
          s.add(rounded(weighted) * rounded(static_cast<float>(scaled)), weighted * scaled);
        }
        const exact_sum& want = l < d_v ? s : z;
        const double got = l < d_v ? st.sum(f, l) : st.norm(f);
        // z takes two roundings per pair of keys (the pair's sum, then the running sum).
        const double bound = static_cast<double>(keys + 2) * float_eps * want.magnitude;
        ASSERT_LE(std::fabs(got - want.value), bound)
            << "keys from " << k0 << ", feature " << f << ", column " << l;
        worst_rounding_ = std::max(worst_rounding_, std::fabs(got - want.unrounded) / bound);
      }
    }
  }
  // Rounding the operands moves the sums by about 2^-9 of a term, far past float's bound.
  EXPECT_GT(worst_rounding_, 10.0);
}

// phi(Q) [S z] with [S z] as the fold leaves it (scaled values), num scaled back by 2^e: 33 rows,
// one past an AMX block of 32.
TEST_P(Bf16StateProducts, CarriedMultipliesTheRoundedQueriesByTheRoundedState) {
  const state_products products{backend(),
                                value_scaling(values_of_exponent(3, d_v, exponent(), 21))};
  favor_state<float> carried;
  carried.sum = uniform(m, d_v, -0.05f, 0.05f, 22);
  carried.norm = uniform(m, 1, 0.5f, 2.0f, 23);
  carried.shift = 0.25f;
  const row_matrix<float> phi_q = uniform(33, m, 0.01f, 0.3f, 24);
  row_matrix<float> num(33, d_v);
  vector<float> den(33);
  products.carried(phi_q, carried, num, den);
  for (index_t i = 0; i < phi_q.rows(); ++i) {
    for (index_t l = 0; l <= d_v; ++l) {
      exact_sum s;
      for (index_t f = 0; f < m; ++f) {
        const float right = l < d_v ? carried.sum(f, l) : carried.norm(f);
        s.add(rounded(phi_q(i, f)) * rounded(right), static_cast<double>(phi_q(i, f)) * right);
      }
      const double unit = l < d_v ? std::ldexp(1.0, exponent()) : 1.0;
      const double got = l < d_v ? num(i, l) : den(i);
      // Scaling back by 2^e is exact unless the result is subnormal: half a subnormal step.
      const double bound =
          static_cast<double>(m + 1) * float_eps * s.magnitude * unit + smallest_subnormal / 2;
      ASSERT_LE(std::fabs(got - s.value * unit), bound) << "row " << i << ", column " << l;
      worst_rounding_ = std::max(worst_rounding_, std::fabs(got - s.unrounded * unit) / bound);
    }
  }
  EXPECT_GT(worst_rounding_, 10.0);
}

// A chunk's scores phi(Q_c) phi(K_c)^T, both rounded, into a block of a larger matrix (as the
// causal pass's lane holds them): 33 queries, one past an AMX block of 32, by 35 keys, two 16 x 16
// blocks of the keys' transpose and an edge of 3 (and of 3 pairs of features past 16).
TEST_P(Bf16StateProducts, ScoresMultiplyTheRoundedQueriesByTheRoundedKeys) {
  const state_products products{backend(),
                                value_scaling(values_of_exponent(3, d_v, exponent(), 31))};
  const row_matrix<float> phi_q = uniform(33, m, 0.01f, 0.3f, 32);
  const row_matrix<float> phi_k = uniform(35, m, 0.01f, 0.3f, 33);
  row_matrix<float> scores = row_matrix<float>::Constant(40, 40, -1.0f);
  auto block = scores.topLeftCorner(33, 35);
  products.scores(phi_q, phi_k, block);
  for (index_t i = 0; i < 33; ++i) {
    for (index_t j = 0; j < 35; ++j) {
      exact_sum s;
      for (index_t f = 0; f < m; ++f) {
        s.add(rounded(phi_q(i, f)) * rounded(phi_k(j, f)),
              static_cast<double>(phi_q(i, f)) * phi_k(j, f));
      }
      // Pairs of features, each pair two roundings; an odd m adds a zero product.
      const double bound = static_cast<double>(m + 1) * float_eps * s.magnitude;
      ASSERT_LE(std::fabs(block(i, j) - s.value), bound) << "query " << i << ", key " << j;
      worst_rounding_ = std::max(worst_rounding_, std::fabs(block(i, j) - s.unrounded) / bound);
    }
  }
  EXPECT_EQ(scores.rightCols(5).minCoeff(), -1.0f);  // nothing written past the block
  EXPECT_EQ(scores.rightCols(5).maxCoeff(), -1.0f);
  EXPECT_EQ(scores.bottomRows(7).maxCoeff(), -1.0f);
  EXPECT_GT(worst_rounding_, 10.0);
}

INSTANTIATE_TEST_SUITE_P(
    BackendsAndExponents, Bf16StateProducts,
    ::testing::Combine(::testing::Values(bf16_backend::portable, bf16_backend::avx512_bf16,
                                         bf16_backend::amx),
                       // odd and even; 128 and -129 need two factors for 2^-e and 2^e
                       ::testing::Values(-129, -4, 0, 5, 128)),
    [](const auto& info) {
      const int e = std::get<1>(info.param);
      return std::string(bf16_name(std::get<0>(info.param))) + "_e" +
             (e < 0 ? "minus" + std::to_string(-e) : std::to_string(e));
    });

}  // namespace
}  // namespace favor_bf16_state_products_test
}  // namespace performer::test
