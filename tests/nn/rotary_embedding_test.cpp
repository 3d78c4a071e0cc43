// rotary_embedding against the complex-number definition (oracle::rotary, long double), the
// property RoPE exists for (q_m . k_n depends on m - n only), the two pairings, streaming
// positions, and its bad arguments.
#include <gtest/gtest.h>

#include <cmath>
#include <numeric>
#include <type_traits>
#include <vector>

#include <performer/nn/rotary_embedding.hpp>
#include <performer/testing/expect_invalid.hpp>
#include <performer/testing/helpers.hpp>
#include <performer/testing/oracle.hpp>

namespace performer::test {
// Named as well as anonymous: the unity build compiles several test files as one.
namespace nn_rotary_embedding_test {
namespace {

using conformance::random_matrix;
using conformance::relative_difference;

template <class T>
struct RotaryEmbedding : ::testing::Test {};
using scalars = ::testing::Types<float, double>;
TYPED_TEST_SUITE(RotaryEmbedding, scalars);

// Rounding only: T's products and sums of two terms, plus the angle p theta formed in double,
// whose absolute error is at most p 2^-53 (1.1e-10 rad at p = 10^6). Entries are O(1).
TYPED_TEST(RotaryEmbedding, MatchesTheComplexDefinitionAtAnyPosition) {
  using T = TypeParam;
  const double tol = std::is_same_v<T, float> ? 1e-6 : 1e-9;
  for (const auto pairing : {rotary_pairing::half, rotary_pairing::interleaved}) {
    for (const index_t first : {index_t{0}, index_t{1000}, index_t{1000000}}) {
      const rotary_embedding<T> rope(16, 10000.0, pairing);
      const row_matrix<T> x = random_matrix<T>(40, 3 * 16, 5);  // three heads
      row_matrix<T> y = x;
      rope.apply(y, first);
      const row_matrix<double> expected = oracle::rotary(
          x, 16, 10000.0, pairing == rotary_pairing::interleaved, first);
      EXPECT_LE(relative_difference(y.template cast<double>(), expected), tol)
          << "first position " << first << ", interleaved "
          << (pairing == rotary_pairing::interleaved);
    }
  }
}

TEST(RotaryEmbedding, DotProductsDependOnTheOffsetOnly) {
  const rotary_embedding<double> rope(8, 500.0);
  const row_matrix<double> q = random_matrix<double>(1, 8, 1);
  const row_matrix<double> k = random_matrix<double>(1, 8, 2);
  const auto score = [&](index_t m, index_t n) {
    row_matrix<double> qm = q, kn = k;
    rope.apply(qm, m);
    rope.apply(kn, n);
    return qm.row(0).dot(kn.row(0));
  };
  EXPECT_NEAR(score(3, 1), score(103, 101), 1e-12);
  EXPECT_NEAR(score(0, 7), score(5000, 5007), 1e-11);
  EXPECT_NEAR(score(4, 4), q.row(0).dot(k.row(0)), 1e-14);  // same position: no change
  EXPECT_GT(std::abs(score(3, 1) - score(1, 3)), 1e-3);      // but the sign of the offset counts
}

// Interleaved pairs are the half-pairing's pairs after a channel permutation.
TEST(RotaryEmbedding, InterleavedIsHalfOnPermutedChannels) {
  const index_t d = 12;
  const row_matrix<double> x = random_matrix<double>(9, d, 3);
  std::vector<index_t> order(static_cast<std::size_t>(d));  // half position -> interleaved one
  for (index_t i = 0; i < d / 2; ++i) {
    order[static_cast<std::size_t>(i)] = 2 * i;
    order[static_cast<std::size_t>(i + d / 2)] = 2 * i + 1;
  }
  row_matrix<double> halves(9, d);
  for (index_t c = 0; c < d; ++c) halves.col(c) = x.col(order[static_cast<std::size_t>(c)]);
  row_matrix<double> inter = x;
  rotary_embedding<double>(d, 10000.0, rotary_pairing::interleaved).apply(inter, 2);
  rotary_embedding<double>(d, 10000.0, rotary_pairing::half).apply(halves, 2);
  for (index_t c = 0; c < d; ++c) {
    EXPECT_TRUE(halves.col(c) == inter.col(order[static_cast<std::size_t>(c)])) << "channel " << c;
  }
}

// One token at a time with its position gives the same bits as the whole sequence at once.
TEST(RotaryEmbedding, StreamingPositionsGiveTheSameBits) {
  const rotary_embedding<float> rope(8);
  const row_matrix<float> x = random_matrix<float>(30, 16, 4);
  row_matrix<float> whole = x;
  rope.apply(whole, 5);
  for (index_t r = 0; r < 30; ++r) {
    row_matrix<float> one = x.row(r);
    rope.apply(one, 5 + r);
    EXPECT_TRUE(conformance::same_bits(one, whole.row(r))) << "row " << r;
  }
}

TEST(RotaryEmbeddingBadInput, ConstructorAndApply) {
  PERFORMER_EXPECT_INVALID("rotary_embedding", "head_dim must be positive and even (got 7)",
                           rotary_embedding<float>(7));
  PERFORMER_EXPECT_INVALID("rotary_embedding", "head_dim must be positive and even (got 0)",
                           rotary_embedding<float>(0));
  PERFORMER_EXPECT_INVALID("rotary_embedding", "base must be finite and greater than 1 (got 1)",
                           rotary_embedding<double>(8, 1.0));
  PERFORMER_EXPECT_INVALID("rotary_embedding", "base must be finite and greater than 1 (got nan)",
                           rotary_embedding<double>(8, std::nan("")));
  const rotary_embedding<double> rope(8);
  row_matrix<double> x = random_matrix<double>(3, 12, 1);
  PERFORMER_EXPECT_INVALID("rotary_embedding::apply", "x has 12 columns, not a positive multiple of the head width 8",
                           rope.apply(x));
  x.resize(3, 8);
  PERFORMER_EXPECT_INVALID("rotary_embedding::apply", "first_position must be >= 0 (got -1)",
                           rope.apply(x, -1));
}

}  // namespace
}  // namespace nn_rotary_embedding_test
}  // namespace performer::test
