/// @file lsh/detail/chunk_plan.hpp
/// @brief LSH attention's bookkeeping between hashing and the kernel: per round, the valid keys
/// sorted by (bucket, position), every query's and key's chunk, and the work items that group
/// the queries sharing a window (docs/algorithms.md §6.3).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "../../core/attention_mask.hpp"
#include "../../core/types.hpp"

namespace performer::detail {

/// The plan of one LSH forward pass; sized on the first call, reused without allocating.
struct lsh_plan {
  /// Queries [q_begin, q_begin + q_count) of the round's query order, all in one (bucket,
  /// chunk), and their shared window: slots [w_begin, w_end) of key_order.
  struct work_item {
    index_t q_begin, q_count, w_begin, w_end;
  };

  index_t rounds = 0, buckets = 0, chunk = 0;
  bool shared = false;
  // [row * rounds + round]. Under shared-QK the k_ arrays stay empty: a valid token's key has
  // its query's bucket, and its rank in the bucket is the count that gives the query's chunk.
  std::vector<std::int32_t> q_bucket, q_chunk, k_bucket, k_chunk;
  std::vector<index_t> key_order;     ///< [round * N_k + slot]: valid keys by (bucket, position)
  std::vector<index_t> bucket_start;  ///< [round * (b + 1) + bucket]
  std::vector<index_t> counter, query_start, query_order;
  std::vector<index_t> visible_keys;  ///< positions of the valid keys, ascending
  std::vector<work_item> items;

  void prepare(index_t n_q, index_t n_k, index_t h, index_t b, index_t c, bool shared_qk) {
    rounds = h;
    buckets = b;
    chunk = c;
    shared = shared_qk;
    const auto sh = static_cast<std::size_t>(h);
    const auto nq = static_cast<std::size_t>(n_q);
    const auto nk = static_cast<std::size_t>(n_k);
    const auto sb = static_cast<std::size_t>(b);
    q_bucket.resize(sh * nq);
    q_chunk.resize(sh * nq);
    k_bucket.resize(shared ? 0 : sh * nk);
    k_chunk.resize(shared ? 0 : sh * nk);
    key_order.resize(sh * nk);
    bucket_start.resize(sh * (sb + 1));
    counter.resize(sb);
    query_start.resize(sb + 1);
    query_order.resize(nq);
    visible_keys.reserve(nk);
    // Each query is in one group per round, and a group yields at most one item per tile of
    // queries: never more items than queries.
    items.reserve(nq);
  }

  [[nodiscard]] const std::int32_t* key_buckets() const {
    return (shared ? q_bucket : k_bucket).data();
  }
  [[nodiscard]] const std::int32_t* key_chunks() const { return (shared ? q_chunk : k_chunk).data(); }

  /// The positions of the keys the mask keeps. O(N_k).
  void list_visible_keys(index_t n_k, const attention_mask& mask) {
    visible_keys.clear();
    for (index_t j = 0; j < n_k; ++j) {
      if (mask.keeps(static_cast<std::size_t>(j))) visible_keys.push_back(j);
    }
  }

  /**
   * Round r: counting sort of the valid keys by (bucket, position), each key's chunk and each
   * query's chunk. Query i sits at position floor(i N_k / N_q) (i itself in self-attention)
   * and its chunk counts the valid keys of its bucket strictly before that position: where its
   * own key would fall under shared-QK. O(N_q + N_k + b).
   */
  void sort_round(index_t r, index_t n_q, index_t n_k, const attention_mask& mask) {
    const index_t h = rounds;
    const std::int32_t* kb = key_buckets();
    index_t* count = counter.data();
    std::fill(count, count + buckets, index_t{0});
    index_t j = 0;
    for (index_t i = 0; i < n_q; ++i) {
      const index_t position = query_position(i, n_q, n_k);
      for (; j < position; ++j) {
        if (mask.keeps(static_cast<std::size_t>(j))) ++count[kb[j * h + r]];
      }
      q_chunk[static_cast<std::size_t>(i * h + r)] =
          static_cast<std::int32_t>(count[q_bucket[static_cast<std::size_t>(i * h + r)]] / chunk);
    }
    for (; j < n_k; ++j) {
      if (mask.keeps(static_cast<std::size_t>(j))) ++count[kb[j * h + r]];
    }
    index_t* start = bucket_start.data() + r * (buckets + 1);
    start[0] = 0;
    for (index_t t = 0; t < buckets; ++t) {
      start[t + 1] = start[t] + count[t];
      count[t] = 0;
    }
    index_t* order = key_order.data() + r * n_k;
    for (j = 0; j < n_k; ++j) {
      if (!mask.keeps(static_cast<std::size_t>(j))) continue;  // padding never gets a slot
      const index_t bucket = kb[j * h + r];
      const index_t rank = count[bucket]++;
      order[start[bucket] + rank] = j;
      if (!shared) k_chunk[static_cast<std::size_t>(j * h + r)] = static_cast<std::int32_t>(rank / chunk);
    }
  }

  /// Where query i of n_q sits among n_k keys: floor(i N_k / N_q), i itself when N_q = N_k.
  [[nodiscard]] static index_t query_position(index_t i, index_t n_q, index_t n_k) {
    return n_q == n_k ? i : i * n_k / n_q;
  }

  /// Round r's window of the queries in chunk c of `bucket` (after sort_round): chunks c - 1 and
  /// c of the bucket, as slots [first, second) of key_order, empty when the bucket holds no key.
  [[nodiscard]] std::pair<index_t, index_t> window(index_t r, index_t n_k, index_t bucket,
                                                   index_t c) const {
    const index_t* kstart = bucket_start.data() + r * (buckets + 1);
    const index_t keys = kstart[bucket + 1] - kstart[bucket];
    // c * chunk <= keys (a query's chunk counts keys of its bucket), so neither bound can
    // overflow even for a huge chunk, and lo <= hi.
    const index_t lo = c * chunk - (c > 0 ? chunk : 0);
    const index_t hi = c * chunk + std::min(chunk, keys - c * chunk);
    const index_t base = r * n_k + kstart[bucket];
    return {base + lo, base + hi};
  }

  /// Round r's window of query i (window() of its bucket and chunk).
  [[nodiscard]] std::pair<index_t, index_t> query_window(index_t r, index_t i, index_t n_k) const {
    const auto at = static_cast<std::size_t>(i * rounds + r);
    return window(r, n_k, q_bucket[at], q_chunk[at]);
  }

  /// The fallback's window of a query at `position` (docs/algorithms.md §6.10): indices
  /// [first, second) of visible_keys, the c visible keys nearest before it (its own position
  /// included), or the first c when none is at or before it.
  [[nodiscard]] std::pair<index_t, index_t> local_window(index_t position) const {
    const auto& keys = visible_keys;
    const auto at =
        static_cast<index_t>(std::upper_bound(keys.begin(), keys.end(), position) - keys.begin());
    const auto count = static_cast<index_t>(keys.size());
    if (at > 0) return {std::max<index_t>(0, at - chunk), at};
    return {0, std::min(chunk, count)};
  }

  /// Round r: queries by (bucket, position) (stable counting sort), cut into work items of at
  /// most `tile` queries sharing one (bucket, chunk) and so one window. O(N_q + b).
  void plan_round(index_t r, index_t n_q, index_t n_k, index_t tile) {
    const index_t h = rounds;
    const auto bucket_of_query = [&](index_t i) {
      return index_t{q_bucket[static_cast<std::size_t>(i * h + r)]};
    };
    const auto chunk_of_query = [&](index_t slot) {
      return index_t{
          q_chunk[static_cast<std::size_t>(query_order[static_cast<std::size_t>(slot)] * h + r)]};
    };
    index_t* count = counter.data();
    std::fill(count, count + buckets, index_t{0});
    for (index_t i = 0; i < n_q; ++i) ++count[bucket_of_query(i)];
    index_t* qstart = query_start.data();
    qstart[0] = 0;
    for (index_t t = 0; t < buckets; ++t) {
      qstart[t + 1] = qstart[t] + count[t];
      count[t] = 0;
    }
    for (index_t i = 0; i < n_q; ++i) {
      const index_t bucket = bucket_of_query(i);
      query_order[static_cast<std::size_t>(qstart[bucket] + count[bucket]++)] = i;
    }
    items.clear();
    for (index_t bucket = 0; bucket < buckets; ++bucket) {
      index_t g = qstart[bucket];
      while (g < qstart[bucket + 1]) {
        // Queries of a bucket are in position order, so their chunks never decrease.
        const index_t c = chunk_of_query(g);
        index_t end = g + 1;
        while (end < qstart[bucket + 1] && chunk_of_query(end) == c) ++end;
        const auto [lo, hi] = window(r, n_k, bucket, c);
        if (lo < hi) {
          for (index_t t = g; t < end; t += tile) {
            items.push_back({t, std::min(tile, end - t), lo, hi});
          }
        }
        g = end;
      }
    }
  }
};

}  // namespace performer::detail
