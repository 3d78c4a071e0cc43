/// @file io/block_tensors.hpp
/// @brief A transformer_block's parameters from tensors under PyTorch's names (a block's
/// state_dict as the reference implementation in tools/reference names it).
#pragma once

#include <string>

#include "../core/error.hpp"
#include "../core/types.hpp"
#include "../nn/block_config.hpp"
#include "safetensors.hpp"

namespace performer::io {

/**
 * @brief Reads one block's parameters from `file`, each tensor named `prefix` + a PyTorch name:
 * attn.{q,k,v,o}_proj.{weight,bias}, norm1 and norm2 (LayerNorm weight and bias),
 * ffn.fc1 and ffn.fc2; with cross_attention also cross_attn.{q,k,v,o}_proj.* and norm3.
 * nn.Linear weights ([out, in]) are transposed into the block's x W convention. The result goes
 * to transformer_block::set_parameters, which checks every shape against the block's config.
 *
 * Complexity: O(D^2 + D F) reads and conversions (D = d_model, F = d_ff).
 * @throws performer::invalid_argument naming the tensor if one is missing, of the wrong rank (a
 * bias or LayerNorm parameter with more than one row among them), of a dtype that is not real,
 * or holds a non-finite value.
 */
template <real_scalar T>
[[nodiscard]] block_parameters<T> read_block_parameters(const safetensors_file& file,
                                                        const std::string& prefix,
                                                        bool cross_attention = false) {
  block_parameters<T> b;
  const auto vector = [&](const std::string& name) {
    const row_matrix<T> v = file.read<T>(prefix + name);
    PERFORMER_PRECONDITION(v.rows() == 1, "io::read_block_parameters: ", file.path().string(),
                           ": tensor '", prefix + name, "' has ", v.rows(),
                           " rows; a bias or a LayerNorm parameter is a vector");
    return row_vector<T>(v);
  };
  const auto linear = [&](const std::string& name, row_matrix<T>& w, row_vector<T>& bias) {
    w = file.read_transposed<T>(prefix + name + ".weight");
    bias = vector(name + ".bias");
  };
  const auto norm = [&](const std::string& name, row_vector<T>& gain, row_vector<T>& bias) {
    gain = vector(name + ".weight");
    bias = vector(name + ".bias");
  };
  linear("attn.q_proj", b.w_q, b.b_q);
  linear("attn.k_proj", b.w_k, b.b_k);
  linear("attn.v_proj", b.w_v, b.b_v);
  linear("attn.o_proj", b.w_o, b.b_o);
  norm("norm1", b.norm1_gain, b.norm1_bias);
  norm("norm2", b.norm2_gain, b.norm2_bias);
  linear("ffn.fc1", b.w_ff1, b.b_ff1);
  linear("ffn.fc2", b.w_ff2, b.b_ff2);
  if (cross_attention) {
    linear("cross_attn.q_proj", b.w_cq, b.b_cq);
    linear("cross_attn.k_proj", b.w_ck, b.b_ck);
    linear("cross_attn.v_proj", b.w_cv, b.b_cv);
    linear("cross_attn.o_proj", b.w_co, b.b_co);
    norm("norm3", b.norm3_gain, b.norm3_bias);
  }
  return b;
}

}  // namespace performer::io
