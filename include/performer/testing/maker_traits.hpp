/// @file testing/maker_traits.hpp
/// @brief What a "maker" tells the reusable suites (conformance, determinism, allocation, bad
/// input, extreme values) about its mechanism, with the defaults for a maker that says nothing.
///
/// A maker is a type with `using attention_type = ...;` and
/// `static attention_type make(index_t head_dim);`. Every other member is optional: a
/// `static constexpr` of the name below overrides the default.
#pragma once

#include <type_traits>

#include "../core/types.hpp"

/// One optional constant of a maker: Maker::name when it has one, else the fallback.
#define PERFORMER_MAKER_TRAIT(type, name, fallback)                                 \
  static constexpr type name = [] {                                                 \
    if constexpr (requires { Maker::name; }) {                                      \
      return static_cast<type>(Maker::name);                                        \
    } else {                                                                        \
      return static_cast<type>(fallback);                                           \
    }                                                                               \
  }()

namespace performer::conformance {

template <class Maker>
struct maker_traits {
  using attention_type = typename Maker::attention_type;
  using scalar = typename attention_type::scalar_type;

  /// Relative tolerance of comparisons that differ only by rounding: a few hundred roundings
  /// of accumulated sums, far below any real bug's signature.
  PERFORMER_MAKER_TRAIT(double, tolerance, (std::is_same_v<scalar, float> ? 2e-5 : 1e-12));
  /// Outputs are convex combinations of the values (non-negative weights).
  PERFORMER_MAKER_TRAIT(bool, convex, true);
  /// Removing the padded tokens changes no real token's output (false for mechanisms whose
  /// windows follow positions, which padding shifts).
  PERFORMER_MAKER_TRAIT(bool, exact_padding_equivalence, true);
  /// The same for cross-attention: queries against padded keys equal queries against the keys
  /// kept (false where a query's position is derived from N_k, as in LSH's chunks).
  PERFORMER_MAKER_TRAIT(bool, cross_padding_equivalence, exact_padding_equivalence);
  /// Keys are derived from the queries (Reformer's shared-QK): k must have q's shape and is
  /// not read, so the suites pass q as k and run no cross-attention.
  PERFORMER_MAKER_TRAIT(bool, shared_qk, false);
  /// Changing a later token leaves earlier outputs with the same bits (false where a later
  /// token can change the shape, and so the summation order, of an earlier query's products).
  PERFORMER_MAKER_TRAIT(bool, exact_causal_prefix, true);
  /// Fraction of exact attention's response to the logits the mechanism must show.
  PERFORMER_MAKER_TRAIT(double, min_logit_response, 0.25);
  /// Tokens at which the determinism suite compares thread counts (long enough for the
  /// mechanism's parallel paths to engage).
  PERFORMER_MAKER_TRAIT(index_t, determinism_n, 1500);
  /// The allocation suite's N = 8,192 and 16,384 checks run (false for tiny tiles that make
  /// them slow).
  PERFORMER_MAKER_TRAIT(bool, large_sequences, true);
  /// The mechanism's memory is quadratic in N by design (the materialized reference).
  PERFORMER_MAKER_TRAIT(bool, quadratic_memory, false);
};

}  // namespace performer::conformance
