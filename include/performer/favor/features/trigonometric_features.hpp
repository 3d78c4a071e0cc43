/// @file favor/features/trigonometric_features.hpp
/// @brief Trigonometric (sin/cos) random features (Performer section 2.3; docs/algorithms.md §3.3),
/// for comparison: they are the unstable ones FAVOR+ improves on.
#pragma once

#include <cmath>

#include "../../core/types.hpp"
#include "../feature_map.hpp"

namespace performer {

/**
 * @brief phi(x) = exp(|x~|^2 / 2) / sqrt(m) [sin(W x~), cos(W x~)]: unbiased for
 * exp(q . k / sqrt(d)) but not positive. Its estimate can be negative or near zero where the
 * softmax kernel is small, so the attention normaliser can vanish or change sign: expect large
 * errors, and an exception when the normaliser is exactly zero. M = 2m. Time O(N m d).
 */
template <real_scalar T>
struct trigonometric_features {
  static constexpr bool uses_projection = true;

  [[nodiscard]] index_t feature_count(index_t m, index_t /*d*/) const { return 2 * m; }

  void apply(const const_matrix_ref<T>& w, const const_matrix_ref<T>& x, matrix_ref<T> phi,
             Eigen::Ref<vector<T>> log_scale) const {
    const index_t m = w.rows();
    detail::check_feature_args<T>("trigonometric_features::apply", true, 2 * m, w, x, phi, log_scale);
    if (x.rows() == 0) {
      return;  // phi may be a null view: even taking its halves is pointer arithmetic on null
    }
    const T scale = detail::softmax_input_scale<T>(x.cols());
    const T inv_sqrt_m = T(1) / std::sqrt(static_cast<T>(m));
    auto u = phi.leftCols(m);
    u.noalias() = x * w.transpose();  // scaled apart: no temporary for one-row x
    u *= scale;
    phi.rightCols(m) = u.array().cos() * inv_sqrt_m;
    u = u.array().sin() * inv_sqrt_m;
    for (index_t i = 0; i < x.rows(); ++i) {
      log_scale(i) = (x.row(i) * scale).squaredNorm() / T(2);
    }
  }

  /// With u = W x~: d sin / du = cos and d cos / du = -sin (phi's halves, same 1/sqrt(m)), and
  /// log_scale = s^2 |x|^2 / 2, so dx = s (dsin .* cos - dcos .* sin) W + s^2 dlog_scale x.
  void backward(const const_matrix_ref<T>& w, const const_matrix_ref<T>& x,
                const const_matrix_ref<T>& phi, const const_vector_ref<T>& log_scale,
                matrix_ref<T> dphi, const const_vector_ref<T>& dlog_scale,
                matrix_ref<T> dx) const {
    const index_t m = w.rows();
    detail::check_feature_backward_args<T>("trigonometric_features::backward", true, 2 * m, w,
                                           x, phi, log_scale, dphi, dlog_scale, dx);
    if (x.rows() == 0) return;
    dphi.leftCols(m).array() = dphi.leftCols(m).array() * phi.rightCols(m).array() -
                               dphi.rightCols(m).array() * phi.leftCols(m).array();
    const T scale = detail::softmax_input_scale<T>(x.cols());
    detail::projected_backward<T>(scale, dphi.leftCols(m), w, dx);
    dx += (scale * scale) * (dlog_scale.asDiagonal() * x);
  }
};

static_assert(differentiable_feature_map<trigonometric_features<float>, float>);

}  // namespace performer
