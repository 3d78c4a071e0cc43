/// @file favor/example_feature_map.hpp
/// @brief A documented example model of the feature_map concept, to copy when writing your own:
/// Performer-style generalized kernel features with f = softplus (Performer section 2.2,
/// docs/algorithms.md §3.4). Like ReLU features it defines its own positive kernel
/// K(q, k) = phi(q) . phi(k) rather than estimating softmax's, so attention with it is exact
/// in linear time for that kernel.
///
/// Use it as `favor_attention<float, softplus_features<float>>(d, m, seed)`.
#pragma once

#include <cmath>

#include "../core/types.hpp"
#include "feature_map.hpp"

namespace performer {

/**
 * @brief phi(x) = softplus(W x) / sqrt(m) with softplus(u) = log(1 + e^u): positive (0 once
 * e^u underflows, u below about -87 in float) and smooth. M = m, log_scale = 0 (every entry already fits T: softplus(u) <= max(u, 0) + log 2).
 * Time O(N m d).
 */
template <real_scalar T>
struct softplus_features {
  // --- What the concept asks for -------------------------------------------------------------
  /// apply() reads the projection w (favor_attention then draws and owns it).
  static constexpr bool uses_projection = true;

  /// M, the width of phi for m projections of inputs of width d.
  [[nodiscard]] index_t feature_count(index_t m, index_t /*d*/) const { return m; }

  /// phi (N x M) and log_scale (N), sized by the caller. The feature vector of row i is
  /// phi.row(i) * exp(log_scale(i)); a map whose features can overflow T returns each row's
  /// largest exponent in log_scale instead (positive_features does), this one needs none.
  void apply(const const_matrix_ref<T>& w, const const_matrix_ref<T>& x, matrix_ref<T> phi,
             Eigen::Ref<vector<T>> log_scale) const {
    // The shared shape checks: every map reports bad shapes with the same wording.
    detail::check_feature_args<T>("softplus_features::apply", true, w.rows(), w, x, phi, log_scale);
    const T inv_sqrt_m = T(1) / std::sqrt(static_cast<T>(w.rows()));
    phi.noalias() = x * w.transpose();  // no temporary: the scaling comes after
    // log1p(e^u) loses nothing for u << 0; for u > 0 write it as u + log1p(e^-u), so that e^u
    // never overflows.
    phi = phi.unaryExpr([inv_sqrt_m](T u) {
      return (u > T(0) ? u + std::log1p(std::exp(-u)) : std::log1p(std::exp(u))) * inv_sqrt_m;
    });
    log_scale.setZero();
  }

  // --- What training asks for (differentiable_feature_map) ----------------------------------
  /// dx given dphi = dL/dphi (scratch: overwritten) and dlog_scale (0 here: log_scale is
  /// constant), phi being apply()'s result for (w, x). d softplus(u) / du = sigmoid(u) =
  /// 1 - e^(-softplus(u)), read off phi with expm1, which keeps it exact where u << 0.
  void backward(const const_matrix_ref<T>& w, const const_matrix_ref<T>& x,
                const const_matrix_ref<T>& phi, const const_vector_ref<T>& log_scale,
                matrix_ref<T> dphi, const const_vector_ref<T>& dlog_scale,
                matrix_ref<T> dx) const {
    detail::check_feature_backward_args<T>("softplus_features::backward", true, w.rows(), w, x,
                                           phi, log_scale, dphi, dlog_scale, dx);
    const T sqrt_m = std::sqrt(static_cast<T>(w.rows()));
    dphi.array() *= phi.array().unaryExpr([sqrt_m](T p) { return -std::expm1(-p * sqrt_m); }) /
                    sqrt_m;
    dx.noalias() = dphi * w;
  }
};

static_assert(differentiable_feature_map<softplus_features<float>, float>);
static_assert(differentiable_feature_map<softplus_features<double>, double>);

}  // namespace performer
