/// @file nn/detail/feed_forward.hpp
/// @brief The block's feed-forward sublayer, y += FFN(norm(y)), in parallel row blocks.
#pragma once

#include <algorithm>
#include <cstddef>
#include <vector>

#include "../../core/detail/parallel.hpp"
#include "../../core/types.hpp"
#include "../block_config.hpp"
#include "../layers.hpp"

namespace performer::detail {

/// One thread's feed-forward scratch: a row block normalised, and its d_ff activations.
template <class T>
struct ffn_lane {
  row_matrix<T> normed, hidden;
};

/// Rows per feed-forward block: the N x d_ff activation never exists at once.
inline constexpr index_t ffn_rows = 256;

/// y += FFN(LN2(y)) (pre-LN) or y = LN2(y + FFN(y)) (post-LN), in blocks of ffn_rows rows. The
/// blocks run in parallel, each with one lane's scratch and single-threaded products (Eigen
/// does not split a product inside a parallel region), so every bit is the same on any thread
/// count. Buffers hold min(ffn_rows, N) rows: the same size on every call of the same N, so a
/// warm call allocates nothing whichever lane gets the short last block. O(N D F) time.
template <class T>
void feed_forward(const block_config& config, const block_parameters<T>& p, matrix_ref<T> y,
                  std::vector<ffn_lane<T>>& lanes_scratch) {
  const index_t n = y.rows();
  const T eps = static_cast<T>(config.layer_norm_eps);
  const bool pre = config.norm == norm_placement::pre;
  const index_t blocks = (n + ffn_rows - 1) / ffn_rows;
  const auto lanes = static_cast<std::size_t>(lanes_for(blocks));
  if (lanes_scratch.size() < lanes) lanes_scratch.resize(lanes);
  const index_t cap = std::min(ffn_rows, n);
  parallel_for(blocks, [&](index_t b, index_t lane) {
    auto& scratch = lanes_scratch[static_cast<std::size_t>(lane)];
    if (scratch.normed.rows() != cap) {
      scratch.normed.resize(cap, config.d_model);
      scratch.hidden.resize(cap, config.d_ff);
    }
    const index_t r0 = b * ffn_rows;
    const index_t rows = std::min(ffn_rows, n - r0);
    auto block = y.middleRows(r0, rows);
    auto normed = scratch.normed.topRows(rows);
    auto hidden = scratch.hidden.topRows(rows);
    if (pre) {
      layer_norm(block, p.norm2_gain, p.norm2_bias, eps, normed);
    } else {
      normed = block;
    }
    hidden.noalias() = normed * p.w_ff1;
    hidden.rowwise() += p.b_ff1;
    apply_activation<T>(config.ffn_activation, hidden);
    block.noalias() += hidden * p.w_ff2;
    block.rowwise() += p.b_ff2;
    if (!pre) {
      layer_norm(block, p.norm2_gain, p.norm2_bias, eps, normed);
      block = normed;
    }
  });
}

}  // namespace performer::detail
