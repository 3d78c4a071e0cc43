// Central finite differences of an attention, the independent reference every backward pass is
// checked against (tests/<family>/*_gradient_test.cpp).
//
// The loss is L = sum(dout .* f(q, k, v)), so dL/dx_ij ~ (L(x + h e_ij) - L(x - h e_ij)) / 2h.
// In double with h = 1e-5 the truncation error is about h^2 |f'''| / 6 and the rounding error
// about eps |L| / h: both near 1e-10 for the unit-scale inputs the tests use, so a gradient that
// agrees to 1e-7 relative to the gradient's scale is right, and a dropped term (a missing
// stabiliser factor, a transposed product) is off by far more than that.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>

#include <performer/core/types.hpp>

namespace performer::test {

struct numeric_gradients {
  row_matrix<double> dq, dk, dv;
};

/// Central differences of L = sum(dout .* f(q, k, v)) for every entry of q, k and v, where
/// f(q, k, v) returns the forward's result as a row_matrix<double>. 2 (N_q d + N_k (d + d_v))
/// forward calls.
template <class Forward>
numeric_gradients finite_differences(const Forward& f, const row_matrix<double>& q,
                                     const row_matrix<double>& k, const row_matrix<double>& v,
                                     const row_matrix<double>& dout, double h = 1e-5) {
  row_matrix<double> qq = q, kk = k, vv = v;
  const auto loss = [&] { return (f(qq, kk, vv).array() * dout.array()).sum(); };
  const auto along = [&](row_matrix<double>& x) {
    row_matrix<double> grad(x.rows(), x.cols());
    for (index_t i = 0; i < x.rows(); ++i) {
      for (index_t j = 0; j < x.cols(); ++j) {
        const double keep = x(i, j);
        x(i, j) = keep + h;
        const double up = loss();
        x(i, j) = keep - h;
        const double down = loss();
        x(i, j) = keep;
        grad(i, j) = (up - down) / (2 * h);
      }
    }
    return grad;
  };
  return {along(qq), along(kk), along(vv)};
}

/// Central differences of a scalar function of one matrix, loss(x) -> double, at every entry
/// of x: the gradient of a loss that is not an attention's (a layer, a training loss). The step
/// is h times max(1, max |x|): a function of x's direction only (LayerNorm) is then probed at
/// the same relative step whatever the scale of x. 2 x.size() calls of loss.
template <class Loss>
row_matrix<double> finite_difference_gradient(const Loss& loss, const row_matrix<double>& x,
                                              double h = 1e-5) {
  const double step = h * std::max(1.0, x.size() > 0 ? x.cwiseAbs().maxCoeff() : 0.0);
  row_matrix<double> xx = x;
  row_matrix<double> grad(x.rows(), x.cols());
  for (index_t i = 0; i < x.rows(); ++i) {
    for (index_t j = 0; j < x.cols(); ++j) {
      const double keep = xx(i, j);
      xx(i, j) = keep + step;
      const double up = loss(xx);
      xx(i, j) = keep - step;
      const double down = loss(xx);
      xx(i, j) = keep;
      grad(i, j) = (up - down) / (2 * step);
    }
  }
  return grad;
}

/// max |a - b| / max(max |b|, floor): the error relative to the reference's scale.
inline double relative_error(const row_matrix<double>& a, const row_matrix<double>& b,
                             double floor = 1e-12) {
  EXPECT_EQ(a.rows(), b.rows());
  EXPECT_EQ(a.cols(), b.cols());
  if (a.rows() != b.rows() || a.cols() != b.cols()) return INFINITY;
  return (a - b).cwiseAbs().maxCoeff() / std::max(b.cwiseAbs().maxCoeff(), floor);
}

/// A rows x cols matrix of N(0, sigma^2) entries from a fixed seed.
inline row_matrix<double> gaussian_matrix(index_t rows, index_t cols, unsigned seed,
                                          double sigma = 1.0) {
  std::mt19937_64 gen(seed);
  std::normal_distribution<double> normal(0.0, sigma);
  row_matrix<double> m(rows, cols);
  for (index_t i = 0; i < rows; ++i) {
    for (index_t j = 0; j < cols; ++j) m(i, j) = normal(gen);
  }
  return m;
}

}  // namespace performer::test
