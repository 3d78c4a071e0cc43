// Covers performer/lsh/lsh_attention.hpp and lsh/detail/*.hpp: reduction to exact attention when
// every token shares one bucket and chunk, the documented window semantics (with the fallback)
// against an O(N^2) brute force, the work counted from the windows, window sizes as N grows,
// error falling with the number of rounds, causality, permutation equivariance where it holds,
// the shared Transformer block, and bad configuration. The shared contract is in the suites (conformance_test.cpp and its siblings);
// the hash family in angular_hash_test.cpp.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#include <performer/lsh/lsh_attention.hpp>
#include <performer/performer.hpp>
#include <performer/testing/helpers.hpp>

#include <performer/testing/oracle.hpp>

#include "lsh/brute_force.hpp"
#include "lsh/makers.hpp"

// Named as well as anonymous: the unity build compiles several test files as one.
namespace lsh_lsh_attention_test {
namespace {

using performer::attention_mask;
using performer::index_t;
using performer::lsh_attention;
using performer::lsh_options;
using performer::row_matrix;
using performer::conformance::random_matrix;
using performer::conformance::relative_difference;
using performer::conformance::run;
using keep_mask = std::vector<std::uint8_t>;

using performer::test::exact_shared;
using performer::test::keeps;
using performer::test::lsh_reference;
using performer::test::reference_counts;

// ---- Reduction to exact attention -----------------------------------------------------------

/// A rotation that puts every vector with a positive first coordinate in bucket 0: the
/// projections are [x0, 0 ...] and their negatives, and x0 > 0 wins.
row_matrix<double> first_axis_rotation(index_t d, index_t half) {
  row_matrix<double> r = row_matrix<double>::Zero(d, half);
  r(0, 0) = 1.0;
  return r;
}

row_matrix<double> positive_first_column(row_matrix<double> x) {
  x.col(0) = x.col(0).cwiseAbs().array() + 0.1;
  return x;
}

TEST(LshAttention, OneBucketAndOneChunkEqualsExactAttention) {
  const index_t n = 45;
  const index_t d = 8;
  const auto q = positive_first_column(random_matrix<double>(n, d, 1, 2.0));
  const auto k = positive_first_column(random_matrix<double>(n, d, 2, 2.0));
  const auto v = random_matrix<double>(n, 5, 3);
  keep_mask keep(static_cast<std::size_t>(n), 1);
  keep[0] = keep[7] = keep[8] = keep[44] = 0;
  for (const index_t hashes : {1, 3}) {
    for (const bool shared : {true, false}) {
      lsh_attention<double> a(
          d, {.buckets = 4, .hashes = hashes, .chunk = n, .shared_qk = shared, .seed = 1});
      for (index_t r = 0; r < hashes; ++r) a.hash_family().set_rotation(r, first_axis_rotation(d, 2));
      for (const bool causal : {false, true}) {
        for (const bool padded : {false, true}) {
          const keep_mask& mask = padded ? keep : keep_mask{};
          const auto out = run(a, q, k, v, attention_mask{causal, mask});
          const auto ref = shared ? exact_shared(q, v, causal, mask)
                                  : performer::oracle::softmax_attention(q, k, v, attention_mask{causal, mask});
          EXPECT_LE((out - ref).cwiseAbs().maxCoeff(), 1e-10)
              << "hashes " << hashes << " shared " << shared << " causal " << causal << " padded "
              << padded;
        }
      }
    }
  }
}

// Found by the fuzzer: shared-QK keys are q_j / |q_j|, and a norm in the subnormal range keeps
// few digits (|(m, m, m)| for m = 4.9e-324 rounds to 2m, not 1.73m), so such a row's key had norm
// 0.87. It must be a unit vector at any magnitude, as the long double reference's is.
TEST(LshAttention, SharedKeysAreUnitVectorsAtSubnormalNorms) {
  const index_t n = 6;
  const index_t d = 3;
  const double m = std::numeric_limits<double>::denorm_min();
  auto q = positive_first_column(random_matrix<double>(n, d, 4, 2.0));
  q.row(1).setConstant(m);
  q.row(2) << 3 * m, m, 0.0;
  q.row(4) << 1e-300, 2e-300, 1e-300;  // squares underflow, the norm does not
  const auto v = random_matrix<double>(n, 2, 5);
  lsh_attention<double> a(d, {.buckets = 2, .hashes = 2, .chunk = n, .shared_qk = true, .seed = 1});
  for (index_t r = 0; r < 2; ++r) a.hash_family().set_rotation(r, first_axis_rotation(d, 1));
  for (const bool causal : {false, true}) {
    const auto out = run(a, q, q, v, attention_mask{causal, {}});
    EXPECT_LE((out - exact_shared(q, v, causal, {})).cwiseAbs().maxCoeff(), 1e-12) << "causal " << causal;
  }
}

// ---- Semantics with real hashing, several rounds and small chunks ---------------------------

TEST(LshAttention, MatchesBruteForceUnionOfWindows) {
  const index_t d = 8;
  const index_t n = 60;
  keep_mask keep(static_cast<std::size_t>(n), 1);
  for (const index_t j : {2, 3, 17, 40, 59}) keep[static_cast<std::size_t>(j)] = 0;
  index_t fallbacks = 0;
  for (const bool shared : {true, false}) {
    for (const index_t chunk : {1, 3, 7}) {
      const lsh_attention<double> a(
          d, {.buckets = 4, .hashes = 3, .chunk = chunk, .shared_qk = shared, .seed = 11});
      const auto q = random_matrix<double>(n, d, 21, 1.5);
      const auto k = random_matrix<double>(n, d, 22, 1.5);
      const auto v = random_matrix<double>(n, 4, 23);
      for (const bool causal : {false, true}) {
        for (const bool padded : {false, true}) {
          const keep_mask& mask = padded ? keep : keep_mask{};
          reference_counts counts;
          const auto ref = lsh_reference(a, q, k, v, causal, mask, &counts);
          typename lsh_attention<double>::workspace_type ws;
          row_matrix<double> out(n, 4);
          a.forward(q, k, v, out, attention_mask{causal, mask}, ws);
          EXPECT_LE((out - ref).cwiseAbs().maxCoeff(), 1e-10)
              << "shared " << shared << " chunk " << chunk << " causal " << causal << " padded "
              << padded;
          EXPECT_EQ(ws.fallback_queries, counts.fallbacks);
          // Without causal masking no key tile is cut short: the kernel computed exactly the
          // windows' logits, which is what the flop count of the benchmarks reads.
          if (!causal) {
            EXPECT_EQ(ws.attended_pairs, counts.window_keys);
          }
          fallbacks += counts.fallbacks;
          // The case is not trivial: rounds propose the same key more than once (the
          // de-duplication matters) and queries see only part of the sequence.
          EXPECT_GT(counts.duplicates, 0);
          EXPECT_LT(counts.pairs, n * n / 2);
        }
      }
    }
  }
  EXPECT_GT(fallbacks, 0) << "no case exercised the fallback";
  // Cross-attention (separate keys, N_q != N_k): query i sits at position floor(i N_k / N_q).
  const lsh_attention<double> a(
      d, {.buckets = 4, .hashes = 2, .chunk = 3, .shared_qk = false, .seed = 12});
  for (const auto& [n_q, n_k] : {std::pair<index_t, index_t>{23, 61}, {61, 23}}) {
    const auto q = random_matrix<double>(n_q, d, 31);
    const auto k = random_matrix<double>(n_k, d, 32);
    const auto v = random_matrix<double>(n_k, 3, 33);
    keep_mask mask(static_cast<std::size_t>(n_k), 1);
    mask[5] = 0;
    EXPECT_LE(
        (run(a, q, k, v, attention_mask{false, mask}) - lsh_reference(a, q, k, v, false, mask))
            .cwiseAbs()
            .maxCoeff(),
        1e-10)
        << n_q << " queries, " << n_k << " keys";
  }
}

TEST(LshAttention, QueryWhoseBucketsHoldNoVisibleKeyAttendsLocally) {
  // Separate keys: every query in bucket 0 of the one round and every key in bucket 1 (a
  // rotation along the first axis, first coordinates of opposite signs), so no window holds a
  // key. Causal: each query attends to the chunk of visible keys ending at its own position;
  // bidirectional: the same (keys at or before it), and the first query, with padding in front
  // of it, to the first chunk after it.
  const index_t n = 12;
  const index_t d = 4;
  row_matrix<double> q = random_matrix<double>(n, d, 1);
  row_matrix<double> k = random_matrix<double>(n, d, 2);
  q.col(0) = q.col(0).cwiseAbs().array() + 0.5;
  k.col(0) = -(k.col(0).cwiseAbs().array() + 0.5);
  const auto v = random_matrix<double>(n, 3, 3);
  lsh_attention<double> a(d, {.buckets = 2, .hashes = 1, .chunk = 3, .shared_qk = false});
  row_matrix<double> axis = row_matrix<double>::Zero(d, 1);
  axis(0, 0) = 1.0;
  a.hash_family().set_rotation(0, axis);
  ASSERT_EQ(a.buckets(q, 0), std::vector<index_t>(n, 0));
  ASSERT_EQ(a.buckets(k, 0), std::vector<index_t>(n, 1));
  keep_mask keep(n, 1);
  keep[0] = keep[1] = keep[5] = 0;
  for (const bool causal : {true, false}) {
    typename lsh_attention<double>::workspace_type ws;
    row_matrix<double> out(n, 3);
    a.forward(q, k, v, out, attention_mask{causal, keep}, ws);
    for (index_t i = 0; i < n; ++i) {
      keep_mask window(n, 0);
      index_t taken = 0;
      for (index_t j = i; j >= 0 && taken < 3; --j) {
        if (keep[static_cast<std::size_t>(j)] != 0) {
          window[static_cast<std::size_t>(j)] = 1;
          ++taken;
        }
      }
      if (taken == 0 && !causal) {
        for (index_t j = 0; j < n && taken < 3; ++j) {
          if (keep[static_cast<std::size_t>(j)] != 0) {
            window[static_cast<std::size_t>(j)] = 1;
            ++taken;
          }
        }
      }
      const auto ref = performer::oracle::softmax_attention(q.row(i), k, v, attention_mask{false, window});
      if (taken == 0) {
        EXPECT_TRUE(out.row(i).isZero(0)) << "query " << i << " sees no key";
      } else {
        EXPECT_LE((out.row(i) - ref).cwiseAbs().maxCoeff(), 1e-12) << "query " << i << " causal " << causal;
      }
    }
    EXPECT_EQ(ws.fallback_queries, causal ? n - 2 : n);  // causal: queries 0 and 1 see nothing
  }
}

TEST(LshAttention, WindowSizeStaysConstantAsTheSequenceGrows) {
  // With the default bucket count (about 2 N / c) a bucket holds about c / 2 keys at any N, so
  // the keys a query attends to per round stay near c / 2 instead of growing with N (with a
  // fixed 32 buckets: 9 keys at N = 256, 93 at 4,096 on uniform keys; docs/algorithms.md §6.9).
  const index_t d = 64;
  std::vector<double> means;
  for (const index_t n : {256, 1024, 4096, 16384}) {
    const lsh_attention<float> a(d, {.shared_qk = false});
    const auto q = random_matrix<float>(n, d, 7);
    const auto k = random_matrix<float>(n, d, 8);
    const auto v = random_matrix<float>(n, 4, 9);
    typename lsh_attention<float>::workspace_type ws;
    row_matrix<float> out(n, 4);
    a.forward(q, k, v, out, {}, ws);
    const double per_round = static_cast<double>(ws.attended_pairs) / static_cast<double>(n * a.options().hashes);
    means.push_back(per_round);
    EXPECT_EQ(a.bucket_count(n), std::max<index_t>(2, 2 * n / a.options().chunk)) << "N = " << n;
  }
  for (const double m : means) {
    EXPECT_GT(m, 16.0);
    EXPECT_LT(m, 64.0);
  }
  EXPECT_LT(*std::max_element(means.begin(), means.end()),
            1.5 * *std::min_element(means.begin(), means.end()));
}

// ---- Bad input ------------------------------------------------------------------------------

TEST(LshAttention, RejectsBadConfiguration) {
  using performer::invalid_argument;
  EXPECT_THROW(lsh_attention<float>(16, {.buckets = 7}), invalid_argument);
  EXPECT_THROW(lsh_attention<float>(16, {.buckets = 1}), invalid_argument);
  EXPECT_THROW(lsh_attention<float>(16, {.buckets = -2}), invalid_argument);
  EXPECT_NO_THROW(lsh_attention<float>(16, {.buckets = 0}));  // automatic
  EXPECT_THROW(lsh_attention<float>(16, {.chunk = 0}), invalid_argument);
  EXPECT_THROW(lsh_attention<float>(16, {.hashes = 0}), invalid_argument);
  EXPECT_THROW(lsh_attention<float>(0), invalid_argument);
  EXPECT_THROW(lsh_attention<float>(16, {.buckets = (index_t{1} << 30) + 2}), invalid_argument);
  try {
    lsh_attention<float>(16, {.buckets = 7});
    ADD_FAILURE() << "odd buckets accepted";
  } catch (const invalid_argument& e) {
    EXPECT_STREQ(e.what(), "lsh_attention: buckets must be 0 (automatic) or even and at least 2 (got 7)");
  }
  EXPECT_NO_THROW(lsh_attention<float>(16, {.buckets = 2, .hashes = 1, .chunk = 1}));
}

TEST(LshAttention, RejectsBadInput) {
  using performer::invalid_argument;
  lsh_attention<float> a(16, {.buckets = 4, .hashes = 2, .chunk = 4});
  const lsh_attention<float> separate(16,
                                      {.buckets = 4, .hashes = 2, .chunk = 4, .shared_qk = false});
  const auto q = random_matrix<float>(6, 16, 1);
  const auto k = random_matrix<float>(9, 16, 2);
  const auto v = random_matrix<float>(9, 4, 3);
  const auto v6 = random_matrix<float>(6, 4, 3);
  // Shared-QK needs k with q's shape; separate keys accept cross-attention.
  EXPECT_THROW(static_cast<void>(run(a, q, k, v)), invalid_argument);
  try {
    static_cast<void>(run(a, q, k, v));
  } catch (const invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("shared_qk requires k to have q's shape"),
              std::string::npos)
        << e.what();
  }
  EXPECT_NO_THROW(static_cast<void>(run(separate, q, k, v)));
  // Causal needs N_q == N_k even with separate keys.
  EXPECT_THROW(static_cast<void>(run(separate, q, k, v, attention_mask{true, {}})),
               invalid_argument);
  // Mask of the wrong length.
  const keep_mask short_mask(5, 1);
  EXPECT_THROW(static_cast<void>(run(a, q, q, v6, attention_mask{false, short_mask})),
               invalid_argument);
  // Non-finite inputs (k is validated even though shared-QK does not read it).
  auto bad = q;
  bad(2, 3) = std::numeric_limits<float>::quiet_NaN();
  EXPECT_THROW(static_cast<void>(run(a, bad, q, v6)), invalid_argument);
  EXPECT_THROW(static_cast<void>(run(a, q, bad, v6)), invalid_argument);
  auto bad_v = v6;
  bad_v(0, 0) = std::numeric_limits<float>::infinity();
  EXPECT_THROW(static_cast<void>(run(a, q, q, bad_v)), invalid_argument);
  // Head width other than the rotations'.
  const auto narrow = random_matrix<float>(6, 15, 4);
  EXPECT_THROW(static_cast<void>(run(a, narrow, narrow, v6)), invalid_argument);
  // Rotations: wrong shape, non-finite, round out of range, or for another bucket count than
  // the call's (the rotation is accepted, the call that cannot use it throws).
  EXPECT_THROW(a.hash_family().set_rotation(0, row_matrix<float>::Zero(16, 65)), invalid_argument);
  EXPECT_THROW(a.hash_family().set_rotation(0, row_matrix<float>::Zero(15, 2)), invalid_argument);
  {
    lsh_attention<float> other(16, {.buckets = 4, .hashes = 2, .chunk = 4});
    other.hash_family().set_rotation(0, row_matrix<float>::Zero(16, 3));
    try {
      static_cast<void>(run(other, q, q, v6));
      ADD_FAILURE() << "a 6-bucket rotation was used for 4 buckets";
    } catch (const invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find("set lsh_options::buckets to 6"), std::string::npos) << e.what();
    }
  }
  row_matrix<float> nan_rotation = row_matrix<float>::Zero(16, 2);
  nan_rotation(1, 1) = std::numeric_limits<float>::quiet_NaN();
  EXPECT_THROW(a.hash_family().set_rotation(0, nan_rotation), invalid_argument);
  EXPECT_THROW(a.hash_family().set_rotation(2, row_matrix<float>::Zero(16, 2)), invalid_argument);
  EXPECT_THROW(static_cast<void>(a.hash_family().rotation(-1, a.options().buckets)), invalid_argument);
  EXPECT_THROW(static_cast<void>(a.buckets(q.row(0), 2)[0]), invalid_argument);
  EXPECT_THROW(static_cast<void>(a.buckets(narrow.row(0), 0)[0]), invalid_argument);
  EXPECT_THROW(static_cast<void>(a.buckets(narrow, 0)), invalid_argument);
}

}  // namespace
}  // namespace lsh_lsh_attention_test
