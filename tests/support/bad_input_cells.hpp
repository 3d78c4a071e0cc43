// What the bad-input cells of every family share (docs/bad_input_matrix.md): each cell runs in
// float and in double, and the special values and overflowing magnitudes they feed in.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include <performer/testing/expect_invalid.hpp>
#include <performer/testing/helpers.hpp>

namespace performer::test {

/// Runs a cell for float, then for double: the checks are generic, and a scalar-specific
/// shortcut in a check would show up as a difference between the two.
template <class Check>
void for_float_and_double(Check check) {
  {
    SCOPED_TRACE("float");
    check.template operator()<float>();
  }
  {
    SCOPED_TRACE("double");
    check.template operator()<double>();
  }
}

template <class T>
constexpr T nan_v = std::numeric_limits<T>::quiet_NaN();
template <class T>
constexpr T inf_v = std::numeric_limits<T>::infinity();

/// A finite value whose square overflows T (3.7e19 in float, 2.7e154 in double).
template <class T>
T overflowing_root() {
  return T(2) * std::sqrt(std::numeric_limits<T>::max());
}

}  // namespace performer::test
