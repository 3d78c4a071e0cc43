/// @file softmax/tiled_softmax_gradient.hpp
/// @brief The backward pass of tiled exact softmax attention by recomputation (FlashAttention-2,
/// Dao 2023, Algorithm 2): the N x N weights exist neither in the forward nor in the backward.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../core/attention_mask.hpp"
#include "../core/detail/parallel.hpp"
#include "../core/error.hpp"
#include "../core/gradient.hpp"
#include "../core/types.hpp"
#include "../core/validate.hpp"
#include "tiled_softmax_attention.hpp"

namespace performer {

/**
 * @brief Gradients of tiled_softmax_attention (see attention_gradient for the contract).
 *
 * The forward saves each query's log-normaliser lse_i = log sum_j exp(S_ij) over its visible
 * keys (-inf for a query that sees none). The backward sweeps tiles of B_q queries x B_k keys
 * and, per tile, recomputes S = Q K^T / sqrt(d) and P = exp(S - lse) (already normalised: no
 * running maximum is needed a second time), then with D_i = sum_c dO_ic O_ic:
 * dV += P^T dO, dP = dO V^T, dS = P .* (dP - D), dQ += dS K / sqrt(d), dK += dS^T Q / sqrt(d).
 * Masking follows the forward (same helpers); under the causal mask tiles wholly in the future
 * are skipped.
 *
 * Threads: on one thread a single sweep, key tiles outer, accumulates dK and dV of a key tile in
 * one place and dQ of each query tile in key-tile order. On several, dK and dV are computed in
 * parallel over key tiles and dQ in a second pass parallel over query tiles, in the same
 * key-tile order, with the same tile products: each gradient row is written by one thread in a
 * fixed order, so the bits do not depend on the thread count. The second pass recomputes P and
 * dS, about 40% more work at d = d_v (7 instead of 5 products of N_q N_k d per pair).
 *
 * Complexity: time O(N_q N_k (d + d_v)), about half under the causal mask; workspace
 * O(threads B_q B_k + N_q) (two tiles per lane, and D), saved O(N_q).
 *
 * @tparam T scalar type (float, double).
 */
template <real_scalar T>
struct attention_gradient<tiled_softmax_attention<T>> {
  using attention_type = tiled_softmax_attention<T>;

  /// What the backward needs beyond the inputs and out: N_q scalars.
  struct saved_type {
    /// Per query, the log-sum-exp of its visible scaled logits (row max + log(row sum)), or
    /// -inf for a query that sees no key.
    vector<T> log_normaliser;
  };

  /// One thread's scratch: P and dS of one tile, and the tile's key mask.
  struct lane_type {
    row_matrix<T> weights, dweights;
    row_vector<T> keep;
  };

  /// Scratch memory: D (N_q) and one lane per thread.
  struct workspace_type {
    vector<T> delta;
    std::vector<lane_type> lanes;
  };

  /// The forward: the same `out` as a.forward (the same kernel), and the log-normalisers.
  static void forward(const attention_type& a, const const_matrix_ref<T>& q,
                      const const_matrix_ref<T>& k, const const_matrix_ref<T>& v,
                      matrix_ref<T> out, const attention_mask& mask,
                      typename attention_type::workspace_type& ws, saved_type& saved);

  /**
   * @brief Assigns dq, dk and dv, the gradients of L with dL/d(out) = dout.
   * @throws performer::invalid_argument on the arguments check_backward_args rejects, a
   * saved.log_normaliser without one entry per query, or a gradient that overflows T.
   */
  static void backward(const attention_type& a, const const_matrix_ref<T>& q,
                       const const_matrix_ref<T>& k, const const_matrix_ref<T>& v,
                       const const_matrix_ref<T>& out, const const_matrix_ref<T>& dout,
                       matrix_ref<T> dq, matrix_ref<T> dk, matrix_ref<T> dv,
                       const attention_mask& mask, workspace_type& ws, const saved_type& saved);
};

static_assert(differentiable_attention<tiled_softmax_attention<float>>);
static_assert(differentiable_attention<tiled_softmax_attention<double>>);

template <real_scalar T>
void attention_gradient<tiled_softmax_attention<T>>::forward(
    const attention_type& a, const const_matrix_ref<T>& q, const const_matrix_ref<T>& k,
    const const_matrix_ref<T>& v, matrix_ref<T> out, const attention_mask& mask,
    typename attention_type::workspace_type& ws, saved_type& saved) {
  saved.log_normaliser.resize(q.rows());
  a.forward_impl(q, k, v, out, mask, ws, saved.log_normaliser.data());
}

template <real_scalar T>
void attention_gradient<tiled_softmax_attention<T>>::backward(
    const attention_type& a, const const_matrix_ref<T>& q, const const_matrix_ref<T>& k,
    const const_matrix_ref<T>& v, const const_matrix_ref<T>& out, const const_matrix_ref<T>& dout,
    matrix_ref<T> dq, matrix_ref<T> dk, matrix_ref<T> dv, const attention_mask& mask,
    workspace_type& ws, const saved_type& saved) {
  constexpr const char* who = "tiled_softmax_attention::backward";
  check_backward_args<T>(who, q, k, v, out, dout, dq, dk, dv, mask);
  const index_t n_q = q.rows();
  const index_t n_k = k.rows();
  PERFORMER_PRECONDITION(saved.log_normaliser.size() == n_q, who, ": saved.log_normaliser has ",
                         saved.log_normaliser.size(), " entries, expected ", n_q,
                         " (one per query); pass the saved_type the forward filled");
  const T scale = T(1) / std::sqrt(static_cast<T>(q.cols()));
  const index_t bq = a.query_block();
  const index_t bk = a.key_block();
  const index_t query_tiles = (n_q + bq - 1) / bq;
  const index_t key_tiles = (n_k + bk - 1) / bk;
  const index_t seeing = detail::first_seeing_query(mask, n_q, n_k);
  const auto& lse = saved.log_normaliser;
  ws.delta = (dout.array() * out.array()).rowwise().sum();

  // The forward's threshold: below about 2^20 multiply-adds a parallel region costs more than
  // it saves. With one thread available the single sweep does less work than the two passes.
  const bool parallel = static_cast<double>(n_q) * static_cast<double>(n_k) *
                                static_cast<double>(q.cols() + v.cols()) >=
                            double{1 << 20} &&
                        detail::available_threads() > 1;
  const index_t lanes =
      parallel ? std::max(detail::lanes_for(key_tiles), detail::lanes_for(query_tiles)) : 1;
  if (ws.lanes.size() < static_cast<std::size_t>(lanes)) {
    ws.lanes.resize(static_cast<std::size_t>(lanes));
  }
  for (auto& lane : ws.lanes) {
    lane.weights.resize(std::min(bq, n_q), std::min(bk, n_k));
    lane.dweights.resize(lane.weights.rows(), lane.weights.cols());
    lane.keep.resize(lane.weights.cols());
  }

  // The keys of tile k0 that queries [q0, q0 + rows) may see: the forward's tile, cut at the
  // last query's position under the causal mask. Every pass uses it, so that every pass
  // forms the same products and dQ gets the same bits on any number of threads.
  const auto pair_cols = [&](index_t q0, index_t rows, index_t k0) {
    return std::min(bk, (mask.causal ? q0 + rows : n_k) - k0);
  };

  // P and dS of one tile pair, into lane.weights and lane.dweights.
  const auto recompute = [&](index_t q0, index_t rows, index_t k0, index_t cols, lane_type& lane) {
    auto p = lane.weights.topLeftCorner(rows, cols);
    auto ds = lane.dweights.topLeftCorner(rows, cols);
    p.noalias() = scale * (q.middleRows(q0, rows) * k.middleRows(k0, cols).transpose());
    const bool padded = !mask.key_mask.empty();
    const bool diagonal = mask.causal && k0 + cols > q0 + 1;
    // Masked logits go to -inf first: a padded key's logit may exceed lse (which left it
    // out), and exp of it could overflow to inf, which no multiplication by 0 undoes.
    if (padded || diagonal) {
      attention_type::mask_tile(p, q0, k0, mask, padded, diagonal, lane.keep);
    }
    p.array().colwise() -= lse.segment(q0, rows).array();
    p.array() = p.array().exp();
    // Eigen's vectorised exp maps -inf to a tiny positive number, not 0: zero masked entries.
    if (padded) p.array().rowwise() *= lane.keep.head(cols).array();
    if (diagonal) attention_type::fill_future(p, q0, k0, T(0));
    // A query that sees no key (decided from the mask, as in the forward) has lse = -inf,
    // so its row is inf or NaN here until it is zeroed.
    for (index_t r = 0; r < std::min(rows, seeing - q0); ++r) p.row(r).setZero();
    ds.noalias() = dout.middleRows(q0, rows) * v.middleRows(k0, cols).transpose();
    ds.array() = p.array() * (ds.array().colwise() - ws.delta.segment(q0, rows).array());
  };

  // dK and dV of key tile j, over the query tiles that see it; with_dq also adds the tile's
  // share of dQ (the single sweep).
  const auto key_tile = [&](index_t j, index_t lane_index, bool with_dq) {
    lane_type& lane = ws.lanes[static_cast<std::size_t>(lane_index)];
    const index_t k0 = j * bk;
    const index_t width = std::min(bk, n_k - k0);
    dk.middleRows(k0, width).setZero();
    dv.middleRows(k0, width).setZero();
    // Causal: query tiles ending at or before key k0 see none of this tile.
    for (index_t t = mask.causal ? k0 / bq : 0; t < query_tiles; ++t) {
      const index_t q0 = t * bq;
      const index_t rows = std::min(bq, n_q - q0);
      const index_t cols = pair_cols(q0, rows, k0);
      recompute(q0, rows, k0, cols, lane);
      const auto p = lane.weights.topLeftCorner(rows, cols);
      const auto ds = lane.dweights.topLeftCorner(rows, cols);
      dv.middleRows(k0, cols).noalias() += p.transpose() * dout.middleRows(q0, rows);
      dk.middleRows(k0, cols).noalias() += scale * (ds.transpose() * q.middleRows(q0, rows));
      if (with_dq) dq.middleRows(q0, rows).noalias() += scale * (ds * k.middleRows(k0, cols));
    }
  };

  // dQ of query tile t, key tiles in increasing order as in the single sweep.
  const auto query_tile = [&](index_t t, index_t lane_index) {
    lane_type& lane = ws.lanes[static_cast<std::size_t>(lane_index)];
    const index_t q0 = t * bq;
    const index_t rows = std::min(bq, n_q - q0);
    dq.middleRows(q0, rows).setZero();
    const index_t key_end = mask.causal ? q0 + rows : n_k;
    for (index_t k0 = 0; k0 < key_end; k0 += bk) {
      const index_t cols = pair_cols(q0, rows, k0);
      recompute(q0, rows, k0, cols, lane);
      const auto ds = lane.dweights.topLeftCorner(rows, cols);
      dq.middleRows(q0, rows).noalias() += scale * (ds * k.middleRows(k0, cols));
    }
  };

  if (parallel) {
    detail::parallel_for(key_tiles, [&](index_t j, index_t lane) { key_tile(j, lane, false); });
    detail::parallel_for(query_tiles, query_tile);
  } else {
    dq.setZero();
    for (index_t j = 0; j < key_tiles; ++j) key_tile(j, 0, true);
  }
  require_finite_result(who, dq);
  require_finite_result(who, dk);
  require_finite_result(who, dv);
}

}  // namespace performer
