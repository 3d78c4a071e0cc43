/// @file testing/extreme_values.hpp
/// @brief Reusable GoogleTest suite: a mechanism under extreme values (issue 7): query/key row
/// norms 1, 10 and 100, whole inputs scaled by 1e-30 and 1e30, subnormal inputs (1e-40 in
/// float), bidirectional and causal. The inputs and the contract are described in
/// testing/detail/extreme_contract.hpp.
///
/// Instantiate it with the same makers as the conformance suite, each declaring how its results
/// are judged (testing/extreme_reference.hpp):
/// @code
/// struct my_maker {
///   using attention_type = my_attention<float>;
///   static attention_type make(performer::index_t head_dim) { return attention_type(head_dim); }
///   static constexpr performer::conformance::extreme_reference extreme_values =
///       performer::conformance::extreme_reference::contract_only;  // the default
///   // read as in the conformance suite: shared_qk, convex (false: no hull check), tolerance
///   // optional: static auto double_twin(const attention_type&, index_t n_keys);
///   // optional (LSH): static void single_bucket(attention_type&, index_t n_keys);
/// };
/// namespace performer::conformance {
/// INSTANTIATE_TYPED_TEST_SUITE_P(mine, attention_extreme_values, ::testing::Types<my_maker>);
/// }
/// @endcode
///
/// Tests (each reports itself skipped, with the reason, where it cannot apply to the maker):
/// - ReturnsFiniteOrRefusesOverflow: the mechanism as made, every input: the contract alone.
/// - MatchesReferenceOrRefusesOverflow: the contract and the reference (softmax: long double
///   softmax; favor: the long double estimate from the mechanism's own features; lsh_window:
///   the mechanism with every token in one bucket against exact softmax over its chunk windows)
///   within the bound derived from the rounding analysis.
/// - FloatMatchesDoubleTwin: a float mechanism against its double twin (the same random draws);
///   FAVOR within the sum of both bounds, LSH within the window bound where their buckets agree.
/// - ScalingValuesScalesTheOutput: out(q, k, c v) = c out(q, k, v) for c = 1e30 and 1e-30.
/// - TinyQueriesAndKeysGiveTheMeanOfTheValues: q and k at 1e-30 and 1e-40 make every weight
///   equal: the mean of the values each query mixes.
/// PERFORMER_EXTREME_VERBOSE=1 prints every run's outcome and its worst error over its bound.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "../core/attention_mask.hpp"
#include "../core/types.hpp"
#include "detail/extreme_contract.hpp"
#include "detail/extreme_favor.hpp"
#include "detail/extreme_softmax.hpp"
#include "detail/extreme_twin.hpp"
#include "extreme_reference.hpp"
#include "helpers.hpp"

namespace performer::conformance {

/// The makers of two ::testing::Types lists in one (a family's list and extra configurations).
template <class A, class B>
struct join_types;
template <class... A, class... B>
struct join_types<::testing::Types<A...>, ::testing::Types<B...>> {
  using type = ::testing::Types<A..., B...>;
};

/// The maker options the suite reads, with the conformance suite's defaults (conformance.hpp).
template <class Maker>
struct extreme_traits {
  using attention_type = typename Maker::attention_type;
  using scalar = typename attention_type::scalar_type;
  /// Relative rounding the maker declares; the suite's only bound for contract_only makers.
  static constexpr double tolerance = [] {
    if constexpr (requires { Maker::tolerance; }) {
      return static_cast<double>(Maker::tolerance);
    } else {
      return std::is_same_v<scalar, float> ? 2e-5 : 1e-12;
    }
  }();
  /// Non-negative weights: outputs inside the values' hull.
  static constexpr bool convex = [] {
    if constexpr (requires { Maker::convex; }) {
      return static_cast<bool>(Maker::convex);
    } else {
      return true;
    }
  }();
  /// Keys derived from the queries: the suite passes q as k.
  static constexpr bool shared_qk = [] {
    if constexpr (requires { Maker::shared_qk; }) {
      return static_cast<bool>(Maker::shared_qk);
    } else {
      return false;
    }
  }();
};

template <class Maker>
class attention_extreme_values : public ::testing::Test {
 protected:
  using traits = extreme_traits<Maker>;
  using attention_type = typename traits::attention_type;
  using T = typename traits::scalar;
  using problem = extreme::problem;
  using row_expectations = extreme::row_expectations;
  static constexpr extreme_reference reference = [] {
    if constexpr (requires { Maker::extreme_values; }) {
      return static_cast<extreme_reference>(Maker::extreme_values);
    } else {
      return extreme_reference::contract_only;
    }
  }();
  static constexpr bool shared_qk = traits::shared_qk;
  static constexpr index_t n = extreme::n_tokens;
  static constexpr index_t d = extreme::head_dim;

  static std::vector<bool> causal_modes() {
    if constexpr (attention_type::supports_causal) {
      return {false, true};
    } else {
      return {false};
    }
  }

  static std::string label(const extreme::input_case& c, bool causal, const char* what = "") {
    std::ostringstream os;
    os << ::testing::UnitTest::GetInstance()->current_test_info()->type_param() << what << ", "
       << c.name << (causal ? ", causal" : ", bidirectional");
    return os.str();
  }

  /// One call in A's scalar on the problem (q as the keys under shared-QK: make_problem did it).
  template <class A>
  static auto call(const A& a, const problem& p, bool causal) {
    using S = typename A::scalar_type;
    const row_matrix<S> q = p.q.template cast<S>();
    const row_matrix<S> k = p.k.template cast<S>();
    const row_matrix<S> v = p.v.template cast<S>();
    return extreme::attempt([&] { return run(a, q, k, v, attention_mask{causal, {}}); });
  }

  /// When a call may refuse, and what its rows must satisfy.
  struct judgement {
    bool may_refuse;
    row_expectations expect;
  };

  /// The judgement of mechanism a (scalar S) on p, by the maker's reference. `chunk` > 0: an
  /// LSH mechanism whose tokens all share one bucket, judged against its chunk windows.
  template <class A>
  static judgement judge(const A& a, const problem& p, bool causal, index_t chunk = 0) {
    using S = typename A::scalar_type;
    const double vmax = p.v.cwiseAbs().maxCoeff();
    if constexpr (reference == extreme_reference::favor) {
      const extreme::favor_blockings b = extreme::blockings_of(a, n, causal);
      const auto tx =
          extreme::mechanism_terms(a, p.q.template cast<S>(), p.k.template cast<S>(), causal, b);
      std::vector<bool> well;
      row_expectations e =
          extreme::favor_expectations<S>(tx, tx.front(), p, causal, a.feature_count(),
                                         extreme::batch_exponentials(a, b), traits::convex, well);
      // A call may be refused only when some row's result is not representable in its type.
      return {!extreme::all_of(well), std::move(e)};
    } else if constexpr (reference == extreme_reference::contract_only) {
      // Nothing is known of the mechanism but its contract: ordinary inputs must return, and a
      // convex one stays in the hull up to its declared rounding (or a softmax's, if larger).
      const double slack =
          traits::convex ? std::max(extreme::softmax_slack<S>(n, vmax), traits::tolerance * vmax)
                         : extreme::inf;
      return {true, extreme::contract_expectations(p, slack)};
    } else {
      // Exact attention, and LSH, whose windows hold only keys the query may see: may refuse
      // only when q.k or the value sums do not fit in S.
      const extreme::softmax_reference r =
          extreme::make_softmax_reference(p, causal, shared_qk, chunk);
      const bool refusable = !extreme::softmax_fits<S>(r, p);
      if (reference == extreme_reference::lsh_window && chunk == 0) {
        // Hashed windows: no reference, the hull of the keys the query may see.
        return {refusable, extreme::contract_expectations(p, extreme::softmax_slack<S>(n, vmax))};
      }
      return {refusable, extreme::softmax_expectations<S>(r, p)};
    }
  }

  /// The mechanism the reference applies to: as made, or (LSH) with one bucket for everyone.
  static attention_type reference_mechanism() {
    attention_type a = Maker::make(d);
    if constexpr (reference == extreme_reference::lsh_window) {
      extreme::single_bucket<Maker>(a, n);
      if constexpr (requires { a.buckets(row_matrix<T>(), index_t{}); }) {
        const row_matrix<T> x = random_matrix<T>(n, d, 3);
        for (index_t r = 0; r < a.options().hashes; ++r) {
          const auto buckets = a.buckets(x, r);
          EXPECT_TRUE(std::all_of(buckets.begin(), buckets.end(), [](auto b) { return b == 0; }))
              << "round " << r << " does not put every token in bucket 0";
        }
      }
    }
    return a;
  }

  static index_t reference_chunk(const attention_type& a) {
    if constexpr (reference == extreme_reference::lsh_window) {
      return a.options().chunk;
    } else {
      static_cast<void>(a);
      return 0;
    }
  }

  void check_favor_twin();
  void check_lsh_twin();
};

TYPED_TEST_SUITE_P(attention_extreme_values);

TYPED_TEST_P(attention_extreme_values, ReturnsFiniteOrRefusesOverflow) {
  using F = TestFixture;
  const auto a = TypeParam::make(F::d);
  for (const extreme::input_case& c : extreme::input_cases()) {
    const typename F::problem p = extreme::make_problem<typename F::T>(c, 11, F::shared_qk);
    for (const bool causal : F::causal_modes()) {
      auto j = F::judge(a, p, causal);
      // The contract alone: MatchesReferenceOrRefusesOverflow adds the reference.
      j.expect.tol.setConstant(extreme::inf);
      extreme::violations bad(F::label(c, causal));
      extreme::check_outcome(bad, F::call(a, p, causal), p, causal, j.may_refuse && !c.ordinary,
                             j.expect);
      bad.report();
    }
  }
}

TYPED_TEST_P(attention_extreme_values, MatchesReferenceOrRefusesOverflow) {
  using F = TestFixture;
  if constexpr (F::reference == extreme_reference::contract_only) {
    GTEST_SKIP()
        << "the maker declares extreme_reference::contract_only: no reference to compare with";
  } else if constexpr (F::reference == extreme_reference::lsh_window &&
                       !extreme::can_single_bucket<TypeParam>) {
    GTEST_SKIP() << "the hash family has no set_rotation and the maker no single_bucket: its "
                    "windows are not known";
  } else {
    const auto a = F::reference_mechanism();
    const index_t chunk = F::reference_chunk(a);
    for (const extreme::input_case& c : extreme::input_cases()) {
      const typename F::problem p = extreme::make_problem<typename F::T>(c, 11, F::shared_qk);
      for (const bool causal : F::causal_modes()) {
        const auto j = F::judge(a, p, causal, chunk);
        extreme::violations bad(F::label(c, causal, chunk > 0 ? " (one bucket)" : ""));
        extreme::check_outcome(bad, F::call(a, p, causal), p, causal, j.may_refuse && !c.ordinary,
                               j.expect);
        bad.report();
      }
    }
  }
}

TYPED_TEST_P(attention_extreme_values, FloatMatchesDoubleTwin) {
  using F = TestFixture;
  if constexpr (!std::is_same_v<typename F::T, float>) {
    GTEST_SKIP() << "a double mechanism: it is the twin a float one is compared with";
  } else if constexpr (F::reference == extreme_reference::softmax) {
    GTEST_SKIP() << "exact attention is compared with its long double reference directly "
                    "(MatchesReferenceOrRefusesOverflow), in float and in double";
  } else if constexpr (F::reference == extreme_reference::contract_only) {
    GTEST_SKIP() << "the maker declares extreme_reference::contract_only: no bound relates its "
                    "float and double results";
  } else if constexpr (!extreme::twin_of<TypeParam>::available) {
    GTEST_SKIP() << "no double twin: the maker declares no double_twin and the mechanism's "
                    "random draws cannot be copied";
  } else if constexpr (F::reference == extreme_reference::favor) {
    this->check_favor_twin();
  } else {
    this->check_lsh_twin();
  }
}

TYPED_TEST_P(attention_extreme_values, ScalingValuesScalesTheOutput) {
  using F = TestFixture;
  using T = typename F::T;
  if constexpr (!F::traits::convex) {
    GTEST_SKIP() << "signed weights: the normaliser can be small next to the value sums, so "
                    "their rounding is not bounded relative to max |v|";
  } else {
    // Every mechanism's weights do not depend on v, so out(q, k, c v) = c out(q, k, v) exactly
    // in real arithmetic; in T the two runs share every weight and differ only in the weighted
    // sums' roundings, (N + 2M + 48) u of c max |v| each (N + 16 for exact attention), plus the
    // multiplication by c. In double that is below 1e-13 here, inside the 1e-12. A
    // contract_only maker is held to its declared tolerance instead.
    const auto a = TypeParam::make(F::d);
    index_t width = 0;
    if constexpr (F::reference == extreme_reference::favor) width = a.feature_count();
    const extreme::input_case norms{"row norms 10", 10, 1, 1, 1, true};
    const typename F::problem p = extreme::make_problem<T>(norms, 91, F::shared_qk);
    const row_matrix<T> q = p.q.template cast<T>();
    const row_matrix<T> k = p.k.template cast<T>();
    const row_matrix<T> v = p.v.template cast<T>();
    const double u = extreme::unit_roundoff<T>();
    const double tol = F::reference == extreme_reference::contract_only
                           ? F::traits::tolerance
                           : 2 * static_cast<double>(F::n + 2 * width + 48) * u + 2 * u;
    for (const bool causal : F::causal_modes()) {
      const attention_mask mask{causal, {}};
      const row_matrix<double> plain = run(a, q, k, v, mask).template cast<double>();
      for (const T c : {T(1e30), T(1e-30)}) {
        // FAVOR's key sums multiply features (as small as e^-30 relative to the row's largest)
        // by the values: at 1e-30 in float those products are subnormal and carry absolute, not
        // relative, errors (bounded in the reference comparisons). Exact attention's weights
        // are normalised to a largest of 1, so its sums stay normal.
        if (std::is_same_v<T, float> && c < T(1) && width > 0) continue;
        const row_matrix<T> out = run(a, q, k, row_matrix<T>(v * c), mask);
        const row_matrix<double> expected = plain * static_cast<double>(c);
        const double scale = static_cast<double>(c) * p.v.cwiseAbs().maxCoeff();
        const double err = (out.template cast<double>() - expected).cwiseAbs().maxCoeff() / scale;
        EXPECT_LE(err, tol) << "v x " << c << (causal ? ", causal" : "");
        if (std::is_same_v<T, double>) {
          EXPECT_LE(err, 1e-12) << "v x " << c << (causal ? ", causal" : "");
        }
      }
    }
  }
}

TYPED_TEST_P(attention_extreme_values, TinyQueriesAndKeysGiveTheMeanOfTheValues) {
  using F = TestFixture;
  using T = typename F::T;
  if constexpr (F::reference == extreme_reference::contract_only) {
    GTEST_SKIP() << "the maker declares extreme_reference::contract_only: which keys it mixes "
                    "is its own business";
  } else if constexpr (F::reference == extreme_reference::lsh_window &&
                       !extreme::can_single_bucket<TypeParam>) {
    GTEST_SKIP() << "the hash family has no set_rotation and the maker no single_bucket: its "
                    "windows are not known";
  } else {
    // q and k scaled to 1e-30 (q.k ~ 1e-60: 0 in float, below double's rounding of 1 in exp) or
    // to float subnormals: every weight is exactly equal (for FAVOR every feature is exp(0)
    // times a common factor, ReLU's is epsilon, ELU's 1), so out_i is the mean of the values
    // query i mixes, to the sums' rounding: (N + 2M + 48) u max |v|. Shared-QK: the same, but
    // a token's own key is masked (weight exp(-1e5) = 0) unless it has no other: the mean of
    // the other values, and v_i for a window that holds only token i.
    const auto a = F::reference_mechanism();
    const index_t chunk = F::reference_chunk(a);
    index_t width = 0;
    if constexpr (F::reference == extreme_reference::favor) width = a.feature_count();
    const double tol = static_cast<double>(F::n + 2 * width + 48) * extreme::unit_roundoff<T>();
    for (const double scale : {1e-30, 1e-40}) {
      const extreme::input_case tiny_case{"tiny", 0, scale, scale, 1};
      const typename F::problem p = extreme::make_problem<T>(tiny_case, 101, F::shared_qk);
      const double vmax = p.v.cwiseAbs().maxCoeff();
      for (const bool causal : F::causal_modes()) {
        const row_matrix<T> out = run(a, p.q.template cast<T>(), p.k.template cast<T>(),
                                      p.v.template cast<T>(), attention_mask{causal, {}});
        row_matrix<double> mean(p.v.rows(), p.v.cols());
        for (index_t i = 0; i < p.v.rows(); ++i) {
          const auto [lo, hi] = extreme::key_range(i, F::n, causal, chunk);
          const Eigen::RowVectorXd sum = p.v.middleRows(lo, hi - lo).colwise().sum();
          mean.row(i) =
              F::shared_qk && hi - lo > 1
                  ? Eigen::RowVectorXd((sum - p.v.row(i)) / static_cast<double>(hi - lo - 1))
                  : Eigen::RowVectorXd(sum / static_cast<double>(hi - lo));
        }
        if constexpr (F::shared_qk) {
          for (index_t i = 0; i < out.rows(); ++i) {
            EXPECT_LE(
                (out.row(i).template cast<double>() - mean.row(i)).cwiseAbs().maxCoeff() / vmax,
                tol)
                << "q, k x " << scale << ", row " << i << (causal ? ", causal" : "");
          }
        } else {
          EXPECT_LE((out.template cast<double>() - mean).cwiseAbs().maxCoeff() / vmax, tol)
              << "q, k x " << scale << (causal ? ", causal" : "");
        }
      }
    }
  }
}

REGISTER_TYPED_TEST_SUITE_P(attention_extreme_values, ReturnsFiniteOrRefusesOverflow,
                            MatchesReferenceOrRefusesOverflow, FloatMatchesDoubleTwin,
                            ScalingValuesScalesTheOutput, TinyQueriesAndKeysGiveTheMeanOfTheValues);

}  // namespace performer::conformance

#include "detail/extreme_twin_checks.hpp"
