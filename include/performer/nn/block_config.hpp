/// @file nn/block_config.hpp
/// @brief A transformer block's shape and options, and its parameters.
#pragma once

#include <cmath>
#include <cstdint>
#include <utility>

#include "../core/concepts.hpp"
#include "../core/error.hpp"
#include "../core/types.hpp"
#include "../core/validate.hpp"
#include "../random/detail/generator.hpp"
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
  /// A decoder block of an encoder-decoder model: after self-attention, a sublayer attending to
  /// the encoder's output (the memory, M x d_model), as in the original Transformer. Its
  /// attention is never causal and never rotary (memory positions are not the queries').
  bool cross_attention = false;
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
  /// Cross-attention's projections and LayerNorm (norm3), empty without cross-attention.
  row_matrix<T> w_cq, w_ck, w_cv, w_co;  ///< d_model x d_model
  row_vector<T> b_cq, b_ck, b_cv, b_co;  ///< 1 x d_model
  row_vector<T> norm3_gain, norm3_bias;  ///< 1 x d_model
};

/// Calls f(name, tensor) on every tensor of p (P is block_parameters<T>, const or not) in one
/// fixed order: the matrices (the linear maps' weights) first, then the vectors; the
/// cross-attention ones are included, empty without cross-attention. The one list of a block's
/// tensors that gradients, the trainer's optimiser slots and checkpoints walk.
template <class P, class F>
void for_each_tensor(P& p, F&& f) {
  f("w_q", p.w_q);
  f("w_k", p.w_k);
  f("w_v", p.w_v);
  f("w_o", p.w_o);
  f("w_ff1", p.w_ff1);
  f("w_ff2", p.w_ff2);
  f("w_cq", p.w_cq);
  f("w_ck", p.w_ck);
  f("w_cv", p.w_cv);
  f("w_co", p.w_co);
  f("b_q", p.b_q);
  f("b_k", p.b_k);
  f("b_v", p.b_v);
  f("b_o", p.b_o);
  f("b_ff1", p.b_ff1);
  f("b_ff2", p.b_ff2);
  f("norm1_gain", p.norm1_gain);
  f("norm1_bias", p.norm1_bias);
  f("norm2_gain", p.norm2_gain);
  f("norm2_bias", p.norm2_bias);
  f("b_cq", p.b_cq);
  f("b_ck", p.b_ck);
  f("b_cv", p.b_cv);
  f("b_co", p.b_co);
  f("norm3_gain", p.norm3_gain);
  f("norm3_bias", p.norm3_bias);
}

namespace detail {

/// The config with d_ff = 0 resolved. @throws invalid_argument as transformer_block's constructor.
inline block_config validated(block_config c) {
  constexpr const char* who = "transformer_block";
  PERFORMER_PRECONDITION(c.d_model > 0, who, ": d_model must be positive (got ", c.d_model, ")");
  PERFORMER_PRECONDITION(c.heads > 0, who, ": heads must be positive (got ", c.heads, ")");
  PERFORMER_PRECONDITION(c.d_model % c.heads == 0, who, ": heads (", c.heads,
                         ") does not divide d_model (", c.d_model, ")");
  PERFORMER_PRECONDITION(c.d_ff >= 0, who, ": d_ff must be >= 0 (got ", c.d_ff, ")");
  PERFORMER_PRECONDITION(std::isfinite(c.layer_norm_eps) && c.layer_norm_eps > 0, who,
                         ": layer_norm_eps must be positive and finite (got ", c.layer_norm_eps,
                         ")");
  PERFORMER_PRECONDITION(!c.rotary || (c.d_model / c.heads) % 2 == 0, who,
                         ": rotary embedding needs an even head width (d_model / heads = ",
                         c.d_model / c.heads, ")");
  PERFORMER_PRECONDITION(!c.rotary || (std::isfinite(c.rotary_base) && c.rotary_base > 1.0), who,
                         ": rotary_base must be finite and greater than 1 (got ", c.rotary_base,
                         ")");
  if (c.d_ff == 0) c.d_ff = 4 * c.d_model;
  return c;
}

/// Parameters drawn from `seed` for a (validated) config: Xavier-uniform weights, zero biases,
/// unit LayerNorm gains; the same bits on every platform.
template <class T>
block_parameters<T> drawn_parameters(const block_config& c, std::uint64_t seed) {
  const index_t d = c.d_model;
  const index_t f = c.d_ff;
  block_parameters<T> p;
  xoshiro256ss rng(seed);
  for (auto* w : {&p.w_q, &p.w_k, &p.w_v, &p.w_o}) fill_uniform(*w, d, d, rng);
  fill_uniform(p.w_ff1, d, f, rng);
  fill_uniform(p.w_ff2, f, d, rng);
  for (auto* b : {&p.b_q, &p.b_k, &p.b_v, &p.b_o, &p.norm1_bias, &p.norm2_bias, &p.b_ff2}) {
    *b = row_vector<T>::Zero(d);
  }
  p.b_ff1 = row_vector<T>::Zero(f);
  p.norm1_gain = row_vector<T>::Ones(d);
  p.norm2_gain = row_vector<T>::Ones(d);
  if (c.cross_attention) {  // drawn last: a block without it keeps its bits
    for (auto* w : {&p.w_cq, &p.w_ck, &p.w_cv, &p.w_co}) fill_uniform(*w, d, d, rng);
    for (auto* b : {&p.b_cq, &p.b_ck, &p.b_cv, &p.b_co, &p.norm3_bias}) *b = row_vector<T>::Zero(d);
    p.norm3_gain = row_vector<T>::Ones(d);
  }
  return p;
}

/// @throws invalid_argument naming the first parameter of `p` whose shape differs from the
/// (validated) config or which holds a non-finite value; cross-attention's must be empty
/// unless the config has it.
template <class T>
void check_parameters(const block_config& c, const block_parameters<T>& p) {
  const index_t d = c.d_model;
  const index_t f = c.d_ff;
  const auto check = [](const char* name, const auto& m, index_t rows, index_t cols) {
    require_parameter("transformer_block::set_parameters", name, m, rows, cols);
  };
  for (const auto& [name, w] : {std::pair{"w_q", &p.w_q}, {"w_k", &p.w_k}, {"w_v", &p.w_v},
                                {"w_o", &p.w_o}}) {
    check(name, *w, d, d);
  }
  for (const auto& [name, b] : {std::pair{"b_q", &p.b_q}, {"b_k", &p.b_k}, {"b_v", &p.b_v},
                                {"b_o", &p.b_o}, {"norm1_gain", &p.norm1_gain},
                                {"norm1_bias", &p.norm1_bias}, {"norm2_gain", &p.norm2_gain},
                                {"norm2_bias", &p.norm2_bias}}) {
    check(name, *b, 1, d);
  }
  check("w_ff1", p.w_ff1, d, f);
  check("b_ff1", p.b_ff1, 1, f);
  check("w_ff2", p.w_ff2, f, d);
  check("b_ff2", p.b_ff2, 1, d);
  const auto cross_weights = {std::pair{"w_cq", &p.w_cq}, {"w_ck", &p.w_ck}, {"w_cv", &p.w_cv},
                              {"w_co", &p.w_co}};
  const auto cross_vectors = {std::pair{"b_cq", &p.b_cq}, {"b_ck", &p.b_ck}, {"b_cv", &p.b_cv},
                              {"b_co", &p.b_co}, {"norm3_gain", &p.norm3_gain},
                              {"norm3_bias", &p.norm3_bias}};
  if (!c.cross_attention) {  // absent, not silently ignored
    const auto refuse = [](const char* name, index_t size) {
      PERFORMER_PRECONDITION(size == 0, "transformer_block::set_parameters: ", name,
                             " is given but the block has no cross-attention "
                             "(block_config::cross_attention is false)");
    };
    for (const auto& [name, w] : cross_weights) refuse(name, w->size());
    for (const auto& [name, b] : cross_vectors) refuse(name, b->size());
    return;
  }
  for (const auto& [name, w] : cross_weights) check(name, *w, d, d);
  for (const auto& [name, b] : cross_vectors) check(name, *b, 1, d);
}

}  // namespace detail

}  // namespace performer
