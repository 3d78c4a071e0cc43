// Covers core/detail/bf16_exp.hpp: exp_row against exp in double over the whole range of
// arguments it keeps, for several scales, maxima and factors, within exp_row_error (whose terms
// the header derives); exact at the maximum; zero below its range; NaN and -inf.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include <performer/core/detail/bf16_exp.hpp>

namespace performer::test {
namespace core_bf16_exp_test {
namespace {

using detail::bf16::exp_row;
using detail::bf16::exp_row_error;

// Arguments x = (row - top) scale from 0 to -86.6 (exp_row's range ends at -125 ln 2 = -86.64),
// dense near 0, where the features that dominate the sums lie, and across every binade below.
TEST(Bf16Exp, StaysWithinItsBoundOfTheExactExponential) {
  const double half_subnormal = std::ldexp(1.0, -150);
  for (const float scale : {1.0f, 0.35355339f, 0.1f}) {      // 0.3535... = 64^(-1/4)
    for (const float top : {0.0f, 3.7f, -12.5f, 250.0f}) {
      for (const float factor : {1.0f, 0.0625f, 0.057735027f}) {  // 1/sqrt(256), 1/sqrt(300)
        std::vector<float> row;
        for (double x = 0.0; x > -86.6; x -= 0.0137) {
          row.push_back(static_cast<float>(top + x / scale));
        }
        for (int i = 0; i < 4096; ++i) row.push_back(std::nextafter(top, -1e30f) - i * 1e-4f);
        std::vector<float> got = row;
        exp_row(got.data(), static_cast<index_t>(got.size()), top, scale, factor);
        double worst_near_zero = 0.0;
        for (std::size_t j = 0; j < row.size(); ++j) {
          const double x = (static_cast<double>(row[j]) - top) * scale;
          if (x < -86.6) continue;  // the float row value fell past the end of the range
          const double want = factor * std::exp(x);
          const double error = std::abs(got[j] - want);
          EXPECT_LE(error, exp_row_error(x) * want + half_subnormal)
              << "x = " << x << " scale " << scale << " top " << top << " factor " << factor;
          if (x > -1.0) worst_near_zero = std::max(worst_near_zero, error / want);
        }
        // Near 0 the argument's roundings stay below 7e-7, so what shows there is the
        // polynomial's own error (up to 2.83e-6, at f = +-1/2): the bound is not idle.
        EXPECT_GT(worst_near_zero, 1.5e-6);
      }
    }
  }
}

TEST(Bf16Exp, GivesTheFactorAtTheMaximumAndZeroBelowItsRange) {
  std::vector<float> row{5.0f, 5.0f - 87.0f, 5.0f - 1000.0f,
                         -std::numeric_limits<float>::infinity(), 5.0f - 86.0f};
  exp_row(row.data(), 5, 5.0f, 1.0f, 0.0625f);
  EXPECT_EQ(row[0], 0.0625f);
  EXPECT_EQ(row[1], 0.0f);
  EXPECT_EQ(row[2], 0.0f);
  EXPECT_EQ(row[3], 0.0f);
  // Just inside the range: still a faithful exp, not the clamp's 2^-125 (a subnormal here, so
  // within half of float's smallest one too).
  const double want = 0.0625 * std::exp(-86.0);
  EXPECT_LE(std::abs(row[4] - want), exp_row_error(-86.0) * want + std::ldexp(1.0, -150));
}

// A NaN exponent (a projection that overflowed) must stay NaN, for the attention's finiteness
// check to report it, never turn into a finite feature.
TEST(Bf16Exp, KeepsNaN) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> row{nan, 0.0f, nan, -1.0f};
  exp_row(row.data(), 4, 0.0f, 1.0f, 1.0f);
  EXPECT_TRUE(std::isnan(row[0]));
  EXPECT_EQ(row[1], 1.0f);
  EXPECT_TRUE(std::isnan(row[2]));
  std::vector<float> at_nan_top{1.0f, 2.0f};
  exp_row(at_nan_top.data(), 2, nan, 1.0f, 1.0f);
  EXPECT_TRUE(std::isnan(at_nan_top[0]) && std::isnan(at_nan_top[1]));
}

}  // namespace
}  // namespace core_bf16_exp_test
}  // namespace performer::test
