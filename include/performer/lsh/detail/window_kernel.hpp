/// @file lsh/detail/window_kernel.hpp
/// @brief LSH attention's kernel: a group of queries sharing one window of keys, as two matrix
/// products per tile of keys and an online-softmax update of each query's running state
/// (docs/algorithms.md §6.5, §6.6).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "../../core/detail/online_softmax.hpp"
#include "../../core/types.hpp"
#include "chunk_plan.hpp"

namespace performer::detail {

/// Asks for the cache lines of `count` scalars at p ahead of use. LSH gathers rows scattered
/// over the whole sequence; without this, N beyond the caches pays a memory latency per row.
template <class T>
inline void prefetch_row(const T* p, index_t count) noexcept {
#if defined(__GNUC__) || defined(__clang__)
  constexpr index_t line = 64 / static_cast<index_t>(sizeof(T));
  for (index_t c = 0; c < count; c += line) __builtin_prefetch(p + c);
#else
  static_cast<void>(p);
  static_cast<void>(count);
#endif
}

inline constexpr index_t lsh_query_tile = 64;     ///< B_q: query rows per product
inline constexpr index_t lsh_key_tile = 256;      ///< B_k: window keys per product
inline constexpr index_t lsh_prefetch_ahead = 8;  ///< gathered rows requested in advance

/// One thread's tiles. Fixed shapes, so the layout (and every rounding) never depends on
/// earlier calls.
template <class T>
struct lsh_lane {
  std::vector<T> hash_scratch;
  row_matrix<T> queries, keys, values;  // gathered tile rows
  row_matrix<T> logits, partial;        // B_q x B_k weights, B_q x d_v products
  // Buckets and chunks of the tile's queries ([t * h + round]) and keys ([round * B_k + u]):
  // 32 bits, so that the duplicate count vectorises.
  std::vector<std::int32_t> query_buckets, query_chunks, key_buckets, key_chunks, counts;
  std::vector<index_t> visible;
  std::vector<T> rescale;
  std::int64_t pairs = 0;  ///< logits computed by this lane in the current call

  void prepare(index_t d, index_t d_v, index_t h, index_t scratch) {
    const auto sh = static_cast<std::size_t>(h);
    hash_scratch.resize(static_cast<std::size_t>(scratch));
    queries.resize(lsh_query_tile, d);
    keys.resize(lsh_key_tile, d);
    values.resize(lsh_key_tile, d_v);
    logits.resize(lsh_query_tile, lsh_key_tile);
    partial.resize(lsh_query_tile, d_v);
    query_buckets.resize(static_cast<std::size_t>(lsh_query_tile) * sh);
    query_chunks.resize(static_cast<std::size_t>(lsh_query_tile) * sh);
    key_buckets.resize(static_cast<std::size_t>(lsh_key_tile) * sh);
    key_chunks.resize(static_cast<std::size_t>(lsh_key_tile) * sh);
    counts.resize(static_cast<std::size_t>(lsh_key_tile));
    visible.resize(static_cast<std::size_t>(lsh_query_tile));
    rescale.resize(static_cast<std::size_t>(lsh_query_tile));
  }
};

/// Shared-QK: key = x / |x| from x and |x| = scale_and_root[0] * scale_and_root[1]
/// (lsh_attention's robust norm); a zero row's key is zero.
template <class T, class Row, class Key>
void shared_key(const Row& x, const T* scale_and_root, Key&& key) {
  const T scale = scale_and_root[0];
  const T root = scale_and_root[1];
  const T norm = scale * root;
  if (norm >= std::numeric_limits<T>::min()) {
    key = x * (T(1) / norm);
  } else if (scale > T(0)) {  // |x| subnormal: scale first, or the norm's lost digits show
    key = (x / scale) / root;
  } else {
    key.setZero();
  }
}

/// What every window of one forward pass shares.
template <class T>
struct lsh_pass {
  const const_matrix_ref<T>& q;
  const const_matrix_ref<T>& k;
  const const_matrix_ref<T>& v;
  matrix_ref<T>& out;
  const lsh_plan& plan;
  const T* norm;  ///< shared-QK: per token j, s_j and r_j with |q_j| = s_j r_j (keys are q_j / |q_j|); else null
  T* row_max;     ///< per query: running maximum logit
  T* row_sum;     ///< per query: running normaliser
  bool causal;
  T self_penalty;
};

/**
 * Turns logit row t (query i, tile keys ks[0..w)) into weights exp(s - new max) in place and
 * updates the query's running maximum and normaliser; lane.rescale[t] is the factor for its
 * carried output. With round >= 0 the weight of key j is divided by n_ij, the number of rounds
 * whose window of i holds j, so that each key counts once over all rounds (docs §6.6).
 */
template <class T>
void update_row(index_t round, index_t t, index_t i, const index_t* ks, index_t w,
                const lsh_pass<T>& pass, lsh_lane<T>& lane) {
  const index_t h = pass.plan.rounds;
  auto row = lane.logits.row(t).head(w);
  // Keys are in position order: the ones a causal query sees are a prefix.
  const index_t e = pass.causal ? static_cast<index_t>(std::upper_bound(ks, ks + w, i) - ks) : w;
  lane.visible[static_cast<std::size_t>(t)] = e;
  if (e == 0) {
    row.setZero();
    return;
  }
  if (pass.norm != nullptr) {  // shared-QK: a token attends to itself only when alone
    const index_t* self = std::lower_bound(ks, ks + e, i);
    if (self != ks + e && *self == i) row(self - ks) = -std::abs(row(self - ks)) - pass.self_penalty;
  }
  T& running_max = pass.row_max[i];
  T& running_sum = pass.row_sum[i];
  const T rescale = raise_running_max(running_max, row.head(e).maxCoeff());
  row.head(e) = (row.head(e).array() - running_max).exp();
  row.tail(w - e).setZero();
  if (round >= 0 && h > 1) {
    std::int32_t* n = lane.counts.data();
    std::fill(n, n + e, std::int32_t{1});
    for (index_t r = 0; r < h; ++r) {
      if (r == round) continue;
      const std::int32_t qb = lane.query_buckets[static_cast<std::size_t>(t * h + r)];
      const std::int32_t qc = lane.query_chunks[static_cast<std::size_t>(t * h + r)];
      const std::int32_t* kb = lane.key_buckets.data() + r * lsh_key_tile;
      const std::int32_t* kc = lane.key_chunks.data() + r * lsh_key_tile;
      for (index_t u = 0; u < e; ++u) {
        // Chunks are in [0, 2^31): the difference cannot overflow.
        n[u] += static_cast<std::int32_t>(kb[u] == qb) &
                static_cast<std::int32_t>(static_cast<std::uint32_t>(qc - kc[u]) <= 1U);
      }
    }
    std::int32_t most = 1;
    for (index_t u = 0; u < e; ++u) most = std::max(most, n[u]);
    if (most > 1) {
      T* weight = row.data();
      for (index_t u = 0; u < e; ++u) weight[u] /= static_cast<T>(n[u]);  // exact when n = 1
    }
  }
  running_sum = rescale * running_sum + row.head(e).sum();
  lane.rescale[static_cast<std::size_t>(t)] = rescale;
}

/**
 * Queries qs[0..rows) (at most B_q, in position order) against the window keys
 * ks[0..count) (in position order), in tiles of B_k keys: two matrix products per tile and an
 * online-softmax update of each query's output row. round < 0 marks a window that is not a
 * hash round's (the fallback), whose keys need no de-duplication.
 */
template <class T>
void attend_window(index_t round, const index_t* qs, index_t rows, const index_t* ks_all,
                   index_t count, const lsh_pass<T>& pass, lsh_lane<T>& lane) {
  const index_t h = pass.plan.rounds;
  const index_t d = pass.q.cols();
  const bool shared = pass.norm != nullptr;
  const bool dedupe = round >= 0 && h > 1;
  const T scale = T(1) / std::sqrt(static_cast<T>(d));
  auto queries = lane.queries.topRows(rows);
  for (index_t t = 0; t < rows; ++t) {
    if (t + lsh_prefetch_ahead < rows) {
      prefetch_row(&pass.q.coeffRef(qs[t + lsh_prefetch_ahead], 0), d);
    }
    // The output rows are read back after the products: fetch them now.
    prefetch_row(&pass.out.coeffRef(qs[t], 0), pass.out.cols());
    queries.row(t) = pass.q.row(qs[t]) * scale;
  }
  if (dedupe) {
    for (index_t t = 0; t < rows; ++t) {
      std::copy_n(pass.plan.q_bucket.data() + qs[t] * h, h, lane.query_buckets.data() + t * h);
      std::copy_n(pass.plan.q_chunk.data() + qs[t] * h, h, lane.query_chunks.data() + t * h);
    }
  }
  const std::int32_t* key_bucket = pass.plan.key_buckets();
  const std::int32_t* key_chunk = pass.plan.key_chunks();
  const index_t last_query = qs[rows - 1];
  for (index_t w0 = 0; w0 < count; w0 += lsh_key_tile) {
    const index_t* ks = ks_all + w0;
    if (pass.causal && ks[0] > last_query) break;
    const index_t w = std::min(lsh_key_tile, count - w0);
    auto keys = lane.keys.topRows(w);
    auto values = lane.values.topRows(w);
    for (index_t u = 0; u < w; ++u) {
      const index_t j = ks[u];
      if (u + lsh_prefetch_ahead < w) {
        const index_t ahead = ks[u + lsh_prefetch_ahead];
        prefetch_row(shared ? &pass.q.coeffRef(ahead, 0) : &pass.k.coeffRef(ahead, 0), d);
        prefetch_row(&pass.v.coeffRef(ahead, 0), pass.v.cols());
      }
      if (shared) {
        shared_key(pass.q.row(j), pass.norm + 2 * j, keys.row(u));
      } else {
        keys.row(u) = pass.k.row(j);
      }
      values.row(u) = pass.v.row(j);
      if (dedupe) {
        for (index_t r = 0; r < h; ++r) {
          lane.key_buckets[static_cast<std::size_t>(r * lsh_key_tile + u)] = key_bucket[j * h + r];
          lane.key_chunks[static_cast<std::size_t>(r * lsh_key_tile + u)] = key_chunk[j * h + r];
        }
      }
    }
    auto logits = lane.logits.topLeftCorner(rows, w);
    logits.noalias() = queries * keys.transpose();
    lane.pairs += static_cast<std::int64_t>(rows) * static_cast<std::int64_t>(w);
    for (index_t t = 0; t < rows; ++t) update_row(round, t, qs[t], ks, w, pass, lane);
    auto partial = lane.partial.topRows(rows);
    partial.noalias() = logits * values;
    for (index_t t = 0; t < rows; ++t) {
      if (lane.visible[static_cast<std::size_t>(t)] == 0) continue;
      auto o = pass.out.row(qs[t]);
      o = lane.rescale[static_cast<std::size_t>(t)] * o + partial.row(t);
    }
  }
}

}  // namespace performer::detail
