/// @file core/gradient.hpp
/// @brief The gradient policy of an attention mechanism (`performer::attention_gradient`), the
/// concept a trainable mechanism models (`performer::differentiable_attention`), and the argument
/// checks every backward pass shares.
#pragma once

#include <concepts>
#include <string_view>

#include "concepts.hpp"
#include "error.hpp"
#include "types.hpp"
#include "validate.hpp"

namespace performer {

/**
 * @brief The backward pass of mechanism A: specialised beside each mechanism, in the header
 * named after it with `_gradient` (softmax/softmax_gradient.hpp, favor/favor_gradient.hpp, ...).
 *
 * A specialisation provides:
 * - `saved_type`: what the forward keeps for the backward, default-constructible (each query's
 *   log-normaliser for the tiled exact path, the buckets for LSH, key states for FAVOR+, whose
 *   backward recomputes its features; the materialized exact path keeps P, N_q x N_k, as a
 *   framework keeps softmax's output);
 * - `workspace_type`: the backward's scratch, default-constructible and reusable;
 * - `static void forward(a, q, k, v, out, mask, ws, saved)`: A's forward (ws is A's own
 *   workspace_type), writing out exactly as `a.forward` does and filling `saved`;
 * - `static void backward(a, q, k, v, out, dout, dq, dk, dv, mask, ws, saved)`: given
 *   dout = dL/d(out), *assigns* dq = dL/dq, dk = dL/dk, dv = dL/dv, where out and saved are
 *   what forward produced for the same a, q, k, v and mask.
 *
 * The gradients are exact for the function the forward computes, with the mask held fixed and
 * with what the mechanism draws held fixed (FAVOR+'s projection, LSH's rotations and therefore
 * its bucket assignment, which is piecewise constant and has no gradient).
 */
template <class A>
struct attention_gradient;

/// A mechanism with a backward pass (see attention_gradient).
template <class A>
concept differentiable_attention =
    attention_mechanism<A> &&
    requires {
      typename attention_gradient<A>::saved_type;
      typename attention_gradient<A>::workspace_type;
    } &&
    std::default_initializable<typename attention_gradient<A>::saved_type> &&
    std::default_initializable<typename attention_gradient<A>::workspace_type> &&
    requires(const A& a, const const_matrix_ref<typename A::scalar_type>& x,
             matrix_ref<typename A::scalar_type> out, const attention_mask& mask,
             typename A::workspace_type& forward_ws,
             typename attention_gradient<A>::workspace_type& ws,
             typename attention_gradient<A>::saved_type& saved) {
      { attention_gradient<A>::forward(a, x, x, x, out, mask, forward_ws, saved) }
          -> std::same_as<void>;
      { attention_gradient<A>::backward(a, x, x, x, x, x, out, out, out, mask, ws, saved) }
          -> std::same_as<void>;
    };

/**
 * Checks the arguments of a backward pass: those of the forward (check_attention_args, with
 * `out` the forward's result), dout shaped like out and finite, dq / dk / dv shaped like q / k /
 * v, and no gradient overlapping an input, out, dout or another gradient.
 * O((N_q + N_k)(d + d_v)).
 * @throws performer::invalid_argument naming `who`, the argument and the shapes.
 */
template <class T>
void check_backward_args(std::string_view who, const const_matrix_ref<T>& q,
                         const const_matrix_ref<T>& k, const const_matrix_ref<T>& v,
                         const const_matrix_ref<T>& out, const const_matrix_ref<T>& dout,
                         const matrix_ref<T>& dq, const matrix_ref<T>& dk,
                         const matrix_ref<T>& dv, const attention_mask& mask) {
  check_attention_args<T>(who, q, k, v, out, mask);
  const auto same_shape = [&](std::string_view name, const auto& grad, const auto& like,
                              std::string_view like_name) {
    PERFORMER_PRECONDITION(grad.rows() == like.rows() && grad.cols() == like.cols(), who, ": ",
                           name, " is ", detail::shape(grad), " but ", like_name, " is ",
                           detail::shape(like), "; they need the same shape");
  };
  same_shape("dout", dout, out, "out");
  same_shape("dq", dq, q, "q");
  same_shape("dk", dk, k, "k");
  same_shape("dv", dv, v, "v");
  const auto apart = [&](std::string_view name, const auto& grad) {
    const bool overlap = detail::overlaps(grad, q) || detail::overlaps(grad, k) ||
                         detail::overlaps(grad, v) || detail::overlaps(grad, out) ||
                         detail::overlaps(grad, dout);
    PERFORMER_PRECONDITION(!overlap, who, ": ", name,
                           " overlaps an input; pass a separate gradient buffer");
  };
  apart("dq", dq);
  apart("dk", dk);
  apart("dv", dv);
  PERFORMER_PRECONDITION(!detail::overlaps(dq, dk) && !detail::overlaps(dq, dv) &&
                             !detail::overlaps(dk, dv),
                         who, ": dq, dk and dv overlap; pass separate gradient buffers");
  require_finite(who, "dout", dout);
}

}  // namespace performer
