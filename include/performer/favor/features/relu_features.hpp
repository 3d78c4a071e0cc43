/// @file favor/features/relu_features.hpp
/// @brief Performer-ReLU: generalized kernel features f(Wx) + epsilon with f = ReLU
/// (Performer section 2.2; docs/algorithms.md §3.4).
#pragma once

#include "../../core/types.hpp"
#include "../feature_map.hpp"

namespace performer {

/**
 * @brief phi(x) = ReLU(W x) + epsilon (JAX reference defaults: no input scaling, no 1/sqrt(m),
 * epsilon = 1e-3). It does not estimate the softmax kernel: it defines its own kernel
 * K(q, k) = phi(q) . phi(k), positive, for which attention is exact in linear time.
 * M = m, log_scale = 0. Time O(N m d).
 */
template <real_scalar T>
struct relu_features {
  static constexpr bool uses_projection = true;
  T epsilon = T(1e-3);

  [[nodiscard]] index_t feature_count(index_t m, index_t /*d*/) const { return m; }

  void apply(const const_matrix_ref<T>& w, const const_matrix_ref<T>& x, matrix_ref<T> phi,
             Eigen::Ref<vector<T>> log_scale) const {
    detail::check_feature_args<T>("relu_features::apply", true, w.rows(), w, x, phi, log_scale);
    phi.noalias() = x * w.transpose();
    phi = phi.cwiseMax(T(0)).array() + epsilon;
    log_scale.setZero();
  }

  /// dx = (dphi .* [W x > 0]) W. The kink is read off phi > epsilon: a W x too small to move
  /// epsilon's last bit gets derivative 0, as if it were <= 0.
  void backward(const const_matrix_ref<T>& w, const const_matrix_ref<T>& x,
                const const_matrix_ref<T>& phi, const const_vector_ref<T>& log_scale,
                matrix_ref<T> dphi, const const_vector_ref<T>& dlog_scale,
                matrix_ref<T> dx) const {
    detail::check_feature_backward_args<T>("relu_features::backward", true, w.rows(), w, x, phi,
                                           log_scale, dphi, dlog_scale, dx);
    dphi = (phi.array() > epsilon).select(dphi, T(0));
    detail::projected_backward<T>(T(1), dphi, w, dx);
  }
};

static_assert(differentiable_feature_map<relu_features<float>, float>);

}  // namespace performer
