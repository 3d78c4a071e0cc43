/// @file favor/features/hyperbolic_features.hpp
/// @brief Hyperbolic positive random features (Performer Lemma 1, second form; docs/algorithms.md §3.2).
#pragma once

#include <cmath>

#include "../../core/types.hpp"
#include "../feature_map.hpp"

namespace performer {

/**
 * @brief phi(x) = exp(-|x~|^2 / 2) / sqrt(2m) [exp(W x~), exp(-W x~)]: unbiased and positive,
 * with half the variance of positive_features times (1 - e^{-|x+y|^2}) for the same m draws.
 * M = 2m. Stabilised by max |W x~| per row. Time O(N m d).
 */
template <real_scalar T>
struct hyperbolic_features {
  static constexpr bool uses_projection = true;

  [[nodiscard]] index_t feature_count(index_t m, index_t /*d*/) const { return 2 * m; }

  void apply(const const_matrix_ref<T>& w, const const_matrix_ref<T>& x, matrix_ref<T> phi,
             Eigen::Ref<vector<T>> log_scale) const {
    const index_t m = w.rows();
    detail::check_feature_args<T>("hyperbolic_features::apply", true, 2 * m, w, x, phi, log_scale);
    const T scale = detail::softmax_input_scale<T>(x.cols());
    const T inv_sqrt_2m = T(1) / std::sqrt(static_cast<T>(2 * m));
    auto u = phi.leftCols(m);
    u.noalias() = x * w.transpose();  // scaled apart: no temporary for one-row x
    u *= scale;
    for (index_t i = 0; i < x.rows(); ++i) {
      const T top = u.row(i).cwiseAbs().maxCoeff();
      phi.row(i).rightCols(m) = (-u.row(i).array() - top).exp() * inv_sqrt_2m;
      u.row(i) = (u.row(i).array() - top).exp() * inv_sqrt_2m;
      log_scale(i) = top - (x.row(i) * scale).squaredNorm() / T(2);
    }
  }

  /// With u = W x~: d phi+ / du = phi+ and d phi- / du = -phi-, so
  /// dx = s (dphi+ .* phi+ - dphi- .* phi-) W - s^2 dlog_scale x.
  void backward(const const_matrix_ref<T>& w, const const_matrix_ref<T>& x,
                const const_matrix_ref<T>& phi, const const_vector_ref<T>& log_scale,
                matrix_ref<T> dphi, const const_vector_ref<T>& dlog_scale,
                matrix_ref<T> dx) const {
    const index_t m = w.rows();
    detail::check_feature_backward_args<T>("hyperbolic_features::backward", true, 2 * m, w, x,
                                           phi, log_scale, dphi, dlog_scale, dx);
    if (x.rows() == 0) return;
    dphi.rightCols(m).array() *= -phi.rightCols(m).array();
    dphi.leftCols(m).array() = dphi.leftCols(m).array() * phi.leftCols(m).array() +
                               dphi.rightCols(m).array();
    const T scale = detail::softmax_input_scale<T>(x.cols());
    detail::projected_backward<T>(scale, dphi.leftCols(m), w, dx);
    dx -= (scale * scale) * (dlog_scale.asDiagonal() * x);
  }
};

static_assert(differentiable_feature_map<hyperbolic_features<float>, float>);

}  // namespace performer
