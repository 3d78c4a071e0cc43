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
 * y = LN2(y + FFN(y)). Heads are zero-copy column slices of the projected Q, K, V; every head
 * uses the same mechanism object (for FAVOR+: the same random features, as in the Performer).
 *
 * With `rotary`, q and k are rotated by their positions (rotary_embedding) before the mechanism
 * sees them.
 *
 * Complexity for N tokens, width D, F = d_ff, h heads: time O(N D^2 + N D F) for the
 * projections plus h times the mechanism's cost at head width D/h; workspace O(N D) plus the
 * mechanism's workspace plus O(B F) for the feed-forward, which runs in row blocks of B = 256.
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
   * rotary, the head width is odd or rotary_base is not finite and greater than 1.
   */
  transformer_block(const block_config& config, Attention attention, std::uint64_t seed = 0)
      : transformer_block(config, std::move(attention), no_init) {
    using T = scalar_type;
    const index_t d = config_.d_model;
    const index_t f = config_.d_ff;
    detail::xoshiro256ss rng(seed);
    for (auto* w : {&params_.w_q, &params_.w_k, &params_.w_v, &params_.w_o}) {
      detail::fill_uniform(*w, d, d, rng);
    }
    detail::fill_uniform(params_.w_ff1, d, f, rng);
    detail::fill_uniform(params_.w_ff2, f, d, rng);
    for (auto* b : {&params_.b_q, &params_.b_k, &params_.b_v, &params_.b_o, &params_.norm1_bias,
                    &params_.norm2_bias, &params_.b_ff2}) {
      *b = row_vector<T>::Zero(d);
    }
    params_.b_ff1 = row_vector<T>::Zero(f);
    params_.norm1_gain = row_vector<T>::Ones(d);
    params_.norm2_gain = row_vector<T>::Ones(d);
  }

  /// With no weights until set_parameters() (see no_init_t). @throws as above.
  transformer_block(const block_config& config, Attention attention, no_init_t)
      : config_(validated(config)), attention_(std::move(attention)) {
    if (config_.rotary) {
      rope_.emplace(config_.d_model / config_.heads, config_.rotary_base, config_.rotary_pairs);
    }
  }

  [[nodiscard]] const block_config& config() const noexcept { return config_; }
  [[nodiscard]] const Attention& attention() const noexcept { return attention_; }
  /// Mutable access, e.g. to redraw FAVOR+ features between training steps.
  [[nodiscard]] Attention& attention() noexcept { return attention_; }
  [[nodiscard]] const parameters_type& parameters() const noexcept { return params_; }

  /**
   * @brief Replaces all parameters (e.g. trained weights).
   * @throws performer::invalid_argument naming the first parameter whose shape differs from the
   * config or which holds a non-finite value.
   */
  void set_parameters(parameters_type p) {
    const index_t d = config_.d_model;
    const index_t f = config_.d_ff;
    const auto check = [](const char* name, const auto& m, index_t rows, index_t cols) {
      detail::require_parameter("transformer_block::set_parameters", name, m, rows, cols);
    };
    check("w_q", p.w_q, d, d);
    check("w_k", p.w_k, d, d);
    check("w_v", p.w_v, d, d);
    check("w_o", p.w_o, d, d);
    check("b_q", p.b_q, 1, d);
    check("b_k", p.b_k, 1, d);
    check("b_v", p.b_v, 1, d);
    check("b_o", p.b_o, 1, d);
    check("norm1_gain", p.norm1_gain, 1, d);
    check("norm1_bias", p.norm1_bias, 1, d);
    check("norm2_gain", p.norm2_gain, 1, d);
    check("norm2_bias", p.norm2_bias, 1, d);
    check("w_ff1", p.w_ff1, d, f);
    check("b_ff1", p.b_ff1, 1, f);
    check("w_ff2", p.w_ff2, f, d);
    check("b_ff2", p.b_ff2, 1, d);
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
    constexpr const char* who = "transformer_block::forward";
    const index_t n = x.rows();
    const index_t d = config_.d_model;
    PERFORMER_PRECONDITION(n > 0, who, ": empty sequence (x is ", detail::shape(x), ")");
    PERFORMER_PRECONDITION(x.cols() == d, who, ": x is ", detail::shape(x),
                           " but d_model is ", d);
    PERFORMER_PRECONDITION(y.rows() == n && y.cols() == d, who, ": y is ", detail::shape(y),
                           ", expected ", n, "x", d);
    PERFORMER_PRECONDITION(key_mask.empty() || key_mask.size() == static_cast<std::size_t>(n),
                           who, ": key_mask has ", key_mask.size(), " entries, expected ", n,
                           " (one per token) or none");
    PERFORMER_PRECONDITION(!detail::overlaps(x, y), who, ": y overlaps x");
    require_finite(who, "x", x);
    sublayers(x, y, ws, [&] {
      if (rope_) {
        rope_->apply(ws.q);
        rope_->apply(ws.k);
      }
      const attention_mask mask{causal, key_mask};
      const index_t dh = d / config_.heads;
      for (index_t head = 0; head < config_.heads; ++head) {
        const index_t c0 = head * dh;
        attention_.forward(ws.q.middleCols(c0, dh), ws.k.middleCols(c0, dh),
                           ws.v.middleCols(c0, dh), ws.context.middleCols(c0, dh), mask,
                           ws.attention);
      }
    });
    require_finite_result(who, y);
  }

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
    constexpr const char* who = "transformer_block::forward_batch";
    const index_t d = config_.d_model;
    PERFORMER_PRECONDITION(batch > 0 && x.rows() > 0 && x.rows() % batch == 0, who, ": x is ",
                           detail::shape(x), ", not a positive multiple of ", batch,
                           " sequences of equal length");
    const index_t n = x.rows() / batch;
    PERFORMER_PRECONDITION(x.cols() == d, who, ": x is ", detail::shape(x), " but d_model is ", d);
    PERFORMER_PRECONDITION(y.rows() == x.rows() && y.cols() == d, who, ": y is ",
                           detail::shape(y), ", expected ", x.rows(), "x", d);
    PERFORMER_PRECONDITION(!detail::overlaps(x, y), who, ": y overlaps x");
    detail::check_lengths(who, "lengths", lengths, batch, n);
    const auto length = [&](index_t b) { return detail::length_of(lengths, b, n); };
    for (index_t b = 0; b < batch; ++b) require_finite(who, "x", x.middleRows(b * n, length(b)));
    sublayers(x, y, ws, [&] {
      if (rope_) {
        for (index_t b = 0; b < batch; ++b) {
          rope_->apply(ws.q.middleRows(b * n, n));
          rope_->apply(ws.k.middleRows(b * n, n));
        }
      }
      using T = scalar_type;
      const index_t h = config_.heads;
      const index_t dh = d / h;
      batched_attention(attention_, bnhd_view<const T>(ws.q.data(), batch, n, h, dh),
                        bnhd_view<const T>(ws.k.data(), batch, n, h, dh),
                        bnhd_view<const T>(ws.v.data(), batch, n, h, dh),
                        bnhd_view(ws.context.data(), batch, n, h, dh),
                        batch_mask::padded(lengths, causal), ws.batch);
    });
    for (index_t b = 0; b < batch; ++b) {
      y.middleRows(b * n + length(b), n - length(b)).setZero();
      require_finite_result(who, y.middleRows(b * n, length(b)));
    }
  }

  /// Streaming state of step(): each head's decoder and scratch rows.
  struct decoder_state {
    std::vector<head_decoder<Attention>> heads;
    workspace_type ws;
    bool failed = false;  ///< a step threw part-way: the heads may disagree on the context
    /// Tokens stepped so far: the heads count them.
    [[nodiscard]] index_t position() const noexcept {
      return heads.empty() ? 0 : heads.front().position();
    }
  };

  /**
   * @brief A fresh streaming state for step() (position 0).
   * @throws performer::invalid_argument if the mechanism has no step-by-step decoding
   * (head_decoder: LSH attention).
   */
  [[nodiscard]] decoder_state start_decoding() const {
    const index_t dh = config_.d_model / config_.heads;
    decoder_state s;
    s.heads.reserve(static_cast<std::size_t>(config_.heads));
    for (index_t h = 0; h < config_.heads; ++h) s.heads.emplace_back(attention_, dh, dh);
    return s;
  }

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
            decoder_state& s) const {
    constexpr const char* who = "transformer_block::step";
    const index_t d = config_.d_model;
    PERFORMER_PRECONDITION(x.rows() == 1 && x.cols() == d && y.rows() == 1 && y.cols() == d, who,
                           ": x is ", detail::shape(x), " and y is ", detail::shape(y),
                           ", expected 1x", d, " each");
    PERFORMER_PRECONDITION(!detail::overlaps(x, y), who, ": y overlaps x");
    PERFORMER_PRECONDITION(s.heads.size() == static_cast<std::size_t>(config_.heads), who,
                           ": the state has ", s.heads.size(), " heads, expected ",
                           config_.heads, " (make it with start_decoding())");
    PERFORMER_PRECONDITION(!s.failed, who,
                           ": an earlier step failed part-way; start a new state");
    require_finite(who, "x", x);
    sublayers(x, y, s.ws, [&] {
      if (rope_) {
        const index_t position = s.position();
        rope_->apply(s.ws.q, position);
        rope_->apply(s.ws.k, position);
      }
      const index_t dh = d / config_.heads;
      try {
        for (index_t h = 0; h < config_.heads; ++h) {
          const index_t c0 = h * dh;
          s.heads[static_cast<std::size_t>(h)].step(
              attention_, s.ws.q.middleCols(c0, dh), s.ws.k.middleCols(c0, dh),
              s.ws.v.middleCols(c0, dh), s.ws.context.middleCols(c0, dh));
        }
      } catch (...) {
        s.failed = true;
        throw;
      }
    });
    require_finite_result(who, y);
  }

  /// Convenience overload that allocates the result and a workspace.
  [[nodiscard]] row_matrix<scalar_type> forward(const const_matrix_ref<scalar_type>& x,
                                                std::span<const std::uint8_t> key_mask = {}) const {
    row_matrix<scalar_type> y(x.rows(), x.cols());
    workspace_type ws;
    forward(x, y, key_mask, ws);
    return y;
  }

 private:
  static block_config validated(block_config c) {
    constexpr const char* who = "transformer_block";
    PERFORMER_PRECONDITION(c.d_model > 0, who, ": d_model must be positive (got ", c.d_model, ")");
    PERFORMER_PRECONDITION(c.heads > 0, who, ": heads must be positive (got ", c.heads, ")");
    PERFORMER_PRECONDITION(c.d_model % c.heads == 0, who, ": heads (", c.heads,
                           ") does not divide d_model (", c.d_model, ")");
    PERFORMER_PRECONDITION(c.d_ff >= 0, who, ": d_ff must be >= 0 (got ", c.d_ff, ")");
    PERFORMER_PRECONDITION(std::isfinite(c.layer_norm_eps) && c.layer_norm_eps > 0, who,
                           ": layer_norm_eps must be positive and finite (got ",
                           c.layer_norm_eps, ")");
    PERFORMER_PRECONDITION(!c.rotary || (c.d_model / c.heads) % 2 == 0, who,
                           ": rotary embedding needs an even head width (d_model / heads = ",
                           c.d_model / c.heads, ")");
    PERFORMER_PRECONDITION(!c.rotary || (std::isfinite(c.rotary_base) && c.rotary_base > 1.0), who,
                           ": rotary_base must be finite and greater than 1 (got ", c.rotary_base,
                           ")");
    if (c.d_ff == 0) c.d_ff = 4 * c.d_model;
    return c;
  }

  /// The block around its attention: LayerNorm, the q/k/v projections of every row,
  /// `attend()` (which fills ws.context from ws.q, ws.k, ws.v), the output projection, the
  /// residuals and the feed-forward sublayer.
  template <class Attend>
  void sublayers(const const_matrix_ref<scalar_type>& x, matrix_ref<scalar_type> y,
                 workspace_type& ws, Attend&& attend) const {
    using T = scalar_type;
    const index_t n = x.rows();
    const index_t d = config_.d_model;
    PERFORMER_PRECONDITION(params_.w_q.rows() == d, "transformer_block: no parameters (built "
                           "with no_init and set_parameters() not called yet)");
    const T eps = static_cast<T>(config_.layer_norm_eps);
    const bool pre = config_.norm == norm_placement::pre;
    ws.normed.resize(n, d);
    if (pre) detail::layer_norm(x, params_.norm1_gain, params_.norm1_bias, eps, ws.normed);
    const const_matrix_ref<T> h = pre ? const_matrix_ref<T>(ws.normed) : x;
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
    // Residual around attention: y = x + context W_o + b_o.
    y.noalias() = ws.context * params_.w_o;
    y.rowwise() += params_.b_o;
    y += x;
    if (!pre) {
      detail::layer_norm(y, params_.norm1_gain, params_.norm1_bias, eps, ws.normed);
      y = ws.normed;
    }
    detail::feed_forward(config_, params_, y, ws.ffn);
  }

  block_config config_;
  Attention attention_;
  std::optional<rotary_embedding<scalar_type>> rope_;
  parameters_type params_;
};

}  // namespace performer
