/// @file testing/conformance.hpp
/// @brief Reusable GoogleTest conformance suite for any model of attention_mechanism.
///
/// Needs GoogleTest (it is not included by performer.hpp). To run it on your own mechanism,
/// write a maker and instantiate the typed suite:
/// @code
/// struct my_maker {
///   using attention_type = my_attention<float>;
///   static attention_type make(performer::index head_dim) { return attention_type(head_dim); }
///   // optional: static constexpr double tolerance = 1e-4;        (relative, default by scalar)
///   // optional: static constexpr bool convex = false;            (weights may be negative)
///   // optional: static constexpr bool exact_padding_equivalence = false;
/// };
/// namespace performer::conformance {  // the macro needs the suite's name unqualified
/// INSTANTIATE_TYPED_TEST_SUITE_P(mine, attention_conformance, ::testing::Types<my_maker>);
/// }
/// @endcode
///
/// What it checks: output shape and finiteness (self- and cross-attention, d != d_v); each
/// output row inside the range of the values it mixes (convexity); a clear exception for each
/// kind of bad input; causal prefix invariance (changing token j, even to a norm 50 times the
/// others, changes no output i < j) or a clear exception when causal is unsupported; padding
/// invariance (a padded key's contents change nothing, and the output equals that of the
/// sequence with the padded keys removed, so they left both the weighted sum and the
/// normaliser); key permutation invariance where the mechanism declares it; zeros for a query
/// with no visible key; identical results from a fresh and a reused workspace.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <numeric>
#include <vector>

#include "../attention_mask.hpp"
#include "../concepts.hpp"
#include "../error.hpp"
#include "../types.hpp"
#include "helpers.hpp"

namespace performer::conformance {

/// Options a maker may override, with their defaults.
template <class Maker>
struct maker_traits {
  using attention_type = typename Maker::attention_type;
  using scalar = typename attention_type::scalar_type;

  static constexpr double tolerance = [] {
    if constexpr (requires { Maker::tolerance; }) {
      return static_cast<double>(Maker::tolerance);
    } else {
      // A few hundred roundings of accumulated sums; far below any real bug's signature.
      return std::is_same_v<scalar, float> ? 2e-5 : 1e-12;
    }
  }();
  static constexpr bool convex = [] {
    if constexpr (requires { Maker::convex; }) {
      return static_cast<bool>(Maker::convex);
    } else {
      return true;
    }
  }();
  static constexpr bool exact_padding_equivalence = [] {
    if constexpr (requires { Maker::exact_padding_equivalence; }) {
      return static_cast<bool>(Maker::exact_padding_equivalence);
    } else {
      return true;
    }
  }();
};

template <class Maker>
class attention_conformance : public ::testing::Test {
 protected:
  using traits = maker_traits<Maker>;
  using attention_type = typename traits::attention_type;
  using T = typename traits::scalar;
  static constexpr index d = 16;
  static constexpr index d_v = 8;

  static attention_type make() { return Maker::make(d); }
};

TYPED_TEST_SUITE_P(attention_conformance);

TYPED_TEST_P(attention_conformance, ModelsTheConcept) {
  static_assert(attention_mechanism<typename TestFixture::attention_type>);
}

TYPED_TEST_P(attention_conformance, ShapesFinitenessAndConvexity) {
  using T = typename TestFixture::T;
  const auto a = TestFixture::make();
  for (const auto& [n_q, n_k] : {std::pair<index, index>{1, 1}, {5, 40}, {40, 5}, {33, 33}}) {
    const auto q = random_matrix<T>(n_q, TestFixture::d, 1);
    const auto k = random_matrix<T>(n_k, TestFixture::d, 2);
    const auto v = random_matrix<T>(n_k, TestFixture::d_v, 3);
    const auto out = run(a, q, k, v);
    ASSERT_EQ(out.rows(), n_q);
    ASSERT_EQ(out.cols(), TestFixture::d_v);
    EXPECT_TRUE(out.allFinite());
    if constexpr (TestFixture::traits::convex) {
      const double slack = TestFixture::traits::tolerance;
      for (index c = 0; c < TestFixture::d_v; ++c) {
        EXPECT_GE(out.col(c).minCoeff(), v.col(c).minCoeff() - slack) << "column " << c;
        EXPECT_LE(out.col(c).maxCoeff(), v.col(c).maxCoeff() + slack) << "column " << c;
      }
    }
  }
}

TYPED_TEST_P(attention_conformance, RejectsBadInput) {
  using T = typename TestFixture::T;
  constexpr index d = TestFixture::d;
  const auto a = TestFixture::make();
  const auto q = random_matrix<T>(6, d, 1);
  const auto k = random_matrix<T>(6, d, 2);
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
  EXPECT_THROW(a.forward(vq, k, vq.leftCols(TestFixture::d_v), vq.rightCols(TestFixture::d_v), none, ws),
               invalid_argument);
}

TYPED_TEST_P(attention_conformance, CausalPrefixInvariance) {
  using T = typename TestFixture::T;
  using A = typename TestFixture::attention_type;
  constexpr index n = 37;
  const auto a = TestFixture::make();
  const auto q = random_matrix<T>(n, TestFixture::d, 11);
  const auto k = random_matrix<T>(n, TestFixture::d, 12);
  const auto v = random_matrix<T>(n, TestFixture::d_v, 13);
  const attention_mask causal{true, {}};
  if constexpr (!A::supports_causal) {
    row_matrix<T> out(n, TestFixture::d_v);
    typename A::workspace_type ws;
    EXPECT_THROW(a.forward(q, k, v, out, causal, ws), invalid_argument);
  } else {
    const auto base = run(a, q, k, v, causal);
    EXPECT_TRUE(base.allFinite());
    for (const index j : {index{0}, index{1}, index{20}, n - 1}) {
      auto q2 = q;
      auto k2 = k;
      auto v2 = v;
      // A token 50 times the others' norm: a stabiliser that looks at all keys would leak it.
      q2.row(j) *= T(50);
      k2.row(j) *= T(50);
      v2.row(j).setConstant(T(1000));
      const auto changed = run(a, q2, k2, v2, causal);
      if (j > 0) {
        EXPECT_LE(relative_difference(changed.topRows(j), base.topRows(j)),
                  TestFixture::traits::tolerance)
            << "changing token " << j << " changed an earlier output";
      }
      EXPECT_TRUE(changed.allFinite());
    }
    // The first query sees only itself: its output is its own value.
    EXPECT_LE(relative_difference(base.row(0), v.row(0)), TestFixture::traits::tolerance);
  }
}

TYPED_TEST_P(attention_conformance, PaddingInvariance) {
  using T = typename TestFixture::T;
  using A = typename TestFixture::attention_type;
  constexpr index n = 30;
  const auto a = TestFixture::make();
  const auto q = random_matrix<T>(n, TestFixture::d, 21);
  auto k = random_matrix<T>(n, TestFixture::d, 22);
  auto v = random_matrix<T>(n, TestFixture::d_v, 23);
  std::vector<std::uint8_t> keep(n, 1);
  for (const index j : {3, 10, 11, 29}) keep[static_cast<std::size_t>(j)] = 0;
  std::vector<index> kept;
  for (index j = 0; j < n; ++j) {
    if (keep[static_cast<std::size_t>(j)] != 0) kept.push_back(j);
  }
  const auto compact = [&](const row_matrix<T>& m) {
    row_matrix<T> c(static_cast<index>(kept.size()), m.cols());
    for (std::size_t r = 0; r < kept.size(); ++r) c.row(static_cast<index>(r)) = m.row(kept[r]);
    return c;
  };
  std::vector<bool> causal_modes{false};
  if constexpr (A::supports_causal) causal_modes.push_back(true);
  for (const bool causal : causal_modes) {
    const attention_mask mask{causal, keep};
    const auto base = run(a, q, k, v, mask);
    EXPECT_TRUE(base.allFinite());
    // Garbage in the padded rows must not matter.
    auto k2 = k;
    auto v2 = v;
    for (index j = 0; j < n; ++j) {
      if (keep[static_cast<std::size_t>(j)] == 0) {
        k2.row(j).setConstant(T(40));
        v2.row(j).setConstant(T(-1000));
      }
    }
    const auto garbage = run(a, q, k2, v2, mask);
    EXPECT_LE(relative_difference(garbage, base), TestFixture::traits::tolerance)
        << "padded keys' contents changed the output (causal=" << causal << ")";
    if constexpr (TestFixture::traits::exact_padding_equivalence) {
      // Same output as the sequence without the padded keys.
      if (causal) {
        const auto ref = run(a, compact(q), compact(k), compact(v), attention_mask{true, {}});
        EXPECT_LE(relative_difference(compact(base), ref), TestFixture::traits::tolerance);
      } else {
        const auto ref = run(a, q, compact(k), compact(v));
        EXPECT_LE(relative_difference(base, ref), TestFixture::traits::tolerance);
      }
    }
  }
}

TYPED_TEST_P(attention_conformance, QueryWithNoVisibleKeyGetsZeros) {
  using T = typename TestFixture::T;
  const auto a = TestFixture::make();
  const auto q = random_matrix<T>(7, TestFixture::d, 31);
  const auto k = random_matrix<T>(9, TestFixture::d, 32);
  const auto v = random_matrix<T>(9, TestFixture::d_v, 33);
  const std::vector<std::uint8_t> none_kept(9, 0);
  const auto out = run(a, q, k, v, attention_mask{false, none_kept});
  EXPECT_TRUE(out.isZero(0)) << out;
}

TYPED_TEST_P(attention_conformance, KeyPermutationInvariance) {
  using T = typename TestFixture::T;
  using A = typename TestFixture::attention_type;
  if constexpr (!is_key_permutation_invariant<A>) {
    GTEST_SUCCEED() << "the mechanism does not declare key_permutation_invariant";
  } else {
    constexpr index n = 23;
    const auto a = TestFixture::make();
    const auto q = random_matrix<T>(11, TestFixture::d, 41);
    const auto k = random_matrix<T>(n, TestFixture::d, 42);
    const auto v = random_matrix<T>(n, TestFixture::d_v, 43);
    std::vector<index> perm(n);
    std::iota(perm.begin(), perm.end(), index{0});
    std::reverse(perm.begin(), perm.end());
    std::rotate(perm.begin(), perm.begin() + 7, perm.end());
    row_matrix<T> kp(n, TestFixture::d);
    row_matrix<T> vp(n, TestFixture::d_v);
    for (index j = 0; j < n; ++j) {
      kp.row(j) = k.row(perm[static_cast<std::size_t>(j)]);
      vp.row(j) = v.row(perm[static_cast<std::size_t>(j)]);
    }
    EXPECT_LE(relative_difference(run(a, q, kp, vp), run(a, q, k, v)),
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
  const auto k = random_matrix<T>(12, TestFixture::d, 54);
  const auto v = random_matrix<T>(12, TestFixture::d_v, 55);
  row_matrix<T> reused(12, TestFixture::d_v);
  a.forward(q, k, v, reused, attention_mask{}, ws);
  EXPECT_EQ(reused, run(a, q, k, v));
}

REGISTER_TYPED_TEST_SUITE_P(attention_conformance, ModelsTheConcept, ShapesFinitenessAndConvexity,
                            RejectsBadInput, CausalPrefixInvariance, PaddingInvariance,
                            QueryWithNoVisibleKeyGetsZeros, KeyPermutationInvariance,
                            WorkspaceReuseGivesIdenticalResults);

}  // namespace performer::conformance
