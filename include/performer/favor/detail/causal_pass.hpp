/// @file favor/detail/causal_pass.hpp
/// @brief favor_attention's causal path: blocks that each start from an empty state, corrected
/// by the state of the keys before them, run in parallel a wave at a time (docs/algorithms.md
/// §2.4).
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include "../../core/attention_mask.hpp"
#include "../../core/detail/fp32_product.hpp"
#include "../../core/detail/online_softmax.hpp"
#include "../../core/detail/parallel.hpp"
#include "../../core/detail/transpose.hpp"
#include "../../core/types.hpp"
#include "../../core/validate.hpp"
#include "../favor_options.hpp"
#include "../state.hpp"
#include "accumulator.hpp"
#include "layout.hpp"

namespace performer::detail {

/// One block's buffers. num and den hold the sums over the keys of each query's own chunk,
/// relative to its block-local shift, until the correction adds the earlier keys.
template <class T, class Acc>
struct causal_block {
  row_matrix<T> phi_q;    ///< B x M: the correction multiplies them by the earlier keys' state
  row_matrix<Acc> num;    ///< B x d_v
  vector<Acc> den;        ///< B
  vector<Acc> local_max;  ///< B: the largest key log scale in the block up to each query
  /// [0]: the block's own keys (from empty), then, in a wave after the prefix, every key before
  /// the block. [c > 0], in a wave only: the block's keys before its chunk c.
  std::vector<favor_state<Acc>> states;
};

/// Calls band(i0, queries, keys) for the bands of 16 queries of a causal chunk of `rows`
/// tokens: band [i0, i0 + queries) sees keys [0, keys), keys = i0 + queries, so a product over
/// the band skips the blocks above the chunk's diagonal (causal_pass::fp32_scores and
/// fp32_values; the benchmarks' ceiling counts the same products).
template <class Band>
void for_causal_bands(index_t rows, Band&& band) {
  constexpr index_t width = 16;
  for (index_t i0 = 0; i0 < rows; i0 += width) {
    const index_t keys = std::min(i0 + width, rows);
    band(i0, keys - i0, keys);
  }
}

/// The causal pass's fold and carried product as favor_attention computes them: Eigen products
/// in Acc. favor_bf16_attention passes bf16::state_products instead.
struct own_products {};

/**
 * @brief The causal pass of favor_attention (Attention) over one call's arguments.
 *
 * Blocks of B tokens, chunks of C tokens within a block. Query i of chunk c of block b sees
 * three groups of keys: its chunk's keys j <= i (a masked C x C product), the block's earlier
 * chunks (R_c, the block's key state from empty) and the earlier blocks (S_b, a prefix sum of
 * the blocks' states). One product with the merged state S_b + R_c covers the last two, so
 * each query meets one carried product as in a plain sequential pass; the cost of the split is
 * a merge of two M x d_v states per chunk. Every value is computed by the same operations
 * whatever runs it, so the bits depend on N and the options only:
 * - one lane (one thread, or blocks too small to share): block after block, chunk after
 *   chunk (R_c is the running state);
 * - several: waves of W blocks. (A) in parallel, each block maps its features, sums its
 *   chunks and folds its keys, copying R_c at every chunk boundary; (B) in block order, the
 *   prefix gives each block S_b; (C) in parallel, each chunk adds phi(Q_c) (S_b + R_c).
 *
 * Products: the O(N M d_v) two, the fold of a chunk's keys into the state and the carried
 * product phi(Q_c) [S z], and the chunk's scores phi(Q_c) phi(K_c)^T run as Products says
 * (own_products: Attention's own, on performer's float kernels when its own_products() says
 * so); the chunk's A V_c is float, on those kernels when they run or Products is not
 * own_products, else Eigen's.
 */
template <class Attention, class Products = own_products>
struct causal_pass {
  using T = typename Attention::scalar_type;
  using Acc = typename Attention::accumulator_type;
  using map_type = typename Attention::feature_map_type;
  using state_type = typename Attention::state_type;
  using lane_type = typename Attention::lane_type;
  using workspace_type = typename Attention::workspace_type;
  using block_type = causal_block<T, Acc>;

  static constexpr Acc minus_inf = -std::numeric_limits<Acc>::infinity();

  const Attention& a;
  const map_type& map;
  const const_matrix_ref<T>& q;
  const const_matrix_ref<T>& k;
  const const_matrix_ref<T>& v;
  matrix_ref<T>& out;
  const attention_mask& mask;
  workspace_type& ws;
  /// Where the backward's key states go, if anywhere: the keys before every stride-th block.
  std::vector<state_type>* kept = nullptr;
  index_t stride = 1;
  Products products = {};
  static constexpr bool uses_own_products = std::is_same_v<Products, own_products>;
  /// Whether Attention's own products can be performer's float kernels, and whether they are
  /// (favor_options::products).
  static constexpr bool float_sums =
      uses_own_products && std::is_same_v<T, float> && std::is_same_v<Acc, float>;
  [[nodiscard]] bool fp32_kernels() const {
    if constexpr (float_sums) {
      return a.own_products();
    } else {
      return false;
    }
  }
  // Other products (bfloat16) work on float sums and keep their states in units of their own
  // (scaled values): nothing may read those states back, as the backward pass does.
  static_assert(uses_own_products || std::is_same_v<Acc, float>);

  [[nodiscard]] index_t block() const { return a.options_.block; }
  [[nodiscard]] index_t chunk() const { return std::min(a.options_.chunk, block()); }
  [[nodiscard]] index_t rows_of(index_t b) const {
    return std::min(block(), q.rows() - b * block());
  }
  [[nodiscard]] index_t seeing() const { return first_seeing_query(mask, q.rows(), k.rows()); }

  /// W: favor_options::wave_blocks, or one block per thread.
  [[nodiscard]] static index_t wave_of(const favor_options& o) {
    return o.wave_blocks > 0 ? o.wave_blocks : available_threads();
  }

  void run() const {
    const index_t blocks = (q.rows() + block() - 1) / block();
    const index_t wave = wave_of(a.options_);
    const index_t width = std::min(wave, blocks);
    const index_t block_work = block() * a.feature_count() * (q.cols() + v.cols());
    const index_t lanes = block_work >= a.options_.parallel_block_work ? lanes_for(width) : 1;
    // states[0]: every key before the current block; states[1]: a spare, swapped with each
    // block's own state in a wave's prefix so that it needs no third copy.
    a.prepare(ws, lanes, 2, v.cols(), /*query_features=*/false);
    prepare_blocks(lanes == 1 ? 1 : width, lanes > 1);
    ws.states[0].reset(a.feature_count(), v.cols());
    PERFORMER_PRECONDITION(uses_own_products || kept == nullptr,
                           "causal_pass: only its own products keep states for a backward pass");
    if (kept != nullptr) kept->resize(static_cast<std::size_t>((blocks + stride - 1) / stride));
    if (lanes == 1) {
      in_order(blocks);
    } else {
      in_waves(blocks, wave);
    }
  }

  void prepare_blocks(index_t count, bool chunk_states) const {
    const index_t rows = block();
    const auto states =
        chunk_states ? static_cast<std::size_t>((rows + chunk() - 1) / chunk()) : std::size_t{1};
    if (ws.blocks.size() < static_cast<std::size_t>(count)) ws.blocks.resize(count);
    for (block_type& b : ws.blocks) {
      b.phi_q.resize(rows, a.feature_count());
      b.num.resize(rows, v.cols());
      b.den.resize(rows);
      b.local_max.resize(rows);
      if (b.states.size() < states) b.states.resize(states);
    }
  }

  /// One lane: R_c and S_b are at hand when chunk c runs, so nothing is copied.
  void in_order(index_t blocks) const {
    state_type& earlier = ws.states[0];
    block_type& blk = ws.blocks[0];
    lane_type& lane = ws.lanes[0];
    const index_t first_seeing = seeing();
    for (index_t b = 0; b < blocks; ++b) {
      const index_t rows = rows_of(b);
      keep(b, earlier);
      map_block(b, blk, lane);
      for (index_t r0 = 0; r0 < rows; r0 += chunk()) {
        const index_t chunk_rows = std::min(chunk(), rows - r0);
        chunk_sums(b * block() + r0, r0, chunk_rows, blk, lane);
        add_earlier(r0, chunk_rows, earlier, &blk.states[0], blk, lane);
        fold(b * block() + r0, r0, chunk_rows, blk, lane);
      }
      finish(b, blk, first_seeing);
      if (b + 1 < blocks) earlier.add(blk.states[0]);
    }
  }

  void in_waves(index_t blocks, index_t wave) const {
    state_type& earlier = ws.states[0];
    const index_t first_seeing = seeing();
    for (index_t w0 = 0; w0 < blocks; w0 += wave) {
      const index_t count = std::min(wave, blocks - w0);
      parallel_for(count, [&](index_t i, index_t lane) {
        local_pass(w0 + i, ws.blocks[i], ws.lanes[lane]);
      });
      // The prefix, in block order: the same adds as in_order's.
      for (index_t i = 0; i < count; ++i) {
        state_type& own = ws.blocks[i].states[0];
        keep(w0 + i, earlier);
        std::swap(own, ws.states[1]);
        own = earlier;
        if (w0 + i + 1 < blocks) earlier.add(ws.states[1]);
      }
      parallel_for(count, [&](index_t i, index_t lane) {
        block_type& blk = ws.blocks[i];
        const index_t rows = rows_of(w0 + i);
        for (index_t c = 0, r0 = 0; r0 < rows; ++c, r0 += chunk()) {
          // R_0 is empty: nothing of the block comes before its first chunk.
          const state_type* inside = c == 0 ? nullptr : &blk.states[static_cast<std::size_t>(c)];
          add_earlier(r0, std::min(chunk(), rows - r0), blk.states[0], inside, blk, ws.lanes[lane]);
        }
        finish(w0 + i, blk, first_seeing);
      });
    }
  }

  /// Keeps `earlier`, the keys before block b, if b starts a stretch of the backward's.
  void keep(index_t b, const state_type& earlier) const {
    if (kept != nullptr && b % stride == 0) (*kept)[static_cast<std::size_t>(b / stride)] = earlier;
  }

  /// Phase A of a wave: block b's chunk sums and key state, with R_c kept at every boundary.
  void local_pass(index_t b, block_type& blk, lane_type& lane) const {
    const index_t rows = rows_of(b);
    map_block(b, blk, lane);
    for (index_t c = 0, r0 = 0; r0 < rows; ++c, r0 += chunk()) {
      if (c > 0) blk.states[static_cast<std::size_t>(c)] = blk.states[0];
      const index_t chunk_rows = std::min(chunk(), rows - r0);
      chunk_sums(b * block() + r0, r0, chunk_rows, blk, lane);
      fold(b * block() + r0, r0, chunk_rows, blk, lane);
    }
  }

  /// Block b's features (queries into the block, keys into the lane), its state emptied.
  void map_block(index_t b, block_type& blk, lane_type& lane) const {
    const index_t b0 = b * block();
    const index_t rows = rows_of(b);
    a.features_of(map, q, b0, rows, blk.phi_q, lane.log_q, nullptr);
    a.features_of(map, k, b0, rows, lane.phi_k, lane.log_k, &mask);
    // The chunks' scores read the keys' features as the right operand, M x keys, before the
    // fold weights them in place.
    if (fp32_kernels()) transpose_keys(rows, lane);
    blk.states[0].reset(a.feature_count(), v.cols());
  }

  /// The block's key features transposed once, M x B, the right operand of its chunks' scores.
  void transpose_keys(index_t rows, lane_type& lane) const {
    if constexpr (float_sums) {
      const index_t m = lane.phi_k.cols();
      lane.phi_k_t.resize(m, block());  // allocates only when the shape changes
      transpose_32(lane.phi_k.data(), m, m, rows, lane.phi_k_t.data(), block());
    }
  }

  /// Tokens [t0, t0 + rows), rows [r0, r0 + rows) of the block: each query's block-local shift
  /// and its sums over the chunk's keys j <= i (the masked C x C product).
  void chunk_sums(index_t t0, index_t r0, index_t rows, block_type& blk, lane_type& lane) const {
    const auto phi_q_rows = blk.phi_q.middleRows(r0, rows);
    const auto log_k = lane.log_k.segment(r0, rows);
    auto shift = blk.local_max.segment(r0, rows);
    auto scores = lane.scores.topLeftCorner(rows, rows);

    // The running maximum over the block's keys j <= i only: never a future key.
    Acc running = blk.states[0].shift;
    for (index_t i = 0; i < rows; ++i) {
      running = std::max(running, static_cast<Acc>(log_k(i)));
      shift(i) = running;
    }
    if (!fp32_scores(r0, rows, blk, lane)) {
      if constexpr (uses_own_products) {
        const auto& phi_q = as_accumulator<Acc>(phi_q_rows, lane.cast_q);
        const auto phi_k_rows = lane.phi_k.middleRows(r0, rows);
        const auto& phi_k = as_accumulator<Acc>(phi_k_rows, lane.cast_k);
        scores.noalias() = phi_q * phi_k.transpose();
      } else {
        products.scores(phi_q_rows, lane.phi_k.middleRows(r0, rows), scores);
      }
    }
    weigh_scores(r0, rows, blk, lane);
    if (!fp32_values(t0, r0, rows, blk, lane)) {
      const auto v_chunk = v.middleRows(t0, rows);
      blk.num.middleRows(r0, rows).noalias() = scores * as_accumulator<Acc>(v_chunk, lane.cast_v);
    }
    blk.den.segment(r0, rows).noalias() = scores.rowwise().sum();
  }

  /// A_ij = phi(q_i).phi(k_j) exp(log_k_j - shift_i) for j <= i, 0 above the diagonal, in place
  /// of the chunk's scores phi(q_i).phi(k_j). exp(log_k_j - shift_i) = exp(log_k_j - shift_j)
  /// when the maximum did not rise between j and i (the common case): one exponential per key
  /// instead of per pair.
  void weigh_scores(index_t r0, index_t rows, block_type& blk, lane_type& lane) const {
    const auto log_k = lane.log_k.segment(r0, rows);
    const auto shift = blk.local_max.segment(r0, rows);
    auto weights = lane.weights.head(rows);
    auto scores = lane.scores.topLeftCorner(rows, rows);
    for (index_t j = 0; j < rows; ++j) {
      weights(j) = shifted_exp(static_cast<Acc>(log_k(j)), shift(j));
    }
    for (index_t i = 0; i < rows; ++i) {
      for (index_t j = 0; j <= i; ++j) {
        scores(i, j) *=
            shift(j) == shift(i) ? weights(j) : shifted_exp(static_cast<Acc>(log_k(j)), shift(i));
      }
      scores.row(i).tail(rows - i - 1).setZero();
    }
  }

  /// The chunk's products on performer's float kernels read every operand where it lies (the
  /// keys' features from their transpose, made once per block in map_block) and skip what lies
  /// above the diagonal (for_causal_bands): 3/4 of the C x C products at C = 32
  /// (docs/algorithms.md §11). Each returns whether it ran; the members compile for float
  /// only, as an explicit instantiation of a double pass compiles every member.

  /// The chunk's scores phi(Q_c) phi(K_c)^T, when the pass's own products are the kernels.
  bool fp32_scores(index_t r0, index_t rows, block_type& blk, lane_type& lane) const {
    if constexpr (float_sums) {
      if (!fp32_kernels()) return false;
      const index_t m = blk.phi_q.cols();
      auto scores = lane.scores.topLeftCorner(rows, rows);
      for_causal_bands(rows, [&](index_t i0, index_t queries, index_t keys) {
        fp32::product({&blk.phi_q(r0 + i0, 0), queries, m, 1},
                      {lane.phi_k_t.data() + r0, m, keys, lane.phi_k_t.cols()}, &scores(i0, 0),
                      scores.outerStride(), /*accumulate=*/false);
      });
      return true;
    }
    return false;
  }

  /// The chunk's A V_c, float in every pass on float data: when the attention's products are
  /// the kernels, and always in favor_bf16_attention's causal pass, whose other products are
  /// bfloat16 (the kernel's portable code gives the same bits, so its bits do not depend on
  /// whether the CPU runs AVX-512F).
  bool fp32_values(index_t t0, index_t r0, index_t rows, block_type& blk, lane_type& lane) const {
    if constexpr (std::is_same_v<T, float> && std::is_same_v<Acc, float>) {
      if (uses_own_products && !a.own_products()) return false;
      auto scores = lane.scores.topLeftCorner(rows, rows);
      for_causal_bands(rows, [&](index_t i0, index_t queries, index_t keys) {
        fp32::product({&scores(i0, 0), queries, scores.outerStride(), 1},
                      {v.data() + t0 * v.outerStride(), keys, v.cols(), v.outerStride()},
                      &blk.num(r0 + i0, 0), blk.num.cols(), /*accumulate=*/false);
      });
      return true;
    }
    return false;
  }

  /// The chunk's keys join the block's state, at the chunk's last shift.
  void fold(index_t t0, index_t r0, index_t rows, block_type& blk, lane_type& lane) const {
    if constexpr (uses_own_products) {
      a.accumulate(lane.phi_k.middleRows(r0, rows), lane.log_k.segment(r0, rows),
                   v.middleRows(t0, rows), blk.states[0], blk.local_max(r0 + rows - 1), lane);
    } else {
      products.fold(lane.phi_k.middleRows(r0, rows), lane.log_k.segment(r0, rows),
                    v.middleRows(t0, rows), blk.states[0], blk.local_max(r0 + rows - 1));
    }
  }

  /// Adds phi(Q_c) (S_b + R_c) to the chunk's sums: `before` holds S_b, `inside` R_c (none
  /// for the block's first chunk). An empty state (shift -inf: no key, or only padding) adds
  /// nothing, and with both empty the chunk's shifts and sums are complete already.
  void add_earlier(index_t r0, index_t rows, const state_type& before, const state_type* inside,
                   block_type& blk, lane_type& lane) const {
    const bool has_before = before.shift != minus_inf;
    const bool has_inside = inside != nullptr && inside->shift != minus_inf;
    if (has_before && has_inside) {
      state_type& merged = lane.merged;
      merged.shift = std::max(before.shift, inside->shift);
      const Acc fb = std::exp(before.shift - merged.shift);
      const Acc fi = std::exp(inside->shift - merged.shift);
      merged.sum.noalias() = fb * before.sum + fi * inside->sum;
      merged.norm.noalias() = fb * before.norm + fi * inside->norm;
      rescale_into(r0, rows, merged, blk, lane);
    } else if (has_before || has_inside) {
      rescale_into(r0, rows, has_before ? before : *inside, blk, lane);
    }
  }

  /// num_i = num_i e^(local_i - g_i) + phi(q_i) S e^(shift_S - g_i), den likewise, with
  /// g_i = max(shift_S, local_i), the maximum over keys j <= i as in a sequential pass. Both
  /// factors are at most 1: neither part can overflow.
  void rescale_into(index_t r0, index_t rows, const state_type& carried, block_type& blk,
                    lane_type& lane) const {
    const auto phi_q_rows = blk.phi_q.middleRows(r0, rows);
    auto num = blk.num.middleRows(r0, rows);
    auto den = blk.den.segment(r0, rows);
    auto earlier_num = lane.num.topRows(rows);
    auto earlier_den = lane.den.head(rows);
    if constexpr (uses_own_products) {
      const auto& phi_q = as_accumulator<Acc>(phi_q_rows, lane.cast_q);
      if (!fp32_carried(phi_q_rows, carried, earlier_num)) {
        earlier_num.noalias() = phi_q * carried.sum;
      }
      earlier_den.noalias() = phi_q * carried.norm;
    } else {
      products.carried(phi_q_rows, carried, earlier_num, earlier_den);
    }
    for (index_t i = 0; i < rows; ++i) {
      const Acc local = blk.local_max(r0 + i);
      const Acc shift = std::max(carried.shift, local);
      const Acc own = factor(local, shift);
      const Acc earlier = factor(carried.shift, shift);
      num.row(i) = own * num.row(i) + earlier * earlier_num.row(i);
      den(i) = own * den(i) + earlier * earlier_den(i);
    }
  }

  /// num = phi(Q_c) S on the kernels, reading the state where it lies (Eigen copied it into
  /// panels for every chunk), when the pass's own products are the kernels.
  template <class PhiQ, class Num>
  bool fp32_carried(const PhiQ& phi_q, const state_type& carried, Num& num) const {
    if constexpr (float_sums) {
      if (!fp32_kernels()) return false;
      fp32::product(
          {phi_q.data(), phi_q.rows(), phi_q.outerStride(), 1},
          {carried.sum.data(), carried.sum.rows(), carried.sum.cols(), carried.sum.cols()},
          num.data(), num.outerStride(), /*accumulate=*/false);
      return true;
    }
    return false;
  }

  /// shifted_exp(x, shift) without the exponential in the common case x = shift (finite):
  /// the running maximum is one of the two shifts, and rarely rises.
  static Acc factor(Acc x, Acc shift) {
    return x == shift && x != minus_inf ? Acc(1) : shifted_exp(x, shift);
  }

  void finish(index_t b, block_type& blk, index_t first_seeing) const {
    const index_t rows = rows_of(b);
    normalise_rows(blk.num.topRows(rows), blk.den.head(rows), out.middleRows(b * block(), rows),
                   b * block(), first_seeing);
  }
};

}  // namespace performer::detail
