// What the bfloat16 tests (tests/favor/bf16_projection_test.cpp, favor_bf16_attention_test.cpp)
// share: rows rounded to bfloat16, how far a float sum of their exact products can be from the
// exact projection (their bounds start from it), and a feature map neither class may take.
#pragma once

#include <algorithm>
#include <cmath>

#include <performer/core/bfloat16.hpp>
#include <performer/core/detail/bf16_exp.hpp>
#include <performer/core/types.hpp>
#include <performer/favor/features/positive_features.hpp>

namespace performer::test {

/// x rounded to bfloat16, elementwise.
inline row_matrix<float> rounded(const row_matrix<float>& x) {
  return x.unaryExpr([](float e) { return detail::bf16::widen(detail::bf16::round(e)); });
}

/// u_b, bfloat16's unit roundoff: rounding to nearest moves a normal value by at most 2^-8 of
/// itself (8 significant bits).
inline constexpr double unit_roundoff = 0x1p-8;

/// How far, relative to max|v|, bfloat16 FAVOR+ may be from float FAVOR+ on the same rounded
/// inputs (docs/algorithms.md §10.1, §10.2, §10.3): each term of num and den has three factors
/// rounded and two features from bf16::exp_row, each within e_exp of float's (exp_row_error and
/// float's own |x| 2^-23 plus an ulp, at the range's end x = -125 ln 2: 3e-5), and a kernel
/// value may move by a factor within exp(+-eps) from the order of the projection's sums, so a
/// term moves by at most delta = exp(eps) (1 + e_exp)^2 (1 + u_b)^3 - 1, and num / den by at
/// most 2 delta / (1 - delta): about 0.0239 for eps = 0.
inline double rounding_bound(double eps = 0.0) {
  const double x_end = -125.0 * std::log(2.0);
  const double e_exp = detail::bf16::exp_row_error(x_end) + (-x_end + 1.0) * 0x1p-23;
  const double delta =
      std::exp(eps) * std::pow(1.0 + e_exp, 2) * std::pow(1.0 + unit_roundoff, 3) - 1.0;
  return 2.0 * delta / (1.0 - delta);
}

/// gamma = d 2^-24 max_ij sum_k |x_ik w_jk|, x and w rounded: a float sum of the d exact
/// bfloat16 products x_i . w_j, in any order, is within gamma of the exact projection (each
/// partial sum rounds once, by at most 2^-24 of a value below sum_k |x_ik w_jk|).
inline double projection_sum_error(const row_matrix<float>& x, const row_matrix<float>& w) {
  return static_cast<double>(x.cols()) * std::ldexp(1.0, -24) *
         (rounded(x).cast<double>().cwiseAbs() * rounded(w).cast<double>().cwiseAbs().transpose())
             .maxCoeff();
}

/// FAVOR+'s map with two features per projection (M = 2m): bfloat16 FAVOR+ needs M = m.
struct doubled_features : positive_features<float> {
  [[nodiscard]] index_t feature_count(index_t m, index_t /*d*/) const { return 2 * m; }
};

/// eps for rounding_bound(): a projection summed in another order moves by at most gamma
/// (projection_sum_error), an exponent (x.w - max) s by 2 s gamma (s = d^-1/4), a feature by a
/// factor within exp(+-2 s gamma), so a kernel value phi(q).phi(k) within exp(+-4 s gamma).
inline double projection_order_eps(const row_matrix<float>& q, const row_matrix<float>& k,
                                   const row_matrix<float>& w) {
  return 4.0 * std::pow(static_cast<double>(q.cols()), -0.25) *
         std::max(projection_sum_error(q, w), projection_sum_error(k, w));
}

}  // namespace performer::test
