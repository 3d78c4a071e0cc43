// Covers performer/favor/feature_map.hpp and performer/favor/features/*.hpp: each map against
// its defining formula, positivity, the stabiliser at huge inputs, and bad arguments.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>

#include <performer/core/error.hpp>
#include <performer/favor/features/elu_features.hpp>
#include <performer/favor/features/favor_plus_plus_features.hpp>
#include <performer/favor/features/hyperbolic_features.hpp>
#include <performer/favor/features/positive_features.hpp>
#include <performer/favor/features/relu_features.hpp>
#include <performer/favor/features/trigonometric_features.hpp>
#include <performer/random/sampler.hpp>

// Named as well as anonymous: the unity build compiles several test files as one.
namespace favor_feature_maps_test {
namespace {

using performer::elu_features;
using performer::favor_plus_plus_features;
using performer::gaussian_sampler;
using performer::hyperbolic_features;
using performer::index_t;
using performer::positive_features;
using performer::relu_features;
using performer::row_matrix;
using performer::trigonometric_features;
using performer::vector;


/// The feature vectors phi.row(i) * exp(log_scale(i)).
template <class Map>
row_matrix<double> feature_vectors(const Map& map, const row_matrix<double>& w, const row_matrix<double>& x) {
  row_matrix<double> phi(x.rows(), map.feature_count(w.rows(), x.cols()));
  vector<double> log_scale(x.rows());
  map.apply(w, x, phi, log_scale);
  return phi.array().colwise() * log_scale.array().exp();
}

double relative_error(const row_matrix<double>& a, const row_matrix<double>& b) {
  return (a - b).cwiseAbs().maxCoeff() / b.cwiseAbs().maxCoeff();
}

TEST(FeatureMaps, MatchTheirDefiningFormulas) {
  // Arguments of exp, sin and cos are O(1) here, so the stabilised and direct evaluations agree
  // to a few ulp; 1e-13 relative to the largest feature.
  const index_t m = 5;
  const index_t d = 6;
  const auto w = gaussian_sampler{}.sample(m, d, 1);
  const row_matrix<double> x = 0.8 * gaussian_sampler{}.sample(3, d, 2);
  const double scale = std::pow(static_cast<double>(d), -0.25);
  const row_matrix<double> xs = scale * x;  // x~
  const row_matrix<double> u = xs * w.transpose();
  const double a = -0.1;
  row_matrix<double> pos(3, m), hyp(3, 2 * m), tri(3, 2 * m), gerf(3, m), clipped(3, m), elu(3, d);
  for (index_t i = 0; i < 3; ++i) {
    const double h = xs.row(i).squaredNorm() / 2;
    for (index_t j = 0; j < m; ++j) {
      pos(i, j) = std::exp(u(i, j) - h) / std::sqrt(5.0);
      hyp(i, j) = std::exp(u(i, j) - h) / std::sqrt(10.0);
      hyp(i, m + j) = std::exp(-u(i, j) - h) / std::sqrt(10.0);
      tri(i, j) = std::exp(h) * std::sin(u(i, j)) / std::sqrt(5.0);
      tri(i, m + j) = std::exp(h) * std::cos(u(i, j)) / std::sqrt(5.0);
      gerf(i, j) = std::pow(1 - 4 * a, d / 4.0) / std::sqrt(5.0) *
                   std::exp(a * w.row(j).squaredNorm() + std::sqrt(1 - 4 * a) * u(i, j) - h);
      clipped(i, j) = std::max(x.row(i).dot(w.row(j)), 0.0);  // no input scaling
    }
    for (index_t j = 0; j < d; ++j) elu(i, j) = x(i, j) > 0 ? x(i, j) + 1 : std::exp(x(i, j));
  }
  favor_plus_plus_features<double> pp;
  pp.set_a(a);
  EXPECT_LT(relative_error(feature_vectors(positive_features<double>{}, w, x), pos), 1e-13);
  EXPECT_LT(relative_error(feature_vectors(hyperbolic_features<double>{}, w, x), hyp), 1e-13);
  EXPECT_LT(relative_error(feature_vectors(trigonometric_features<double>{}, w, x), tri), 1e-13);
  EXPECT_LT(relative_error(feature_vectors(pp, w, x), gerf), 1e-13);
  // ReLU and elu + 1 need no exp of a shifted argument: exact, with log_scale = 0.
  const row_matrix<double> relu = clipped.array() + 1e-3;
  EXPECT_EQ(feature_vectors(relu_features<double>{}, w, x), relu);
  EXPECT_EQ(feature_vectors(elu_features<double>{}, row_matrix<double>(0, 0), x), elu);
  relu_features<double> relu_eps;
  relu_eps.epsilon = 0.25;
  const row_matrix<double> shifted = clipped.array() + 0.25;
  EXPECT_EQ(feature_vectors(relu_eps, w, x), shifted);
}

TEST(FeatureMaps, ReluAndEluArePositive) {
  // Both define their own positive kernel: every feature > 0 (ReLU's >= epsilon), whatever the
  // sign of the input; elu + 1 is exactly e^x below 0 and x + 1 above, continuous at 0.
  const auto w = gaussian_sampler{}.sample(64, 16, 3);
  const row_matrix<double> x = 5.0 * gaussian_sampler{}.sample(40, 16, 4);
  row_matrix<double> phi(40, 64);
  vector<double> log_scale = vector<double>::Constant(40, 7.0);
  relu_features<double>{}.apply(w, x, phi, log_scale);
  EXPECT_GE(phi.minCoeff(), 1e-3);
  EXPECT_TRUE((phi.array() == 1e-3).any());  // negative projections are clipped
  EXPECT_TRUE(log_scale.isZero(0.0));
  row_matrix<double> e(40, 16);
  log_scale.setConstant(7.0);
  elu_features<double>{}.apply(w, x, e, log_scale);
  EXPECT_GT(e.minCoeff(), 0.0);
  EXPECT_TRUE(log_scale.isZero(0.0));
  EXPECT_EQ(elu_features<double>{}.feature_count(64, 16), 16);
  row_matrix<double> edge(1, 3);
  edge << 0.0, -0.0, std::numeric_limits<double>::denorm_min();
  row_matrix<double> out(1, 3);
  vector<double> ls(1);
  elu_features<double>{}.apply(w, edge, out, ls);
  EXPECT_EQ(out(0, 0), 1.0);
  EXPECT_EQ(out(0, 1), 1.0);
  EXPECT_EQ(out(0, 2), 1.0);
}

TEST(FeatureMaps, ExponentialMapsStayBoundedForHugeInputs) {
  // Inputs of norm ~1e4 put w . x~ near 1e4, where a bare exp overflows. The stabiliser moves the
  // row's largest exponent into log_scale: phi finite in [0, 1/sqrt(M')] (M' = m, or 2m for
  // hyperbolic) with the largest entry exactly that, log_scale finite.
  const index_t m = 16;
  const index_t d = 8;
  const auto w = gaussian_sampler{}.sample(m, d, 5);
  const row_matrix<double> x = 1e4 * gaussian_sampler{}.sample(4, d, 6);
  vector<double> log_scale(4);
  row_matrix<double> phi(4, m);
  positive_features<double>{}.apply(w, x, phi, log_scale);
  EXPECT_TRUE(phi.allFinite() && log_scale.allFinite());
  EXPECT_GE(phi.minCoeff(), 0.0);
  for (index_t i = 0; i < 4; ++i) EXPECT_DOUBLE_EQ(phi.row(i).maxCoeff(), 1 / std::sqrt(16.0));
  favor_plus_plus_features<double> pp;
  pp.set_a(-0.2);
  pp.apply(w, x, phi, log_scale);
  EXPECT_TRUE(phi.allFinite() && log_scale.allFinite());
  for (index_t i = 0; i < 4; ++i) EXPECT_DOUBLE_EQ(phi.row(i).maxCoeff(), 1 / std::sqrt(16.0));
  row_matrix<double> phi2(4, 2 * m);
  hyperbolic_features<double>{}.apply(w, x, phi2, log_scale);
  EXPECT_TRUE(phi2.allFinite() && log_scale.allFinite());
  EXPECT_GE(phi2.minCoeff(), 0.0);
  for (index_t i = 0; i < 4; ++i) EXPECT_DOUBLE_EQ(phi2.row(i).maxCoeff(), 1 / std::sqrt(32.0));
}

// --------------------------------------------------------------------------------------------
// Bad arguments: performer::invalid_argument each.

template <class Map>
void expect_shape_checks(const Map& map, index_t m, index_t d) {
  const auto w = gaussian_sampler{}.sample(m, d, 1);
  const auto narrow_w = gaussian_sampler{}.sample(m, d - 1, 1);
  const auto x = gaussian_sampler{}.sample(3, d, 2);
  const index_t width = map.feature_count(m, d);
  row_matrix<double> phi(3, width);
  vector<double> log_scale(3);
  EXPECT_NO_THROW(map.apply(w, x, phi, log_scale));
  // A projection of the wrong width.
  EXPECT_THROW(map.apply(narrow_w, x, phi, log_scale), performer::invalid_argument);
  // phi with the wrong number of rows or columns.
  row_matrix<double> short_phi(2, width);
  row_matrix<double> thin_phi(3, width - 1);
  row_matrix<double> wide_phi(3, width + 1);
  EXPECT_THROW(map.apply(w, x, short_phi, log_scale), performer::invalid_argument);
  EXPECT_THROW(map.apply(w, x, thin_phi, log_scale), performer::invalid_argument);
  EXPECT_THROW(map.apply(w, x, wide_phi, log_scale), performer::invalid_argument);
  // log_scale of the wrong length.
  vector<double> long_scale(4);
  EXPECT_THROW(map.apply(w, x, phi, long_scale), performer::invalid_argument);
}

TEST(FeatureMaps, RejectBadShapes) {
  // m = 7 (odd) throughout: no map needs an even m. Hyperbolic and trigonometric maps take m
  // projections and emit M = 2m features, so a phi sized m (the mistake an even-m requirement
  // would guard against) is a shape error, caught like any other.
  expect_shape_checks(positive_features<double>{}, 7, 6);
  expect_shape_checks(hyperbolic_features<double>{}, 7, 6);
  expect_shape_checks(trigonometric_features<double>{}, 7, 6);
  expect_shape_checks(favor_plus_plus_features<double>{}, 7, 6);
  expect_shape_checks(relu_features<double>{}, 7, 6);
  EXPECT_EQ(hyperbolic_features<double>{}.feature_count(7, 6), 14);
  EXPECT_EQ(trigonometric_features<double>{}.feature_count(7, 6), 14);
  EXPECT_EQ(positive_features<double>{}.feature_count(7, 6), 7);
  row_matrix<double> phi_m(3, 7);
  vector<double> log_scale(3);
  const auto w = gaussian_sampler{}.sample(7, 6, 1);
  const auto x = gaussian_sampler{}.sample(3, 6, 2);
  EXPECT_THROW(hyperbolic_features<double>{}.apply(w, x, phi_m, log_scale), performer::invalid_argument);
  EXPECT_THROW(trigonometric_features<double>{}.apply(w, x, phi_m, log_scale), performer::invalid_argument);

  // elu + 1 ignores the projection (any shape) but checks phi (M = d) and log_scale.
  const row_matrix<double> none(0, 0);
  row_matrix<double> phi_d(3, 6);
  EXPECT_NO_THROW(elu_features<double>{}.apply(none, x, phi_d, log_scale));
  EXPECT_NO_THROW(elu_features<double>{}.apply(w, x, phi_d, log_scale));
  EXPECT_THROW(elu_features<double>{}.apply(none, x, phi_m, log_scale), performer::invalid_argument);
  vector<double> short_scale(2);
  EXPECT_THROW(elu_features<double>{}.apply(none, x, phi_d, short_scale), performer::invalid_argument);
}


TEST(FeatureMaps, FavorPlusPlusRejectsBadParameters) {
  favor_plus_plus_features<double> pp;
  // A < 1/8 for a finite variance (docs/algorithms.md §3.6).
  EXPECT_THROW(pp.set_a(0.125), performer::invalid_argument);
  EXPECT_THROW(pp.set_a(0.3), performer::invalid_argument);
  EXPECT_THROW(pp.set_a(std::numeric_limits<double>::quiet_NaN()), performer::invalid_argument);
  EXPECT_THROW(pp.set_a(-std::numeric_limits<double>::infinity()), performer::invalid_argument);
  EXPECT_EQ(pp.a(), 0.0);  // unchanged by the rejected values
  EXPECT_NO_THROW(pp.set_a(0.12));
  const auto q = gaussian_sampler{}.sample(4, 6, 1);
  const auto k = gaussian_sampler{}.sample(5, 5, 2);
  EXPECT_THROW(static_cast<void>(favor_plus_plus_features<double>::optimal_a(q, k)), performer::invalid_argument);
  EXPECT_THROW(static_cast<void>(favor_plus_plus_features<double>::optimal_a(row_matrix<double>(0, 6), q)),
               performer::invalid_argument);
}

}  // namespace
}  // namespace favor_feature_maps_test
