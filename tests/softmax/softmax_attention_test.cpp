// Covers performer/softmax/softmax_attention.hpp and tiled_softmax_attention.hpp: both against
// the independent long double reference, in float and double, with and without masks, self- and
// cross-attention, every tile shape, and extreme logits. The shared contract (conformance,
// determinism, allocation) is in conformance_test.cpp and its siblings.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include <performer/core/attend.hpp>
#include <performer/testing/helpers.hpp>

#include <performer/testing/oracle.hpp>

#include "softmax/makers.hpp"

// Named as well as anonymous: the unity build compiles several test files as one.
namespace softmax_softmax_attention_test {
namespace {

using performer::attention_mask;
using performer::index_t;
using performer::row_matrix;
using performer::conformance::random_matrix;
using performer::conformance::relative_difference;
using performer::conformance::run;

template <class T>
struct exact_case : ::testing::Test {};
using scalars = ::testing::Types<float, double>;
TYPED_TEST_SUITE(exact_case, scalars);

// Tolerance against the double reference: double kernels differ from it only by rounding
// (~1e-15 per operation, sums of <= 300 terms); float kernels carry float rounding of the
// logits (|s| <= ~8 here, so ~8 * 6e-8 relative error in each weight) and of the sums.
template <class T>
constexpr double reference_tolerance() {
  return std::is_same_v<T, float> ? 5e-6 : 1e-13;
}

TYPED_TEST(exact_case, MatchesReferenceAcrossMasksAndShapes) {
  using T = TypeParam;
  const performer::softmax_attention<T> plain;
  // Small tiles so that the test crosses tile boundaries, ragged last tiles and diagonal tiles.
  const performer::tiled_softmax_attention<T> tiled(7, 11);
  for (const auto& [n_q, n_k] : {std::pair<index_t, index_t>{1, 1}, {64, 64}, {50, 77}, {77, 50}, {100, 100}}) {
    const auto q = random_matrix<T>(n_q, 24, 100 + n_q, 2.0);
    const auto k = random_matrix<T>(n_k, 24, 200 + n_k, 2.0);
    const auto v = random_matrix<T>(n_k, 10, 300 + n_k);
    std::vector<std::uint8_t> keep(static_cast<std::size_t>(n_k), 1);
    for (index_t j = 0; j < n_k; j += 5) keep[static_cast<std::size_t>(j)] = 0;
    for (const bool causal : {false, true}) {
      if (causal && n_q != n_k) continue;
      for (const bool padded : {false, true}) {
        const std::vector<std::uint8_t> mask_bytes = padded ? keep : std::vector<std::uint8_t>{};
        const attention_mask mask{causal, mask_bytes};
        const auto ref = performer::oracle::softmax_attention(q.template cast<double>(), k.template cast<double>(),
                                                              v.template cast<double>(), mask);
        const row_matrix<double> a = run(plain, q, k, v, mask).template cast<double>();
        const row_matrix<double> b = run(tiled, q, k, v, mask).template cast<double>();
        EXPECT_LE(relative_difference(a, ref), reference_tolerance<T>())
            << n_q << "x" << n_k << " causal=" << causal << " padded=" << padded;
        EXPECT_LE(relative_difference(b, ref), reference_tolerance<T>())
            << n_q << "x" << n_k << " causal=" << causal << " padded=" << padded;
      }
    }
  }
}

TYPED_TEST(exact_case, TiledEqualsMaterializedForEveryTileShape) {
  using T = TypeParam;
  const auto q = random_matrix<T>(45, 8, 1);
  const auto k = random_matrix<T>(45, 8, 2);
  const auto v = random_matrix<T>(45, 5, 3);
  const performer::softmax_attention<T> plain;
  for (const bool causal : {false, true}) {
    const attention_mask mask{causal, {}};
    const auto ref = run(plain, q, k, v, mask);
    for (const index_t bq : {1, 2, 16, 45, 64}) {
      for (const index_t bk : {1, 3, 45, 100}) {
        // Same maths, different summation order: a few float roundings apart at most.
        EXPECT_LE(relative_difference(run(performer::tiled_softmax_attention<T>(bq, bk), q, k, v, mask), ref),
                  (std::is_same_v<T, float> ? 2e-6 : 1e-14))
            << bq << "x" << bk << " causal=" << causal;
      }
    }
  }
}

TYPED_TEST(exact_case, LargeLogitsStayFiniteAndCorrect) {
  using T = TypeParam;
  // |q.k|/sqrt(d) up to ~1e4: a naive exp overflows, the max-subtracted form does not.
  auto q = random_matrix<T>(20, 16, 5);
  auto k = random_matrix<T>(20, 16, 6);
  const auto v = random_matrix<T>(20, 4, 7);
  q *= T(100);
  k *= T(100);
  for (const bool causal : {false, true}) {
    const auto r = performer::oracle::softmax_attention(q.template cast<double>(), k.template cast<double>(),
                                                        v.template cast<double>(), attention_mask{causal, {}});
    const auto a = run(performer::softmax_attention<T>{}, q, k, v, {causal, {}});
    const auto b = run(performer::tiled_softmax_attention<T>(4, 6), q, k, v, {causal, {}});
    ASSERT_TRUE(a.allFinite());
    ASSERT_TRUE(b.allFinite());
    // Logits ~1e4 carry absolute rounding ~1e4 * eps: float weights are right to ~1e-3
    // relative where two logits nearly tie, double to ~1e-11.
    const double tol = std::is_same_v<T, float> ? 5e-3 : 1e-9;
    EXPECT_LE(relative_difference(a.template cast<double>(), r), tol);
    EXPECT_LE(relative_difference(b.template cast<double>(), r), tol);
  }
}

TYPED_TEST(exact_case, OverflowingLogitsThrowInsteadOfNaN) {
  using T = TypeParam;
  auto q = random_matrix<T>(4, 8, 8);
  const auto v = random_matrix<T>(4, 3, 9);
  q *= std::numeric_limits<T>::max() / T(4);  // finite inputs whose dot products overflow
  EXPECT_THROW(run(performer::softmax_attention<T>{}, q, q, v), performer::invalid_argument);
  EXPECT_THROW(run(performer::tiled_softmax_attention<T>{}, q, q, v), performer::invalid_argument);
}

// Found by the fuzzer: every visible logit at -inf (or NaN) used to be taken for "no visible
// key" and gave the zero row. "No visible key" is now decided from the mask alone.
TYPED_TEST(exact_case, LogitsAllOverflowingToMinusInfThrowNotZeroRow) {
  using T = TypeParam;
  const T big = std::sqrt(std::numeric_limits<T>::max()) * T(4);  // |q||k| = 16 max: -inf
  row_matrix<T> q(1, 1), k(2, 1), v(2, 1);
  q << big;
  k << -big, -big * T(2);
  v << T(1), T(2);
  EXPECT_THROW(run(performer::softmax_attention<T>{}, q, k, v), performer::invalid_argument);
  EXPECT_THROW(run(performer::tiled_softmax_attention<T>{}, q, k, v), performer::invalid_argument);
  // NaN logits: q.k sums +inf and -inf.
  row_matrix<T> q2(1, 2), k2(1, 2), v2(1, 1);
  q2 << big, big;
  k2 << big, -big;
  v2 << T(1);
  EXPECT_THROW(run(performer::softmax_attention<T>{}, q2, k2, v2), performer::invalid_argument);
  EXPECT_THROW(run(performer::tiled_softmax_attention<T>{}, q2, k2, v2), performer::invalid_argument);
  // A query whose only visible keys are padding still gets its zero row, even beside overflow.
  const std::vector<std::uint8_t> keep{0, 1};
  row_matrix<T> q3(2, 1), k3(2, 1), v3(2, 1);
  q3 << T(1), T(1);
  k3 << T(1), T(2);
  v3 << T(5), T(7);
  for (const auto& out : {run(performer::softmax_attention<T>{}, q3, k3, v3, attention_mask{true, keep}),
                          run(performer::tiled_softmax_attention<T>{}, q3, k3, v3, attention_mask{true, keep})}) {
    EXPECT_EQ(out(0, 0), T(0));
    EXPECT_EQ(out(1, 0), T(7));
  }
}

TEST(ExactAttention, TiledRejectsNonPositiveTileSizes) {
  EXPECT_THROW(performer::tiled_softmax_attention<float>(0, 8), performer::invalid_argument);
  EXPECT_THROW(performer::tiled_softmax_attention<float>(8, -1), performer::invalid_argument);
}

TEST(ExactAttention, ErrorMessagesNameTheArgumentAndShapes) {
  const auto q = random_matrix<float>(6, 8, 1);
  const auto k = random_matrix<float>(5, 7, 2);
  const auto v = random_matrix<float>(5, 3, 3);
  try {
    static_cast<void>(run(performer::softmax_attention<float>{}, q, k, v));
    FAIL() << "no exception";
  } catch (const performer::invalid_argument& e) {
    EXPECT_STREQ(e.what(),
                 "softmax_attention::forward: k is 5x7 but q is 6x8; queries and keys need the same width");
  }
}

TEST(ExactAttention, AttendAcceptsColumnMajorExpressions) {
  const Eigen::MatrixXd q = Eigen::MatrixXd::Random(9, 4);
  const Eigen::MatrixXd k = Eigen::MatrixXd::Random(6, 4);
  const Eigen::MatrixXd v = Eigen::MatrixXd::Random(6, 2);
  const auto out = performer::attend(performer::softmax_attention<double>{}, q, k, 2.0 * v);
  const auto ref = performer::oracle::softmax_attention(q, k, row_matrix<double>(2.0 * v));
  EXPECT_LE(relative_difference(out, ref), 1e-13);
}

}  // namespace
}  // namespace softmax_softmax_attention_test
