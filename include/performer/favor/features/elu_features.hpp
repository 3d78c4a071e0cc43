/// @file favor/features/elu_features.hpp
/// @brief elu(x) + 1: the deterministic map of the "linear transformer" (Katharopoulos et al.
/// 2020), no projection (docs/algorithms.md §3.4).
#pragma once

#include "../../core/types.hpp"
#include "../feature_map.hpp"

namespace performer {

/**
 * @brief phi(x) = elu(x) + 1 (x + 1 for x > 0, e^x otherwise): positive, no random
 * projection (the m argument is ignored), M = d, log_scale = 0. Defines its own kernel, not
 * the softmax one. Time O(N d).
 */
template <real_scalar T>
struct elu_features {
  static constexpr bool uses_projection = false;

  [[nodiscard]] index_t feature_count(index_t /*m*/, index_t d) const { return d; }

  void apply(const const_matrix_ref<T>& w, const const_matrix_ref<T>& x, matrix_ref<T> phi,
             Eigen::Ref<vector<T>> log_scale) const {
    detail::check_feature_args<T>("elu_features::apply", false, x.cols(), w, x, phi, log_scale);
    phi = x.unaryExpr([](T v) { return v > T(0) ? v + T(1) : std::exp(v); });
    log_scale.setZero();
  }

  /// dx = dphi .* (1 for x > 0, else e^x = phi).
  void backward(const const_matrix_ref<T>& w, const const_matrix_ref<T>& x,
                const const_matrix_ref<T>& phi, const const_vector_ref<T>& log_scale,
                matrix_ref<T> dphi, const const_vector_ref<T>& dlog_scale,
                matrix_ref<T> dx) const {
    detail::check_feature_backward_args<T>("elu_features::backward", false, x.cols(), w, x, phi,
                                           log_scale, dphi, dlog_scale, dx);
    dx = (x.array() > T(0)).select(dphi, dphi.cwiseProduct(phi));
  }
};

static_assert(differentiable_feature_map<elu_features<float>, float>);

}  // namespace performer
