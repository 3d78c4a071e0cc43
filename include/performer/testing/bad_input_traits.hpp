/// @file testing/bad_input_traits.hpp
/// @brief What the bad-input suite (testing/bad_input.hpp) reads from a maker, with defaults;
/// inputs whose exact logits overflow; and wrap_each_t, to give traits to makers you cannot edit.
/// Registers no test, so it can be included where the suite is not instantiated.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <concepts>
#include <cstring>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

#include "../core/types.hpp"
#include "helpers.hpp"
#include "maker_traits.hpp"

namespace performer::conformance {

/// Finite inputs whose result overflows the scalar type, for the Overflow test.
template <class T>
struct overflow_input {
  std::string what;
  row_matrix<T> q, k, v;
};

/// One query, one key: logits q.k / sqrt(d) of -inf, NaN (+inf plus -inf in the dot product)
/// and +inf in T, from entries of 2 sqrt(max). Mechanisms that compute exact logits must report
/// each, never return the zero row that means "no visible key" (d >= 2).
template <class T>
std::vector<overflow_input<T>> logit_overflow_inputs(index_t d, index_t d_v) {
  const T big = T(2) * std::sqrt(std::numeric_limits<T>::max());
  const row_matrix<T> zero = row_matrix<T>::Zero(1, d);
  const row_matrix<T> v = row_matrix<T>::Ones(1, d_v);
  std::vector<overflow_input<T>> cases(3, overflow_input<T>{"", zero, zero, v});
  cases[0].what = "logit -inf";
  cases[0].q(0, 0) = big;
  cases[0].k(0, 0) = -big;
  cases[1].what = "logit NaN (+inf - inf)";
  cases[1].q.leftCols(2).setConstant(big);
  cases[1].k(0, 0) = -big;
  cases[1].k(0, 1) = big;
  cases[2].what = "logit +inf";
  cases[2].q(0, 0) = big;
  cases[2].k(0, 0) = big;
  return cases;
}

/// The suites' maker traits (testing/maker_traits.hpp: shared_qk among them) plus this suite's.
template <class Maker>
struct bad_input_traits : maker_traits<Maker> {
  using attention_type = typename Maker::attention_type;
  using scalar = typename attention_type::scalar_type;

  /// The function the mechanism's messages start with; empty: any "<name>::forward".
  PERFORMER_MAKER_TRAIT(std::string_view, forward_name, std::string_view{});
  /// The mechanism is built for one head width (a projection's, a hash family's) and rejects
  /// q and k of another; otherwise it must accept any width.
  PERFORMER_MAKER_TRAIT(bool, fixed_head_width, false);
  /// Why the Overflow test does not apply, when the maker has no overflow_inputs.
  PERFORMER_MAKER_TRAIT(std::string_view, overflow_skip_reason,
                        "the maker provides no finite input whose result overflows "
                        "(static overflow_inputs)");
  static constexpr bool has_overflow_inputs = requires(attention_type & a) {
    {
      Maker::overflow_inputs(a, index_t{}, index_t{})
      } -> std::same_as<std::vector<overflow_input<scalar>>>;
  };
};

/// Wrap<M> for every maker M of a ::testing::Types list: adds traits to makers you cannot edit.
template <template <class> class Wrap, class List>
struct wrap_each;
template <template <class> class Wrap, class... Makers>
struct wrap_each<Wrap, ::testing::Types<Makers...>> {
  using type = ::testing::Types<Wrap<Makers>...>;
};
template <template <class> class Wrap, class List>
using wrap_each_t = typename wrap_each<Wrap, List>::type;

}  // namespace performer::conformance
