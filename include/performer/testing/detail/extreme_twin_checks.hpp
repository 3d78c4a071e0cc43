/// @file testing/detail/extreme_twin_checks.hpp
/// @brief attention_extreme_values' float-against-double checks (FloatMatchesDoubleTwin):
/// FAVOR within both runs' bounds against the long double estimate from the double features,
/// LSH within the window bound wherever float and double hash every token alike. Included by
/// testing/extreme_values.hpp.
#pragma once

#include <vector>

#include "../extreme_values.hpp"

namespace performer::conformance {

/// Both runs solve the float-rounded problem; the reference is built from the double twin's
/// features, the float run's own features are measured against them (extreme_favor.hpp).
template <class Maker>
void attention_extreme_values<Maker>::check_favor_twin() {
  const attention_type f32 = Maker::make(d);
  const auto f64 = extreme::twin_of<Maker>::make(f32, n);
  const index_t width = f32.feature_count();
  for (const extreme::input_case& c : extreme::input_cases()) {
    const problem p = extreme::make_problem<float>(c, 21, shared_qk);
    const row_matrix<float> qf = p.q.cast<float>();
    const row_matrix<float> kf = p.k.cast<float>();
    for (const bool causal : causal_modes()) {
      const extreme::favor_blockings bf = extreme::blockings_of(f32, n, causal);
      const extreme::favor_blockings bd = extreme::blockings_of(f64, n, causal);
      const auto tf = extreme::mechanism_terms(f32, qf, kf, causal, bf);
      const auto td = extreme::mechanism_terms(f64, p.q, p.k, causal, bd);
      std::vector<bool> well_f;
      std::vector<bool> well_d;
      const row_expectations ef = extreme::favor_expectations<float>(
          tf, td.front(), p, causal, width, extreme::batch_exponentials(f32, bf), traits::convex,
          well_f);
      const row_expectations ed = extreme::favor_expectations<double>(
          td, td.front(), p, causal, width, extreme::batch_exponentials(f64, bd), traits::convex,
          well_d);
      const auto of = call(f32, p, causal);
      const auto od = call(f64, p, causal);
      extreme::violations bad_f(label(c, causal, " (float)"));
      extreme::violations bad_d(label(c, causal, " (its double twin)"));
      // A call may be refused only when some row's result is not representable in its type.
      extreme::check_outcome(bad_f, of, p, causal, !extreme::all_of(well_f) && !c.ordinary, ef);
      extreme::check_outcome(bad_d, od, p, causal, !extreme::all_of(well_d) && !c.ordinary, ed);
      if (of.out && od.out) extreme::check_agreement(bad_f, *of.out, *od.out, ef, ed);
      bad_f.report();
      bad_d.report();
    }
  }
}

/// The float mechanism and its twin with the same hash functions. Where every bucket agrees
/// their windows are the same and both must be within window_tolerance of that window's exact
/// softmax; each run must meet the contract on the keys it may see.
template <class Maker>
void attention_extreme_values<Maker>::check_lsh_twin() {
  const attention_type lf = Maker::make(d);
  const auto l64 = extreme::twin_of<Maker>::make(lf, n);
  int compared = 0;
  int returned = 0;
  for (const extreme::input_case& c : extreme::input_cases()) {
    const problem p = extreme::make_problem<float>(c, 51, shared_qk);
    const row_matrix<float> qf = p.q.cast<float>();
    const row_matrix<float> kf = p.k.cast<float>();
    bool same_windows = true;
    for (index_t r = 0; r < lf.options().hashes; ++r) {
      same_windows = same_windows && lf.buckets(qf, r) == l64.buckets(p.q, r) &&
                     (shared_qk || lf.buckets(kf, r) == l64.buckets(p.k, r));
    }
    for (const bool causal : causal_modes()) {
      const extreme::softmax_reference ref = extreme::make_softmax_reference(p, causal, shared_qk);
      const double vmax = p.v.cwiseAbs().maxCoeff();
      // The contract on each run: no reference (tol = inf), the hull of the keys it may see.
      const row_expectations no_ref_f =
          extreme::contract_expectations(p, extreme::softmax_slack<float>(n, vmax));
      const row_expectations no_ref_d =
          extreme::contract_expectations(p, extreme::softmax_slack<double>(n, vmax));
      row_expectations ef = no_ref_f;
      row_expectations ed = no_ref_d;
      for (index_t i = 0; i < n && same_windows; ++i) {
        ef.tol(i) = extreme::window_tolerance<float>(ref, p, i);
        ed.tol(i) = extreme::window_tolerance<double>(ref, p, i);
      }
      const auto of = call(lf, p, causal);
      const auto od = call(l64, p, causal);
      extreme::violations bad_f(label(c, causal, " (float)"));
      extreme::violations bad_d(label(c, causal, " (its double twin)"));
      extreme::check_outcome(bad_f, of, p, causal,
                             !extreme::softmax_fits<float>(ref, p) && !c.ordinary, no_ref_f);
      extreme::check_outcome(bad_d, od, p, causal,
                             !extreme::softmax_fits<double>(ref, p) && !c.ordinary, no_ref_d);
      returned += of.out && od.out ? 1 : 0;
      if (of.out && od.out && same_windows) {
        ++compared;
        extreme::check_agreement(bad_f, *of.out, *od.out, ef, ed);
      }
      bad_f.report();
      bad_d.report();
    }
  }
  // Hashes of unit vectors in float and double only differ at near-ties: the comparison must
  // have run on nearly every problem that both precisions solved.
  EXPECT_GE(compared, returned - 2);
}

}  // namespace performer::conformance
