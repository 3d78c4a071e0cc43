// Covers the calibration of performer/favor/features/favor_plus_plus_features.hpp
// (docs/algorithms.md §3.6): the fitted A against an independent minimisation over the visible
// query-key pairs, the masks, the lower limit, and the gain over FAVOR+ on attention outputs in
// the regime FAVOR++ is for.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include <performer/favor/favor_attention.hpp>
#include <performer/favor/features/favor_plus_plus_features.hpp>
#include <performer/favor/features/positive_features.hpp>
#include <performer/random/sampler.hpp>
#include <performer/testing/helpers.hpp>
#include <performer/testing/oracle.hpp>

#include "favor/makers.hpp"

// Named as well as anonymous: the unity build compiles several test files as one.
namespace favor_favor_plus_plus_test {
namespace {

using performer::attention_mask;
using performer::favor_attention;
using performer::favor_plus_plus_features;
using performer::index_t;
using performer::row_matrix;
using performer::conformance::random_matrix;
using performer::conformance::run;
using keep_mask = std::vector<std::uint8_t>;

/// The mean, over every visible (query, key) pair, of the log of the estimator's second moment
/// at parameter A (docs/algorithms.md §3.6), computed pair by pair: an evaluation independent of
/// the library's closed form, which uses the means of the rows instead.
double mean_log_second_moment(const row_matrix<double>& q, const row_matrix<double>& k,
                              const keep_mask& query_keep, const keep_mask& key_keep, double a) {
  const double d = static_cast<double>(q.cols());
  const double s = std::pow(d, -0.25);
  double total = 0;
  double pairs = 0;
  for (index_t i = 0; i < q.rows(); ++i) {
    if (!query_keep.empty() && query_keep[static_cast<std::size_t>(i)] == 0) continue;
    for (index_t j = 0; j < k.rows(); ++j) {
      if (!key_keep.empty() && key_keep[static_cast<std::size_t>(j)] == 0) continue;
      const double x2 = (s * q.row(i)).squaredNorm();
      const double y2 = (s * k.row(j)).squaredNorm();
      const double z2 = (s * (q.row(i) + k.row(j))).squaredNorm();
      total += d * std::log(1 - 4 * a) - d / 2 * std::log(1 - 8 * a) - x2 - y2 +
               2 * (1 - 4 * a) * z2 / (1 - 8 * a);
      pairs += 1;
    }
  }
  return total / pairs;
}

/// argmin of f over [lo, hi] by golden-section search (f is convex in A here).
template <class F>
double golden_minimum(F&& f, double lo, double hi) {
  const double phi = (std::sqrt(5.0) - 1) / 2;
  double a = hi - phi * (hi - lo);
  double b = lo + phi * (hi - lo);
  for (int i = 0; i < 200; ++i) {
    if (f(a) < f(b)) {
      hi = b;
    } else {
      lo = a;
    }
    a = hi - phi * (hi - lo);
    b = lo + phi * (hi - lo);
  }
  return (lo + hi) / 2;
}

TEST(FavorPlusPlus, FittedAMinimisesTheMeanLogSecondMomentOverVisiblePairs) {
  // Rows of different norms and a non-zero mean, so that the cross term 2 mean(q~).mean(k~)
  // matters; padded rows far off, so that including them would move A.
  const index_t d = 12;
  row_matrix<double> q = random_matrix<double>(30, d, 1, 0.7);
  row_matrix<double> k = random_matrix<double>(25, d, 2, 0.5);
  q.col(0).array() += 0.6;
  k.col(0).array() += 0.4;
  keep_mask query_keep(30, 1);
  keep_mask key_keep(25, 1);
  for (const index_t i : {2, 9, 10, 27}) {
    query_keep[static_cast<std::size_t>(i)] = 0;
    q.row(i).setConstant(4.0);
  }
  for (const index_t j : {0, 13, 24}) {
    key_keep[static_cast<std::size_t>(j)] = 0;
    k.row(j).setConstant(-5.0);
  }
  const double fitted = favor_plus_plus_features<double>::optimal_a(q, k, key_keep, query_keep);
  const double best = golden_minimum(
      [&](double a) { return mean_log_second_moment(q, k, query_keep, key_keep, a); }, -2.0, 0.12);
  EXPECT_NEAR(fitted, best, 1e-7);
  EXPECT_LT(fitted, -0.01);  // a real fit, not FAVOR+'s A = 0
  // Without the masks the padded rows enter the statistic and A moves.
  EXPECT_GT(std::abs(favor_plus_plus_features<double>::optimal_a(q, k) - fitted), 0.01);
  // calibrate() stores the same value.
  favor_plus_plus_features<double> map;
  map.calibrate(q, k, key_keep, query_keep);
  EXPECT_EQ(map.a(), fitted);
}

TEST(FavorPlusPlus, FittedAIsLimitedToMinusOneEighth) {
  // rho = mean |q~ + k~|^2 / d = 1/3 is where A* reaches -1/8; far beyond it (rows of norm ~10
  // at d = 4) the fit stops there, keeping the features within float's range.
  const row_matrix<double> q = random_matrix<double>(10, 4, 3, 6.0);
  const row_matrix<double> k = random_matrix<double>(10, 4, 4, 6.0);
  const double unlimited = golden_minimum(
      [&](double a) { return mean_log_second_moment(q, k, {}, {}, a); }, -50.0, 0.12);
  ASSERT_LT(unlimited, -1.0);
  EXPECT_EQ(favor_plus_plus_features<double>::optimal_a(q, k),
            favor_plus_plus_features<double>::min_adaptive_a);
  EXPECT_EQ(favor_plus_plus_features<double>::min_adaptive_a, -0.125);
}

TEST(FavorPlusPlus, NothingVisibleGivesFavorPlus) {
  const row_matrix<double> q = random_matrix<double>(4, 6, 5);
  const keep_mask none(4, 0);
  EXPECT_EQ(favor_plus_plus_features<double>::optimal_a(q, q, none, {}), 0.0);
  EXPECT_EQ(favor_plus_plus_features<double>::optimal_a(q, q, {}, none), 0.0);
}

TEST(FavorPlusPlus, MoreAccurateThanFavorPlusWhereTheKernelVarianceIsLarge) {
  // |q~ + k~|^2 ~ 4 at d = 16 (entries uniform in [-1.2, 1.2]): FAVOR+'s per-pair relative
  // variance is e^4 - 1 ~ 54 per feature, and FAVOR++'s is a third of it (docs/algorithms.md
  // §5.5), so its output error should be clearly lower: demand at most 85% of FAVOR+'s, over 16
  // paired draws (same Gaussian projections). Before calibration (A = 0) FAVOR++ is FAVOR+
  // exactly, which a broken calibration would reproduce: check the fit moved A and the output.
  const index_t n = 96;
  const index_t d = 16;
  const auto q = random_matrix<double>(n, d, 31, 1.2);
  const auto k = random_matrix<double>(n, d, 32, 1.2);
  const auto v = random_matrix<double>(n, 8, 33);
  const auto exact = performer::oracle::softmax_attention(q, k, v);
  using plus = favor_attention<double, performer::positive_features<double>, performer::gaussian_sampler>;
  using plus_plus = favor_attention<double, favor_plus_plus_features<double>, performer::gaussian_sampler>;
  EXPECT_LT(favor_plus_plus_features<double>::optimal_a(q, k), -0.02);
  double error_plus = 0;
  double error_plus_plus = 0;
  for (int s = 0; s < 16; ++s) {
    const auto seed = static_cast<std::uint64_t>(500 + s);
    const auto a = run(plus(d, 32, seed), q, k, v);
    const auto b = run(plus_plus(d, 32, seed), q, k, v);
    EXPECT_GT((a - b).norm(), 1e-3 * a.norm()) << "FAVOR++ reproduced FAVOR+ (seed " << seed << ")";
    error_plus += (a - exact).norm();
    error_plus_plus += (b - exact).norm();
  }
  RecordProperty("error_ratio", std::to_string(error_plus_plus / error_plus));
  EXPECT_LT(error_plus_plus, 0.85 * error_plus) << error_plus_plus << " vs " << error_plus;
}

// Found by the fuzzer: with finite rows near double's range the squared norms overflowed to
// +inf and the cross term to -inf, so rho was NaN and calibrate() stored A = NaN, which failed
// every later call. The moments are now taken of rows divided by their largest entry.
TEST(FavorPlusPlus, RowsNearTheScalarsRangeGiveTheLowerLimitNotNaN) {
  row_matrix<double> q(2, 2);
  row_matrix<double> k(2, 2);
  q << std::numeric_limits<double>::lowest(), 0, 0, 0;
  k << 6, 0, 6, 0;
  favor_plus_plus_features<double> map;
  map.calibrate(q, k);
  EXPECT_EQ(map.a(), favor_plus_plus_features<double>::min_adaptive_a);
  const favor_attention<double, favor_plus_plus_features<double>> a(2, 8, 1, map);
  const auto v = random_matrix<double>(2, 3, 1);
  EXPECT_TRUE(run(a, k, k, v, attention_mask{true, {}}).allFinite());  // the map still works
}

}  // namespace
}  // namespace favor_favor_plus_plus_test
