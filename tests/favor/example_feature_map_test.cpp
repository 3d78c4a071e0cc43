// Covers performer/favor/example_feature_map.hpp: the documented example feature map against
// its defining formula, bounded at huge inputs, and through the conformance suite in
// favor_attention (a user's map plugs in the same way).
#include <gtest/gtest.h>

#include <cmath>

#include <performer/favor/example_feature_map.hpp>
#include <performer/favor/favor_attention.hpp>
#include <performer/random/sampler.hpp>
#include <performer/testing/conformance.hpp>

// Named as well as anonymous: the unity build compiles several test files as one.
namespace favor_example_feature_map_test {
namespace {

using performer::index_t;
using performer::row_matrix;
using performer::softplus_features;

TEST(SoftplusFeatures, MatchTheDefiningFormulaAndStayFinite) {
  const auto w = performer::gaussian_sampler{}.sample(6, 4, 1);
  row_matrix<double> x = performer::gaussian_sampler{}.sample(3, 4, 2);
  x.row(2) *= 1e3;  // softplus(u) = u + log1p(e^-u) keeps e^u from overflowing
  row_matrix<double> phi(3, 6);
  performer::vector<double> log_scale(3);
  softplus_features<double>{}.apply(w, x, phi, log_scale);
  EXPECT_TRUE(log_scale.isZero(0));
  for (index_t i = 0; i < 3; ++i) {
    for (index_t j = 0; j < 6; ++j) {
      const double u = x.row(i).dot(w.row(j));
      const double expected = (u > 30 ? u : std::log(1 + std::exp(u))) / std::sqrt(6.0);
      EXPECT_NEAR(phi(i, j), expected, 1e-12 * std::max(1.0, std::abs(expected)));
      // Positive, but e^u underflows for u below about -745: then exactly 0, never negative.
      if (u > -700) {
        EXPECT_GT(phi(i, j), 0.0);
      } else {
        EXPECT_GE(phi(i, j), 0.0);
      }
    }
  }
}

template <class T>
struct softplus_maker {
  using attention_type = performer::favor_attention<T, softplus_features<T>>;
  static constexpr double tolerance = std::is_same_v<T, float> ? 1e-4 : 1e-11;
  // A different kernel than softmax's: it follows q.k, less strongly than exact attention.
  static constexpr double min_logit_response = 0.05;
  static attention_type make(index_t head_dim) { return attention_type(head_dim, 32, 3); }
};

using softplus_makers = ::testing::Types<softplus_maker<float>, softplus_maker<double>>;

}  // namespace
}  // namespace favor_example_feature_map_test
using namespace favor_example_feature_map_test;  // for what follows

namespace performer::conformance {
INSTANTIATE_TYPED_TEST_SUITE_P(example_map, attention_conformance, softplus_makers);
}  // namespace performer::conformance
