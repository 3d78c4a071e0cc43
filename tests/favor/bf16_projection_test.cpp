// Covers performer/favor/features/bf16_projection.hpp: the features against FAVOR+'s own on the
// rounded rows and projection, with a bound derived from the float summation of the bfloat16
// products; a projection that changes between calls; its refusals (backend, feature count,
// shapes). Backends this CPU lacks report themselves skipped.
#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include <performer/core/detail/bf16_exp.hpp>
#include <performer/favor/features/bf16_projection.hpp>
#include <performer/favor/features/positive_features.hpp>
#include <performer/testing/expect_invalid.hpp>
#include <performer/testing/helpers.hpp>

#include "support/bf16.hpp"

namespace performer::test {
// Named as well as anonymous: the unity build compiles several test files as one.
namespace favor_bf16_projection_test {
namespace {

struct mapped {
  row_matrix<float> phi;
  vector<float> log_scale;
};

template <class Map>
mapped apply(const Map& map, const row_matrix<float>& w, const row_matrix<float>& x) {
  mapped r{row_matrix<float>(x.rows(), w.rows()), vector<float>(x.rows())};
  map.apply(w, x, r.phi, r.log_scale);
  return r;
}

class Bf16Projection : public ::testing::TestWithParam<bf16_backend> {
 protected:
  void SetUp() override {
    if (!bf16_available(GetParam())) {
      GTEST_SKIP() << "this CPU or OS does not run bf16_backend::" << bf16_name(GetParam());
    }
  }

  /// FAVOR+'s features of the rounded x and w, against which ours must stay within the bound:
  /// each projection x.w is a float sum of d exact products, off by at most gamma = d 2^-24
  /// sum_i |x_i w_i|; with s = d^(-1/4), an exponent (x.w - max) s moves by 2 s gamma, so a
  /// feature by a factor within exp(+-2 s gamma), and a log scale (max s - |x s|^2 / 2) by
  /// s gamma. Our exponential (bf16::exp_row) is off by at most exp_row_error at the lowest
  /// exponent x, float's by its argument's rounding, |x| 2^-23, and a few ulps (4e-7).
  static void expect_close(const bf16_projection<>& ours, const row_matrix<float>& w,
                           const row_matrix<float>& x) {
    const mapped got = apply(ours, w, x);
    const mapped want = apply(positive_features<float>{}, rounded(w), rounded(x));
    const double gamma = projection_sum_error(x, w);
    const double s = std::pow(static_cast<double>(x.cols()), -0.25);
    const double phi_error = (got.phi - want.phi).cwiseAbs().cwiseQuotient(want.phi).maxCoeff();
    const double lowest = std::log(want.phi.minCoeff() * std::sqrt(w.rows()));
    // Inside exp_row's range, where it gives no zeros (and the bound is finite).
    ASSERT_GT(lowest, -86.0);
    EXPECT_LE(phi_error, std::expm1(2.0 * s * gamma) + detail::bf16::exp_row_error(lowest) -
                             lowest * 0x1p-23 + 4e-7);
    EXPECT_LE((got.log_scale - want.log_scale).cwiseAbs().maxCoeff(),
              s * gamma + 4e-7 * want.log_scale.cwiseAbs().maxCoeff());
    // And the rounding shows: FAVOR+ on the unrounded rows gives other features.
    const mapped unrounded = apply(positive_features<float>{}, w, x);
    EXPECT_GT((got.phi - unrounded.phi).cwiseAbs().maxCoeff(), 1e-6);
  }
};

TEST_P(Bf16Projection, GivesFavorFeaturesOfTheRoundedRowsAndProjection) {
  const bf16_projection<> map({}, GetParam());
  EXPECT_EQ(map.backend(), GetParam());
  // The benchmarks' shape, then odd widths and feature counts (partial pairs, registers and
  // tiles), then one row.
  for (const auto [n, d, m] : {std::array<index_t, 3>{300, 64, 256}, {37, 5, 33}, {1, 3, 17}}) {
    const auto w = conformance::random_matrix<float>(m, d, 3, 1.0);
    const auto x = conformance::random_matrix<float>(n, d, 4, 0.5);
    expect_close(map, w, x);
  }
}

// Each thread keeps W^T packed between calls: a projection that changes (a redraw, a trained
// matrix) must be packed again, and going back to the first one too.
TEST_P(Bf16Projection, FollowsTheProjectionWhenItChanges) {
  const bf16_projection<> map({}, GetParam());
  const auto x = conformance::random_matrix<float>(50, 16, 4, 0.5);
  const auto w1 = conformance::random_matrix<float>(32, 16, 5, 1.0);
  auto w2 = w1;
  w2(7, 3) += 0.5f;  // one entry: a cache keyed on anything coarser than the values misses it
  expect_close(map, w1, x);
  expect_close(map, w2, x);
  expect_close(map, w1, x);
}

INSTANTIATE_TEST_SUITE_P(Backends, Bf16Projection,
                         ::testing::Values(bf16_backend::portable, bf16_backend::avx512_bf16,
                                           bf16_backend::amx),
                         [](const auto& info) { return std::string(bf16_name(info.param)); });

TEST(Bf16ProjectionBadInput, RefusesBackendsFeatureCountsAndShapes) {
  for (const bf16_backend b : {bf16_backend::avx512_bf16, bf16_backend::amx}) {
    if (!bf16_available(b)) {
      PERFORMER_EXPECT_INVALID("bf16_resolve", "does not run it", bf16_projection<>({}, b));
    }
  }
  PERFORMER_EXPECT_INVALID("bf16_projection", "one feature per projection (M = m), not 16",
                           (void)bf16_projection<doubled_features>().feature_count(8, 4));
  const bf16_projection<> map({}, bf16_backend::portable);
  const auto w = conformance::random_matrix<float>(8, 4, 1, 1.0);
  const auto x = conformance::random_matrix<float>(3, 5, 2, 1.0);
  row_matrix<float> phi(3, 8);
  vector<float> log_scale(3);
  PERFORMER_EXPECT_INVALID("bf16_projection::apply", "width", map.apply(w, x, phi, log_scale));
}

}  // namespace
}  // namespace favor_bf16_projection_test
}  // namespace performer::test
