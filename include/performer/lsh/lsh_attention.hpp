/// @file lsh/lsh_attention.hpp
/// @brief Reformer LSH attention (Kitaev et al., "Reformer: The Efficient Transformer", ICLR
/// 2020, section 2 and appendix A): a hash family's buckets, chunks with look-one-back,
/// shared-QK or separate keys, rounds combined without double counting (docs/algorithms.md §6).
#pragma once

#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include "../core/attention_mask.hpp"
#include "../core/concepts.hpp"
#include "../core/detail/parallel.hpp"
#include "../core/error.hpp"
#include "../core/gradient.hpp"
#include "../core/types.hpp"
#include "../core/validate.hpp"
#include "angular_hash.hpp"
#include "detail/chunk_plan.hpp"
#include "detail/window_kernel.hpp"
#include "hash_family.hpp"
#include "lsh_options.hpp"

namespace performer {

/**
 * @brief Reformer LSH attention: each query attends only to keys that a locality-sensitive
 * hash puts near it, in time and memory linear in N.
 *
 * **Buckets.** Each of the hash family's h rounds puts every query and key in one of b buckets
 * (b = lsh_bucket_count: about 2 N_k / c unless lsh_options::buckets fixes it). The default
 * family, angular_hash, is the paper's random-rotation hash.
 *
 * **Keys.** With lsh_options::shared_qk (the default, as in the paper) token j's key is
 * q_j / |q_j| (zero stays zero) and `k` only has to have q's shape; its values are never read
 * (they are still validated like any input). The logit is q_i . k_j / sqrt(d). A token attends
 * to itself only when it has no other key: its own logit l becomes -|l| - 1e5, at least 1e5
 * below every other logit at any norm. Without shared_qk, q and k are hashed alike and
 * N_q != N_k is allowed when not causal.
 *
 * **Chunks** (an exact, leak-free reading of the paper's sort-and-chunk). In each round the
 * valid keys of each bucket, in position order, are cut into chunks of c keys. Query i sits
 * at position p_i = floor(i N_k / N_q) (= i for self-attention) and, in its bucket, at the
 * chunk where its own key would fall; its window in that round is that chunk and the one
 * before. Causal masking then drops keys j > i; padded keys never enter a bucket. No chunk
 * mixes buckets, and a chunk boundary never depends on later tokens.
 *
 * **Rounds.** The output is softmax attention over the union of the query's windows: each key
 * counts once however many rounds propose it (its weight is divided by the number of rounds
 * whose window holds it), and the rounds are merged by online softmax in round order.
 *
 * **Fallback.** With separate keys a query's buckets can hold no key it may see (under causal
 * masking, none at or before its position), although the mask leaves it keys. Such a query
 * attends, by exact softmax, to the c visible keys nearest before its position (its own
 * included), or, when there are none (possible only without causal masking), to the first c
 * visible keys after it: local attention, which never looks ahead under causal masking
 * (docs/algorithms.md §6.10). Only a query the mask leaves without any key gets a zero row.
 *
 * **Work.** Queries of one (round, bucket, chunk) share their window: two matrix products per
 * tile of keys. Groups run in parallel; each output row is updated by one thread at a time in
 * a fixed order, so the result does not depend on the thread count. The workspace reports the
 * (query, key) logits the last call computed (`attended_pairs`: 2 (d + d_v) flops each).
 *
 * Complexity (h rounds, b buckets, chunk c, hashing cost H per row and round: O(d sqrt b) for
 * angular_hash): time O(h (N_q + N_k) H + h N_q c (d + d_v + h)); workspace
 * O(h (N_q + N_k) + h b) plus per thread O(B_q B_k + (B_q + B_k)(d + d_v)) with internal
 * tiles B_q = 64, B_k = 256: never N x N.
 *
 * @tparam T scalar type (float, double). @tparam Hash a hash_family over T.
 */
template <real_scalar T, hash_family Hash = angular_hash<T>>
  requires std::same_as<typename Hash::scalar_type, T>
class lsh_attention {
 public:
  using scalar_type = T;
  using hash_type = Hash;
  static constexpr bool supports_causal = true;
  // Not key_permutation_invariant: chunks follow key positions.

  /// Scratch memory. Sized by N, h and b on the first call; a second call with the same
  /// shapes reuses it without allocating.
  struct workspace_type {
    typename Hash::tables_type tables;
    detail::lsh_plan plan;
    std::vector<T> norm;  // shared-QK: per token, max_c |q_jc| and |q_j / max_c |q_jc||
    std::vector<T> row_max, row_sum;
    std::vector<index_t> fallback;
    std::vector<detail::lsh_lane<T>> lanes;
    /// The (query, key) logits the last forward computed, fallback windows included.
    std::int64_t attended_pairs = 0;
    /// Queries of the last forward whose windows held no visible key (see Fallback).
    index_t fallback_queries = 0;
  };

  /**
   * @brief With the default family built from options.hashes and options.seed.
   * @throws performer::invalid_argument naming the first parameter out of range.
   */
  explicit lsh_attention(index_t head_dim, lsh_options options = {})
    requires std::constructible_from<Hash, index_t, index_t, std::uint64_t>
      : lsh_attention(make_family(head_dim, options), options) {}

  /**
   * @brief With a given hash family (options.hashes and options.seed are then not used: the
   * family has its own rounds and draws).
   * @throws performer::invalid_argument naming the first parameter out of range.
   */
  lsh_attention(Hash family, lsh_options options)
      : family_(std::move(family)), options_(validated(options)) {
    options_.hashes = family_.rounds();
  }

  [[nodiscard]] const lsh_options& options() const noexcept { return options_; }
  [[nodiscard]] index_t head_dim() const noexcept { return family_.dim(); }
  [[nodiscard]] const Hash& hash_family() const noexcept { return family_; }
  /// Mutable access: redraw or set the hash functions (not while a forward pass runs).
  [[nodiscard]] Hash& hash_family() noexcept { return family_; }
  /// b for a sequence of n_keys keys (lsh_bucket_count).
  [[nodiscard]] index_t bucket_count(index_t n_keys) const {
    return lsh_bucket_count(options_, n_keys);
  }

  /**
   * @brief The buckets of every row of x in round r, as forward() assigns them to a sequence
   * of n_keys keys (0: x.rows()).
   * @throws performer::invalid_argument if x is not N x d, holds a non-finite value, r is out
   * of range or n_keys is negative, or as the family's prepare.
   */
  [[nodiscard]] std::vector<index_t> buckets(const const_matrix_ref<T>& x, index_t r,
                                             index_t n_keys = 0) const {
    constexpr const char* who = "lsh_attention::buckets";
    PERFORMER_PRECONDITION(r >= 0 && r < options_.hashes, who, ": round ", r,
                           " is out of range (hashes = ", options_.hashes, ")");
    PERFORMER_PRECONDITION(x.cols() == head_dim(), who, ": x is ", detail::shape(x),
                           ", expected ", head_dim(), " columns");
    PERFORMER_PRECONDITION(n_keys >= 0, who, ": n_keys is negative (", n_keys, ")");
    require_finite(who, "x", x);
    typename Hash::tables_type tables;
    family_.prepare(bucket_count(n_keys > 0 ? n_keys : x.rows()), tables);
    std::vector<T> scratch(static_cast<std::size_t>(family_.scratch_size(tables)));
    std::vector<std::int32_t> all(static_cast<std::size_t>(options_.hashes));
    std::vector<index_t> result(static_cast<std::size_t>(x.rows()));
    for (index_t i = 0; i < x.rows(); ++i) {
      const row_vector<T> row = x.row(i);
      family_.hash(tables, row.data(), all.data(), scratch.data());
      result[static_cast<std::size_t>(i)] = all[static_cast<std::size_t>(r)];
    }
    return result;
  }

  /**
   * @brief Computes attention for one head (contract of attention_mechanism).
   * @throws performer::invalid_argument on bad input (see check_attention_args), on a head
   * width other than head_dim(), under shared_qk if k does not have q's shape, on more than
   * 2^31 - 1 queries or keys, as the family's prepare, or if the result overflowed T.
   */
  void forward(const const_matrix_ref<T>& q, const const_matrix_ref<T>& k,
               const const_matrix_ref<T>& v, matrix_ref<T> out, const attention_mask& mask,
               workspace_type& ws) const;

 private:
  static constexpr index_t hash_rows = 256;  ///< rows per parallel hashing item
  /// Fewest multiply-adds worth a parallel region: below it, waking threads costs more than
  /// it saves (and far more on a loaded machine, where a region waits for a descheduled thread).
  static constexpr index_t parallel_work = index_t{1} << 20;
  /// The self-mask: finite so that a token alone in its window keeps itself (as in the paper
  /// and trax), and applied as "self logit := -|self logit| - 1e5". A token's own logit
  /// |q_i| / sqrt(d) is the largest it has and every other is at least its negative (keys are
  /// unit vectors), so the self logit ends 1e5 below all others at any norm; trax's plain
  /// -1e5 stops masking once |q_i| / sqrt(d) nears 1e5.
  static constexpr T self_penalty = T(1e5);
  static constexpr index_t max_tokens = std::numeric_limits<std::int32_t>::max();

  // The backward pass (lsh_gradient.hpp) differentiates this forward: it needs the self-penalty
  // and the key normalisation exactly as used here.
  template <class>
  friend struct attention_gradient;

  static Hash make_family(index_t head_dim, const lsh_options& options) {
    PERFORMER_PRECONDITION(head_dim > 0, "lsh_attention: head_dim must be positive (got ",
                           head_dim, ")");
    PERFORMER_PRECONDITION(options.hashes >= 1, "lsh_attention: hashes must be at least 1 (got ",
                           options.hashes, ")");
    return Hash(head_dim, options.hashes, options.seed);
  }

  static lsh_options validated(const lsh_options& options) {
    constexpr const char* who = "lsh_attention";
    PERFORMER_PRECONDITION(options.buckets == 0 || (options.buckets >= 2 && options.buckets % 2 == 0),
                           who, ": buckets must be 0 (automatic) or even and at least 2 (got ",
                           options.buckets, ")");
    PERFORMER_PRECONDITION(options.buckets <= lsh_max_buckets, who, ": buckets must be at most ",
                           lsh_max_buckets, " (got ", options.buckets, ")");
    PERFORMER_PRECONDITION(options.chunk >= 1, who, ": chunk must be at least 1 (got ",
                           options.chunk, ")");
    return options;
  }

  /// body(i, lane) for i in [0, count): on threads if `parallel`, else in order on lane 0.
  /// Every item computes the same bits either way.
  template <class Body>
  static void for_each_item(index_t count, bool parallel, Body&& body) {
    if (parallel) {
      detail::parallel_for(count, body);
    } else {
      for (index_t i = 0; i < count; ++i) body(i, index_t{0});
    }
  }

  void prepare(index_t n_q, index_t n_k, index_t d_v, workspace_type& ws) const {
    ws.plan.prepare(n_q, n_k, options_.hashes, ws.tables.buckets, options_.chunk,
                    options_.shared_qk);
    ws.norm.resize(options_.shared_qk ? 2 * static_cast<std::size_t>(n_q) : 0);
    ws.row_max.resize(static_cast<std::size_t>(n_q));
    ws.row_sum.resize(static_cast<std::size_t>(n_q));
    ws.fallback.reserve(static_cast<std::size_t>(n_q));
    const index_t lanes = std::max(
        detail::lanes_for((std::max(n_q, n_k) + hash_rows - 1) / hash_rows), detail::lanes_for(n_q));
    if (ws.lanes.size() < static_cast<std::size_t>(lanes)) ws.lanes.resize(static_cast<std::size_t>(lanes));
    for (auto& lane : ws.lanes) {
      lane.prepare(head_dim(), d_v, options_.hashes, family_.scratch_size(ws.tables));
    }
  }

  /// |x| as two factors, s = max |x_c| and r = |x / s| in [1, sqrt(d)], so that x / |x| can be
  /// formed accurately at any magnitude: a norm in the subnormal range keeps few digits (found by
  /// the fuzzer: rows of 4.9e-324 got keys of norm 0.87). s = r = 0 for a zero row. Fixed order.
  static void robust_norm(const T* x, index_t d, T* scale_and_root) {
    T largest = 0;
    for (index_t c = 0; c < d; ++c) largest = std::max(largest, std::abs(x[c]));
    T sum = 0;
    if (largest > T(0)) {
      for (index_t c = 0; c < d; ++c) sum += (x[c] / largest) * (x[c] / largest);
    }
    scale_and_root[0] = largest;
    scale_and_root[1] = std::sqrt(sum);
  }

  void hash_all(const const_matrix_ref<T>& q, const const_matrix_ref<T>& k,
                workspace_type& ws) const {
    const index_t h = options_.hashes;
    const auto hash_matrix = [&](const const_matrix_ref<T>& x, std::vector<std::int32_t>& buckets,
                                 T* norms) {
      const index_t blocks = (x.rows() + hash_rows - 1) / hash_rows;
      const bool parallel = x.rows() * head_dim() * h * 16 >= parallel_work;
      for_each_item(blocks, parallel, [&](index_t block, index_t lane) {
        T* scratch = ws.lanes[static_cast<std::size_t>(lane)].hash_scratch.data();
        const index_t end = std::min(x.rows(), (block + 1) * hash_rows);
        for (index_t i = block * hash_rows; i < end; ++i) {
          family_.hash(ws.tables, x.row(i).data(), buckets.data() + i * h, scratch);
          if (norms != nullptr) robust_norm(x.row(i).data(), x.cols(), norms + 2 * i);
        }
      });
    };
    if (options_.shared_qk) {
      hash_matrix(q, ws.plan.q_bucket, ws.norm.data());
    } else {
      hash_matrix(q, ws.plan.q_bucket, nullptr);
      hash_matrix(k, ws.plan.k_bucket, nullptr);
    }
  }

  /// Queries whose windows held no visible key although the mask leaves them keys get local
  /// attention over the nearest visible keys (see the class comment).
  void attend_fallback(index_t n_q, index_t n_k, bool parallel, const detail::lsh_pass<T>& pass,
                       const attention_mask& mask, workspace_type& ws) const {
    const auto& visible = ws.plan.visible_keys;
    ws.fallback.clear();
    for (index_t i = 0; i < n_q; ++i) {
      if (ws.row_sum[static_cast<std::size_t>(i)] > T(0) || visible.empty()) continue;
      if (mask.causal && visible.front() > i) continue;  // sees no key: the zero row
      ws.fallback.push_back(i);
    }
    ws.fallback_queries = static_cast<index_t>(ws.fallback.size());
    for_each_item(ws.fallback_queries, parallel, [&](index_t f, index_t lane) {
      const index_t i = ws.fallback[static_cast<std::size_t>(f)];
      const auto [first, last] =
          ws.plan.local_window(detail::lsh_plan::query_position(i, n_q, n_k));
      detail::attend_window(index_t{-1}, &ws.fallback[static_cast<std::size_t>(f)], 1,
                            visible.data() + first, last - first, pass,
                            ws.lanes[static_cast<std::size_t>(lane)]);
    });
  }

  Hash family_;
  lsh_options options_;
};

static_assert(attention_mechanism<lsh_attention<float>>);
static_assert(attention_mechanism<lsh_attention<double>>);

template <real_scalar T, hash_family Hash>
  requires std::same_as<typename Hash::scalar_type, T>
void lsh_attention<T, Hash>::forward(const const_matrix_ref<T>& q, const const_matrix_ref<T>& k,
                                     const const_matrix_ref<T>& v, matrix_ref<T> out,
                                     const attention_mask& mask, workspace_type& ws) const {
  constexpr const char* who = "lsh_attention::forward";
  check_attention_args<T>(who, q, k, v, out, mask);
  PERFORMER_PRECONDITION(q.cols() == head_dim(), who, ": q is ", detail::shape(q),
                         " but the hash family is for head width ", head_dim());
  PERFORMER_PRECONDITION(!options_.shared_qk || k.rows() == q.rows(), who,
                         ": shared_qk requires k to have q's shape (q is ", detail::shape(q),
                         ", k is ", detail::shape(k),
                         "); its values are not used, so pass q itself");
  PERFORMER_PRECONDITION(std::max(q.rows(), k.rows()) <= max_tokens, who, ": at most ", max_tokens,
                         " tokens per sequence (q is ", detail::shape(q), ", k is ",
                         detail::shape(k), ")");
  const index_t n_q = q.rows();
  const index_t n_k = k.rows();
  family_.prepare(bucket_count(n_k), ws.tables);
  prepare(n_q, n_k, v.cols(), ws);
  hash_all(q, k, ws);
  // Sorting is O(h N) and sequential: a small part of the total at any N.
  ws.plan.list_visible_keys(n_k, mask);
  for (index_t r = 0; r < options_.hashes; ++r) ws.plan.sort_round(r, n_q, n_k, mask);

  out.setZero();
  std::fill(ws.row_max.begin(), ws.row_max.end(), -std::numeric_limits<T>::infinity());
  std::fill(ws.row_sum.begin(), ws.row_sum.end(), T(0));
  for (auto& lane : ws.lanes) lane.pairs = 0;
  const detail::lsh_pass<T> pass{q,
                                 k,
                                 v,
                                 out,
                                 ws.plan,
                                 options_.shared_qk ? ws.norm.data() : nullptr,
                                 ws.row_max.data(),
                                 ws.row_sum.data(),
                                 mask.causal,
                                 self_penalty};
  // Work estimate in double: a huge chunk must not overflow it.
  const bool parallel = static_cast<double>(n_q) *
                            static_cast<double>(std::min(options_.chunk, n_k)) * 2.0 *
                            static_cast<double>(head_dim() + v.cols()) >=
                        static_cast<double>(parallel_work);
  for (index_t r = 0; r < options_.hashes; ++r) {
    ws.plan.plan_round(r, n_q, n_k, detail::lsh_query_tile);
    for_each_item(
        static_cast<index_t>(ws.plan.items.size()), parallel, [&](index_t item, index_t lane) {
          const auto& it = ws.plan.items[static_cast<std::size_t>(item)];
          detail::attend_window(r, ws.plan.query_order.data() + it.q_begin, it.q_count,
                                ws.plan.key_order.data() + it.w_begin, it.w_end - it.w_begin, pass,
                                ws.lanes[static_cast<std::size_t>(lane)]);
        });
  }
  attend_fallback(n_q, n_k, parallel, pass, mask, ws);
  ws.attended_pairs = 0;
  for (const auto& lane : ws.lanes) ws.attended_pairs += lane.pairs;
  for (index_t i = 0; i < n_q; ++i) {
    // row_sum is 0 only for a query that saw no key: its row was never touched (zeros).
    const T l = ws.row_sum[static_cast<std::size_t>(i)];
    if (l > T(0)) out.row(i) /= l;
  }
  require_finite_result(who, out);
}

}  // namespace performer
