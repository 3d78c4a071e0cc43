/// @file nn/block_gradient.hpp
/// @brief The backward pass of a Transformer block: gradients of its input and of every
/// parameter, through any differentiable attention mechanism (docs/algorithms.md §9.7).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "../core/attention_mask.hpp"
#include "../core/error.hpp"
#include "../core/detail/parallel.hpp"
#include "../core/gradient.hpp"
#include "../core/types.hpp"
#include "../core/validate.hpp"
#include "../train/layer_gradients.hpp"
#include "block_config.hpp"
#include "detail/block_checks.hpp"
#include "layers.hpp"
#include "transformer_block.hpp"

namespace performer {

/**
 * @brief Training pass of transformer_block<Attention>: forward() computes the block's output
 * and keeps the activations the backward needs on a tape; backward() takes dL/dy to dL/dx and
 * accumulates dL/d(parameters).
 *
 * The tape holds O(N (8 D + F)) scalars (the LayerNorm inputs and outputs, q, k, v, the heads'
 * context, the feed-forward's pre-activations) and what the mechanism keeps per head (O(N) at
 * most): linear in N for every mechanism whose backward is, with no N x N buffer unless the
 * mechanism itself has one (materialised exact attention). Time about 3 forwards. The heads
 * run in parallel (OpenMP, one mechanism workspace per thread); each head's result, and so the
 * block's, has the same bits on any thread count.
 *
 * Both LayerNorm placements, GELU and ReLU, rotary embeddings, key padding and causal masking
 * per call are supported; cross-attention is not yet (forward() throws).
 */
template <class Attention>
  requires differentiable_attention<Attention>
struct block_gradient {
  using scalar_type = typename Attention::scalar_type;
  using T = scalar_type;
  using block_type = transformer_block<Attention>;
  using parameters_type = block_parameters<T>;
  using attention_gradient_type = attention_gradient<Attention>;

  /// What forward() keeps for backward().
  struct tape_type {
    row_matrix<T> x, normed1, q, k, v, context, sum1, y1, normed2, hidden, sum2;
    std::vector<typename attention_gradient_type::saved_type> saved;  ///< one per head
    std::vector<std::uint8_t> key_mask;
    bool causal = false;
  };

  /// Scratch of both passes; the mechanism's, one per lane (heads run in parallel).
  struct workspace_type {
    row_matrix<T> activated, dhidden, dsum, dnormed, dq, dk, dv, dcontext;
    std::vector<typename Attention::workspace_type> attention;
    std::vector<typename attention_gradient_type::workspace_type> gradient;
  };

  /// Zero gradients shaped like b's parameters (what backward() accumulates into).
  [[nodiscard]] static parameters_type zero_gradients(const block_type& b) {
    parameters_type g = b.parameters();
    for_each_parameter(g, [](auto& m) { m.setZero(); });
    return g;
  }

  /// Calls f on every tensor of p (for_each_tensor's order; the cross-attention ones included,
  /// empty when unused).
  template <class F>
  static void for_each_parameter(parameters_type& p, F&& f) {
    for_each_tensor(p, [&](const char*, auto& tensor) { f(tensor); });
  }

  /**
   * @brief y = b(x) as transformer_block::forward computes it (to rounding), keeping the tape.
   * @throws performer::invalid_argument as transformer_block::forward, and for a block with
   * cross-attention.
   */
  static void forward(const block_type& b, const const_matrix_ref<T>& x, matrix_ref<T> y,
                      std::span<const std::uint8_t> key_mask, bool causal, tape_type& t,
                      workspace_type& ws);

  /**
   * @brief dx = dL/dx given dy = dL/dy, and grads += dL/d(parameters), for the forward() that
   * filled t with this block.
   * @throws performer::invalid_argument on shapes other than the tape's, a non-finite dy, grads
   * not shaped like the parameters (use zero_gradients()), or what the mechanism's backward
   * throws.
   */
  static void backward(const block_type& b, const tape_type& t, const const_matrix_ref<T>& dy,
                       matrix_ref<T> dx, parameters_type& grads, workspace_type& ws);

 private:
  static void project(const row_matrix<T>& in, const row_matrix<T>& w, const row_vector<T>& bias,
                      row_matrix<T>& out) {
    out.resize(in.rows(), w.cols());
    out.noalias() = in * w;
    out.rowwise() += bias;
  }

  /// Threads for the heads: one unless each head has N d_head >= 8,192 (a tiny model's heads
  /// take microseconds, and waking threads for them, oversubscribed under ctest -j2, made the
  /// training tests several times slower). The bits are the same either way.
  static index_t head_lanes(index_t heads, index_t work) {
    return work >= 8192 ? detail::lanes_for(heads) : 1;
  }

  /// body(head, lane) for every head, on `lanes` threads.
  template <class Body>
  static void for_heads(index_t heads, std::size_t lanes, Body&& body) {
    if (lanes > 1) {
      detail::parallel_for(heads, body);
    } else {
      for (index_t head = 0; head < heads; ++head) body(head, 0);
    }
  }

  /// Every head's backward: ws.dcontext (dL/d(context)) to ws.dq, ws.dk, ws.dv.
  static void attention_backward(const block_type& b, const tape_type& t, workspace_type& ws);
};

template <class Attention>
  requires differentiable_attention<Attention>
void block_gradient<Attention>::forward(const block_type& b, const const_matrix_ref<T>& x,
                                        matrix_ref<T> y, std::span<const std::uint8_t> key_mask,
                                        bool causal, tape_type& t, workspace_type& ws) {
  constexpr const char* who = "block_gradient::forward";
  const block_config& c = b.config();
  const parameters_type& p = b.parameters();
  detail::check_sequence(who, c.d_model, x, y, key_mask);
  PERFORMER_PRECONDITION(!c.cross_attention, who,
                         ": cross-attention blocks have no backward pass yet");
  PERFORMER_PRECONDITION(p.w_q.rows() == c.d_model, who, ": the block has no parameters");
  const bool pre = c.norm == norm_placement::pre;
  const T eps = static_cast<T>(c.layer_norm_eps);
  t.key_mask.assign(key_mask.begin(), key_mask.end());
  t.causal = causal;
  t.x = x;
  if (pre) {
    t.normed1.resize(x.rows(), c.d_model);
    detail::layer_norm(x, p.norm1_gain, p.norm1_bias, eps, t.normed1);
  }
  const row_matrix<T>& in = pre ? t.normed1 : t.x;
  project(in, p.w_q, p.b_q, t.q);
  project(in, p.w_k, p.b_k, t.k);
  project(in, p.w_v, p.b_v, t.v);
  if (const auto* rope = b.rotary()) {
    rope->apply(t.q);
    rope->apply(t.k);
  }
  const index_t h = c.heads, dh = c.d_model / h;
  t.context.resize(x.rows(), c.d_model);
  t.saved.resize(static_cast<std::size_t>(h));
  const attention_mask mask{causal, t.key_mask};
  ws.attention.resize(static_cast<std::size_t>(head_lanes(h, x.rows() * dh)));
  for_heads(h, ws.attention.size(), [&](index_t head, index_t lane) {
    const index_t c0 = head * dh;
    attention_gradient_type::forward(b.attention(), t.q.middleCols(c0, dh), t.k.middleCols(c0, dh),
                                     t.v.middleCols(c0, dh), t.context.middleCols(c0, dh), mask,
                                     ws.attention[static_cast<std::size_t>(lane)],
                                     t.saved[static_cast<std::size_t>(head)]);
  });
  project(t.context, p.w_o, p.b_o, t.sum1);
  t.sum1 += t.x;
  if (!pre) {
    t.y1.resize(x.rows(), c.d_model);
    detail::layer_norm(t.sum1, p.norm1_gain, p.norm1_bias, eps, t.y1);
  }
  const row_matrix<T>& y1 = pre ? t.sum1 : t.y1;
  if (pre) {
    t.normed2.resize(x.rows(), c.d_model);
    detail::layer_norm(y1, p.norm2_gain, p.norm2_bias, eps, t.normed2);
  }
  project(pre ? t.normed2 : y1, p.w_ff1, p.b_ff1, t.hidden);
  ws.activated = t.hidden;
  detail::apply_activation<T>(c.ffn_activation, ws.activated);
  row_matrix<T>& sum2 = pre ? ws.dsum : t.sum2;  // pre-LN: the sum is y itself
  project(ws.activated, p.w_ff2, p.b_ff2, sum2);
  sum2 += y1;
  if (pre) {
    y = sum2;
  } else {
    detail::layer_norm(sum2, p.norm2_gain, p.norm2_bias, eps, y);
  }
  require_finite_result(who, y);
}

template <class Attention>
  requires differentiable_attention<Attention>
void block_gradient<Attention>::backward(const block_type& b, const tape_type& t,
                                         const const_matrix_ref<T>& dy, matrix_ref<T> dx,
                                         parameters_type& grads, workspace_type& ws) {
  constexpr const char* who = "block_gradient::backward";
  const block_config& c = b.config();
  const parameters_type& p = b.parameters();
  const index_t n = t.x.rows(), d = c.d_model;
  PERFORMER_PRECONDITION(n > 0 && t.q.rows() == n, who, ": the tape is empty");
  PERFORMER_PRECONDITION(dy.rows() == n && dy.cols() == d && dx.rows() == n && dx.cols() == d, who,
                         ": dy is ", detail::shape(dy), " and dx is ", detail::shape(dx),
                         ", expected ", n, "x", d, " each");
  PERFORMER_PRECONDITION(!detail::overlaps(dx, dy), who, ": dx overlaps dy");
  PERFORMER_PRECONDITION(grads.w_q.rows() == d && grads.w_ff1.cols() == c.d_ff, who,
                         ": grads are not shaped like the parameters (use zero_gradients())");
  require_finite(who, "dy", dy);
  const bool pre = c.norm == norm_placement::pre;
  const T eps = static_cast<T>(c.layer_norm_eps);

  // Feed-forward sublayer: dsum is dL/d(sum2), then dL/d(y1).
  ws.dsum.resize(n, d);
  if (pre) {
    ws.dsum = dy;
  } else {
    layer_norm_backward<T>(t.sum2, p.norm2_gain, eps, dy, ws.dsum, grads.norm2_gain,
                           grads.norm2_bias);
  }
  ws.activated = t.hidden;
  detail::apply_activation<T>(c.ffn_activation, ws.activated);
  ws.dhidden.resize(n, c.d_ff);
  linear_backward<T>(ws.activated, p.w_ff2, ws.dsum, ws.dhidden, grads.w_ff2, grads.b_ff2);
  activation_backward<T>(c.ffn_activation, t.hidden, ws.dhidden);
  ws.dnormed.resize(n, d);
  linear_backward<T>(pre ? t.normed2 : t.y1, p.w_ff1, ws.dhidden, ws.dnormed, grads.w_ff1,
                     grads.b_ff1);
  if (pre) {  // dL/d(sum1) = dL/dy + LN2's backward of dL/d(normed2)
    ws.dcontext.resize(n, d);
    layer_norm_backward<T>(t.sum1, p.norm2_gain, eps, ws.dnormed, ws.dcontext, grads.norm2_gain,
                           grads.norm2_bias);
    ws.dsum += ws.dcontext;
  } else {  // dL/d(y1) = dL/d(sum2) + the feed-forward's; then LN1's backward
    ws.dnormed += ws.dsum;
    layer_norm_backward<T>(t.sum1, p.norm1_gain, eps, ws.dnormed, ws.dsum, grads.norm1_gain,
                           grads.norm1_bias);
  }

  // Attention sublayer: ws.dsum is dL/d(sum1) = dL/dx's residual share.
  ws.dcontext.resize(n, d);
  linear_backward<T>(t.context, p.w_o, ws.dsum, ws.dcontext, grads.w_o, grads.b_o);
  attention_backward(b, t, ws);
  if (const auto* rope = b.rotary()) {
    rope->apply_transpose(ws.dq);
    rope->apply_transpose(ws.dk);
  }
  const row_matrix<T>& in = pre ? t.normed1 : t.x;
  linear_backward<T>(in, p.w_q, ws.dq, ws.dnormed, grads.w_q, grads.b_q);
  ws.dcontext.resize(n, d);  // reused as one projection's share of dL/d(in)
  linear_backward<T>(in, p.w_k, ws.dk, ws.dcontext, grads.w_k, grads.b_k);
  ws.dnormed += ws.dcontext;
  linear_backward<T>(in, p.w_v, ws.dv, ws.dcontext, grads.w_v, grads.b_v);
  ws.dnormed += ws.dcontext;
  if (pre) {
    layer_norm_backward<T>(t.x, p.norm1_gain, eps, ws.dnormed, dx, grads.norm1_gain,
                           grads.norm1_bias);
    dx += ws.dsum;
  } else {
    dx = ws.dsum + ws.dnormed;
  }
  require_finite_result(who, dx);
}

template <class Attention>
  requires differentiable_attention<Attention>
void block_gradient<Attention>::attention_backward(const block_type& b, const tape_type& t,
                                                   workspace_type& ws) {
  const index_t n = t.x.rows(), d = b.config().d_model;
  const index_t h = b.config().heads, dh = d / h;
  for (auto* m : {&ws.dq, &ws.dk, &ws.dv}) m->resize(n, d);
  const attention_mask mask{t.causal, t.key_mask};
  ws.gradient.resize(static_cast<std::size_t>(head_lanes(h, n * dh)));
  for_heads(h, ws.gradient.size(), [&](index_t head, index_t lane) {
    const index_t c0 = head * dh;
    attention_gradient_type::backward(
        b.attention(), t.q.middleCols(c0, dh), t.k.middleCols(c0, dh), t.v.middleCols(c0, dh),
        t.context.middleCols(c0, dh), ws.dcontext.middleCols(c0, dh), ws.dq.middleCols(c0, dh),
        ws.dk.middleCols(c0, dh), ws.dv.middleCols(c0, dh), mask,
        ws.gradient[static_cast<std::size_t>(lane)], t.saved[static_cast<std::size_t>(head)]);
  });
}

}  // namespace performer
