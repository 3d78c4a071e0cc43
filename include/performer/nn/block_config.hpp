/// @file nn/block_config.hpp
/// @brief A transformer block's shape and options, and its parameters.
#pragma once

#include "../core/concepts.hpp"
#include "../core/types.hpp"
#include "layers.hpp"
#include "rotary_embedding.hpp"

namespace performer {

/// Constructor tag: leave the weights unset (empty) instead of drawing them, for a loader that
/// replaces them all at once (set_parameters) and should neither pay for the draw nor hold two
/// copies. Until then every forward pass and step throws.
struct no_init_t {
  explicit no_init_t() = default;
};
inline constexpr no_init_t no_init{};

/// Shape and options of a transformer_block.
struct block_config {
  index_t d_model = 0;       ///< model width; must be a positive multiple of `heads`
  index_t heads = 1;         ///< attention heads; head width is d_model / heads
  index_t d_ff = 0;          ///< feed-forward width; 0 means 4 * d_model
  /// Decoder-only (causal) when true, encoder (bidirectional) when false: the default of
  /// forward(); a call may choose otherwise, and step() is always causal.
  bool causal = false;
  norm_placement norm = norm_placement::pre;
  activation ffn_activation = activation::gelu;
  double layer_norm_eps = 1e-5;
  /// Rotary position embedding of q and k, after their projections and before the mechanism
  /// (as ESM-2 does); the head width must then be even.
  bool rotary = false;
  double rotary_base = 10000.0;  ///< RoPE's frequency base
  rotary_pairing rotary_pairs = rotary_pairing::half;
};

/**
 * @brief Trainable parameters of one block. Linear maps act on row vectors: y = x W + b, so
 * W is (inputs x outputs), the transpose of PyTorch's nn.Linear weight.
 */
template <real_scalar T>
struct block_parameters {
  row_matrix<T> w_q, w_k, w_v, w_o;  ///< d_model x d_model
  row_vector<T> b_q, b_k, b_v, b_o;  ///< 1 x d_model
  row_vector<T> norm1_gain, norm1_bias, norm2_gain, norm2_bias;  ///< 1 x d_model
  row_matrix<T> w_ff1;  ///< d_model x d_ff
  row_vector<T> b_ff1;  ///< 1 x d_ff
  row_matrix<T> w_ff2;  ///< d_ff x d_model
  row_vector<T> b_ff2;  ///< 1 x d_model
};

}  // namespace performer
