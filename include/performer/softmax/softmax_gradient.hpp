/// @file softmax/softmax_gradient.hpp
/// @brief The backward pass of materialized exact softmax attention: the plain reference every
/// other attention gradient is checked against.
#pragma once

#include <cmath>

#include "../core/attention_mask.hpp"
#include "../core/gradient.hpp"
#include "../core/types.hpp"
#include "../core/validate.hpp"
#include "softmax_attention.hpp"

namespace performer {

/**
 * @brief Gradients of softmax_attention (see attention_gradient for the contract).
 *
 * With P the softmax weights, S the scaled logits, O the output and dO = dL/dO:
 * dV = P^T dO, dP = dO V^T, dS = P .* (dP - D) with D_i = sum_c dO_ic O_ic (equal to
 * sum_j P_ij dP_ij, and costing N d_v instead of N^2), dQ = dS K / sqrt(d),
 * dK = dS^T Q / sqrt(d). Masked weights are 0, so masked entries have dS = 0, and a query that
 * sees no key has a zero row of P and zero gradient.
 *
 * The forward keeps P (N_q x N_k), as an autograd framework keeps softmax's output: this is the
 * standard Transformer's training memory, O(N^2) per head and layer, which
 * tiled_softmax_attention's backward avoids by recomputing P from O(N) saved log-normalisers.
 *
 * Complexity: backward time O(N_q N_k (d + d_v)); saved O(N_q N_k); workspace O(N_q N_k) (dS)
 * plus N_q.
 *
 * @tparam T scalar type (float, double).
 */
template <real_scalar T>
struct attention_gradient<softmax_attention<T>> {
  /// The softmax weights P of the forward.
  struct saved_type {
    row_matrix<T> weights;
  };

  /// The backward's scratch: dP (then dS in place) and D.
  struct workspace_type {
    row_matrix<T> dweights;
    vector<T> delta;
  };

  /// The forward: `a.forward`, whose weights P are then moved (not copied) into `saved`.
  static void forward(const softmax_attention<T>& a, const const_matrix_ref<T>& q,
                      const const_matrix_ref<T>& k, const const_matrix_ref<T>& v,
                      matrix_ref<T> out, const attention_mask& mask,
                      typename softmax_attention<T>::workspace_type& ws, saved_type& saved);

  /**
   * @brief Assigns dq, dk and dv, the gradients of L with dL/d(out) = dout.
   * @throws performer::invalid_argument on the arguments check_backward_args rejects, saved
   * weights that are not N_q x N_k, or a gradient that overflows T.
   */
  static void backward(const softmax_attention<T>& /*a*/, const const_matrix_ref<T>& q,
                       const const_matrix_ref<T>& k, const const_matrix_ref<T>& v,
                       const const_matrix_ref<T>& out, const const_matrix_ref<T>& dout,
                       matrix_ref<T> dq, matrix_ref<T> dk, matrix_ref<T> dv,
                       const attention_mask& mask, workspace_type& ws,
                       const saved_type& saved);

};

static_assert(differentiable_attention<softmax_attention<float>>);
static_assert(differentiable_attention<softmax_attention<double>>);

template <real_scalar T>
void attention_gradient<softmax_attention<T>>::forward(
    const softmax_attention<T>& a, const const_matrix_ref<T>& q, const const_matrix_ref<T>& k,
    const const_matrix_ref<T>& v, matrix_ref<T> out, const attention_mask& mask,
    typename softmax_attention<T>::workspace_type& ws, saved_type& saved) {
  a.forward(q, k, v, out, mask, ws);
  saved.weights.swap(ws.weights);
}

template <real_scalar T>
void attention_gradient<softmax_attention<T>>::backward(
    const softmax_attention<T>& /*a*/, const const_matrix_ref<T>& q, const const_matrix_ref<T>& k,
    const const_matrix_ref<T>& v, const const_matrix_ref<T>& out, const const_matrix_ref<T>& dout,
    matrix_ref<T> dq, matrix_ref<T> dk, matrix_ref<T> dv, const attention_mask& mask,
    workspace_type& ws, const saved_type& saved) {
  constexpr const char* who = "softmax_attention::backward";
  check_backward_args<T>(who, q, k, v, out, dout, dq, dk, dv, mask);
  const auto& p = saved.weights;
  PERFORMER_PRECONDITION(p.rows() == q.rows() && p.cols() == k.rows(), who, ": saved.weights is ",
                         detail::shape(p), ", expected ", q.rows(), "x", k.rows(),
                         "; pass the saved_type the forward filled");
  const T scale = T(1) / std::sqrt(static_cast<T>(q.cols()));
  dv.noalias() = p.transpose() * dout;
  ws.dweights.resize(q.rows(), k.rows());
  ws.dweights.noalias() = dout * v.transpose();
  ws.delta = (dout.array() * out.array()).rowwise().sum();
  // dS = P .* (dP - D): zero wherever P is, so the mask needs no second pass.
  ws.dweights.array() = p.array() * (ws.dweights.array().colwise() - ws.delta.array());
  dq.noalias() = scale * (ws.dweights * k);
  dk.noalias() = scale * (ws.dweights.transpose() * q);
  require_finite_result(who, dq);
  require_finite_result(who, dk);
  require_finite_result(who, dv);
}

}  // namespace performer
