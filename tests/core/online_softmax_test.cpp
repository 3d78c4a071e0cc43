// Covers performer/core/detail/online_softmax.hpp: the running-maximum rescaling every
// mechanism shares (docs/algorithms.md §1.1). Merging a sum in pieces in any order equals one
// pass to rounding; the empty state and masked entries contribute exactly nothing.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include <performer/core/detail/online_softmax.hpp>
#include <performer/random/detail/generator.hpp>

// Named as well as anonymous: the unity build compiles several test files as one.
namespace core_online_softmax_test {
namespace {

using performer::detail::raise_running_max;
using performer::detail::shifted_exp;
constexpr double minus_inf = -std::numeric_limits<double>::infinity();

TEST(OnlineSoftmax, ShiftedExpMapsMinusInfinityToExactlyZero) {
  EXPECT_EQ(shifted_exp(minus_inf, 3.0), 0.0);
  EXPECT_EQ(shifted_exp(minus_inf, minus_inf), 0.0);  // never exp(-inf + inf) = NaN
  EXPECT_EQ(shifted_exp(2.0, 2.0), 1.0);
  EXPECT_DOUBLE_EQ(shifted_exp(1.0, 3.0), std::exp(-2.0));
}

TEST(OnlineSoftmax, RaisingTheMaximumReturnsTheFactorForTheCarriedSums) {
  double running = minus_inf;
  EXPECT_EQ(raise_running_max(running, 2.0), 0.0);  // nothing was carried
  EXPECT_EQ(running, 2.0);
  EXPECT_EQ(raise_running_max(running, 1.0), 1.0);  // no rise: sums stay as they are
  EXPECT_EQ(running, 2.0);
  EXPECT_DOUBLE_EQ(raise_running_max(running, 5.0), std::exp(-3.0));
  EXPECT_EQ(running, 5.0);
  EXPECT_EQ(raise_running_max(running, minus_inf), 1.0);
}

TEST(OnlineSoftmax, PiecewiseSumsEqualOnePass) {
  // sum_j exp(x_j) v_j / sum_j exp(x_j) over 200 logits spread over [-300, 300] (exp of the
  // largest overflows double on its own), accumulated in pieces of every size with rescaling,
  // against a long double pass.
  performer::detail::xoshiro256ss rng(5);
  std::vector<double> x(200);
  std::vector<double> v(200);
  for (std::size_t j = 0; j < x.size(); ++j) {
    x[j] = 600 * rng.uniform() - 300;
    v[j] = 2 * rng.uniform() - 1;
  }
  x[17] = minus_inf;  // a masked entry
  long double top = minus_inf;
  for (const double xj : x) top = std::max<long double>(top, xj);
  long double num = 0;
  long double den = 0;
  for (std::size_t j = 0; j < x.size(); ++j) {
    if (x[j] == minus_inf) continue;
    num += std::exp(static_cast<long double>(x[j]) - top) * v[j];
    den += std::exp(static_cast<long double>(x[j]) - top);
  }
  const double exact = static_cast<double>(num / den);
  for (const std::size_t piece : {std::size_t{1}, std::size_t{3}, std::size_t{64}, std::size_t{200}}) {
    double running = minus_inf;
    double n = 0;
    double d = 0;
    for (std::size_t j0 = 0; j0 < x.size(); j0 += piece) {
      double piece_max = minus_inf;
      for (std::size_t j = j0; j < std::min(x.size(), j0 + piece); ++j) piece_max = std::max(piece_max, x[j]);
      const double factor = raise_running_max(running, piece_max);
      n *= factor;
      d *= factor;
      for (std::size_t j = j0; j < std::min(x.size(), j0 + piece); ++j) {
        const double w = shifted_exp(x[j], running);
        n += w * v[j];
        d += w;
      }
    }
    EXPECT_NEAR(n / d, exact, 1e-13) << "pieces of " << piece;
  }
}

}  // namespace
}  // namespace core_online_softmax_test
