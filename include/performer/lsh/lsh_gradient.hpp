/// @file lsh/lsh_gradient.hpp
/// @brief The backward pass of Reformer LSH attention (`attention_gradient<lsh_attention>`): the
/// exact gradient of the union-of-windows softmax the forward computes, with the bucket
/// assignment held fixed (docs/algorithms.md §6, §9.6).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <vector>

#include "../core/attention_mask.hpp"
#include "../core/error.hpp"
#include "../core/gradient.hpp"
#include "../core/types.hpp"
#include "../core/validate.hpp"
#include "detail/chunk_plan.hpp"
#include "detail/window_kernel.hpp"
#include "hash_family.hpp"
#include "lsh_attention.hpp"

namespace performer {

/**
 * @brief Gradients of lsh_attention: dq, dk and dv of L given dout = dL/d(out).
 *
 * **What is differentiated.** Query i attends, by softmax, to U_i: the keys its windows hold
 * over all rounds, each once, or its fallback window (lsh_attention's class comment). With
 * l_ij = q_i . k_j / sqrt(d) and P_i. = softmax over U_i, out_i = sum_j P_ij v_j, and the
 * backward is the softmax backward restricted to U_i:
 * dv_j += P_ij dout_i, ds_ij = P_ij (dout_i . v_j - dout_i . out_i), dq_i += ds_ij k_j / sqrt(d),
 * dk_j += ds_ij q_i / sqrt(d). The buckets are piecewise constant in q and k, so they (and with
 * them the chunks, windows and fallback) are held fixed: no gradient flows through the hash.
 *
 * **Shared-QK.** Key j is q_j / |q_j|, a function of q: its gradient g_j reaches q_j through
 * d(q/|q|) = (I - u u^T) / |q| (u = q_j / |q_j|), and `k`, which the forward never reads, gets a
 * zero gradient. A zero q_j has the zero key (as in the forward) and no gradient through it. The
 * self logit l' = -|l| - 1e5 has derivative -sign(l); l = |q_i| / sqrt(d) >= 0, and at l = 0
 * (only for q_i = 0, whose key is zero) we take 0, the subgradient of least magnitude. In
 * practice the term vanishes either way: with other keys the self weight is exp(-1e5) = 0, and
 * alone the weight is 1, whose softmax derivative is 0.
 *
 * **Saved.** The forward's bucket of every query and key in every round (h (N_q + N_k) int32;
 * h N_q under shared-QK). The backward rebuilds chunks and windows from them with the forward's
 * own plan (detail::lsh_plan) and recomputes each query's logits, so no per-query statistic is
 * kept and the assignment is the forward's even if the hash family is redrawn in between.
 *
 * **Work.** Query by query in position order, each query's keys in a fixed order (round, then
 * slot; the fallback window last), on one thread: dk and dv gather terms from many queries, and a
 * fixed order is what keeps the bits independent of the thread count (a parallel version needs
 * per-thread partials merged in a fixed order). Each query gathers its keys and values into a
 * tile and takes two matrix-vector products and one vector-matrix product.
 *
 * Complexity (h rounds, b buckets, chunk c): time O(h (N_q + N_k + b) + h N_q c (d + d_v)),
 * the forward's attention cost without its hashing; saved O(h (N_q + N_k)); workspace
 * O(h (N_q + N_k) + h b) for the plan, O(N_k) key stamps and one tile of at most
 * min(N_k, 2 h c) keys by (d + d_v): never N x N.
 *
 * @tparam T scalar type (float, double). @tparam Hash the mechanism's hash family.
 */
template <real_scalar T, hash_family Hash>
struct attention_gradient<lsh_attention<T, Hash>> {
  using attention_type = lsh_attention<T, Hash>;

  /// What forward keeps for backward: the bucket assignment.
  struct saved_type {
    std::vector<std::int32_t> q_bucket;  ///< [query * h + round]
    std::vector<std::int32_t> k_bucket;  ///< [key * h + round]; empty under shared-QK
    index_t buckets = 0;                 ///< b of the forward
    index_t queries = 0, keys = 0;       ///< N_q, N_k of the forward
  };

  /// Scratch of backward; sized on the first call, reused without allocating for the same shapes.
  struct workspace_type {
    detail::lsh_plan plan;
    std::vector<T> norm;           // shared-QK: per token the two factors of |q_j| (robust_norm)
    std::vector<index_t> seen;     // per key: the last query that listed it (de-duplication)
    std::vector<index_t> members;  // U_i of the current query
    row_matrix<T> keys, values;    // U_i's keys and values, gathered
    vector<T> weights, slopes;     // logits, then P_ij; dout_i . v_j, then ds_ij
    row_vector<T> query;
    /// Sum over queries of |U_i| for the last backward: distinct (query, key) pairs, where the
    /// forward's attended_pairs counts a key once per round that proposes it.
    std::int64_t attended_pairs = 0;
  };

  /// lsh_attention::forward, keeping the bucket assignment in `saved`.
  static void forward(const attention_type& a, const const_matrix_ref<T>& q,
                      const const_matrix_ref<T>& k, const const_matrix_ref<T>& v, matrix_ref<T> out,
                      const attention_mask& mask, typename attention_type::workspace_type& ws,
                      saved_type& saved);

  /**
   * @brief Assigns dq, dk, dv (see the struct comment); out and saved are forward's for the same
   * a, q, k, v and mask.
   * @throws performer::invalid_argument on bad input (check_backward_args), on a head width
   * other than a.head_dim(), under shared_qk if k does not have q's shape, if saved is not from
   * a forward with these shapes, or if a gradient overflowed T.
   */
  static void backward(const attention_type& a, const const_matrix_ref<T>& q,
                       const const_matrix_ref<T>& k, const const_matrix_ref<T>& v,
                       const const_matrix_ref<T>& out, const const_matrix_ref<T>& dout,
                       matrix_ref<T> dq, matrix_ref<T> dk, matrix_ref<T> dv,
                       const attention_mask& mask, workspace_type& ws, const saved_type& saved);

 private:
  /// The forward's plan for the saved buckets: the same sorts, so the same chunks and windows.
  static void rebuild_plan(const lsh_options& options, index_t n_q, index_t n_k,
                           const attention_mask& mask, const saved_type& saved,
                           workspace_type& ws) {
    ws.plan.prepare(n_q, n_k, options.hashes, saved.buckets, options.chunk, options.shared_qk);
    std::copy(saved.q_bucket.begin(), saved.q_bucket.end(), ws.plan.q_bucket.begin());
    std::copy(saved.k_bucket.begin(), saved.k_bucket.end(), ws.plan.k_bucket.begin());
    ws.plan.list_visible_keys(n_k, mask);
    for (index_t r = 0; r < options.hashes; ++r) ws.plan.sort_round(r, n_q, n_k, mask);
  }

  /// Lists U_i in ws.members (rounds in order, each window in position order, a key proposed
  /// again skipped) and returns |U_i|; the fallback window when the rounds give no key.
  static index_t collect(index_t i, index_t n_q, index_t n_k, bool causal, workspace_type& ws) {
    const detail::lsh_plan& plan = ws.plan;
    index_t count = 0;
    for (index_t r = 0; r < plan.rounds; ++r) {
      const auto [first, last] = plan.query_window(r, i, n_k);
      for (index_t s = first; s < last; ++s) {
        const index_t j = plan.key_order[static_cast<std::size_t>(s)];
        if (causal && j > i) break;  // a window is in position order
        index_t& seen = ws.seen[static_cast<std::size_t>(j)];
        if (seen == i) continue;
        seen = i;
        ws.members[static_cast<std::size_t>(count++)] = j;
      }
    }
    const auto& visible = plan.visible_keys;
    if (count > 0 || visible.empty() || (causal && visible.front() > i)) return count;
    const auto [first, last] = plan.local_window(detail::lsh_plan::query_position(i, n_q, n_k));
    for (index_t t = first; t < last; ++t) {
      const index_t j = visible[static_cast<std::size_t>(t)];
      if (causal && j > i) break;
      ws.members[static_cast<std::size_t>(count++)] = j;
    }
    return count;
  }

  /// Query i over its `count` keys ws.members: the softmax backward, accumulated into dq, dk
  /// (the keys' gradients) and dv.
  static void attend_backward(index_t i, index_t count, T scale, const const_matrix_ref<T>& q,
                              const const_matrix_ref<T>& k, const const_matrix_ref<T>& v,
                              const const_matrix_ref<T>& out, const const_matrix_ref<T>& dout,
                              matrix_ref<T>& dq, matrix_ref<T>& dk, matrix_ref<T>& dv, bool shared,
                              workspace_type& ws) {
    const index_t* members = ws.members.data();
    auto keys = ws.keys.topRows(count);
    auto values = ws.values.topRows(count);
    index_t self = -1;
    for (index_t u = 0; u < count; ++u) {
      const index_t j = members[u];
      if (shared) {
        detail::shared_key(q.row(j), ws.norm.data() + 2 * j, keys.row(u));
        if (j == i) self = u;
      } else {
        keys.row(u) = k.row(j);
      }
      values.row(u) = v.row(j);
    }
    ws.query = q.row(i) * scale;
    auto weights = ws.weights.head(count);
    weights.noalias() = keys * ws.query.transpose();
    T self_slope = T(0);
    if (self >= 0) {  // the forward's self-mask, l' = -|l| - penalty, and its derivative
      const T l = weights(self);
      weights(self) = -std::abs(l) - attention_type::self_penalty;
      self_slope = l > T(0) ? T(-1) : (l < T(0) ? T(1) : T(0));
    }
    weights.array() = (weights.array() - weights.maxCoeff()).exp();
    weights /= weights.sum();
    auto slopes = ws.slopes.head(count);
    slopes.noalias() = values * dout.row(i).transpose();
    const T mean = dout.row(i).dot(out.row(i));
    slopes.array() = weights.array() * (slopes.array() - mean);
    if (self >= 0) slopes(self) *= self_slope;
    dq.row(i).noalias() += scale * (slopes.transpose() * keys);
    for (index_t u = 0; u < count; ++u) {
      const index_t j = members[u];
      dv.row(j) += weights(u) * dout.row(i);
      dk.row(j) += slopes(u) * ws.query;
    }
  }

  /// dq_j += (I - u u^T) g / |q_j| for key gradient g and u = q_j / |q_j| (the forward's key);
  /// nothing for a zero row, whose key is the constant zero. `u` is scratch of width d.
  template <class Row, class Grad, class Out>
  static void chain_normalisation(const Row& x, const T* scale_and_root, const Grad& g, Out&& dx,
                                  row_vector<T>& u) {
    const T factor = scale_and_root[0];
    const T root = scale_and_root[1];
    if (!(factor > T(0))) return;
    detail::shared_key(x, scale_and_root, u);
    const T along = u.dot(g);
    u = g - along * u;  // elementwise: each entry reads only its own
    const T norm = factor * root;
    if (norm >= std::numeric_limits<T>::min()) {
      dx += u * (T(1) / norm);
    } else {  // |q_j| subnormal: as in the forward, divide by its factors
      dx += (u / factor) / root;
    }
  }
};

static_assert(differentiable_attention<lsh_attention<float>>);
static_assert(differentiable_attention<lsh_attention<double>>);

template <real_scalar T, hash_family Hash>
void attention_gradient<lsh_attention<T, Hash>>::forward(
    const attention_type& a, const const_matrix_ref<T>& q, const const_matrix_ref<T>& k,
    const const_matrix_ref<T>& v, matrix_ref<T> out, const attention_mask& mask,
    typename attention_type::workspace_type& ws, saved_type& saved) {
  a.forward(q, k, v, out, mask, ws);
  saved.q_bucket.assign(ws.plan.q_bucket.begin(), ws.plan.q_bucket.end());
  saved.k_bucket.assign(ws.plan.k_bucket.begin(), ws.plan.k_bucket.end());
  saved.buckets = ws.plan.buckets;
  saved.queries = q.rows();
  saved.keys = k.rows();
}

template <real_scalar T, hash_family Hash>
void attention_gradient<lsh_attention<T, Hash>>::backward(
    const attention_type& a, const const_matrix_ref<T>& q, const const_matrix_ref<T>& k,
    const const_matrix_ref<T>& v, const const_matrix_ref<T>& out, const const_matrix_ref<T>& dout,
    matrix_ref<T> dq, matrix_ref<T> dk, matrix_ref<T> dv, const attention_mask& mask,
    workspace_type& ws, const saved_type& saved) {
  constexpr const char* who = "lsh_attention::backward";
  check_backward_args<T>(who, q, k, v, out, dout, dq, dk, dv, mask);
  const lsh_options& options = a.options();
  const bool shared = options.shared_qk;
  const index_t n_q = q.rows();
  const index_t n_k = k.rows();
  const index_t h = options.hashes;
  PERFORMER_PRECONDITION(q.cols() == a.head_dim(), who, ": q is ", detail::shape(q),
                         " but the hash family is for head width ", a.head_dim());
  PERFORMER_PRECONDITION(!shared || n_k == n_q, who,
                         ": shared_qk requires k to have q's shape (q is ", detail::shape(q),
                         ", k is ", detail::shape(k), ")");
  PERFORMER_PRECONDITION(
      saved.queries == n_q && saved.keys == n_k && saved.buckets >= 2 &&
          saved.q_bucket.size() == static_cast<std::size_t>(n_q * h) &&
          saved.k_bucket.size() == static_cast<std::size_t>(shared ? 0 : n_k * h),
      who, ": saved does not come from a forward with these shapes (it has ", saved.queries,
      " queries and ", saved.keys, " keys; q is ", detail::shape(q), ", k is ", detail::shape(k),
      "); call attention_gradient::forward first");

  rebuild_plan(options, n_q, n_k, mask, saved, ws);
  const index_t d = q.cols();
  if (shared) {
    ws.norm.resize(2 * static_cast<std::size_t>(n_q));
    for (index_t j = 0; j < n_q; ++j) {
      attention_type::robust_norm(q.row(j).data(), d, ws.norm.data() + 2 * j);
    }
  }
  // A query's set holds at most 2 c keys per round (c for the fallback), and distinct keys.
  const index_t most = std::min(n_k, 2 * h * std::min(options.chunk, n_k));
  ws.seen.assign(static_cast<std::size_t>(n_k), index_t{-1});
  ws.members.resize(static_cast<std::size_t>(most));
  ws.keys.resize(most, d);
  ws.values.resize(most, v.cols());
  ws.weights.resize(most);
  ws.slopes.resize(most);
  ws.query.resize(d);

  dq.setZero();
  dk.setZero();  // under shared-QK: the keys' gradients, until chained into dq
  dv.setZero();
  ws.attended_pairs = 0;
  const T scale = T(1) / std::sqrt(static_cast<T>(d));
  for (index_t i = 0; i < n_q; ++i) {
    const index_t count = collect(i, n_q, n_k, mask.causal, ws);
    if (count == 0) continue;  // sees no key: its output is the constant zero row
    ws.attended_pairs += count;
    attend_backward(i, count, scale, q, k, v, out, dout, dq, dk, dv, shared, ws);
  }
  if (shared) {
    for (index_t j = 0; j < n_q; ++j) {
      chain_normalisation(q.row(j), ws.norm.data() + 2 * j, dk.row(j), dq.row(j), ws.query);
    }
    dk.setZero();
  }
  require_finite_result(who, dq);
  require_finite_result(who, dk);
  require_finite_result(who, dv);
}

}  // namespace performer
