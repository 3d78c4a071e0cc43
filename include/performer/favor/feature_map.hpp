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

namespace detail {

/// Shape checks shared by the feature maps: O(1).
template <class T>
void check_feature_args(std::string_view who, bool uses_projection, index_t features,
                        const const_matrix_ref<T>& w, const const_matrix_ref<T>& x,
                        const matrix_ref<T>& phi, const Eigen::Ref<vector<T>>& log_scale) {
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

/// d^(-1/4): splits softmax's 1/sqrt(d) evenly between queries and keys.
template <class T>
T softmax_input_scale(index_t d) {
  return static_cast<T>(std::pow(static_cast<double>(d), -0.25));
}

}  // namespace detail
}  // namespace performer
