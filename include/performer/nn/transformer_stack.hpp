/// @file nn/transformer_stack.hpp
/// @brief A stack of transformer blocks with a final LayerNorm: an encoder, or a decoder-only
/// model when causal.
#pragma once

#include <cstdint>
#include <span>
#include <type_traits>
#include <utility>
#include <vector>

#include "../core/concepts.hpp"
#include "../core/error.hpp"
#include "../core/types.hpp"
#include "../core/validate.hpp"
#include "../random/detail/generator.hpp"
#include "layers.hpp"
#include "transformer_block.hpp"

namespace performer {

/**
 * @brief A stack of transformer blocks (an encoder, or a decoder-only model when causal), with a
 * final LayerNorm in the pre-LN arrangement.
 *
 * Seeds: layer l has the seed s_l = detail::derive_seed(seed, l). Its weights are drawn from
 * s_l, and a mechanism maker that takes a seed gets detail::derive_seed(s_l, 1), so each
 * layer's random features (or hash functions) come from the same seed tree as its weights.
 *
 * Complexity: layers times that of one block; workspace that of one block plus one N x d_model
 * buffer (layers run in place through two buffers).
 */
template <attention_mechanism Attention>
class transformer_stack {
 public:
  using block_type = transformer_block<Attention>;
  using scalar_type = typename Attention::scalar_type;

  struct workspace_type {
    row_matrix<scalar_type> buffer;
    typename block_type::workspace_type block;
  };

  /// The seed of layer l's weights (its mechanism's seed is derive_seed(layer_seed(seed, l), 1)).
  [[nodiscard]] static std::uint64_t layer_seed(std::uint64_t seed, index_t l) {
    return detail::derive_seed(seed, static_cast<std::uint64_t>(l));
  }

  /**
   * @param config shape and options shared by every layer.
   * @param layers number of blocks (> 0).
   * @param make_attention callable (index_t layer, std::uint64_t seed) -> Attention, called
   * once per layer with that layer's mechanism seed (so that, e.g., each FAVOR+ layer draws
   * its own features); a callable of the layer alone is accepted too.
   * @param seed the root of every layer's seeds (see the class comment).
   * @throws performer::invalid_argument if layers is not positive, or as transformer_block.
   */
  template <class Make>
    requires std::is_invocable_r_v<Attention, Make&, index_t, std::uint64_t> ||
             std::is_invocable_r_v<Attention, Make&, index_t>
  transformer_stack(const block_config& config, index_t layers, Make make_attention,
                    std::uint64_t seed = 0) {
    build(config, layers, make_attention, seed, [](std::uint64_t s) { return s; });
  }

  /// Every layer's weights left unset until its set_parameters() (see no_init_t); mechanisms
  /// still get the seeds of seed 0's tree. The final LayerNorm starts as the identity.
  template <class Make>
    requires std::is_invocable_r_v<Attention, Make&, index_t, std::uint64_t> ||
             std::is_invocable_r_v<Attention, Make&, index_t>
  transformer_stack(const block_config& config, index_t layers, Make make_attention, no_init_t) {
    build(config, layers, make_attention, 0, [](std::uint64_t) { return no_init; });
  }

  /// Same mechanism (copied) in every layer.
  transformer_stack(const block_config& config, index_t layers, const Attention& attention,
                    std::uint64_t seed = 0)
      : transformer_stack(config, layers, [&attention](index_t) { return attention; }, seed) {}

  [[nodiscard]] index_t layers() const noexcept { return static_cast<index_t>(blocks_.size()); }
  /// Layer l, for reading or loading parameters. @throws invalid_argument unless 0 <= l < layers().
  [[nodiscard]] const block_type& layer(index_t l) const {
    check_layer(l);
    return blocks_[static_cast<std::size_t>(l)];
  }
  [[nodiscard]] block_type& layer(index_t l) {
    check_layer(l);
    return blocks_[static_cast<std::size_t>(l)];
  }

  /// The final LayerNorm's gain and bias (1 x d_model each; used in the pre-LN arrangement).
  [[nodiscard]] const row_vector<scalar_type>& final_norm_gain() const noexcept { return final_gain_; }
  [[nodiscard]] const row_vector<scalar_type>& final_norm_bias() const noexcept { return final_bias_; }

  /**
   * @brief Replaces the final LayerNorm's parameters (e.g. trained weights).
   * @throws performer::invalid_argument if either is not 1 x d_model or holds a non-finite value.
   */
  void set_final_norm(const row_vector<scalar_type>& gain, const row_vector<scalar_type>& bias) {
    constexpr const char* who = "transformer_stack::set_final_norm";
    const index_t d = blocks_.front().config().d_model;
    PERFORMER_PRECONDITION(gain.cols() == d && bias.cols() == d, who, ": gain is 1x", gain.cols(),
                           " and bias is 1x", bias.cols(), ", expected 1x", d);
    require_finite(who, "gain", gain);
    require_finite(who, "bias", bias);
    final_gain_ = gain;
    final_bias_ = bias;
  }

  /// Runs every layer, then the final LayerNorm (pre-LN only). Same contract as the block's.
  void forward(const const_matrix_ref<scalar_type>& x, matrix_ref<scalar_type> y,
               std::span<const std::uint8_t> key_mask, workspace_type& ws) const {
    forward(x, y, key_mask, ws, blocks_.front().config().causal);
  }

  /// As above, causal or bidirectional for this call whatever the config says.
  void forward(const const_matrix_ref<scalar_type>& x, matrix_ref<scalar_type> y,
               std::span<const std::uint8_t> key_mask, workspace_type& ws, bool causal) const {
    forward(x, detail::no_memory<scalar_type>(), y, key_mask, {}, ws, causal);
  }

  /// For blocks with cross-attention: every layer attends to the same memory (the encoder's
  /// output, M x d_model) with its mask. Same contract as the block's.
  void forward(const const_matrix_ref<scalar_type>& x, const const_matrix_ref<scalar_type>& memory,
               matrix_ref<scalar_type> y, std::span<const std::uint8_t> key_mask,
               std::span<const std::uint8_t> memory_mask, workspace_type& ws) const {
    forward(x, memory, y, key_mask, memory_mask, ws, blocks_.front().config().causal);
  }

  /// As above, causal or bidirectional for this call (the self-attention; never the memory's).
  void forward(const const_matrix_ref<scalar_type>& x, const const_matrix_ref<scalar_type>& memory,
               matrix_ref<scalar_type> y, std::span<const std::uint8_t> key_mask,
               std::span<const std::uint8_t> memory_mask, workspace_type& ws, bool causal) const;

  /// Streaming state of step(): one block state per layer.
  struct decoder_state {
    std::vector<typename block_type::decoder_state> layers;
    row_matrix<scalar_type> buffer;
  };

  /// A fresh state for step(). @throws as transformer_block::start_decoding.
  [[nodiscard]] decoder_state start_decoding() const {
    return start_decoding(detail::no_memory<scalar_type>(), {});
  }

  /// For blocks with cross-attention: every layer's state over the same memory.
  /// @throws as transformer_block::start_decoding.
  [[nodiscard]] decoder_state start_decoding(const const_matrix_ref<scalar_type>& memory,
                                             std::span<const std::uint8_t> memory_mask) const;

  /**
   * @brief Causal decoding of one token through every layer and the final LayerNorm: y is the
   * causal forward's output row for x at the state's position.
   * @throws performer::invalid_argument as transformer_block::step, or for a state not made by
   * this stack's start_decoding().
   */
  void step(const const_matrix_ref<scalar_type>& x, matrix_ref<scalar_type> y,
            decoder_state& s) const;

  [[nodiscard]] row_matrix<scalar_type> forward(const const_matrix_ref<scalar_type>& x,
                                                std::span<const std::uint8_t> key_mask = {}) const {
    row_matrix<scalar_type> y(x.rows(), x.cols());
    workspace_type ws;
    forward(x, y, key_mask, ws);
    return y;
  }

 private:
  /// The layers, each block constructed with init(its seed): the seed or no_init.
  template <class Make, class Init>
  void build(const block_config& config, index_t layers, Make& make_attention, std::uint64_t seed,
             Init init) {
    PERFORMER_PRECONDITION(layers > 0, "transformer_stack: layers must be positive (got ", layers,
                           ")");
    blocks_.reserve(static_cast<std::size_t>(layers));
    for (index_t l = 0; l < layers; ++l) {
      const std::uint64_t s = layer_seed(seed, l);
      if constexpr (std::is_invocable_r_v<Attention, Make&, index_t, std::uint64_t>) {
        blocks_.emplace_back(config, make_attention(l, detail::derive_seed(s, 1)), init(s));
      } else {
        blocks_.emplace_back(config, make_attention(l), init(s));
      }
    }
    final_gain_ = row_vector<scalar_type>::Ones(blocks_.front().config().d_model);
    final_bias_ = row_vector<scalar_type>::Zero(blocks_.front().config().d_model);
  }

  /// y = LayerNorm(y) with the final gain and bias, in the pre-LN arrangement only.
  void final_norm(const char* who, matrix_ref<scalar_type> y, row_matrix<scalar_type>& scratch) const {
    const auto& cfg = blocks_.front().config();
    if (cfg.norm != norm_placement::pre) return;
    scratch = y;
    detail::layer_norm(scratch, final_gain_, final_bias_,
                       static_cast<scalar_type>(cfg.layer_norm_eps), y);
    require_finite_result(who, y);  // a gain or bias near T's limit can overflow
  }

  void check_layer(index_t l) const {
    PERFORMER_PRECONDITION(l >= 0 && l < layers(), "transformer_stack::layer: index ", l,
                           " out of range (", layers(), " layers)");
  }

  std::vector<block_type> blocks_;
  row_vector<scalar_type> final_gain_, final_bias_;
};

template <attention_mechanism Attention>
void transformer_stack<Attention>::forward(const const_matrix_ref<scalar_type>& x,
                                           const const_matrix_ref<scalar_type>& memory,
                                           matrix_ref<scalar_type> y,
                                           std::span<const std::uint8_t> key_mask,
                                           std::span<const std::uint8_t> memory_mask,
                                           workspace_type& ws, bool causal) const {
  constexpr const char* who = "transformer_stack::forward";
  // Checked here: with an even number of layers no block sees x and y together.
  PERFORMER_PRECONDITION(y.rows() == x.rows() && y.cols() == x.cols(), who, ": y is ",
                         detail::shape(y), " but x is ", detail::shape(x));
  PERFORMER_PRECONDITION(!detail::overlaps(x, y), who, ": y overlaps x");
  ws.buffer.resize(x.rows(), x.cols());
  // Layer l writes into y when (layers - l) is odd, so that the last layer writes y.
  bool into_y = blocks_.size() % 2 == 1;
  blocks_.front().forward(x, memory, into_y ? y : matrix_ref<scalar_type>(ws.buffer), key_mask,
                          memory_mask, ws.block, causal);
  for (std::size_t l = 1; l < blocks_.size(); ++l) {
    if (into_y) {
      blocks_[l].forward(y, memory, ws.buffer, key_mask, memory_mask, ws.block, causal);
    } else {
      blocks_[l].forward(ws.buffer, memory, y, key_mask, memory_mask, ws.block, causal);
    }
    into_y = !into_y;
  }
  final_norm(who, y, ws.buffer);
}

template <attention_mechanism Attention>
auto transformer_stack<Attention>::start_decoding(const const_matrix_ref<scalar_type>& memory,
                                                  std::span<const std::uint8_t> memory_mask) const
    -> decoder_state {
  decoder_state s;
  s.layers.reserve(blocks_.size());
  for (const auto& b : blocks_) s.layers.push_back(b.start_decoding(memory, memory_mask));
  return s;
}

template <attention_mechanism Attention>
void transformer_stack<Attention>::step(const const_matrix_ref<scalar_type>& x,
                                        matrix_ref<scalar_type> y, decoder_state& s) const {
  constexpr const char* who = "transformer_stack::step";
  PERFORMER_PRECONDITION(s.layers.size() == blocks_.size(), who, ": the state has ",
                         s.layers.size(), " layers, expected ", blocks_.size(),
                         " (make it with start_decoding())");
  PERFORMER_PRECONDITION(y.rows() == x.rows() && y.cols() == x.cols(), who, ": y is ",
                         detail::shape(y), " but x is ", detail::shape(x));
  PERFORMER_PRECONDITION(!detail::overlaps(x, y), who, ": y overlaps x");
  s.buffer.resize(x.rows(), x.cols());
  bool into_y = blocks_.size() % 2 == 1;  // as in forward(): the last layer writes y
  blocks_.front().step(x, into_y ? y : matrix_ref<scalar_type>(s.buffer), s.layers.front());
  for (std::size_t l = 1; l < blocks_.size(); ++l) {
    if (into_y) {
      blocks_[l].step(y, s.buffer, s.layers[l]);
    } else {
      blocks_[l].step(s.buffer, y, s.layers[l]);
    }
    into_y = !into_y;
  }
  final_norm(who, y, s.buffer);
}

}  // namespace performer
