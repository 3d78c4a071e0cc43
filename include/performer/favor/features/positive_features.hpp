/// @file favor/features/positive_features.hpp
/// @brief FAVOR+ positive random features (Performer Lemma 1; docs/algorithms.md §3.1).
#pragma once

#include <cmath>
#include <concepts>

#include "../../core/detail/bf16_exp.hpp"
#include "../../core/types.hpp"
#include "../feature_map.hpp"

namespace performer {

/**
 * @brief phi(x) = exp(W x~ - |x~|^2 / 2) / sqrt(m), x~ = x d^(-1/4): an unbiased, positive
 * estimator of exp(q . k / sqrt(d)). M = m. The row's largest exponent goes to log_scale, so
 * every entry lies in (0, 1/sqrt(m)]. Time O(N m d).
 */
template <real_scalar T>
struct positive_features {
  static constexpr bool uses_projection = true;

  [[nodiscard]] index_t feature_count(index_t m, index_t /*d*/) const { return m; }

  void apply(const const_matrix_ref<T>& w, const const_matrix_ref<T>& x, matrix_ref<T> phi,
             Eigen::Ref<vector<T>> log_scale) const {
    detail::check_feature_args<T>("positive_features::apply", true, w.rows(), w, x, phi, log_scale);
    // The scale is applied inside the exp (it is positive, so the row maximum is unchanged):
    // a scaled product expression would make Eigen allocate a temporary for one-row inputs.
    phi.noalias() = x * w.transpose();
    from_projection(x, phi, log_scale);
  }

  /// apply() after its product: phi holds x w^T on entry, the features on return. The bfloat16
  /// path (favor_bf16_attention) computes that product itself. O(N m) exponentials.
  void from_projection(const const_matrix_ref<T>& x, matrix_ref<T> phi,
                       Eigen::Ref<vector<T>> log_scale) const {
    finish(x, phi, log_scale, [](auto row, T top, T scale, T factor) {
      row = ((row.array() - top) * scale).exp() * factor;
    });
  }

  /// from_projection for the bfloat16 path, whose products round phi to 8 significant bits:
  /// the exponentials are bf16::exp_row's (relative error below 1.9e-5, against bfloat16's
  /// 2^-9; 0 below 2^-125 of the row's largest), with about 60% of the instructions of Eigen's.
  /// Float only. O(N m).
  void from_projection_bf16(const const_matrix_ref<T>& x, matrix_ref<T> phi,
                            Eigen::Ref<vector<T>> log_scale) const
    requires std::same_as<T, float>
  {
    finish(x, phi, log_scale, [](auto row, T top, T scale, T factor) {
      detail::bf16::exp_row(row.data(), row.size(), top, scale, factor);
    });
  }

  /// dx = s (dphi .* phi) W - s^2 dlog_scale x, s = d^(-1/4) (feature_map.hpp's contract).
  void backward(const const_matrix_ref<T>& w, const const_matrix_ref<T>& x,
                const const_matrix_ref<T>& phi, const const_vector_ref<T>& log_scale,
                matrix_ref<T> dphi, const const_vector_ref<T>& dlog_scale,
                matrix_ref<T> dx) const {
    detail::check_feature_backward_args<T>("positive_features::backward", true, w.rows(), w, x,
                                           phi, log_scale, dphi, dlog_scale, dx);
    detail::exponential_features_backward<T>(detail::softmax_input_scale<T>(x.cols()), w, x,
                                             phi, dphi, dlog_scale, dx);
  }

 private:
  /// What both from_projections share: each row's largest exponent goes to log_scale, with the
  /// norm term; `exponentials(row, top, s, 1/sqrt(m))` sets the row to exp((row - top) s) /
  /// sqrt(m), s = d^(-1/4).
  template <class Exponentials>
  static void finish(const const_matrix_ref<T>& x, matrix_ref<T> phi,
                     Eigen::Ref<vector<T>> log_scale, Exponentials exponentials) {
    const T scale = detail::softmax_input_scale<T>(x.cols());
    const T inv_sqrt_m = T(1) / std::sqrt(static_cast<T>(phi.cols()));
    for (index_t i = 0; i < x.rows(); ++i) {
      const T top = phi.row(i).maxCoeff();
      exponentials(phi.row(i), top, scale, inv_sqrt_m);
      log_scale(i) = top * scale - (x.row(i) * scale).squaredNorm() / T(2);
    }
  }
};

static_assert(differentiable_feature_map<positive_features<float>, float>);
static_assert(differentiable_feature_map<positive_features<double>, double>);
static_assert(projected_feature_map<positive_features<float>, float>);
static_assert(bf16_feature_map<positive_features<float>>);

}  // namespace performer
