/// @file nn/model_gradient.hpp
/// @brief The backward pass of a whole model: from dL/d(logits) to the gradient of every
/// parameter (embeddings, blocks, final LayerNorm, output head; docs/algorithms.md §9.7).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "../core/error.hpp"
#include "../core/gradient.hpp"
#include "../core/types.hpp"
#include "../core/validate.hpp"
#include "../train/layer_gradients.hpp"
#include "block_gradient.hpp"
#include "transformer_model.hpp"

namespace performer {

/// Gradients of every parameter of a transformer_model, shaped like them.
template <real_scalar T>
struct model_gradients {
  model_parameters<T> model;
  std::vector<block_parameters<T>> blocks;  ///< one per layer
  row_vector<T> final_gain, final_bias;     ///< the stack's final LayerNorm
};

/**
 * @brief Training pass of transformer_model<Attention>: forward() computes the logits and
 * keeps every block's tape; backward() takes dL/d(logits) to every parameter's gradient.
 *
 * Memory: the blocks' tapes (O(L N (8 D + F)) scalars, block_gradient) and O(N D) more; time
 * about 3 forwards. Deterministic: the same inputs give the same bits on any thread count.
 */
template <class Attention>
  requires differentiable_attention<Attention>
struct model_gradient {
  using T = typename Attention::scalar_type;
  using model_type = transformer_model<Attention>;
  using block_pass = block_gradient<Attention>;
  using gradients_type = model_gradients<T>;

  /// What forward() keeps for backward().
  struct tape_type {
    std::vector<std::int64_t> tokens;
    std::vector<typename block_pass::tape_type> blocks;
    row_matrix<T> stack_out, hidden;  ///< the last block's output; after the final LayerNorm
  };

  struct workspace_type {
    row_matrix<T> a, b;
    typename block_pass::workspace_type block;
  };

  /// Zero gradients shaped like the model's parameters.
  [[nodiscard]] static gradients_type zero_gradients(const model_type& m) {
    gradients_type g;
    g.model = m.parameters();
    for (auto* t : {&g.model.token_embedding, &g.model.position_embedding, &g.model.w_out}) {
      t->setZero();
    }
    g.model.b_out.setZero();
    for (index_t l = 0; l < m.stack().layers(); ++l) {
      g.blocks.push_back(block_pass::zero_gradients(m.stack().layer(l)));
    }
    g.final_gain = row_vector<T>::Zero(m.d_model());
    g.final_bias = row_vector<T>::Zero(m.d_model());
    return g;
  }

  /**
   * @brief logits (N x vocab) as transformer_model::forward computes them (to rounding),
   * keeping the tape.
   * @throws performer::invalid_argument as transformer_model::forward and block_gradient.
   */
  static void forward(const model_type& m, std::span<const std::int64_t> tokens,
                      matrix_ref<T> logits, std::span<const std::uint8_t> key_mask, bool causal,
                      tape_type& t, workspace_type& ws);

  /**
   * @brief grads += dL/d(parameters) given dlogits = dL/d(logits), for the forward() that filled
   * t with this model.
   * @throws performer::invalid_argument on dlogits not N x vocab or non-finite, grads not shaped
   * by zero_gradients(), or as block_gradient::backward.
   */
  static void backward(const model_type& m, const tape_type& t, const const_matrix_ref<T>& dlogits,
                       gradients_type& grads, workspace_type& ws);

 private:
  static bool pre_norm(const model_type& m) {
    return m.stack().layer(0).config().norm == norm_placement::pre;
  }
  static T epsilon(const model_type& m) {
    return static_cast<T>(m.stack().layer(0).config().layer_norm_eps);
  }
};

template <class Attention>
  requires differentiable_attention<Attention>
void model_gradient<Attention>::forward(const model_type& m, std::span<const std::int64_t> tokens,
                                        matrix_ref<T> logits,
                                        std::span<const std::uint8_t> key_mask, bool causal,
                                        tape_type& t, workspace_type& ws) {
  constexpr const char* who = "model_gradient::forward";
  const auto n = static_cast<index_t>(tokens.size());
  const index_t d = m.d_model();
  PERFORMER_PRECONDITION(n > 0, who, ": no tokens");
  t.tokens.assign(tokens.begin(), tokens.end());
  ws.a.resize(n, d);
  m.embed_tokens(tokens, ws.a);
  const auto& stack = m.stack();
  t.blocks.resize(static_cast<std::size_t>(stack.layers()));
  for (index_t l = 0; l < stack.layers(); ++l) {
    ws.b.resize(n, d);
    block_pass::forward(stack.layer(l), ws.a, ws.b, key_mask, causal,
                        t.blocks[static_cast<std::size_t>(l)], ws.block);
    ws.a.swap(ws.b);
  }
  t.stack_out = ws.a;
  t.hidden.resize(n, d);
  if (pre_norm(m)) {
    detail::layer_norm(t.stack_out, stack.final_norm_gain(), stack.final_norm_bias(), epsilon(m),
                       t.hidden);
  } else {
    t.hidden = t.stack_out;
  }
  m.head(t.hidden, logits);
}

template <class Attention>
  requires differentiable_attention<Attention>
void model_gradient<Attention>::backward(const model_type& m, const tape_type& t,
                                         const const_matrix_ref<T>& dlogits, gradients_type& grads,
                                         workspace_type& ws) {
  constexpr const char* who = "model_gradient::backward";
  const auto n = static_cast<index_t>(t.tokens.size());
  const index_t d = m.d_model();
  const auto& p = m.parameters();
  const auto& stack = m.stack();
  PERFORMER_PRECONDITION(n > 0 && t.hidden.rows() == n, who, ": the tape is empty");
  PERFORMER_PRECONDITION(dlogits.rows() == n && dlogits.cols() == m.config().vocab, who,
                         ": dlogits is ", detail::shape(dlogits), ", expected ", n, "x",
                         m.config().vocab);
  PERFORMER_PRECONDITION(grads.blocks.size() == static_cast<std::size_t>(stack.layers()) &&
                             grads.final_gain.size() == d,
                         who, ": grads are not shaped like the parameters (use zero_gradients())");
  require_finite(who, "dlogits", dlogits);
  // Head: logits = hidden W + b, W = E^T when tied.
  ws.a.resize(n, d);
  grads.model.b_out += dlogits.colwise().sum();
  if (m.config().tie_output) {
    ws.a.noalias() = dlogits * p.token_embedding;
    grads.model.token_embedding.noalias() += dlogits.transpose() * t.hidden;
  } else {
    ws.a.noalias() = dlogits * p.w_out.transpose();
    grads.model.w_out.noalias() += t.hidden.transpose() * dlogits;
  }
  if (pre_norm(m)) {
    ws.b.resize(n, d);
    layer_norm_backward<T>(t.stack_out, stack.final_norm_gain(), epsilon(m), ws.a, ws.b,
                           grads.final_gain, grads.final_bias);
    ws.a.swap(ws.b);
  }
  for (index_t l = stack.layers() - 1; l >= 0; --l) {
    ws.b.resize(n, d);
    block_pass::backward(stack.layer(l), t.blocks[static_cast<std::size_t>(l)], ws.a, ws.b,
                         grads.blocks[static_cast<std::size_t>(l)], ws.block);
    ws.a.swap(ws.b);
  }
  // Embeddings: each token's row, and each position's, receive their row of dL/dh_0.
  for (index_t i = 0; i < n; ++i) {
    grads.model.token_embedding.row(static_cast<index_t>(t.tokens[static_cast<std::size_t>(i)])) +=
        ws.a.row(i);
  }
  if (m.config().max_positions > 0) grads.model.position_embedding.topRows(n) += ws.a;
}

}  // namespace performer
