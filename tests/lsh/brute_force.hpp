// Independent references for the LSH tests: softmax over an explicit set of (query, key) pairs,
// full shared-QK attention, and the documented LSH rule written out by brute force in O(N^2),
// with the fallback. No library code but the public bucket function.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include <performer/lsh/lsh_attention.hpp>
#include <performer/testing/oracle.hpp>

namespace performer::test {

using keep_mask = std::vector<std::uint8_t>;

/// Softmax over the keys `seen[i][j] > 0` of each query, with the documented key choice
/// (shared-QK keys q_j / |q_j|, a token seeing itself only when alone): the oracle's.
inline row_matrix<double> softmax_over(const std::vector<std::vector<int>>& seen,
                                       const row_matrix<double>& q, const row_matrix<double>& k,
                                       const row_matrix<double>& v, bool shared) {
  return oracle::softmax_over(
      q, k, v,
      [&](index_t i, index_t j) {
        return seen[static_cast<std::size_t>(i)][static_cast<std::size_t>(j)] > 0;
      },
      {.shared_qk = shared});
}

inline bool keeps(const keep_mask& keep, index_t j) {
  return keep.empty() || keep[static_cast<std::size_t>(j)] != 0;
}

/// Full shared-QK attention: every valid key (j <= i when causal), keys = normalised queries.
inline row_matrix<double> exact_shared(const row_matrix<double>& q, const row_matrix<double>& v,
                                       bool causal, const keep_mask& keep = {}) {
  return oracle::softmax_attention(q, q, v, attention_mask{causal, keep}, {.shared_qk = true});
}

/// What the brute force saw, beside the output.
struct reference_counts {
  index_t duplicates = 0;  ///< (query, key) pairs proposed by more than one round
  index_t pairs = 0;       ///< distinct (query, key) pairs attended
  index_t fallbacks = 0;   ///< queries that got the fallback window
  /// Window sizes summed over queries and rounds, fallback windows included: the logits the
  /// kernel computes when nothing is cut by causal masking.
  index_t window_keys = 0;
};

/// The documented LSH rule, written out directly: in round r the valid keys of query i's
/// bucket, ranked by position, are cut into chunks of c; query i's chunk is (number of valid
/// bucket keys before position p_i) / c and it sees chunks c_i - 1 and c_i (keys j <= i when
/// causal). The output is softmax over the union of these windows over all rounds. A query
/// whose union is empty although the mask leaves it keys sees the c visible keys nearest before
/// its position (its own included), or the first c after it when there are none.
inline row_matrix<double> lsh_reference(const lsh_attention<double>& a, const row_matrix<double>& q,
                                 const row_matrix<double>& k, const row_matrix<double>& v,
                                 bool causal, const keep_mask& keep,
                                 reference_counts* counts = nullptr) {
  const lsh_options& o = a.options();
  const index_t n_q = q.rows();
  const index_t n_k = v.rows();
  reference_counts local;
  reference_counts& c = counts != nullptr ? *counts : local;
  c = {};
  std::vector<std::vector<int>> seen(static_cast<std::size_t>(n_q),
                                     std::vector<int>(static_cast<std::size_t>(n_k), 0));
  for (index_t r = 0; r < o.hashes; ++r) {
    const std::vector<index_t> bq = a.buckets(q, r, n_k);
    const std::vector<index_t> bk = o.shared_qk ? bq : a.buckets(k, r, n_k);
    for (index_t i = 0; i < n_q; ++i) {
      const index_t position = n_q == n_k ? i : i * n_k / n_q;
      const index_t bucket = bq[static_cast<std::size_t>(i)];
      index_t before = 0;
      for (index_t j = 0; j < position; ++j)
        before += keeps(keep, j) && bk[static_cast<std::size_t>(j)] == bucket ? 1 : 0;
      const index_t chunk = before / o.chunk;
      index_t rank = 0;
      for (index_t j = 0; j < n_k; ++j) {
        if (!keeps(keep, j) || bk[static_cast<std::size_t>(j)] != bucket) continue;
        const bool in_window = rank >= (chunk - 1) * o.chunk && rank < (chunk + 1) * o.chunk;
        c.window_keys += in_window ? 1 : 0;
        if (in_window && (!causal || j <= i))
          ++seen[static_cast<std::size_t>(i)][static_cast<std::size_t>(j)];
        ++rank;
      }
    }
  }
  std::vector<index_t> visible;
  for (index_t j = 0; j < n_k; ++j) {
    if (keeps(keep, j)) visible.push_back(j);
  }
  for (index_t i = 0; i < n_q; ++i) {
    auto& row = seen[static_cast<std::size_t>(i)];
    if (std::any_of(row.begin(), row.end(), [](int x) { return x > 0; })) continue;
    const index_t position = n_q == n_k ? i : i * n_k / n_q;
    std::vector<index_t> window;
    for (const index_t j : visible) {
      if (j <= position) window.push_back(j);
    }
    if (window.size() > static_cast<std::size_t>(o.chunk)) {
      window.erase(window.begin(), window.end() - o.chunk);
    }
    if (window.empty() && !causal) {
      for (std::size_t t = 0; t < visible.size() && t < static_cast<std::size_t>(o.chunk); ++t) {
        window.push_back(visible[t]);
      }
    }
    if (window.empty()) continue;  // the mask leaves this query no key: the zero row
    ++c.fallbacks;
    c.window_keys += static_cast<index_t>(window.size());
    for (const index_t j : window) row[static_cast<std::size_t>(j)] = 1;
  }
  for (const auto& row : seen) {
    for (const int x : row) {
      c.duplicates += x > 1 ? 1 : 0;
      c.pairs += x > 0 ? 1 : 0;
    }
  }
  return softmax_over(seen, q, k, v, o.shared_qk);
}

}  // namespace performer::test
