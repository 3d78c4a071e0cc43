// Covers performer/lsh/lsh_gradient.hpp: the backward pass of LSH attention against central
// finite differences (support/gradient_check.hpp) for shared-QK and separate keys, bidirectional
// and causal, cross-attention, key padding, several rounds proposing the same key, and the
// fallback window; every check asserts that the perturbed inputs kept the forward's buckets (the
// gradient holds them fixed). Also float against double, thread count, workspace reuse, and bad
// input.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include <performer/lsh/lsh_attention.hpp>
#include <performer/lsh/lsh_gradient.hpp>
#include <performer/testing/expect_invalid.hpp>
#include <performer/testing/helpers.hpp>

#include "support/gradient_check.hpp"

// Named as well as anonymous: the unity build compiles several test files as one.
namespace lsh_lsh_gradient_test {
namespace {

using performer::attention_mask;
using performer::index_t;
using performer::lsh_attention;
using performer::lsh_options;
using performer::row_matrix;
using performer::test::finite_differences;
using performer::test::gaussian_matrix;
using performer::test::relative_error;
using keep_mask = std::vector<std::uint8_t>;

template <class T>
using gradient = performer::attention_gradient<lsh_attention<T>>;

template <class T>
struct problem {
  row_matrix<T> q, k, v, dout;
};

problem<double> make_problem(index_t n_q, index_t n_k, index_t d, index_t d_v, unsigned seed) {
  return {gaussian_matrix(n_q, d, seed), gaussian_matrix(n_k, d, seed + 1),
          gaussian_matrix(n_k, d_v, seed + 2), gaussian_matrix(n_q, d_v, seed + 3)};
}

template <class T>
problem<T> cast(const problem<double>& p) {
  return {p.q.cast<T>(), p.k.cast<T>(), p.v.cast<T>(), p.dout.cast<T>()};
}

/// One forward and backward with fresh workspaces, and what they report.
template <class T>
struct result {
  row_matrix<T> out, dq, dk, dv;
  std::vector<std::int32_t> q_bucket, k_bucket;
  std::int64_t forward_pairs = 0;   // the forward's attended_pairs: a key once per round
  std::int64_t distinct_pairs = 0;  // the backward's: each (query, key) once
  index_t fallback_queries = 0;
};

template <class T>
result<T> differentiate(const lsh_attention<T>& a, const problem<T>& p,
                        const attention_mask& mask) {
  typename lsh_attention<T>::workspace_type forward_ws;
  typename gradient<T>::saved_type saved;
  typename gradient<T>::workspace_type ws;
  result<T> r;
  r.out.resize(p.q.rows(), p.v.cols());
  gradient<T>::forward(a, p.q, p.k, p.v, r.out, mask, forward_ws, saved);
  r.dq.resize(p.q.rows(), p.q.cols());
  r.dk.resize(p.k.rows(), p.k.cols());
  r.dv.resize(p.v.rows(), p.v.cols());
  gradient<T>::backward(a, p.q, p.k, p.v, r.out, p.dout, r.dq, r.dk, r.dv, mask, ws, saved);
  r.q_bucket = saved.q_bucket;
  r.k_bucket = saved.k_bucket;
  r.forward_pairs = forward_ws.attended_pairs;
  r.distinct_pairs = ws.attended_pairs;
  r.fallback_queries = forward_ws.fallback_queries;
  return r;
}

/**
 * The backward against central differences (h = 1e-5) to 1e-7 relative (gradient_check.hpp).
 * Every perturbed forward must keep the unperturbed buckets: otherwise the difference would
 * straddle a jump of the piecewise-constant assignment, which the gradient holds fixed. Also
 * checks that the windows are real subsets (the test is not plain softmax) and returns the run.
 */
result<double> expect_matches_finite_differences(const lsh_attention<double>& a,
                                                 const problem<double>& p,
                                                 const attention_mask& mask) {
  const result<double> g = differentiate(a, p, mask);
  int moved = 0;
  const auto f = [&](const row_matrix<double>& q, const row_matrix<double>& k,
                     const row_matrix<double>& v) {
    typename lsh_attention<double>::workspace_type ws;
    gradient<double>::saved_type saved;
    row_matrix<double> out(q.rows(), v.cols());
    gradient<double>::forward(a, q, k, v, out, mask, ws, saved);
    if (saved.q_bucket != g.q_bucket || saved.k_bucket != g.k_bucket) ++moved;
    return out;
  };
  const auto fd = finite_differences(f, p.q, p.k, p.v, p.dout);
  EXPECT_EQ(moved, 0) << "a step of 1e-5 moved a token to another bucket: pick another seed";
  EXPECT_LT(relative_error(g.dq, fd.dq), 1e-7);
  EXPECT_LT(relative_error(g.dv, fd.dv), 1e-7);
  if (a.options().shared_qk) {
    // k is never read: its gradient is exactly zero, as the differences find.
    EXPECT_TRUE(g.dk.isZero(0.0));
    EXPECT_TRUE(fd.dk.isZero(0.0));
  } else {
    EXPECT_LT(relative_error(g.dk, fd.dk), 1e-7);
  }
  EXPECT_GT(g.distinct_pairs, 0);
  EXPECT_LT(g.distinct_pairs, p.q.rows() * p.k.rows()) << "every query saw every key";
  return g;
}

lsh_attention<double> make(index_t d, index_t hashes, index_t chunk, bool shared,
                           std::uint64_t seed, index_t buckets = 4) {
  return lsh_attention<double>(
      d, {.buckets = buckets, .hashes = hashes, .chunk = chunk, .shared_qk = shared, .seed = seed});
}

// ---- Against finite differences -------------------------------------------------------------

TEST(LshGradient, SharedQkBidirectional) {
  const auto a = make(5, 2, 3, true, 11);
  expect_matches_finite_differences(a, make_problem(20, 20, 5, 4, 1), {});
}

TEST(LshGradient, SharedQkCausal) {
  const auto a = make(5, 2, 3, true, 12);
  expect_matches_finite_differences(a, make_problem(20, 20, 5, 4, 2), {.causal = true});
}

TEST(LshGradient, SeparateKeysBidirectional) {
  const auto a = make(4, 2, 3, false, 13);
  expect_matches_finite_differences(a, make_problem(18, 18, 4, 3, 3), {});
}

TEST(LshGradient, SeparateKeysCausal) {
  const auto a = make(6, 2, 4, false, 14);
  expect_matches_finite_differences(a, make_problem(22, 22, 6, 4, 4), {.causal = true});
}

TEST(LshGradient, CrossAttentionWithSeparateKeys) {
  const auto a = make(5, 2, 3, false, 15);
  expect_matches_finite_differences(a, make_problem(14, 22, 5, 4, 5), {});
  expect_matches_finite_differences(a, make_problem(22, 12, 5, 4, 6), {});
}

TEST(LshGradient, PaddedKeysGetNoGradientAndChangeNothing) {
  keep_mask keep(20, 1);
  keep[0] = keep[6] = keep[7] = keep[15] = 0;
  for (const bool shared : {true, false}) {
    for (const bool causal : {false, true}) {
      SCOPED_TRACE(testing::Message() << "shared " << shared << ", causal " << causal);
      const auto a = make(5, 2, 3, shared, 16);
      const auto g = expect_matches_finite_differences(a, make_problem(20, 20, 5, 4, 7),
                                                       {.causal = causal, .key_mask = keep});
      for (const index_t j : {0, 6, 7, 15}) {
        EXPECT_TRUE(g.dv.row(j).isZero(0.0)) << "padded key " << j;
        if (!shared) {
          EXPECT_TRUE(g.dk.row(j).isZero(0.0)) << "padded key " << j;
        }
      }
    }
  }
}

TEST(LshGradient, KeysProposedBySeveralRoundsCountOnce) {
  for (const bool shared : {true, false}) {
    SCOPED_TRACE(testing::Message() << "shared " << shared);
    const auto a = make(4, 4, 4, shared, 17);
    const auto g = expect_matches_finite_differences(a, make_problem(16, 16, 4, 3, 8), {});
    // Without the causal mask the forward computes a logit per (round, window key): more than
    // the distinct pairs exactly when rounds proposed keys again.
    EXPECT_EQ(g.fallback_queries, 0);
    EXPECT_GT(g.forward_pairs, g.distinct_pairs);
  }
}

TEST(LshGradient, FallbackWindow) {
  // One round of 8 buckets for 12 separate keys: some queries' buckets hold no key they see.
  for (const bool causal : {false, true}) {
    SCOPED_TRACE(testing::Message() << "causal " << causal);
    const auto a = make(4, 1, 3, false, 18, 8);
    const auto g = expect_matches_finite_differences(a, make_problem(12, 12, 4, 3, 9),
                                                     {.causal = causal});
    EXPECT_GT(g.fallback_queries, 0);
  }
}

// ---- Precision, determinism, reuse -----------------------------------------------------------

TEST(LshGradient, FloatAgreesWithDouble) {
  for (const bool shared : {true, false}) {
    for (const bool causal : {false, true}) {
      SCOPED_TRACE(testing::Message() << "shared " << shared << ", causal " << causal);
      const lsh_options options{
          .buckets = 4, .hashes = 3, .chunk = 4, .shared_qk = shared, .seed = 19};
      const auto p = make_problem(24, 24, 6, 4, 10);
      const auto g64 = differentiate(lsh_attention<double>(6, options), p, {.causal = causal});
      const auto g32 = differentiate(lsh_attention<float>(6, options), cast<float>(p),
                                     {.causal = causal});
      ASSERT_EQ(g32.q_bucket, g64.q_bucket) << "float and double hash alike here";
      ASSERT_EQ(g32.k_bucket, g64.k_bucket);
      EXPECT_LT(relative_error(g32.dq.cast<double>(), g64.dq), 1e-4);
      EXPECT_LT(relative_error(g32.dv.cast<double>(), g64.dv), 1e-4);
      if (!shared) {
        EXPECT_LT(relative_error(g32.dk.cast<double>(), g64.dk), 1e-4);
      }
    }
  }
}

template <class T>
bool same_result(const result<T>& a, const result<T>& b) {
  using performer::conformance::same_bits;
  return same_bits(a.out, b.out) && same_bits(a.dq, b.dq) && same_bits(a.dk, b.dk) &&
         same_bits(a.dv, b.dv);
}

TEST(LshGradient, ThreadCountDoesNotChangeBits) {
#ifndef _OPENMP
  GTEST_SKIP() << "built without OpenMP: there is only one thread count to compare";
#else
  // Long enough that the forward runs its windows on several threads.
  const auto p = cast<float>(make_problem(2048, 2048, 4, 4, 11));
  const int eigen_threads = Eigen::nbThreads();
  const int threads = omp_get_max_threads();
  Eigen::setNbThreads(1);
  for (const bool shared : {true, false}) {
    const lsh_attention<float> a(4, {.hashes = 2, .chunk = 64, .shared_qk = shared, .seed = 20});
    for (const bool causal : {false, true}) {
      omp_set_num_threads(1);
      const auto one = differentiate(a, p, {.causal = causal});
      omp_set_num_threads(2);
      const auto two = differentiate(a, p, {.causal = causal});
      EXPECT_TRUE(same_result(one, two)) << "shared " << shared << ", causal " << causal;
    }
  }
  omp_set_num_threads(threads);
  Eigen::setNbThreads(eigen_threads);
#endif
}

TEST(LshGradient, ReusedWorkspaceGivesTheSameBits) {
  const auto a = make(5, 3, 3, true, 21);
  typename lsh_attention<double>::workspace_type forward_ws;
  gradient<double>::saved_type saved;
  gradient<double>::workspace_type ws;
  const auto run = [&](const problem<double>& p, const attention_mask& mask) {
    result<double> r;
    r.out.resize(p.q.rows(), p.v.cols());
    gradient<double>::forward(a, p.q, p.k, p.v, r.out, mask, forward_ws, saved);
    r.dq.resize(p.q.rows(), p.q.cols());
    r.dk.resize(p.k.rows(), p.k.cols());
    r.dv.resize(p.v.rows(), p.v.cols());
    gradient<double>::backward(a, p.q, p.k, p.v, r.out, p.dout, r.dq, r.dk, r.dv, mask, ws, saved);
    return r;
  };
  const auto small = make_problem(12, 12, 5, 4, 12);
  const auto large = make_problem(24, 24, 5, 4, 13);
  const auto first = run(large, {.causal = true});
  static_cast<void>(run(small, {}));
  EXPECT_TRUE(same_result(run(large, {.causal = true}), first));
  EXPECT_TRUE(same_result(differentiate(a, large, {.causal = true}), first));
}

TEST(LshGradient, ZeroQueryRowHasAFiniteGradient) {
  // Its key is the constant zero (no direction to differentiate): the gradient stays finite.
  auto p = make_problem(16, 16, 4, 3, 14);
  p.q.row(5).setZero();
  const auto g = differentiate(make(4, 2, 3, true, 22), p, {.causal = true});
  EXPECT_TRUE(performer::all_finite(g.dq));
  EXPECT_TRUE(performer::all_finite(g.dv));
}

// ---- Bad input -------------------------------------------------------------------------------

TEST(LshGradient, BadInputThrows) {
  constexpr const char* who = "lsh_attention::backward";
  const auto a = make(4, 2, 3, false, 23);
  auto p = make_problem(12, 12, 4, 3, 15);
  typename lsh_attention<double>::workspace_type forward_ws;
  gradient<double>::saved_type saved;
  gradient<double>::workspace_type ws;
  row_matrix<double> out(12, 3), dq(12, 4), dk(12, 4), dv(12, 3);
  gradient<double>::forward(a, p.q, p.k, p.v, out, {}, forward_ws, saved);

  const row_matrix<double> short_dout = p.dout.topRows(11);
  PERFORMER_EXPECT_INVALID(who, "dout is 11x3",
                           gradient<double>::backward(a, p.q, p.k, p.v, out, short_dout, dq, dk,
                                                      dv, {}, ws, saved));
  PERFORMER_EXPECT_INVALID(who, "dq overlaps an input",
                           gradient<double>::backward(a, p.q, p.k, p.v, out, p.dout, p.q, dk, dv,
                                                      {}, ws, saved));
  row_matrix<double> bad_dout = p.dout;
  bad_dout(3, 1) = std::numeric_limits<double>::quiet_NaN();
  PERFORMER_EXPECT_INVALID(who, "dout (12x3) contains a NaN",
                           gradient<double>::backward(a, p.q, p.k, p.v, out, bad_dout, dq, dk, dv,
                                                      {}, ws, saved));
  const gradient<double>::saved_type never_forwarded;
  PERFORMER_EXPECT_INVALID(who, "saved does not come from a forward",
                           gradient<double>::backward(a, p.q, p.k, p.v, out, p.dout, dq, dk, dv,
                                                      {}, ws, never_forwarded));
}

}  // namespace
}  // namespace lsh_lsh_gradient_test
