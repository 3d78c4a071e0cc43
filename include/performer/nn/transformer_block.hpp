/// @file nn/transformer_block.hpp
/// @brief The shared Transformer block, templated on the attention mechanism: any type that
/// models attention_mechanism drops in unchanged.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <span>
#include <utility>
#include <vector>

#include "../core/attention_mask.hpp"
#include "../core/concepts.hpp"
#include "../core/detail/parallel.hpp"
#include "../core/error.hpp"
#include "../core/types.hpp"
#include "../core/validate.hpp"
#include "../random/detail/generator.hpp"
#include "batched_attention.hpp"
#include "block_config.hpp"
#include "detail/block_checks.hpp"
#include "detail/cross_attention.hpp"
#include "detail/feed_forward.hpp"
#include "head_decoder.hpp"
#include "layers.hpp"
#include "rotary_embedding.hpp"

namespace performer {

/**
 * @brief One Transformer layer: multi-head self-attention through `Attention`, LayerNorm,
 * a two-layer feed-forward sublayer and residual connections. Inference forward pass.
 *
 * Pre-LN: y = x + MHA(LN1(x)); y = y + FFN(LN2(y)). Post-LN: y = LN1(x + MHA(x));
 * y = LN2(y + FFN(y)). forward() projects, attends and adds one head at a time, so that only one
 * head's Q, K, V and context (N x D/h each) are held; forward_batch() and decoding project every
 * head at once and take heads as column slices. Every head uses the same mechanism object (for
 * FAVOR+: the same random features, as in the Performer).
 *
 * With `rotary`, q and k are rotated by their positions (rotary_embedding) before the mechanism
 * sees them.
 *
 * With `cross_attention` (a decoder block of an encoder-decoder), a third sublayer between the
 * two attends from the tokens to the encoder's output, the memory (M x d_model), through the same
 * mechanism: pre-LN y = y + MHA_c(LN3(y), memory), post-LN y = LN3(y + MHA_c(y, memory)). Its
 * keys and values are memory W_ck + b_ck and memory W_cv + b_cv; it is never causal and never
 * rotary. Such a block runs only through the overloads that take the memory.
 *
 * Complexity for N tokens, width D, F = d_ff, h heads: time O(N D^2 + N D F) for the
 * projections plus h times the mechanism's cost at head width D/h; workspace N D (the normalised
 * rows) plus 4 N D/h in forward() (4 N D in forward_batch()), plus the mechanism's workspace
 * plus O(B F) for the feed-forward, which runs in row blocks of B = 256.
 * Cross-attention adds O(M D^2) for the memory's projections, h times the mechanism's cost for
 * N queries over M keys, and O(M D) of workspace.
 *
 * forward() is const and keeps no state: one block can be shared by threads, each passing its
 * own workspace.
 *
 * @tparam Attention a model of attention_mechanism; its scalar is the block's scalar.
 */
template <attention_mechanism Attention>
class transformer_block {
 public:
  using attention_type = Attention;
  using scalar_type = typename Attention::scalar_type;
  using parameters_type = block_parameters<scalar_type>;

  /// Scratch memory of forward(); reuse it across calls of the same shapes.
  struct workspace_type {
    row_matrix<scalar_type> normed, q, k, v, context;
    /// forward()'s one head: [q k v], [W_q W_k W_v] and its context, apart from the all-heads
    /// buffers above, which cross-attention uses too: neither resizes the other's every call.
    row_matrix<scalar_type> qkv, w_head, head_context;
    row_vector<scalar_type> b_head;                  ///< [b_q b_k b_v] of one head
    row_matrix<scalar_type> memory_k, memory_v;      ///< cross-attention's keys and values
    std::vector<detail::ffn_lane<scalar_type>> ffn;  ///< one feed-forward scratch per thread
    typename Attention::workspace_type attention;
    batched_workspace<Attention> batch;  ///< forward_batch's
  };

  /**
   * @param config widths and options.
   * @param attention the mechanism, configured for head width d_model / heads.
   * @param seed initialises the parameters deterministically (Xavier-uniform weights, zero
   * biases, unit LayerNorm gains): the same seed gives the same bits on every platform.
   * @throws performer::invalid_argument if d_model or heads is not positive, heads does not
   * divide d_model, d_ff is negative, layer_norm_eps is not positive and finite, or, with
   * rotary, the head width is odd or rotary_base is not finite and greater than 1, or, with
   * cross-attention, the mechanism is shared-QK (LSH's default).
   */
  transformer_block(const block_config& config, Attention attention, std::uint64_t seed = 0)
      : transformer_block(config, std::move(attention), no_init) {
    params_ = detail::drawn_parameters<scalar_type>(config_, seed);
  }

  /// With no weights until set_parameters() (see no_init_t). @throws as above.
  transformer_block(const block_config& config, Attention attention, no_init_t)
      : config_(detail::validated(config)), attention_(std::move(attention)) {
    if constexpr (requires { attention_.options().shared_qk; }) {
      PERFORMER_PRECONDITION(!config_.cross_attention || !attention_.options().shared_qk,
                             "transformer_block: a shared-QK mechanism cannot attend to a memory "
                             "(its keys are its queries); use separate keys (shared_qk = false)");
    }
    if (config_.rotary) {
      rope_.emplace(config_.d_model / config_.heads, config_.rotary_base, config_.rotary_pairs);
    }
  }

  [[nodiscard]] const block_config& config() const noexcept { return config_; }
  [[nodiscard]] const Attention& attention() const noexcept { return attention_; }
  /// Mutable access, e.g. to redraw FAVOR+ features between training steps.
  [[nodiscard]] Attention& attention() noexcept { return attention_; }
  [[nodiscard]] const parameters_type& parameters() const noexcept { return params_; }
  /// The rotary embedding q and k get, or null without `rotary`.
  [[nodiscard]] const rotary_embedding<scalar_type>* rotary() const noexcept {
    return rope_ ? &*rope_ : nullptr;
  }

  /**
   * @brief Replaces all parameters (e.g. trained weights).
   * @throws performer::invalid_argument naming the first parameter whose shape differs from the
   * config or which holds a non-finite value, or a cross-attention parameter given to a block
   * without cross-attention.
   */
  void set_parameters(parameters_type p) {
    detail::check_parameters(config_, p);
    params_ = std::move(p);
  }

  /**
   * @brief y = block(x) for one sequence.
   * @param x N x d_model input. @param y N x d_model output, sized by the caller, not
   * overlapping x. @param key_mask empty, or one entry per token (0 = padding).
   * @param ws scratch memory.
   * @throws performer::invalid_argument on an empty or non-finite x, a width other than
   * d_model, a mask of the wrong length, aliasing, or anything the mechanism rejects.
   */
  void forward(const const_matrix_ref<scalar_type>& x, matrix_ref<scalar_type> y,
               std::span<const std::uint8_t> key_mask, workspace_type& ws) const {
    forward(x, y, key_mask, ws, config_.causal);
  }

  /// As above, causal or bidirectional for this call whatever the config says (e.g. one
  /// block as an encoder and as a decoder).
  void forward(const const_matrix_ref<scalar_type>& x, matrix_ref<scalar_type> y,
               std::span<const std::uint8_t> key_mask, workspace_type& ws, bool causal) const {
    forward(x, detail::no_memory<scalar_type>(), y, key_mask, {}, ws, causal);
  }

  /**
   * @brief y = block(x, memory) for a block with cross-attention (as above otherwise).
   * @param memory M x d_model, the encoder's output; may overlap x but not y.
   * @param memory_mask empty, or M entries (0 = a padded memory token, never attended).
   * @throws performer::invalid_argument as above, and on an empty or non-finite memory, a width
   * other than d_model, a memory mask of the wrong length, memory overlapping y, or a memory
   * given to a block without cross-attention (or none to one with it).
   */
  void forward(const const_matrix_ref<scalar_type>& x, const const_matrix_ref<scalar_type>& memory,
               matrix_ref<scalar_type> y, std::span<const std::uint8_t> key_mask,
               std::span<const std::uint8_t> memory_mask, workspace_type& ws) const {
    forward(x, memory, y, key_mask, memory_mask, ws, config_.causal);
  }

  /// As above, causal or bidirectional for this call (the self-attention; never the memory's).
  void forward(const const_matrix_ref<scalar_type>& x, const const_matrix_ref<scalar_type>& memory,
               matrix_ref<scalar_type> y, std::span<const std::uint8_t> key_mask,
               std::span<const std::uint8_t> memory_mask, workspace_type& ws, bool causal) const;

  /**
   * @brief y = block(x) for a batch of B sequences of N tokens, x holding sequence b's tokens in
   * rows b N .. b N + N - 1 (PyTorch's [B, N, d_model], contiguous). The projections and the
   * feed-forward run as single products over all B N rows; attention runs through
   * batched_attention, in parallel over sequences and heads.
   * @param lengths empty, or B entries in [0, N]: sequence b's rows from lengths[b] on are
   * padding, never read into a real token's result (they may hold anything, NaN included); its
   * output rows are zero. Each real result equals forward() on the unpadded sequence, up to the
   * rounding of the larger products.
   * @throws performer::invalid_argument on batch <= 0, x's rows not a positive multiple of batch,
   * a width other than d_model, y not x's shape or overlapping it, bad lengths, non-finite real
   * tokens, or what batched_attention throws.
   */
  void forward_batch(const const_matrix_ref<scalar_type>& x, index_t batch,
                     matrix_ref<scalar_type> y, std::span<const index_t> lengths,
                     workspace_type& ws) const {
    forward_batch(x, batch, y, lengths, ws, config_.causal);
  }

  /// As above, causal or bidirectional for this call.
  void forward_batch(const const_matrix_ref<scalar_type>& x, index_t batch,
                     matrix_ref<scalar_type> y, std::span<const index_t> lengths,
                     workspace_type& ws, bool causal) const {
    forward_batch(x, batch, detail::no_memory<scalar_type>(), y, lengths, {}, ws, causal);
  }

  /**
   * @brief As above for a block with cross-attention: sequence b attends to rows b M .. b M + M
   * - 1 of memory (B M x d_model, [B, M, d_model]), of which the first memory_lengths[b] are
   * real (all when memory_lengths is empty).
   * @throws performer::invalid_argument as above, and on memory rows not a positive multiple of
   * batch, a width other than d_model, memory overlapping y, bad memory_lengths, non-finite real
   * memory tokens, or a memory given to a block without cross-attention (or none to one with it).
   */
  void forward_batch(const const_matrix_ref<scalar_type>& x, index_t batch,
                     const const_matrix_ref<scalar_type>& memory, matrix_ref<scalar_type> y,
                     std::span<const index_t> lengths, std::span<const index_t> memory_lengths,
                     workspace_type& ws) const {
    forward_batch(x, batch, memory, y, lengths, memory_lengths, ws, config_.causal);
  }

  /// As above, causal or bidirectional for this call (the self-attention; never the memory's).
  void forward_batch(const const_matrix_ref<scalar_type>& x, index_t batch,
                     const const_matrix_ref<scalar_type>& memory, matrix_ref<scalar_type> y,
                     std::span<const index_t> lengths, std::span<const index_t> memory_lengths,
                     workspace_type& ws, bool causal) const;

  /// Streaming state of step(): each head's decoder and scratch rows.
  struct decoder_state {
    std::vector<head_decoder<Attention>> heads;
    workspace_type ws;
    /// Cross-attention's memory mask (its keys and values, projected once, are in ws).
    std::vector<std::uint8_t> memory_mask;
    bool failed = false;  ///< a step threw part-way: the heads may disagree on the context
    /// Tokens stepped so far: the heads count them.
    [[nodiscard]] index_t position() const noexcept {
      return heads.empty() ? 0 : heads.front().position();
    }
  };

  /**
   * @brief A fresh streaming state for step() (position 0).
   * @throws performer::invalid_argument if the mechanism has no step-by-step decoding
   * (head_decoder: LSH attention), or the block has cross-attention (pass the memory).
   */
  [[nodiscard]] decoder_state start_decoding() const {
    return start_decoding(detail::no_memory<scalar_type>(), {});
  }

  /**
   * @brief As above for a block with cross-attention: the memory's keys and values are projected
   * once, here, and every step attends to them (a step's cross-attention costs the mechanism's
   * price for one query over M keys, whatever the position).
   * @throws performer::invalid_argument as above, and as forward() for the memory and its mask.
   */
  [[nodiscard]] decoder_state start_decoding(const const_matrix_ref<scalar_type>& memory,
                                             std::span<const std::uint8_t> memory_mask) const;

  /**
   * @brief Causal decoding, one token at a time: y is the causal forward's output for the
   * token x at position s.position(), given the tokens stepped before it; then the position
   * advances. Each head carries its own state (head_decoder): FAVOR+'s is constant in the
   * context, exact attention's is a key/value cache.
   * @param x, y 1 x d_model, not overlapping. @param s from start_decoding() of this block.
   * @throws performer::invalid_argument on a bad shape, non-finite x or result, a state not
   * made by this block's start_decoding(), or what the head decoders throw. After a throw from
   * the heads the state is marked failed and every later step throws: start a new one.
   */
  void step(const const_matrix_ref<scalar_type>& x, matrix_ref<scalar_type> y,
            decoder_state& s) const;

  /// Convenience overload that allocates the result and a workspace.
  [[nodiscard]] row_matrix<scalar_type> forward(const const_matrix_ref<scalar_type>& x,
                                                std::span<const std::uint8_t> key_mask = {}) const {
    row_matrix<scalar_type> y(x.rows(), x.cols());
    workspace_type ws;
    forward(x, y, key_mask, ws);
    return y;
  }

 private:
  static constexpr const char* no_parameters =
      ": no parameters (built with no_init and set_parameters() not called yet)";

  /// y = MHA(h) + b_o from the q, k and v of every head at once (N x D each): the three
  /// projections as single products, `attend()` filling ws.context from ws.q, ws.k, ws.v, then
  /// one output product. forward_batch and decoding run this way.
  template <class Attend>
  void all_heads(const const_matrix_ref<scalar_type>& h, matrix_ref<scalar_type> y,
                 workspace_type& ws, Attend&& attend) const {
    const index_t n = h.rows();
    const index_t d = config_.d_model;
    ws.q.resize(n, d);
    ws.k.resize(n, d);
    ws.v.resize(n, d);
    ws.context.resize(n, d);
    ws.q.noalias() = h * params_.w_q;
    ws.q.rowwise() += params_.b_q;
    ws.k.noalias() = h * params_.w_k;
    ws.k.rowwise() += params_.b_k;
    ws.v.noalias() = h * params_.w_v;
    ws.v.rowwise() += params_.b_v;
    attend();
    y.noalias() = ws.context * params_.w_o;
    y.rowwise() += params_.b_o;
  }

  /// y = MHA(h) + b_o one head at a time: the head's q, k, v and context (N x D/h each) are
  /// projected, attended and added through their rows of W_o before the next head's, so the
  /// sublayer holds 4 N D/h numbers instead of 4 N D (the protein encoder's memory halves:
  /// README, "Protein-length sequences"). The heads ran one after another anyway; the products
  /// are D/h columns wide instead of D, and y sums the heads' shares in head order.
  void head_by_head(const const_matrix_ref<scalar_type>& h, matrix_ref<scalar_type> y,
                    workspace_type& ws, const attention_mask& mask) const {
    const index_t d = config_.d_model;
    const index_t dh = d / config_.heads;
    ws.w_head.resize(d, 3 * dh);
    ws.b_head.resize(3 * dh);
    ws.head_context.resize(h.rows(), dh);
    for (index_t i = 0; i < config_.heads; ++i) {
      const index_t c0 = i * dh;
      // One product for the head's q, k and v: h, N x D, is packed once instead of three times.
      ws.w_head << params_.w_q.middleCols(c0, dh), params_.w_k.middleCols(c0, dh),
          params_.w_v.middleCols(c0, dh);
      ws.b_head << params_.b_q.segment(c0, dh), params_.b_k.segment(c0, dh),
          params_.b_v.segment(c0, dh);
      ws.qkv.noalias() = h * ws.w_head;
      ws.qkv.rowwise() += ws.b_head;
      auto q = ws.qkv.leftCols(dh);
      auto k = ws.qkv.middleCols(dh, dh);
      if (rope_) {
        rope_->apply(q);
        rope_->apply(k);
      }
      attention_.forward(q, k, ws.qkv.rightCols(dh), ws.head_context, mask, ws.attention);
      if (i == 0) {
        y.noalias() = ws.head_context * params_.w_o.middleRows(c0, dh);
      } else {
        y.noalias() += ws.head_context * params_.w_o.middleRows(c0, dh);
      }
    }
    y.rowwise() += params_.b_o;
  }

  /// The block around its attention: LayerNorm, `attention_sublayer(h, y)` (which sets y to
  /// MHA(h) + b_o: all_heads or head_by_head), the residuals, with cross-attention its sublayer
  /// (`attend_memory()` fills ws.context, N x D, from the cross queries in ws.q), and the
  /// feed-forward sublayer.
  template <class AttentionSublayer, class AttendMemory>
  void sublayers(const const_matrix_ref<scalar_type>& x, matrix_ref<scalar_type> y,
                 workspace_type& ws, AttentionSublayer&& attention_sublayer,
                 AttendMemory&& attend_memory) const {
    using T = scalar_type;
    const index_t n = x.rows();
    const index_t d = config_.d_model;
    PERFORMER_PRECONDITION(params_.w_q.rows() == d, "transformer_block", no_parameters);
    const T eps = static_cast<T>(config_.layer_norm_eps);
    const bool pre = config_.norm == norm_placement::pre;
    ws.normed.resize(n, d);
    if (pre) detail::layer_norm(x, params_.norm1_gain, params_.norm1_bias, eps, ws.normed);
    attention_sublayer(pre ? const_matrix_ref<T>(ws.normed) : x, y);
    y += x;  // the residual around attention
    if (!pre) {
      detail::layer_norm(y, params_.norm1_gain, params_.norm1_bias, eps, ws.normed);
      y = ws.normed;
    }
    if (config_.cross_attention) {
      ws.context.resize(n, d);  // head_by_head leaves it alone
      detail::cross_sublayer(params_, pre, eps, y, ws.normed, ws.q, ws.context, attend_memory);
    }
    detail::feed_forward(config_, params_, y, ws.ffn);
  }

  block_config config_;
  Attention attention_;
  std::optional<rotary_embedding<scalar_type>> rope_;
  parameters_type params_;
};

template <attention_mechanism Attention>
void transformer_block<Attention>::forward(const const_matrix_ref<scalar_type>& x,
                                           const const_matrix_ref<scalar_type>& memory,
                                           matrix_ref<scalar_type> y,
                                           std::span<const std::uint8_t> key_mask,
                                           std::span<const std::uint8_t> memory_mask,
                                           workspace_type& ws, bool causal) const {
  constexpr const char* who = "transformer_block::forward";
  detail::check_sequence(who, config_.d_model, x, y, key_mask);
  detail::check_memory(who, config_, memory, 1, {}, memory_mask);
  PERFORMER_PRECONDITION(!detail::overlaps(memory, y), who, ": y overlaps memory");
  const index_t h = config_.heads;
  sublayers(
      x, y, ws,
      [&](const const_matrix_ref<scalar_type>& in, matrix_ref<scalar_type> out) {
        head_by_head(in, out, ws, {causal, key_mask});
      },
      [&] {
        detail::project_memory(params_, memory, ws.memory_k, ws.memory_v);
        detail::attend_heads(attention_, h, ws.q, ws.memory_k, ws.memory_v, ws.context,
                             {false, memory_mask}, ws.attention);
      });
  require_finite_result(who, y);
}

template <attention_mechanism Attention>
void transformer_block<Attention>::forward_batch(const const_matrix_ref<scalar_type>& x,
                                                 index_t batch,
                                                 const const_matrix_ref<scalar_type>& memory,
                                                 matrix_ref<scalar_type> y,
                                                 std::span<const index_t> lengths,
                                                 std::span<const index_t> memory_lengths,
                                                 workspace_type& ws, bool causal) const {
  constexpr const char* who = "transformer_block::forward_batch";
  const index_t d = config_.d_model;
  const index_t n = detail::check_batch(who, d, x, batch, y, lengths);
  detail::check_memory(who, config_, memory, batch, memory_lengths, {});
  PERFORMER_PRECONDITION(!detail::overlaps(memory, y), who, ": y overlaps memory");
  const index_t m = memory.rows() / batch;
  using T = scalar_type;
  const index_t h = config_.heads;
  const index_t dh = d / h;
  const auto heads = [&](const row_matrix<T>& k, const row_matrix<T>& v, index_t n_k,
                         const batch_mask& mask) {
    batched_attention(attention_, bnhd_view<const T>(ws.q.data(), batch, n, h, dh),
                      bnhd_view<const T>(k.data(), batch, n_k, h, dh),
                      bnhd_view<const T>(v.data(), batch, n_k, h, dh),
                      bnhd_view(ws.context.data(), batch, n, h, dh), mask, ws.batch);
  };
  sublayers(
      x, y, ws,
      [&](const const_matrix_ref<T>& in, matrix_ref<T> out) {
        all_heads(in, out, ws, [&] {
          if (rope_) {
            for (index_t b = 0; b < batch; ++b) {
              rope_->apply(ws.q.middleRows(b * n, n));
              rope_->apply(ws.k.middleRows(b * n, n));
            }
          }
          heads(ws.k, ws.v, n, batch_mask::padded(lengths, causal));
        });
      },
      [&] {
        detail::project_memory(params_, memory, ws.memory_k, ws.memory_v);
        heads(ws.memory_k, ws.memory_v, m, {false, lengths, memory_lengths, {}});
      });
  for (index_t b = 0; b < batch; ++b) {
    const index_t real = detail::length_of(lengths, b, n);
    y.middleRows(b * n + real, n - real).setZero();
    require_finite_result(who, y.middleRows(b * n, real));
  }
}

}  // namespace performer

#include "detail/block_decoding.hpp"
