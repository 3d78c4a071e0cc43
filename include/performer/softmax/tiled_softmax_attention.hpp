/// @file softmax/tiled_softmax_attention.hpp
/// @brief Exact softmax attention by online softmax over key tiles (Milakov and Gimelshein 2018;
/// FlashAttention, Dao et al. 2022, Algorithm 1): the N x N matrix never exists.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../core/attention_mask.hpp"
#include "../core/detail/online_softmax.hpp"
#include "../core/detail/parallel.hpp"
#include "../core/concepts.hpp"
#include "../core/gradient.hpp"
#include "../core/validate.hpp"
#include "../core/error.hpp"
#include "../core/types.hpp"

namespace performer {

/**
 * @brief Exact softmax attention in tiles: same result as softmax_attention (to rounding) with a
 * workspace that does not grow with N.
 *
 * For each tile of queries it sweeps the key tiles, keeping per query the running maximum
 * logit, the running normaliser and the running weighted sum (accumulated directly in `out`);
 * when the maximum rises the carried sums are rescaled by exp(old max - new max). Both products
 * of a tile (Q_t K_t^T and P_t V_t) are Eigen matrix products, so it runs near GEMM speed.
 * Under the causal mask, key tiles wholly above the diagonal are skipped (about half the work).
 *
 * Query tiles run in parallel (OpenMP, when the work is worth a parallel region); each output
 * row is computed by one thread in a fixed order, so the result does not depend on the thread
 * count.
 *
 * Complexity: time O(N_q N_k (d + d_v)); workspace O(threads (B_q B_k + B_q)) for tile sizes
 * B_q x B_k, independent of N.
 *
 * @tparam T scalar type (float, double).
 */
template <real_scalar T>
class tiled_softmax_attention {
 public:
  using scalar_type = T;
  static constexpr bool supports_causal = true;
  static constexpr bool key_permutation_invariant = true;
  static constexpr bool query_independent = true;

  /// One thread's scratch: a tile of logits and its queries' running statistics.
  struct lane_type {
    row_matrix<T> tile;
    vector<T> row_max, row_sum, rescale;
    row_vector<T> keep;
  };

  /// Scratch memory: one lane per thread, never more than the tiles.
  struct workspace_type {
    std::vector<lane_type> lanes;
  };

  /// Default tiles: 256 queries x 512 keys (512 KiB of float logits), measured near the GEMM
  /// ceiling on x86-64 at d = 64.
  tiled_softmax_attention() noexcept = default;

  /**
   * @param query_block queries per tile (B_q > 0).
   * @param key_block keys per tile (B_k > 0).
   * @throws performer::invalid_argument if a block size is not positive.
   */
  explicit tiled_softmax_attention(index_t query_block, index_t key_block = default_key_block)
      : query_block_(query_block), key_block_(key_block) {
    PERFORMER_PRECONDITION(query_block > 0 && key_block > 0,
                           "tiled_softmax_attention: tile sizes must be positive (got ",
                           query_block, " x ", key_block, ")");
  }

  [[nodiscard]] index_t query_block() const noexcept { return query_block_; }
  [[nodiscard]] index_t key_block() const noexcept { return key_block_; }

  /// Same contract and exceptions as softmax_attention::forward.
  void forward(const const_matrix_ref<T>& q, const const_matrix_ref<T>& k,
               const const_matrix_ref<T>& v, matrix_ref<T> out, const attention_mask& mask,
               workspace_type& ws) const {
    forward_impl(q, k, v, out, mask, ws, nullptr);
  }

 private:
  // The backward (softmax/tiled_softmax_gradient.hpp) reuses forward_impl for the log-normaliser
  // and the masking helpers below, so that it applies exactly the forward's masking rules.
  friend struct attention_gradient<tiled_softmax_attention>;

  /// forward, also writing each query's log-sum-exp of its visible logits (max + log(sum)) to
  /// log_normaliser[0, N_q) when it is not null: -inf for a query that sees no key.
  void forward_impl(const const_matrix_ref<T>& q, const const_matrix_ref<T>& k,
                    const const_matrix_ref<T>& v, matrix_ref<T> out, const attention_mask& mask,
                    workspace_type& ws, T* log_normaliser) const;

  static constexpr T minus_inf = -std::numeric_limits<T>::infinity();

  /// Sets the entries of a diagonal tile that lie in a query's future (key > query) to `value`.
  template <class Tile>
  static void fill_future(Tile& s, index_t q0, index_t k0, T value) {
    for (index_t r = 0; r < s.rows(); ++r) {
      // Key k0 + c is hidden from query q0 + r when c >= first_hidden.
      const index_t first_hidden = std::max<index_t>(0, q0 + r + 1 - k0);
      if (first_hidden < s.cols()) s.row(r).tail(s.cols() - first_hidden).setConstant(value);
    }
  }

  /// Sets masked logits to -inf so they cannot raise the running maximum.
  template <class Tile>
  static void mask_tile(Tile& s, index_t q0, index_t k0, const attention_mask& mask, bool padded,
                        bool diagonal, row_vector<T>& keep) {
    if (padded) {
      for (index_t c = 0; c < s.cols(); ++c) {
        keep(c) = mask.keeps(static_cast<std::size_t>(k0 + c)) ? T(1) : T(0);
        if (keep(c) == T(0)) s.col(c).setConstant(minus_inf);
      }
    }
    if (diagonal) fill_future(s, q0, k0, minus_inf);
  }

  /// Online softmax (docs/algorithms.md §1.1): folds one tile of logits into each query's
  /// running maximum m, normaliser l and weighted sum acc.
  template <class Tile, class Acc, class Values, class Vec>
  static void online_update(Tile& s, Acc& acc, const Values& v, Vec& m, Vec& l, Vec rescale,
                            bool padded, bool diagonal, index_t q0, index_t k0,
                            const row_vector<T>& keep) {
    for (index_t r = 0; r < s.rows(); ++r) {
      rescale(r) = detail::raise_running_max(m(r), s.row(r).maxCoeff());
      // A row with nothing visible yet keeps max -inf; shifting by 0 leaves its logits at -inf.
      const T shift = m(r) == minus_inf ? T(0) : m(r);
      s.row(r).array() = (s.row(r).array() - shift).exp();
    }
    // Eigen's vectorised exp maps -inf to a tiny positive number, not 0: zero masked entries.
    if (padded) s.array().rowwise() *= keep.head(s.cols()).array();
    if (diagonal) fill_future(s, q0, k0, T(0));
    l = rescale.cwiseProduct(l) + s.rowwise().sum();
    acc.array().colwise() *= rescale.array();
    acc.noalias() += s * v;
  }

  static constexpr index_t default_query_block = 256;
  static constexpr index_t default_key_block = 512;
  index_t query_block_ = default_query_block;
  index_t key_block_ = default_key_block;
};

static_assert(attention_mechanism<tiled_softmax_attention<float>>);
static_assert(attention_mechanism<tiled_softmax_attention<double>>);

template <real_scalar T>
void tiled_softmax_attention<T>::forward_impl(const const_matrix_ref<T>& q,
                                              const const_matrix_ref<T>& k,
                                              const const_matrix_ref<T>& v, matrix_ref<T> out,
                                              const attention_mask& mask, workspace_type& ws,
                                              T* log_normaliser) const {
  constexpr const char* who = "tiled_softmax_attention::forward";
  check_attention_args<T>(who, q, k, v, out, mask);
  const index_t n_q = q.rows();
  const index_t n_k = k.rows();
  const T scale = T(1) / std::sqrt(static_cast<T>(q.cols()));
  const index_t seeing = detail::first_seeing_query(mask, n_q, n_k);
  const index_t query_tiles = (n_q + query_block_ - 1) / query_block_;
  // Query tiles are independent: they run on the library's own threads, each tile's products
  // serial inside (Eigen does not nest), so one parallel region per call instead of one per
  // tile product, and the bits do not depend on the thread count. Below about 2^20
  // multiply-adds a region costs more than it saves.
  const bool parallel = static_cast<double>(n_q) * static_cast<double>(n_k) *
                            static_cast<double>(q.cols() + v.cols()) >=
                        double{1 << 20};
  const index_t lanes = parallel ? detail::lanes_for(query_tiles) : 1;
  if (ws.lanes.size() < static_cast<std::size_t>(lanes))
    ws.lanes.resize(static_cast<std::size_t>(lanes));
  for (auto& lane : ws.lanes) {
    lane.tile.resize(std::min(query_block_, n_q), std::min(key_block_, n_k));
    lane.row_max.resize(lane.tile.rows());
    lane.row_sum.resize(lane.tile.rows());
    lane.rescale.resize(lane.tile.rows());
    lane.keep.resize(lane.tile.cols());
  }
  const auto query_tile = [&](index_t t, index_t lane_index) {
    lane_type& lane = ws.lanes[static_cast<std::size_t>(lane_index)];
    const index_t q0 = t * query_block_;
    const index_t rows = std::min(query_block_, n_q - q0);
    // Causal: the last key any query of this tile may see is its last query's position.
    const index_t key_end = mask.causal ? q0 + rows : n_k;
    auto acc = out.middleRows(q0, rows);
    acc.setZero();
    auto m = lane.row_max.head(rows);
    auto l = lane.row_sum.head(rows);
    m.setConstant(-std::numeric_limits<T>::infinity());
    l.setZero();
    for (index_t k0 = 0; k0 < key_end; k0 += key_block_) {
      const index_t cols = std::min(key_block_, key_end - k0);
      auto s = lane.tile.topLeftCorner(rows, cols);
      s.noalias() = scale * (q.middleRows(q0, rows) * k.middleRows(k0, cols).transpose());
      const bool padded = !mask.key_mask.empty();
      const bool diagonal = mask.causal && k0 + cols > q0 + 1;
      if (padded || diagonal) mask_tile(s, q0, k0, mask, padded, diagonal, lane.keep);
      online_update(s, acc, v.middleRows(k0, cols), m, l, lane.rescale.head(rows), padded, diagonal,
                    q0, k0, lane.keep);
    }
    for (index_t r = 0; r < rows; ++r) {
      if (q0 + r < seeing) {  // every key this query may see is padding
        acc.row(r).setZero();
        if (log_normaliser != nullptr) log_normaliser[q0 + r] = minus_inf;
        continue;
      }
      // Visible keys but no finite maximum: every logit overflowed to -inf, or is NaN.
      PERFORMER_PRECONDITION(m(r) > minus_inf, who, detail::overflow_text);
      acc.row(r) /= l(r);
      if (log_normaliser != nullptr) log_normaliser[q0 + r] = m(r) + std::log(l(r));
    }
  };
  if (parallel) {
    detail::parallel_for(query_tiles, query_tile);
  } else {
    for (index_t t = 0; t < query_tiles; ++t) query_tile(t, 0);
  }
  require_finite_result(who, out);
}

}  // namespace performer
