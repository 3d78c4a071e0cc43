/// @file attention/tiled_softmax_attention.hpp
/// @brief Exact softmax attention by online softmax over key tiles (Milakov and Gimelshein 2018;
/// FlashAttention, Dao et al. 2022, Algorithm 1): the N x N matrix never exists.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>

#include "../attention_mask.hpp"
#include "../concepts.hpp"
#include "../detail/validate.hpp"
#include "../error.hpp"
#include "../types.hpp"

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
 * Complexity: time O(N_q N_k (d + d_v)); workspace O(B_q B_k + B_q) for tile sizes
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

  /// Scratch memory: one tile of logits and the per-query running statistics.
  struct workspace_type {
    row_matrix<T> tile;
    vector<T> row_max, row_sum, new_max, rescale;
    row_vector<T> keep;
  };

  /// Default tiles: 256 queries x 512 keys (512 KiB of float logits), measured near the GEMM
  /// ceiling on x86-64 at d = 64.
  tiled_softmax_attention() noexcept = default;

  /**
   * @param query_block queries per tile (B_q > 0).
   * @param key_block keys per tile (B_k > 0).
   * @throws performer::invalid_argument if a block size is not positive.
   */
  explicit tiled_softmax_attention(index query_block, index key_block = default_key_block)
      : query_block_(query_block), key_block_(key_block) {
    PERFORMER_PRECONDITION(query_block > 0 && key_block > 0,
                           "tiled_softmax_attention: tile sizes must be positive (got ",
                           query_block, " x ", key_block, ")");
  }

  [[nodiscard]] index query_block() const noexcept { return query_block_; }
  [[nodiscard]] index key_block() const noexcept { return key_block_; }

  /// Same contract and exceptions as softmax_attention::forward.
  void forward(const const_matrix_ref<T>& q, const const_matrix_ref<T>& k,
               const const_matrix_ref<T>& v, matrix_ref<T> out, const attention_mask& mask,
               workspace_type& ws) const {
    constexpr const char* who = "tiled_softmax_attention::forward";
    detail::check_attention_args<T>(who, q, k, v, out, mask);
    const index n_q = q.rows();
    const index n_k = k.rows();
    const T scale = T(1) / std::sqrt(static_cast<T>(q.cols()));
    ws.tile.resize(std::min(query_block_, n_q), std::min(key_block_, n_k));
    ws.row_max.resize(ws.tile.rows());
    ws.row_sum.resize(ws.tile.rows());
    ws.new_max.resize(ws.tile.rows());
    ws.rescale.resize(ws.tile.rows());
    ws.keep.resize(ws.tile.cols());
    const index seeing = detail::first_seeing_query(mask, n_q, n_k);

    for (index q0 = 0; q0 < n_q; q0 += query_block_) {
      const index rows = std::min(query_block_, n_q - q0);
      // Causal: the last key any query of this tile may see is its last query's position.
      const index key_end = mask.causal ? q0 + rows : n_k;
      auto acc = out.middleRows(q0, rows);
      acc.setZero();
      auto m = ws.row_max.head(rows);
      auto l = ws.row_sum.head(rows);
      m.setConstant(-std::numeric_limits<T>::infinity());
      l.setZero();
      for (index k0 = 0; k0 < key_end; k0 += key_block_) {
        const index cols = std::min(key_block_, key_end - k0);
        auto s = ws.tile.topLeftCorner(rows, cols);
        s.noalias() = scale * (q.middleRows(q0, rows) * k.middleRows(k0, cols).transpose());
        const bool padded = !mask.key_mask.empty();
        const bool diagonal = mask.causal && k0 + cols > q0 + 1;
        if (padded || diagonal) mask_tile(s, q0, k0, mask, padded, diagonal, ws.keep);
        online_update(s, acc, v.middleRows(k0, cols), m, l, ws.new_max.head(rows),
                      ws.rescale.head(rows), padded, diagonal, q0, k0, ws.keep);
      }
      for (index r = 0; r < rows; ++r) {
        if (q0 + r < seeing) {  // every key this query may see is padding
          acc.row(r).setZero();
          continue;
        }
        // Visible keys but no finite maximum: every logit overflowed to -inf, or is NaN.
        PERFORMER_PRECONDITION(m(r) > minus_inf, who, detail::overflow_text);
        acc.row(r) /= l(r);
      }
    }
    detail::require_finite_result(who, out);
  }

 private:
  static constexpr T minus_inf = -std::numeric_limits<T>::infinity();

  /// Sets the entries of a diagonal tile that lie in a query's future (key > query) to `value`.
  template <class Tile>
  static void fill_future(Tile& s, index q0, index k0, T value) {
    for (index r = 0; r < s.rows(); ++r) {
      // Key k0 + c is hidden from query q0 + r when c >= first_hidden.
      const index first_hidden = std::max<index>(0, q0 + r + 1 - k0);
      if (first_hidden < s.cols()) s.row(r).tail(s.cols() - first_hidden).setConstant(value);
    }
  }

  /// Sets masked logits to -inf so they cannot raise the running maximum.
  template <class Tile>
  static void mask_tile(Tile& s, index q0, index k0, const attention_mask& mask, bool padded,
                        bool diagonal, row_vector<T>& keep) {
    if (padded) {
      for (index c = 0; c < s.cols(); ++c) {
        keep(c) = mask.keeps(static_cast<std::size_t>(k0 + c)) ? T(1) : T(0);
        if (keep(c) == T(0)) s.col(c).setConstant(minus_inf);
      }
    }
    if (diagonal) fill_future(s, q0, k0, minus_inf);
  }

  template <class Tile, class Acc, class Values, class Vec>
  static void online_update(Tile& s, Acc& acc, const Values& v, Vec& m, Vec& l, Vec new_max,
                            Vec rescale, bool padded, bool diagonal, index q0, index k0,
                            const row_vector<T>& keep) {
    new_max = m.cwiseMax(s.rowwise().maxCoeff());
    for (index r = 0; r < s.rows(); ++r) {
      // A row with nothing visible yet keeps max -inf; shifting by 0 leaves its logits at -inf.
      const T shift = new_max(r) == minus_inf ? T(0) : new_max(r);
      rescale(r) = m(r) == minus_inf ? T(0) : std::exp(m(r) - shift);
      s.row(r).array() = (s.row(r).array() - shift).exp();
    }
    // Eigen's vectorised exp maps -inf to a tiny positive number, not 0: zero masked entries.
    if (padded) s.array().rowwise() *= keep.head(s.cols()).array();
    if (diagonal) fill_future(s, q0, k0, T(0));
    l = rescale.cwiseProduct(l) + s.rowwise().sum();
    acc.array().colwise() *= rescale.array();
    acc.noalias() += s * v;
    m = new_max;
  }

  static constexpr index default_query_block = 256;
  static constexpr index default_key_block = 512;
  index query_block_ = default_query_block;
  index key_block_ = default_key_block;
};

static_assert(attention_mechanism<tiled_softmax_attention<float>>);
static_assert(attention_mechanism<tiled_softmax_attention<double>>);

}  // namespace performer
