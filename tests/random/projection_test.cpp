// Covers performer/random/projection.hpp: random_projection's draws from a sampler and a seed,
// redraws, the redraw interval and the user-matrix contract.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include <performer/random/detail/generator.hpp>
#include <performer/core/error.hpp>
#include <performer/favor/features/positive_features.hpp>
#include <performer/random/projection.hpp>
#include <performer/testing/helpers.hpp>

// Named as well as anonymous: the unity build compiles several test files as one.
namespace random_projection_test {
namespace {

using performer::gaussian_sampler;
using performer::index_t;
using performer::orthogonal_sampler;
using performer::random_projection;
using performer::row_matrix;
using performer::row_norms;
using performer::vector;
using performer::detail::derive_seed;

using performer::conformance::same_bits;

TEST(RandomProjection, DrawsFromTheSamplerAndTheSeed) {
  const random_projection<double> p(32, 8, 5);
  EXPECT_EQ(p.features(), 32);
  EXPECT_EQ(p.dim(), 8);
  EXPECT_EQ(p.seed(), 5U);
  EXPECT_TRUE(same_bits(p.matrix(), orthogonal_sampler{}.sample(32, 8, 5)));
  // float storage: the double draw rounded once.
  const random_projection<float> f(32, 8, 5);
  const row_matrix<float> rounded = orthogonal_sampler{}.sample(32, 8, 5).cast<float>();
  EXPECT_TRUE(same_bits(f.matrix(), rounded));
  // The sampler policy and its options are used.
  const random_projection<double, orthogonal_sampler> fixed(32, 8, 5, orthogonal_sampler{row_norms::fixed});
  EXPECT_EQ(fixed.sampler().norms, row_norms::fixed);
  EXPECT_TRUE(same_bits(fixed.matrix(), orthogonal_sampler{row_norms::fixed}.sample(32, 8, 5)));
  const random_projection<double, gaussian_sampler> iid(32, 8, 5);
  EXPECT_TRUE(same_bits(iid.matrix(), gaussian_sampler{}.sample(32, 8, 5)));
}

TEST(RandomProjection, RedrawIsDeterministicAndChangesTheMatrix) {
  random_projection<double> p(32, 8, 5);
  random_projection<double> q(32, 8, 5);
  const row_matrix<double> first = p.matrix();
  p.redraw();
  EXPECT_EQ(p.seed(), derive_seed(5, 1));
  EXPECT_TRUE(((p.matrix() - first).array() != 0).all());
  EXPECT_TRUE(same_bits(p.matrix(), orthogonal_sampler{}.sample(32, 8, derive_seed(5, 1))));
  // The same history gives the same matrices.
  q.redraw();
  EXPECT_TRUE(same_bits(p.matrix(), q.matrix()));
  p.redraw();
  q.redraw();
  EXPECT_TRUE(same_bits(p.matrix(), q.matrix()));
  EXPECT_EQ(p.seed(), derive_seed(derive_seed(5, 1), 1));
}

TEST(RandomProjection, RedrawWithSeedEqualsAFreshProjection) {
  random_projection<double> p(24, 6, 1);
  p.redraw();
  p.redraw(77);
  EXPECT_EQ(p.seed(), 77U);
  EXPECT_TRUE(same_bits(p.matrix(), random_projection<double>(24, 6, 77).matrix()));
  random_projection<float, gaussian_sampler> g(24, 6, 1);
  g.redraw(77);
  EXPECT_TRUE(same_bits(g.matrix(), random_projection<float, gaussian_sampler>(24, 6, 77).matrix()));
}

TEST(RandomProjection, RedrawIntervalRedrawsOnEveryKthCall) {
  random_projection<double> p(16, 4, 9);
  // Interval 0 (the default): never.
  for (int i = 0; i < 10; ++i) EXPECT_FALSE(p.on_call());
  EXPECT_EQ(p.seed(), 9U);

  p.set_redraw_interval(3);
  std::uint64_t seed = 9;
  for (int call = 1; call <= 12; ++call) {
    const row_matrix<double> before = p.matrix();
    const bool redrew = p.on_call();
    EXPECT_EQ(redrew, call % 3 == 0) << "call " << call;
    if (redrew) {
      seed = derive_seed(seed, 1);
      EXPECT_TRUE(((p.matrix() - before).array() != 0).all()) << "call " << call;
    } else {
      EXPECT_TRUE(same_bits(p.matrix(), before)) << "call " << call;
    }
    EXPECT_EQ(p.seed(), seed) << "call " << call;
  }
  // Setting the interval restarts the count.
  EXPECT_FALSE(p.on_call());
  EXPECT_FALSE(p.on_call());
  p.set_redraw_interval(3);
  EXPECT_FALSE(p.on_call());
  EXPECT_FALSE(p.on_call());
  EXPECT_TRUE(p.on_call());
  // Interval 1: every call.
  p.set_redraw_interval(1);
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(p.on_call());
}

TEST(RandomProjection, SetMatrixChecksShapeAndFinitenessAndIsUsed) {
  random_projection<double> p(8, 3, 1);
  const row_matrix<double> drawn = p.matrix();
  EXPECT_THROW(p.set_matrix(row_matrix<double>::Ones(8, 4)), performer::invalid_argument);
  EXPECT_THROW(p.set_matrix(row_matrix<double>::Ones(7, 3)), performer::invalid_argument);
  EXPECT_THROW(p.set_matrix(row_matrix<double>::Ones(3, 8)), performer::invalid_argument);
  EXPECT_THROW(p.set_matrix(row_matrix<double>(0, 0)), performer::invalid_argument);
  row_matrix<double> bad = row_matrix<double>::Ones(8, 3);
  bad(5, 1) = std::numeric_limits<double>::quiet_NaN();
  EXPECT_THROW(p.set_matrix(bad), performer::invalid_argument);
  bad(5, 1) = -std::numeric_limits<double>::infinity();
  EXPECT_THROW(p.set_matrix(bad), performer::invalid_argument);
  EXPECT_TRUE(same_bits(p.matrix(), drawn));  // a rejected matrix leaves the draw in place

  row_matrix<double> good(8, 3);
  for (index_t i = 0; i < good.size(); ++i) good.data()[i] = 0.25 * static_cast<double>(i) - 1.0;
  p.set_matrix(good);
  EXPECT_TRUE(same_bits(p.matrix(), good));
  // Any Eigen expression of the right shape, e.g. column-major or a product, converted to T.
  const Eigen::MatrixXd col_major = 2.0 * good;
  random_projection<float> f(8, 3, 1);
  f.set_matrix(col_major);
  const row_matrix<float> expected = col_major.cast<float>();
  EXPECT_TRUE(same_bits(f.matrix(), expected));
  // A later redraw replaces the user matrix.
  p.redraw(4);
  EXPECT_TRUE(same_bits(p.matrix(), random_projection<double>(8, 3, 4).matrix()));
}

TEST(RandomProjection, ZeroOrNegativeSizesThrow) {
  EXPECT_THROW(random_projection<double>(0, 8), performer::invalid_argument);
  EXPECT_THROW(random_projection<double>(8, 0), performer::invalid_argument);
  EXPECT_THROW(random_projection<float>(-1, 8), performer::invalid_argument);
  EXPECT_THROW((random_projection<float, gaussian_sampler>(8, -3)), performer::invalid_argument);
}


}  // namespace
}  // namespace random_projection_test
