// Covers performer/lsh/angular_hash.hpp, lsh/hash_family.hpp, lsh/example_hash_family.hpp and
// lsh/lsh_options.hpp: buckets as the documented argmax, factorised hashing above 32 buckets,
// seeds, redraws and user rotations, the automatic bucket count, and the example family.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include <performer/lsh/angular_hash.hpp>
#include <performer/lsh/example_hash_family.hpp>
#include <performer/lsh/lsh_attention.hpp>
#include <performer/lsh/lsh_options.hpp>
#include <performer/testing/helpers.hpp>

#include "lsh/makers.hpp"

// Named as well as anonymous: the unity build compiles several test files as one.
namespace lsh_angular_hash_test {
namespace {

using performer::angular_hash;
using performer::index_t;
using performer::lsh_attention;
using performer::lsh_options;
using performer::row_matrix;
using performer::conformance::random_matrix;
using performer::conformance::run;

TEST(LshAttention, BucketIsArgmaxOverRotatedAndNegatedUnitVector) {
  const lsh_attention<double> a(6, {.buckets = 8, .hashes = 3, .seed = 4});
  const auto x = random_matrix<double>(50, 6, 9);
  for (index_t r = 0; r < 3; ++r) {
    const std::vector<index_t> all = a.buckets(x, r);
    ASSERT_EQ(all.size(), 50U);
    for (index_t i = 0; i < 50; ++i) {
      const Eigen::RowVectorXd p = (x.row(i) / x.row(i).norm()) * a.hash_family().rotation(r, a.options().buckets);
      Eigen::RowVectorXd both(8);
      both << p, -p;
      index_t expected = 0;
      both.maxCoeff(&expected);  // first maximum, as documented
      EXPECT_EQ(a.buckets(x.row(i), r)[0], expected) << "row " << i << " round " << r;
      EXPECT_EQ(all[static_cast<std::size_t>(i)], expected);
      // Angular: the scale does not matter, and the opposite vector is in the opposite bucket.
      EXPECT_EQ(a.buckets(7.5 * x.row(i), r)[0], expected);
      EXPECT_EQ(a.buckets(-x.row(i), r)[0], (expected + 4) % 8);
    }
  }
  EXPECT_EQ(a.buckets(Eigen::RowVectorXd::Zero(6), 1)[0], 0);
  EXPECT_EQ(a.hash_family().rotation(2, a.options().buckets).rows(), 6);
  EXPECT_EQ(a.hash_family().rotation(2, a.options().buckets).cols(), 4);
}

TEST(AngularHash, AboveThirtyTwoBucketsARoundIsTheProductOfTwoHashes) {
  // b = 512: factors b1 = 32 (2^ceil(log2 sqrt 512)) and b2 = 16; bucket = h1 b2 + h2, each h
  // the argmax of its own rotation's [p ; -p].
  const angular_hash<double> h(6, 2, 9);
  angular_hash<double>::tables_type t;
  h.prepare(512, t);
  ASSERT_EQ(t.outer, 32);
  ASSERT_EQ(t.inner, 16);
  ASSERT_EQ(t.stacked.cols(), 2 * (16 + 8));
  const auto x = random_matrix<double>(200, 6, 3);
  std::vector<double> scratch(static_cast<std::size_t>(h.scratch_size(t)));
  std::vector<int> used(512, 0);
  for (index_t i = 0; i < x.rows(); ++i) {
    std::int32_t buckets[2];
    h.hash(t, x.row(i).data(), buckets, scratch.data());
    const Eigen::RowVectorXd unit = x.row(i) / x.row(i).norm();
    for (index_t r = 0; r < 2; ++r) {
      const Eigen::RowVectorXd p1 = unit * t.stacked.middleCols(r * 24, 16);
      const Eigen::RowVectorXd p2 = unit * t.stacked.middleCols(r * 24 + 16, 8);
      Eigen::RowVectorXd b1(32), b2(16);
      b1 << p1, -p1;
      b2 << p2, -p2;
      index_t h1 = 0, h2 = 0;
      b1.maxCoeff(&h1);
      b2.maxCoeff(&h2);
      EXPECT_EQ(buckets[r], h1 * 16 + h2) << "row " << i << " round " << r;
      ++used[static_cast<std::size_t>(buckets[r])];
    }
  }
  // More distinct buckets than either factor alone has (32 and 16): the product is used.
  EXPECT_GT(std::count_if(used.begin(), used.end(), [](int u) { return u > 0; }), 64);
}

TEST(AngularHash, SameSeedSameRotationsAndRedrawsAreDeterministic) {
  const lsh_options options{.buckets = 8, .hashes = 4, .chunk = 16, .seed = 99};
  const lsh_attention<float> a(32, options);
  const lsh_attention<float> b(32, options);
  lsh_attention<float> c(32, {.buckets = 8, .hashes = 4, .chunk = 16, .seed = 1});
  for (index_t r = 0; r < 4; ++r) {
    EXPECT_EQ(a.hash_family().rotation(r, 8), b.hash_family().rotation(r, 8));
    EXPECT_NE(a.hash_family().rotation(r, 8), c.hash_family().rotation(r, 8));
    if (r > 0) {
      EXPECT_NE(a.hash_family().rotation(r, 8), a.hash_family().rotation(r - 1, 8));
    }
  }
  // Rotations are standard normals in double, then rounded: the mean square is about 1.
  EXPECT_NEAR(a.hash_family().rotation(0, 8).cast<double>().squaredNorm() / (32.0 * 4.0), 1.0, 0.3);
  const auto q = random_matrix<float>(500, 32, 1);
  const auto v = random_matrix<float>(500, 16, 2);
  const auto out_a = run(a, q, q, v, {.causal = true});
  const auto out_b = run(b, q, q, v, {.causal = true});
  EXPECT_EQ(0, std::memcmp(out_a.data(), out_b.data(), sizeof(float) * 500 * 16));
  // A redraw to the same seed gives the same rotations back, and the options are not touched.
  c.hash_family().redraw(99);
  EXPECT_EQ(c.hash_family().seed(), 99U);
  EXPECT_EQ(c.options().seed, 1U);
  EXPECT_EQ(c.hash_family().rotation(3, 8), a.hash_family().rotation(3, 8));
  EXPECT_EQ(run(c, q, q, v, {.causal = true}), out_a);
  // A user rotation replaces the draw for its bucket count, and a redraw forgets it.
  c.hash_family().set_rotation(1, row_matrix<float>::Ones(32, 4));
  EXPECT_EQ(c.hash_family().rotation(1, 8), (row_matrix<float>::Ones(32, 4)));
  EXPECT_NE(run(c, q, q, v, {.causal = true}), out_a);
  c.hash_family().redraw(99);
  EXPECT_EQ(run(c, q, q, v, {.causal = true}), out_a);
}

TEST(AngularHash, TablesAreRebuiltWhenTheFamilyChanges) {
  // A workspace keeps the tables of the last call; after a redraw, or with another family of
  // the same bucket count, they must not be reused.
  lsh_attention<double> a(8, {.buckets = 4, .hashes = 2, .chunk = 4, .shared_qk = false, .seed = 1});
  const lsh_attention<double> b(8, {.buckets = 4, .hashes = 2, .chunk = 4, .shared_qk = false, .seed = 2});
  const auto q = random_matrix<double>(40, 8, 1);
  const auto k = random_matrix<double>(40, 8, 2);
  const auto v = random_matrix<double>(40, 3, 3);
  typename lsh_attention<double>::workspace_type ws;
  row_matrix<double> out(40, 3);
  a.forward(q, k, v, out, {}, ws);
  b.forward(q, k, v, out, {}, ws);
  EXPECT_EQ(out, run(b, q, k, v));
  a.hash_family().redraw(2);
  a.forward(q, k, v, out, {}, ws);
  EXPECT_EQ(out, run(b, q, k, v));
}

TEST(LshOptions, AutomaticBucketCountIsTwoNOverChunkToTheNearestPowerOfTwo) {
  const lsh_options o{.chunk = 64};
  EXPECT_EQ(performer::lsh_bucket_count(o, 1), 2);
  EXPECT_EQ(performer::lsh_bucket_count(o, 64), 2);
  EXPECT_EQ(performer::lsh_bucket_count(o, 1024), 32);
  EXPECT_EQ(performer::lsh_bucket_count(o, 1400), 32);   // 43.75: below 32 sqrt(2) = 45.25
  EXPECT_EQ(performer::lsh_bucket_count(o, 1500), 64);   // 46.9: above it, nearer 64 in log scale
  EXPECT_EQ(performer::lsh_bucket_count(o, 1048576), 32768);
  EXPECT_EQ(performer::lsh_bucket_count({.buckets = 6}, 1048576), 6);
}

TEST(SignProjectionHash, ModelsTheConceptAndHashesBySides) {
  static_assert(performer::hash_family<performer::sign_projection_hash<float>>);
  static_assert(performer::hash_family<angular_hash<double>>);
  const performer::sign_projection_hash<double> h(5, 3, 7);
  performer::sign_projection_hash<double>::tables_type t;
  h.prepare(16, t);
  ASSERT_EQ(t.bits, 4);
  const auto x = random_matrix<double>(30, 5, 4);
  for (index_t i = 0; i < x.rows(); ++i) {
    std::int32_t b[3];
    h.hash(t, x.row(i).data(), b, nullptr);
    for (index_t r = 0; r < 3; ++r) {
      std::int32_t expected = 0;
      for (index_t bit = 0; bit < 4; ++bit) {
        if (t.planes.row(r * 4 + bit).dot(x.row(i)) > 0) expected |= std::int32_t{1} << bit;
      }
      EXPECT_EQ(b[r], expected);
      std::int32_t negated[3];
      const Eigen::RowVectorXd minus = -x.row(i);
      h.hash(t, minus.data(), negated, nullptr);
      EXPECT_EQ(negated[r], 15 - expected);  // the opposite side of every plane
    }
  }
  EXPECT_THROW(h.prepare(6, t), performer::invalid_argument);  // not a power of two
}

// Found by the fuzzer: a call rejected because a user rotation was for another bucket count
// left the workspace's tables half built but marked as built, so the next call on that
// workspace hashed with an uninitialised matrix.
TEST(AngularHash, ACallRejectedForItsBucketCountLeavesTheWorkspaceUsable) {
  lsh_attention<double> a(4, {.buckets = 0, .hashes = 1, .chunk = 2, .shared_qk = false});
  a.hash_family().set_rotation(0, random_matrix<double>(4, 2, 3));  // for 4 buckets
  const auto q = random_matrix<double>(4, 4, 1);
  const auto k = random_matrix<double>(4, 4, 2);
  const auto v = random_matrix<double>(4, 3, 3);
  ASSERT_EQ(a.bucket_count(4), 4);
  ASSERT_EQ(a.bucket_count(2), 2);
  typename lsh_attention<double>::workspace_type ws;
  row_matrix<double> out(4, 3);
  a.forward(q, k, v, out, {}, ws);
  row_matrix<double> short_out(2, 3);
  EXPECT_THROW(a.forward(q.topRows(2), k.topRows(2), v.topRows(2), short_out, {}, ws),
               performer::invalid_argument);
  a.forward(q, k, v, out, {}, ws);
  EXPECT_EQ(out, run(a, q, k, v));
}

}  // namespace
}  // namespace lsh_angular_hash_test
