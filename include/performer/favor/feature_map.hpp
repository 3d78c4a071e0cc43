/// @file favor/feature_map.hpp
/// @brief The feature-map policy concept of random-feature attention, and the argument checks
/// every map shares.
#pragma once

#include <cmath>
#include <concepts>
#include <string_view>
#include <type_traits>

#include "../core/concepts.hpp"
#include "../core/error.hpp"
#include "../core/types.hpp"

namespace performer {

/**
 * @brief A feature map phi for kernelised attention: K(q, k) ~ phi(q) . phi(k).
 *
 * Requires `F::uses_projection` (a constant: whether apply() reads the projection w),
 * `f.feature_count(m, d)` (M, the width of phi for m projections and inputs of width d) and
 * `f.apply(w, x, phi, log_scale)` with
 * - x: N x d raw rows (maps that estimate the softmax kernel apply the d^(-1/4) scaling
 *   themselves, so that phi(q) . phi(k) estimates exp(q . k / sqrt(d)));
 * - w: the m x d projection (ignored when !uses_projection);
 * - phi (N x M) and log_scale (N), sized by the caller: the feature vector of row i is
 *   phi.row(i) * exp(log_scale(i)). Entries of phi are finite and bounded (the exponential maps
 *   subtract the row's largest exponent into log_scale, so no exp overflows for any finite
 *   input); log_scale is finite, except that it may be -inf when the row's true log scale lies
 *   below the scalar's range (its weight is 0 in T, e.g. |x| > 1e19 in float) and +inf when it
 *   lies above (a weight that overflows T: attentions report that as an overflow). The maps
 *   scale x before squaring its norm, so neither happens while the scaled norm fits in T.
 * The attention drops the queries' log scales (a per-query factor cancels) and shifts the keys'
 * by a shared running maximum (a shared factor cancels), which is why it is returned apart.
 */
template <class F, class T>
concept feature_map =
    requires(const F& f, index_t m, index_t d, const const_matrix_ref<T>& w,
             const const_matrix_ref<T>& x, matrix_ref<T> phi, Eigen::Ref<vector<T>> log_scale) {
      typename std::bool_constant<static_cast<bool>(F::uses_projection)>;
      { f.feature_count(m, d) } -> std::same_as<index_t>;
      { f.apply(w, x, phi, log_scale) } -> std::same_as<void>;
    };

/**
 * @brief A feature map with a backward pass: `f.backward(w, x, phi, log_scale, dphi,
 * dlog_scale, dx)`, where phi and log_scale are apply()'s results for (w, x), dphi (N x M) and
 * dlog_scale (N) are the gradients of a loss with respect to them, and dx (N x d) is *assigned*
 * the gradient with respect to x, with w held fixed. The row's stabilising maximum, which apply()
 * moves between phi and log_scale, is held fixed too: the feature vector phi exp(log_scale) does
 * not depend on it, so neither does the gradient. dphi is scratch: backward may overwrite it.
 * Time O(N M d) for the projected maps.
 */
template <class F, class T>
concept differentiable_feature_map =
    feature_map<F, T> &&
    requires(const F& f, const const_matrix_ref<T>& w, const const_matrix_ref<T>& x,
             const const_vector_ref<T>& log_scale, matrix_ref<T> dphi, matrix_ref<T> dx) {
      { f.backward(w, x, w, log_scale, dphi, log_scale, dx) } -> std::same_as<void>;
    };

/**
 * @brief A feature map whose projection can be computed by someone else:
 * `f.from_projection(x, phi, log_scale)` finishes apply() when phi (N x M, M = m) already holds
 * x w^T, and leaves phi and log_scale as apply(w, x, phi, log_scale) would. The bfloat16 path
 * (favor_bf16_attention) computes that product in bfloat16 and passes x rounded to bfloat16, so
 * that the features are exact features of the rounded rows. O(N M) beyond the product.
 */
template <class F, class T>
concept projected_feature_map =
    feature_map<F, T> && static_cast<bool>(F::uses_projection) &&
    requires(const F& f, const const_matrix_ref<T>& x, matrix_ref<T> phi,
             Eigen::Ref<vector<T>> log_scale) {
      { f.from_projection(x, phi, log_scale) } -> std::same_as<void>;
    };

/**
 * @brief A projected_feature_map that can finish its features to bfloat16's precision:
 * `f.from_projection_bf16(x, phi, log_scale)` leaves what from_projection leaves, but for its
 * exponentials: each feature within a relative error of the exact value far below the 2^-9 of
 * the rounding to bfloat16 that the products apply next (positive_features:
 * detail::bf16::exp_row_error, 1.9e-5 at worst), and 0 where that value lies below 2^-125 of
 * the row's largest, which the products flush anyway. bf16_projection and favor_bf16_attention
 * call it where a map has it (FAVOR+'s positive_features<float>), and from_projection
 * elsewhere. O(N M) beyond the product.
 */
template <class F>
concept bf16_feature_map =
    projected_feature_map<F, float> &&
    requires(const F& f, const const_matrix_ref<float>& x, matrix_ref<float> phi,
             Eigen::Ref<vector<float>> log_scale) {
      { f.from_projection_bf16(x, phi, log_scale) } -> std::same_as<void>;
    };

namespace detail {

/// Shape checks shared by the feature maps: O(1).
template <class T, class Phi, class LogScale>
void check_feature_args(std::string_view who, bool uses_projection, index_t features,
                        const const_matrix_ref<T>& w, const const_matrix_ref<T>& x,
                        const Phi& phi, const LogScale& log_scale) {
  // favor_attention cannot build these shapes, but a direct call can: d = 0 would make the
  // input scale d^(-1/4) infinite and m = 0 leave no row maximum to take.
  PERFORMER_PRECONDITION(x.cols() > 0, who, ": x has zero width");
  PERFORMER_PRECONDITION(!uses_projection || w.rows() > 0, who,
                         ": the projection is empty (0 features)");
  PERFORMER_PRECONDITION(!uses_projection || w.cols() == x.cols(), who, ": x has width ",
                         x.cols(), " but the projection has width ", w.cols());
  PERFORMER_PRECONDITION(phi.rows() == x.rows() && phi.cols() == features, who, ": phi is ",
                         phi.rows(), "x", phi.cols(), ", expected ", x.rows(), "x", features);
  PERFORMER_PRECONDITION(log_scale.size() == x.rows(), who, ": log_scale has ",
                         log_scale.size(), " entries, expected ", x.rows());
}

/// The checks of a feature map's backward: those of apply() for (w, x, phi, log_scale), then
/// dphi shaped like phi, dlog_scale like log_scale and dx like x. O(1).
template <class T>
void check_feature_backward_args(std::string_view who, bool uses_projection, index_t features,
                                 const const_matrix_ref<T>& w, const const_matrix_ref<T>& x,
                                 const const_matrix_ref<T>& phi,
                                 const const_vector_ref<T>& log_scale,
                                 const matrix_ref<T>& dphi, const const_vector_ref<T>& dlog_scale,
                                 const matrix_ref<T>& dx) {
  check_feature_args<T>(who, uses_projection, features, w, x, phi, log_scale);
  PERFORMER_PRECONDITION(dphi.rows() == phi.rows() && dphi.cols() == phi.cols(), who,
                         ": dphi is ", dphi.rows(), "x", dphi.cols(), ", expected ", phi.rows(),
                         "x", phi.cols());
  PERFORMER_PRECONDITION(dlog_scale.size() == x.rows(), who, ": dlog_scale has ",
                         dlog_scale.size(), " entries, expected ", x.rows());
  PERFORMER_PRECONDITION(dx.rows() == x.rows() && dx.cols() == x.cols(), who, ": dx is ",
                         dx.rows(), "x", dx.cols(), ", expected ", x.rows(), "x", x.cols());
}

/// dx = scale g W: the gradient through u = scale W x, given g = dL/du (rows x m).
template <class T, class G>
void projected_backward(T scale, const G& g, const const_matrix_ref<T>& w, matrix_ref<T>& dx) {
  dx.noalias() = g * w;
  if (scale != T(1)) dx *= scale;
}

/// The backward of the exponential maps phi = exp(b s W x - row max) / sqrt(m) with log_scale =
/// row max - s^2 |x|^2 / 2 (+ a constant): dx = b s (dphi .* phi) W - s^2 dlog_scale x.
template <class T>
void exponential_features_backward(T scale, const const_matrix_ref<T>& w,
                                   const const_matrix_ref<T>& x, const const_matrix_ref<T>& phi,
                                   matrix_ref<T>& dphi, const const_vector_ref<T>& dlog_scale,
                                   matrix_ref<T>& dx, T b = T(1)) {
  dphi.array() *= phi.array();
  projected_backward<T>(b * scale, dphi, w, dx);
  dx -= (scale * scale) * (dlog_scale.asDiagonal() * x);
}

/// d^(-1/4): splits softmax's 1/sqrt(d) evenly between queries and keys.
template <class T>
T softmax_input_scale(index_t d) {
  return static_cast<T>(std::pow(static_cast<double>(d), -0.25));
}

}  // namespace detail
}  // namespace performer
