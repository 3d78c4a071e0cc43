/// @file testing/conformance.hpp
/// @brief Reusable GoogleTest conformance suite for any model of attention_mechanism.
///
/// Needs GoogleTest (it is not included by performer.hpp). To run it on your own mechanism,
/// write a maker and instantiate the typed suite:
/// @code
/// struct my_maker {
///   using attention_type = my_attention<float>;
///   static attention_type make(performer::index_t head_dim) { return attention_type(head_dim); }
///   // optional: static constexpr double tolerance = 1e-4;        (relative, default by scalar)
///   // optional: static constexpr bool convex = false;            (weights may be negative)
///   // optional: static constexpr bool exact_padding_equivalence = false;  (positional windows)
///   // optional: static constexpr bool cross_padding_equivalence = false;
///   // optional: static constexpr bool shared_qk = true;          (keys are the queries)
///   // optional: static constexpr bool exact_causal_prefix = false; (rounding may differ)
///   // optional: static constexpr double min_logit_response = 0.25;  (see logit_response)
///   // optional: static row_vector<float> future_key(const attention_type&, index_t d, index_t j);
/// };
/// namespace performer::conformance {  // the macro needs the suite's name unqualified
/// INSTANTIATE_TYPED_TEST_SUITE_P(mine, attention_conformance, ::testing::Types<my_maker>);
/// }
/// @endcode
///
/// What it checks: output shape and finiteness (self- and cross-attention, d != d_v); each
/// output row inside the range of the values it mixes (convexity); a clear exception for each
/// kind of bad input; causal prefix invariance (changing token j, even to a norm 50 times the
/// others' or to the maker's most adversarial key, leaves every output i < j exactly as it was,
/// or within rounding where the maker says so)
/// or a clear exception when causal is unsupported; padding invariance (garbage in a padded
/// token's query, key and value rows changes no real token's output, and the real tokens'
/// outputs equal those of the sequence with the padded tokens removed, so padding left the
/// weighted sums, the normalisers and any statistic the mechanism fits); key permutation
/// invariance where the mechanism declares it; zeros for a query with no visible key and never
/// for one that has a visible key; outputs that follow the logits q.k (a key aligned with its
/// query pulls the output towards its value, measured against exact attention); identical
/// results from a fresh and a reused workspace.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#include "../core/attention_mask.hpp"
#include "../core/concepts.hpp"
#include "../core/error.hpp"
#include "../core/types.hpp"
#include "helpers.hpp"
#include "maker_traits.hpp"
#include "oracle.hpp"

namespace performer::conformance {

/**
 * How far a mechanism's output follows the logits q.k, as a fraction of exact attention's
 * response (1 for exact attention, 0 for uniform attention, which passes every other check).
 *
 * Tokens come in pairs (2t, 2t + 1): the key of token 2t + 1 is made parallel or anti-parallel
 * to query 2t, giving that pair a logit of +1 or -1 (with shared-QK keys, the query of token
 * 2t + 1 is, so that its normalised key is). Returns the projection of the mechanism's change
 * of outputs 2t between the two onto exact attention's change, over the squared size of the
 * latter (12 tokens, bidirectional, no mask).
 */
template <class A>
double logit_response(const A& a, index_t d, index_t d_v, bool shared_qk = false) {
  using T = typename A::scalar_type;
  constexpr index_t n = 12;
  const auto q0 = random_matrix<T>(n, d, 71);
  const auto k0 = random_matrix<T>(n, d, 72);
  const auto v = random_matrix<T>(n, d_v, 73);
  const auto planted = [&](T sign) {
    row_matrix<T> q = q0;
    row_matrix<T> k = k0;
    for (index_t t = 0; 2 * t + 1 < n; ++t) {
      const row_vector<T> qi = q.row(2 * t);
      if (shared_qk) {
        q.row(2 * t + 1) = sign * qi;
      } else {
        k.row(2 * t + 1) = sign * qi * (std::sqrt(static_cast<T>(d)) / qi.squaredNorm());
      }
    }
    if (shared_qk) k = q;
    return std::pair{q, k};
  };
  const auto [q_up, k_up] = planted(T(1));
  const auto [q_down, k_down] = planted(T(-1));
  const oracle::oracle_options options{.shared_qk = shared_qk};
  const row_matrix<double> exact_move = oracle::softmax_attention(q_up, k_up, v, {}, options) -
                                        oracle::softmax_attention(q_down, k_down, v, {}, options);
  const row_matrix<double> move =
      (run(a, q_up, k_up, v) - run(a, q_down, k_down, v)).template cast<double>();
  double along = 0;
  double exact_size = 0;
  for (index_t t = 0; 2 * t + 1 < n; ++t) {
    along += move.row(2 * t).dot(exact_move.row(2 * t));
    exact_size += exact_move.row(2 * t).squaredNorm();
  }
  return along / exact_size;
}

template <class Maker>
class attention_conformance : public ::testing::Test {
 protected:
  using traits = maker_traits<Maker>;
  using attention_type = typename traits::attention_type;
  using T = typename traits::scalar;
  static constexpr index_t d = 16;
  static constexpr index_t d_v = 8;

  static attention_type make() { return Maker::make(d); }

  /// The keys a call passes: q itself for shared-QK mechanisms.
  static const row_matrix<T>& keys(const row_matrix<T>& q, const row_matrix<T>& k) {
    return traits::shared_qk ? q : k;
  }

  /// Future tokens the causal check plants at position j: 50 times the norm of the others,
  /// and the maker's most adversarial key when it names one.
  static std::vector<row_vector<T>> future_keys(const attention_type& a, const row_matrix<T>& k,
                                                index_t j) {
    std::vector<row_vector<T>> keys{k.row(j) * T(50)};
    if constexpr (requires { Maker::future_key(a, d, j); }) {
      keys.push_back(Maker::future_key(a, d, j));
    }
    return keys;
  }
};

TYPED_TEST_SUITE_P(attention_conformance);

TYPED_TEST_P(attention_conformance, ModelsTheConcept) {
  static_assert(attention_mechanism<typename TestFixture::attention_type>);
}

TYPED_TEST_P(attention_conformance, ShapesFinitenessAndConvexity) {
  using T = typename TestFixture::T;
  const auto a = TestFixture::make();
  for (const auto& [n_q, n_k] : {std::pair<index_t, index_t>{1, 1}, {5, 40}, {40, 5}, {33, 33}}) {
    if (TestFixture::traits::shared_qk && n_q != n_k) continue;  // keys are the queries
    const auto q = random_matrix<T>(n_q, TestFixture::d, 1);
    const auto k = random_matrix<T>(n_k, TestFixture::d, 2);
    const auto v = random_matrix<T>(n_k, TestFixture::d_v, 3);
    const auto out = run(a, q, TestFixture::keys(q, k), v);
    ASSERT_EQ(out.rows(), n_q);
    ASSERT_EQ(out.cols(), TestFixture::d_v);
    EXPECT_TRUE(out.allFinite());
    if constexpr (TestFixture::traits::convex) {
      const double slack = TestFixture::traits::tolerance;
      for (index_t c = 0; c < TestFixture::d_v; ++c) {
        EXPECT_GE(out.col(c).minCoeff(), v.col(c).minCoeff() - slack) << "column " << c;
        EXPECT_LE(out.col(c).maxCoeff(), v.col(c).maxCoeff() + slack) << "column " << c;
      }
    }
  }
}

TYPED_TEST_P(attention_conformance, RejectsBadInput) {
  using T = typename TestFixture::T;
  constexpr index_t d = TestFixture::d;
  const auto a = TestFixture::make();
  const auto q = random_matrix<T>(6, d, 1);
  const auto k = TestFixture::keys(q, random_matrix<T>(6, d, 2));
  const auto v = random_matrix<T>(6, TestFixture::d_v, 3);
  row_matrix<T> out(6, TestFixture::d_v);
  typename TestFixture::attention_type::workspace_type ws;
  const row_matrix<T> empty(0, d);
  const row_matrix<T> narrow_k = random_matrix<T>(6, d - 1, 4);
  const row_matrix<T> short_v = random_matrix<T>(5, TestFixture::d_v, 5);
  row_matrix<T> wrong_out(6, TestFixture::d_v + 1);
  row_matrix<T> nan_q = q;
  nan_q(2, 3) = std::numeric_limits<T>::quiet_NaN();
  row_matrix<T> inf_v = v;
  inf_v(1, 1) = std::numeric_limits<T>::infinity();
  const std::vector<std::uint8_t> short_mask(5, 1);
  const attention_mask none{};
  EXPECT_THROW(a.forward(empty, k, v, out.topRows(0), none, ws), invalid_argument);
  EXPECT_THROW(a.forward(q, empty, empty.leftCols(TestFixture::d_v), out, none, ws), invalid_argument);
  EXPECT_THROW(a.forward(q, narrow_k, v, out, none, ws), invalid_argument);
  EXPECT_THROW(a.forward(q, k, short_v, out, none, ws), invalid_argument);
  EXPECT_THROW(a.forward(q, k, v, wrong_out, none, ws), invalid_argument);
  EXPECT_THROW(a.forward(nan_q, k, v, out, none, ws), invalid_argument);
  EXPECT_THROW(a.forward(q, k, inf_v, out, none, ws), invalid_argument);
  EXPECT_THROW(a.forward(q, k, v, out, attention_mask{false, short_mask}, ws), invalid_argument);
  // Causal self-attention needs N_q == N_k; mechanisms without causal support refuse it.
  EXPECT_THROW(a.forward(q.topRows(4), k, v, out.topRows(4), attention_mask{true, {}}, ws),
               invalid_argument);
  // The output may not alias an input.
  row_matrix<T> vq(6, d);
  vq.leftCols(TestFixture::d_v) = v;
  EXPECT_THROW(a.forward(vq, vq, vq.leftCols(TestFixture::d_v), vq.rightCols(TestFixture::d_v),
                         none, ws),
               invalid_argument);
}

TYPED_TEST_P(attention_conformance, CausalPrefixInvariance) {
  using T = typename TestFixture::T;
  using A = typename TestFixture::attention_type;
  constexpr index_t n = 37;
  const auto a = TestFixture::make();
  const auto q = random_matrix<T>(n, TestFixture::d, 11);
  const auto k = TestFixture::keys(q, random_matrix<T>(n, TestFixture::d, 12));
  const auto v = random_matrix<T>(n, TestFixture::d_v, 13);
  const attention_mask causal{true, {}};
  if constexpr (!A::supports_causal) {
    row_matrix<T> out(n, TestFixture::d_v);
    typename A::workspace_type ws;
    EXPECT_THROW(a.forward(q, k, v, out, causal, ws), invalid_argument);
  } else {
    const auto base = run(a, q, k, v, causal);
    EXPECT_TRUE(base.allFinite());
    for (const index_t j : {index_t{0}, index_t{1}, index_t{20}, n - 1}) {
      for (const auto& future : TestFixture::future_keys(a, k, j)) {
        auto q2 = q;
        auto k2 = k;
        auto v2 = v;
        // A stabiliser or normaliser that looked at every key would let such a token leak.
        q2.row(j) *= T(50);
        k2.row(j) = future;
        if (TestFixture::traits::shared_qk) q2.row(j) = future;
        v2.row(j).setConstant(T(1000));
        row_matrix<T> changed;
        try {
          changed = run(a, q2, TestFixture::keys(q2, k2), v2, causal);
        } catch (const invalid_argument& e) {
          // A token 50 times the others' norm can take a mechanism beyond T's range (FAVOR in
          // float: whether its feature products underflow depends on the platform's exp). The
          // documented overflow error is then the answer, and there is no result to compare;
          // the same check runs wherever the call returns.
          const std::string what = e.what();
          EXPECT_NE(what.find("overflow"), std::string::npos) << what;
          continue;
        }
        if (j == 0) {  // no earlier output: only finiteness to check
          EXPECT_TRUE(changed.allFinite());
          continue;
        }
        const double moved = relative_difference(changed.topRows(j), base.topRows(j));
        if (TestFixture::traits::exact_causal_prefix) {
          // Exactly equal: no rounding of an earlier output may depend on a later token.
          EXPECT_TRUE(changed.topRows(j) == base.topRows(j))
              << "changing token " << j << " changed an earlier output by up to " << moved;
        } else {
          EXPECT_LE(moved, TestFixture::traits::tolerance)
              << "changing token " << j << " changed an earlier output";
        }
        EXPECT_TRUE(changed.allFinite());
      }
    }
    // The first query sees only itself: its output is its own value.
    EXPECT_LE(relative_difference(base.row(0), v.row(0)), TestFixture::traits::tolerance);
  }
}

TYPED_TEST_P(attention_conformance, PaddingInvariance) {
  using T = typename TestFixture::T;
  using A = typename TestFixture::attention_type;
  constexpr index_t n = 30;
  const auto a = TestFixture::make();
  const auto q = random_matrix<T>(n, TestFixture::d, 21);
  const auto k = TestFixture::keys(q, random_matrix<T>(n, TestFixture::d, 22));
  const auto v = random_matrix<T>(n, TestFixture::d_v, 23);
  std::vector<std::uint8_t> keep(n, 1);
  for (const index_t j : {3, 10, 11, 29}) keep[static_cast<std::size_t>(j)] = 0;
  std::vector<index_t> kept;
  for (index_t j = 0; j < n; ++j) {
    if (keep[static_cast<std::size_t>(j)] != 0) kept.push_back(j);
  }
  const auto compact = [&](const row_matrix<T>& m) {
    row_matrix<T> c(static_cast<index_t>(kept.size()), m.cols());
    for (std::size_t r = 0; r < kept.size(); ++r) c.row(static_cast<index_t>(r)) = m.row(kept[r]);
    return c;
  };
  std::vector<bool> causal_modes{false};
  if constexpr (A::supports_causal) causal_modes.push_back(true);
  for (const bool causal : causal_modes) {
    const attention_mask mask{causal, keep};
    const auto base = run(a, q, k, v, mask);
    EXPECT_TRUE(base.allFinite());
    // Garbage in the padded tokens' rows (queries included: in self-attention a padded token
    // is also a query, and its row must not reach any real token's output).
    auto q2 = q;
    auto k2 = k;
    auto v2 = v;
    for (index_t j = 0; j < n; ++j) {
      if (keep[static_cast<std::size_t>(j)] == 0) {
        q2.row(j).setConstant(T(-30));
        k2.row(j).setConstant(T(40));
        v2.row(j).setConstant(T(-1000));
      }
    }
    const auto garbage = run(a, q2, TestFixture::keys(q2, k2), v2, mask);
    EXPECT_LE(relative_difference(compact(garbage), compact(base)), TestFixture::traits::tolerance)
        << "padded tokens' contents changed a real token's output (causal=" << causal << ")";
    if constexpr (TestFixture::traits::exact_padding_equivalence) {
      // The real tokens' outputs equal those of the sequence without the padded tokens.
      const auto alone = run(a, compact(q), TestFixture::keys(compact(q), compact(k)),
                             compact(v), attention_mask{causal, {}});
      EXPECT_LE(relative_difference(compact(base), alone), TestFixture::traits::tolerance)
          << "self-attention with padding differs from the sequence without it (causal="
          << causal << ")";
    }
    if constexpr (TestFixture::traits::cross_padding_equivalence && !TestFixture::traits::shared_qk) {
      if (!causal) {  // every query against the kept keys only
        const auto ref = run(a, q, compact(k), compact(v));
        EXPECT_LE(relative_difference(base, ref), TestFixture::traits::tolerance);
      }
    }
  }
}

TYPED_TEST_P(attention_conformance, QueryWithNoVisibleKeyGetsZeros) {
  using T = typename TestFixture::T;
  const auto a = TestFixture::make();
  const index_t n_q = TestFixture::traits::shared_qk ? 9 : 7;
  const auto q = random_matrix<T>(n_q, TestFixture::d, 31);
  const auto k = TestFixture::keys(q, random_matrix<T>(9, TestFixture::d, 32));
  const auto v = random_matrix<T>(9, TestFixture::d_v, 33);
  const std::vector<std::uint8_t> none_kept(9, 0);
  const auto out = run(a, q, k, v, attention_mask{false, none_kept});
  EXPECT_TRUE(out.isZero(0)) << out;
}

TYPED_TEST_P(attention_conformance, QueryWithAVisibleKeyNeverGetsAZeroRow) {
  using T = typename TestFixture::T;
  using A = typename TestFixture::attention_type;
  const auto a = TestFixture::make();
  constexpr index_t n = 64;
  // Values in [1, 3]: any convex combination of them is far from zero.
  const row_matrix<T> v = (random_matrix<T>(n, TestFixture::d_v, 63).array() + T(2)).matrix();
  std::vector<std::uint8_t> some(n, 1);
  for (index_t j = 0; j < n; j += 3) some[static_cast<std::size_t>(j)] = 0;
  some[1] = 0;  // the first visible key is key 2
  struct shape {
    index_t n_q;
    bool causal;
    const std::vector<std::uint8_t>* keep;
  };
  const std::vector<std::uint8_t> all;
  std::vector<shape> shapes{{n, false, &all}, {n, false, &some}};
  if constexpr (A::supports_causal) {
    shapes.push_back({n, true, &all});
    shapes.push_back({n, true, &some});
  }
  if (!TestFixture::traits::shared_qk) {
    shapes.push_back({40, false, &all});
    shapes.push_back({40, false, &some});
  }
  for (const std::uint64_t seed : {61, 62, 63}) {
    for (const auto& s : shapes) {
      const auto q = random_matrix<T>(s.n_q, TestFixture::d, seed);
      const auto k = TestFixture::keys(q, random_matrix<T>(n, TestFixture::d, seed + 10));
      const attention_mask mask{s.causal, *s.keep};
      const auto out = run(a, q, k, v, mask);
      index_t zero_rows = 0;
      for (index_t i = 0; i < s.n_q; ++i) {
        if (oracle::sees_a_key(mask, i, n) && out.row(i).isZero(0)) ++zero_rows;
      }
      EXPECT_EQ(zero_rows, 0) << "queries that see a key got a zero row (N_q = " << s.n_q
                              << ", causal = " << s.causal << ", padded = " << !s.keep->empty()
                              << ", seed " << seed << ")";
    }
  }
}

TYPED_TEST_P(attention_conformance, OutputFollowsTheLogits) {
  const double response =
      logit_response(TestFixture::make(), TestFixture::d, TestFixture::d_v, TestFixture::traits::shared_qk);
  EXPECT_GE(response, TestFixture::traits::min_logit_response)
      << "the output does not follow q.k: it moved " << response
      << " of exact attention's response to planted logits";
}

TYPED_TEST_P(attention_conformance, KeyPermutationInvariance) {
  using T = typename TestFixture::T;
  using A = typename TestFixture::attention_type;
  if constexpr (!is_key_permutation_invariant<A>) {
    GTEST_SKIP() << "the mechanism does not declare key_permutation_invariant";
  } else {
    constexpr index_t n = 23;
    const auto a = TestFixture::make();
    const auto q = random_matrix<T>(11, TestFixture::d, 41);
    const auto k = random_matrix<T>(n, TestFixture::d, 42);
    const auto v = random_matrix<T>(n, TestFixture::d_v, 43);
    std::vector<index_t> perm(n);
    std::iota(perm.begin(), perm.end(), index_t{0});
    std::reverse(perm.begin(), perm.end());
    std::rotate(perm.begin(), perm.begin() + 7, perm.end());
    row_matrix<T> kp(n, TestFixture::d);
    row_matrix<T> vp(n, TestFixture::d_v);
    for (index_t j = 0; j < n; ++j) {
      kp.row(j) = k.row(perm[static_cast<std::size_t>(j)]);
      vp.row(j) = v.row(perm[static_cast<std::size_t>(j)]);
    }
    EXPECT_LE(relative_difference(run(a, q, kp, vp), run(a, q, k, v)),
              TestFixture::traits::tolerance);
  }
}

TYPED_TEST_P(attention_conformance, QueryIndependence) {
  using T = typename TestFixture::T;
  using A = typename TestFixture::attention_type;
  if constexpr (!is_query_independent<A>) {
    GTEST_SKIP() << "the mechanism does not declare query_independent";
  } else {
    // Each query alone, and the queries in another order, against the rows of one call.
    constexpr index_t n = 13;
    const auto a = TestFixture::make();
    const auto q = random_matrix<T>(n, TestFixture::d, 61);
    const auto k = random_matrix<T>(n + 4, TestFixture::d, 62);
    const auto v = random_matrix<T>(n + 4, TestFixture::d_v, 63);
    const row_matrix<T> all = run(a, q, k, v);
    for (index_t i = 0; i < n; ++i) {
      EXPECT_LE(relative_difference(run(a, q.row(i), k, v), all.row(i)),
                TestFixture::traits::tolerance)
          << "query " << i << " alone";
    }
    const row_matrix<T> reversed = q.colwise().reverse();
    EXPECT_LE(relative_difference(run(a, reversed, k, v), all.colwise().reverse()),
              TestFixture::traits::tolerance);
  }
}

TYPED_TEST_P(attention_conformance, WorkspaceReuseGivesIdenticalResults) {
  using T = typename TestFixture::T;
  const auto a = TestFixture::make();
  typename TestFixture::attention_type::workspace_type ws;
  const auto big_q = random_matrix<T>(50, TestFixture::d, 51);
  const auto big_v = random_matrix<T>(50, TestFixture::d_v, 52);
  row_matrix<T> big_out(50, TestFixture::d_v);
  a.forward(big_q, big_q, big_v, big_out, attention_mask{}, ws);  // leave larger buffers behind
  const auto q = random_matrix<T>(12, TestFixture::d, 53);
  const auto k = TestFixture::keys(q, random_matrix<T>(12, TestFixture::d, 54));
  const auto v = random_matrix<T>(12, TestFixture::d_v, 55);
  row_matrix<T> reused(12, TestFixture::d_v);
  a.forward(q, k, v, reused, attention_mask{}, ws);
  EXPECT_EQ(reused, run(a, q, k, v));
}

REGISTER_TYPED_TEST_SUITE_P(attention_conformance, ModelsTheConcept, ShapesFinitenessAndConvexity,
                            RejectsBadInput, CausalPrefixInvariance, PaddingInvariance,
                            QueryWithNoVisibleKeyGetsZeros, QueryWithAVisibleKeyNeverGetsAZeroRow,
                            OutputFollowsTheLogits, KeyPermutationInvariance,
                            QueryIndependence, WorkspaceReuseGivesIdenticalResults);

}  // namespace performer::conformance
