/// @file train/layer_gradients.hpp
/// @brief Backward passes of the layers a Transformer block is built from apart from attention:
/// LayerNorm, the feed-forward non-linearities and a linear map y = x W + b.
///
/// Conventions, shared with the attention backward passes (core/gradient.hpp): the gradient
/// with respect to an input is *assigned*, the gradient with respect to a parameter is
/// *accumulated* (+=), so that a caller processing a sequence in row blocks, or several
/// sequences of a batch, sums the parameter gradients without a buffer per block. The caller
/// sizes every output and zeroes the accumulated ones before the first block. Nothing is
/// allocated apart from what Eigen's matrix-product kernel uses for its packing buffers.
///
/// T is named at the call, `layer_norm_backward<float>(...)`, because Eigen::Ref parameters do
/// not deduce it; any row-major matrix, or row block of one, binds without a copy.
///
/// Inputs are not checked for NaN or infinity here: that would double the memory traffic of
/// these O(N d) passes, and a non-finite value reaching a parameter gradient is reported by the
/// optimiser's step (train/adamw.hpp), which names the tensor.
#pragma once

#include <cmath>
#include <numbers>
#include <string_view>

#include "../core/concepts.hpp"
#include "../core/error.hpp"
#include "../core/types.hpp"
#include "../core/validate.hpp"
#include "../nn/layers.hpp"

namespace performer {

/// Read-only view of a contiguous row vector (a LayerNorm gain, a bias).
template <class T>
using const_row_vector_ref = Eigen::Ref<const row_vector<T>>;

/// Writable view of a contiguous row vector (a bias or gain gradient).
template <class T>
using row_vector_ref = Eigen::Ref<row_vector<T>>;

namespace detail {

/// "<who>: <name> is RxC, expected rxc" unless m is rows x cols.
template <class M>
void require_shape(std::string_view who, std::string_view name, const M& m, index_t rows,
                   index_t cols) {
  PERFORMER_PRECONDITION(m.rows() == rows && m.cols() == cols, who, ": ", name, " is ",
                         shape(m), ", expected ", rows, "x", cols);
}

}  // namespace detail

/**
 * @brief Backward pass of detail::layer_norm (nn/layers.hpp), out = (x - mean) / sqrt(var +
 * eps) * gain + bias per row, with the biased variance.
 *
 * With xhat the normalised row, r = 1 / sqrt(var + eps) and g = dy .* gain:
 * dx = r (g - mean(g) - xhat mean(g .* xhat)), dgain += sum_rows dy .* xhat,
 * dbias += sum_rows dy. The bias does not enter dx, so it is not an argument.
 *
 * Rows are handled exactly as the forward handles them. A row whose variance overflows T is
 * normalised by the forward after dividing it by s = max |x|; the normalised row is the same
 * function of x (the s cancels), so its gradient is the same formula, evaluated on the scaled
 * row with r = 1 / (s sqrt(var(x / s) + eps / s^2)): exact, and finite. A constant row whose
 * eps / s^2 underflowed is mapped by the forward to `bias` with a zero normalised row; it gets
 * dx = 0 to match (the true derivative there is beyond T's range).
 *
 * O(N d) time, no allocation. dx may not overlap x or dy.
 * @param x the forward's input, N x d (d > 0); @param gain 1 x d; @param eps the forward's eps
 * @param dy dL/d(out), N x d; @param dx assigned dL/dx, N x d
 * @param dgain, dbias accumulated dL/dgain and dL/dbias, 1 x d
 * @throws performer::invalid_argument on a shape mismatch, eps not positive and finite, or dx
 * overlapping x or dy.
 */
template <real_scalar T>
void layer_norm_backward(const const_matrix_ref<T>& x, const const_row_vector_ref<T>& gain,
                         T eps, const const_matrix_ref<T>& dy, matrix_ref<T> dx,
                         row_vector_ref<T> dgain, row_vector_ref<T> dbias) {
  constexpr std::string_view who = "layer_norm_backward";
  const index_t n = x.rows();
  const index_t d = x.cols();
  PERFORMER_PRECONDITION(d > 0, who, ": x has no columns (", detail::shape(x), ")");
  PERFORMER_PRECONDITION(std::isfinite(eps) && eps > T(0), who,
                         ": eps must be positive and finite (got ", eps, ")");
  detail::require_shape(who, "gain", gain, 1, d);
  detail::require_shape(who, "dy", dy, n, d);
  detail::require_shape(who, "dx", dx, n, d);
  detail::require_shape(who, "dgain", dgain, 1, d);
  detail::require_shape(who, "dbias", dbias, 1, d);
  PERFORMER_PRECONDITION(!detail::overlaps(dx, x) && !detail::overlaps(dx, dy), who,
                         ": dx overlaps x or dy; pass a separate output buffer");
  const T inv_d = T(1) / static_cast<T>(d);
  for (index_t i = 0; i < n; ++i) {
    const auto row = x.row(i).array();
    // The statistics are recomputed by the forward's own function, so that the same rows take
    // the rescaled path; saving them would cost the caller 2N scalars for O(d) work per row.
    const detail::norm_statistics<T> st = detail::row_statistics<T>(row, eps);
    const T s = st.s, inv_std = st.inv_std;
    const auto xhat = (row / s - st.mean) * inv_std;
    const auto dy_row = dy.row(i).array();
    const auto g = dy_row * gain.array();
    const T mean_g = g.sum() * inv_d;
    const T mean_gx = (g * xhat).sum() * inv_d;
    dgain.array() += dy_row * xhat;
    dbias += dy.row(i);
    // d xhat / dx carries 1/s from the rescaling: r of the unscaled row is inv_std / s.
    dx.row(i) = ((g - mean_g - xhat * mean_gx) * (inv_std / s)).matrix();
  }
}

/**
 * @brief Backward pass of detail::apply_activation: turns dy = dL/d(act(pre)) into dL/d(pre),
 * in place: dy *= act'(pre).
 *
 * Exact GELU, x Phi(x): act' = Phi(x) + x phi(x), with phi the standard normal density.
 * ReLU: 1 for x > 0, else 0 (the subgradient 0 at x = 0, as PyTorch takes it).
 * The pre-activations are the caller's (the forward overwrites them in place, so a training
 * forward keeps a copy). O(N F) time, no allocation.
 * @throws performer::invalid_argument if pre and dy differ in shape or overlap.
 */
template <real_scalar T>
void activation_backward(activation act, const const_matrix_ref<T>& pre, matrix_ref<T> dy) {
  constexpr std::string_view who = "activation_backward";
  detail::require_shape(who, "dy", dy, pre.rows(), pre.cols());
  PERFORMER_PRECONDITION(!detail::overlaps(dy, pre), who,
                         ": dy overlaps pre; the derivative needs the pre-activations intact");
  if (act == activation::relu) {
    dy = pre.binaryExpr(dy, [](T x, T g) { return x > T(0) ? g : T(0); });
  } else {
    const T inv_sqrt2 = T(1) / std::sqrt(T(2));
    const T inv_sqrt_2pi = static_cast<T>(std::numbers::inv_sqrtpi / std::numbers::sqrt2);
    dy = pre.binaryExpr(dy, [inv_sqrt2, inv_sqrt_2pi](T x, T g) {
      const T cdf = T(0.5) * (T(1) + std::erf(x * inv_sqrt2));
      // exp underflows to 0 for |x| > ~38 (double): x phi(x) is then below any rounding of cdf.
      const T pdf = inv_sqrt_2pi * std::exp(T(-0.5) * x * x);
      return g * (cdf + x * pdf);
    });
  }
}

/**
 * @brief Parameter gradients of a linear map y = x W + b (W is inputs x outputs, as
 * block_parameters stores it): dw += x^T dy, db += the column sums of dy. The overload for a
 * layer whose input needs no gradient (the first layer after the embedding's input ids).
 * O(N in out) time.
 * @throws performer::invalid_argument on a shape mismatch (dw must be x.cols() x dy.cols(),
 * db 1 x dy.cols(), dy as many rows as x), or dw overlapping x or dy.
 */
template <real_scalar T>
void linear_backward(const const_matrix_ref<T>& x, const const_matrix_ref<T>& dy,
                     matrix_ref<T> dw, row_vector_ref<T> db) {
  constexpr std::string_view who = "linear_backward";
  PERFORMER_PRECONDITION(dy.rows() == x.rows(), who, ": dy is ", detail::shape(dy), " but x is ",
                         detail::shape(x), "; they need the same number of rows");
  detail::require_shape(who, "dw", dw, x.cols(), dy.cols());
  detail::require_shape(who, "db", db, 1, dy.cols());
  PERFORMER_PRECONDITION(!detail::overlaps(dw, x) && !detail::overlaps(dw, dy), who,
                         ": dw overlaps x or dy; pass a separate output buffer");
  dw.noalias() += x.transpose() * dy;
  db += dy.colwise().sum();
}

/**
 * @brief Backward pass of y = x W + b: dx = dy W^T (assigned), dw += x^T dy, db += the column
 * sums of dy (accumulated). O(N in out) time.
 * @throws performer::invalid_argument on a shape mismatch (w must be x.cols() x dy.cols(), dx
 * shaped like x) or dx / dw overlapping an input, and as the overload without dx.
 */
template <real_scalar T>
void linear_backward(const const_matrix_ref<T>& x, const const_matrix_ref<T>& w,
                     const const_matrix_ref<T>& dy, matrix_ref<T> dx, matrix_ref<T> dw,
                     row_vector_ref<T> db) {
  constexpr std::string_view who = "linear_backward";
  detail::require_shape(who, "w", w, x.cols(), dy.cols());
  detail::require_shape(who, "dx", dx, x.rows(), x.cols());
  PERFORMER_PRECONDITION(!detail::overlaps(dx, x) && !detail::overlaps(dx, w) &&
                             !detail::overlaps(dx, dy) && !detail::overlaps(dx, dw),
                         who, ": dx overlaps x, w, dy or dw; pass a separate output buffer");
  linear_backward<T>(x, dy, dw, db);
  dx.noalias() = dy * w.transpose();
}

}  // namespace performer
