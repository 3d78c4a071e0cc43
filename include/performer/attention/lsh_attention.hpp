/// @file attention/lsh_attention.hpp
/// @brief Reformer LSH attention (Kitaev et al., "Reformer: The Efficient Transformer", ICLR
/// 2020, section 2): angular LSH by seeded random rotations, several hash rounds, chunks with
/// look-one-back, shared-QK or separate keys, rounds combined without double counting.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <vector>

#include "../attention_mask.hpp"
#include "../concepts.hpp"
#include "../detail/parallel.hpp"
#include "../detail/random.hpp"
#include "../detail/validate.hpp"
#include "../error.hpp"
#include "../features/projection.hpp"
#include "../types.hpp"

namespace performer {

namespace detail {

/// Asks for the cache lines of `count` scalars at p ahead of use. LSH gathers rows scattered
/// over the whole sequence; without this, N beyond the caches pays a memory latency per row.
template <class T>
inline void prefetch_row(const T* p, index count) noexcept {
#if defined(__GNUC__) || defined(__clang__)
  constexpr index line = 64 / static_cast<index>(sizeof(T));
  for (index c = 0; c < count; c += line) __builtin_prefetch(p + c);
#else
  static_cast<void>(p);
  static_cast<void>(count);
#endif
}

}  // namespace detail

/// Hashing and chunking parameters of lsh_attention (validated by its constructor).
struct lsh_options {
  /// b: buckets per hash round; even and >= 2 (a rotation gives b/2 directions and their
  /// opposites).
  index buckets = 32;
  /// h: hash rounds; each adds candidate keys, so more rounds approach full attention.
  index hashes = 4;
  /// c: keys per chunk; a query sees its own chunk of its bucket and the one before.
  index chunk = 64;
  /// Reformer's shared-QK attention: the keys are the normalised queries and `k` is ignored.
  bool shared_qk = true;
  /// Seeds the rotations: round r draws from detail::derive_seed(seed, r).
  std::uint64_t seed = 0;
};

/**
 * @brief Reformer LSH attention: each query attends only to keys that an angular
 * locality-sensitive hash puts near it, in time and memory linear in N.
 *
 * **Hashing.** Round r has a d x b/2 rotation R_r of standard normals (the library's portable
 * sampler, seeded with detail::derive_seed(seed, r), so the same seed gives the same bits on
 * every platform). A vector x falls in bucket h_r(x) = argmax [x^ R_r ; -x^ R_r] (b values; the
 * first index wins a tie) with x^ = x / |x|; a zero vector falls in bucket 0. See bucket_of().
 *
 * **Keys.** With lsh_options::shared_qk (the default, as in the paper) token j's key is
 * q_j / |q_j| (zero stays zero) and `k` only has to have q's shape; its values are never read
 * (they are still validated like any input). The logit is q_i . k_j / sqrt(d). A token attends
 * to itself only when it has no other key: its own logit is lowered by 1e5 (trax's finite
 * self-mask, never -inf, so that such a token gets its own value instead of NaN). Without
 * shared_qk, q and k are hashed with the same rotations and N_q != N_k is allowed when not
 * causal.
 *
 * **Chunks** (our exact, leak-free reading of the paper's sort-and-chunk). In each round the
 * valid keys of each bucket, in position order (a stable counting sort by (bucket, position)),
 * are cut into chunks of c keys. Query i sits at position p_i = floor(i N_k / N_q) (= i for
 * self-attention) and, in its bucket h, at chunk c_i = floor(#{valid keys of bucket h at a
 * position < p_i} / c): where its own key would fall under shared-QK. Its window in that round
 * is chunks c_i and c_i - 1 of its bucket (look one back, no wrap-around into other buckets or
 * rounds). Causal masking then drops keys j > i; padded keys never enter a bucket. Unlike
 * sorting all N tokens into one sequence cut every c slots, this never mixes buckets in a chunk,
 * never lets a chunk boundary depend on later tokens, and needs no padding to a multiple of c.
 *
 * **Rounds.** The output is softmax attention over the union of the query's windows over all
 * rounds: each key counts once however many rounds propose it. It is computed as the paper
 * (section 2, "Multi-round LSH attention") and reformer-pytorch (`allow_duplicate_attention =
 * False`) do: within round r the logit of key j is lowered by log n_ij (its weight divided by
 * n_ij), n_ij being the number of rounds whose window of i holds j, and the rounds' partial
 * softmaxes are merged with log-sum-exp weights, online, in round order. A query that sees no
 * key gets a zero row.
 *
 * **Work.** Queries of one (round, bucket, chunk) share their window, so each such group costs
 * two matrix products: (group x d) by (d x 2c) logits and (group x 2c) by (2c x d_v) values.
 * Groups run in parallel (detail::parallel_for); each output row is updated by one thread at a
 * time in a fixed order, so the result does not depend on the thread count.
 *
 * Complexity (N = N_q + N_k tokens, h rounds, b buckets, chunk c): time
 * O(h N (d b/2 + c (d + d_v + h))); workspace O(h N + h b) plus per thread
 * O(B_q B_k + (B_q + B_k)(d + d_v)) with internal tiles B_q = 64 queries, B_k = 256 keys:
 * never N x N.
 *
 * forward() is const and thread-safe with one workspace per thread.
 *
 * @tparam T scalar type (float, double).
 */
template <real_scalar T>
class lsh_attention {
 public:
  using scalar_type = T;
  static constexpr bool supports_causal = true;
  // Not key_permutation_invariant: chunks follow key positions, so reordering keys changes
  // which keys share a chunk.

  /// Scratch memory. Sized by N, h and b on the first call; a second call with the same
  /// shapes reuses it without allocating.
  struct workspace_type {
    /// Queries [q_begin, q_begin + q_count) of the round's query order, all in one (bucket,
    /// chunk), and their shared window: slots [w_begin, w_end) of key_order.
    struct work_item {
      index q_begin, q_count, w_begin, w_end;
    };
    /// One thread's tiles.
    struct lane_type {
      row_vector<T> unit, projection;       // hashing one row
      row_matrix<T> queries, keys, values;  // gathered tile rows
      row_matrix<T> logits, partial;        // B_q x B_k weights, B_q x d_v products
      // Buckets and chunks of the tile's queries ([t * h + round]) and keys ([round * B_k + u]):
      // 32 bits, so that the duplicate count vectorises.
      std::vector<std::int32_t> query_buckets, query_chunks, key_buckets, key_chunks, counts;
      std::vector<index> visible;
      std::vector<T> rescale;
    };
    std::vector<T> norm;  // shared-QK: |q_j|
    // [row * h + round]. Under shared-QK the k_ arrays stay empty: a valid token's key has its
    // query's bucket, and its rank in the bucket is the count that gives the query's chunk.
    std::vector<std::int32_t> q_bucket, q_chunk, k_bucket, k_chunk;
    std::vector<index> key_order;     // [round * N_k + slot]: by (bucket, position)
    std::vector<index> bucket_start;  // [round * (b + 1) + bucket]
    std::vector<index> counter, query_start, query_order;
    std::vector<work_item> items;
    std::vector<T> row_max, row_sum;
    std::vector<lane_type> lanes;
  };

  /**
   * @param head_dim d, the width of queries and keys (> 0).
   * @param options buckets (even, in [2, 2^30]), hashes (>= 1), chunk (>= 1), shared_qk, seed.
   * @throws performer::invalid_argument naming the first parameter out of range.
   */
  explicit lsh_attention(index head_dim, lsh_options options = {})
      : d_(head_dim), options_(options) {
    constexpr const char* who = "lsh_attention";
    PERFORMER_PRECONDITION(head_dim > 0, who, ": head_dim must be positive (got ", head_dim, ")");
    PERFORMER_PRECONDITION(options.buckets >= 2 && options.buckets % 2 == 0, who,
                           ": buckets must be even and at least 2 (got ", options.buckets, ")");
    PERFORMER_PRECONDITION(options.buckets <= max_buckets, who, ": buckets must be at most ",
                           max_buckets, " (got ", options.buckets, ")");
    PERFORMER_PRECONDITION(options.hashes >= 1, who, ": hashes must be at least 1 (got ",
                           options.hashes, ")");
    PERFORMER_PRECONDITION(options.chunk >= 1, who, ": chunk must be at least 1 (got ",
                           options.chunk, ")");
    rotations_.resize(static_cast<std::size_t>(options.hashes));
    redraw(options.seed);
  }

  [[nodiscard]] const lsh_options& options() const noexcept { return options_; }
  [[nodiscard]] index head_dim() const noexcept { return d_; }

  /**
   * @brief Rotation of round r: d x b/2.
   * @throws performer::invalid_argument unless 0 <= r < hashes.
   */
  [[nodiscard]] const row_matrix<T>& rotation(index r) const {
    check_round("lsh_attention::rotation", r);
    return rotations_[static_cast<std::size_t>(r)];
  }

  /**
   * @brief Replaces round r's rotation (a trained or hand-made one). A zero matrix sends every
   * vector to bucket 0 (all ties), which turns LSH into chunked local attention.
   * @throws performer::invalid_argument if r is out of range, `rotation` is not d x b/2 or
   * holds a non-finite value.
   */
  void set_rotation(index r, const Eigen::Ref<const row_matrix<T>>& rotation) {
    constexpr const char* who = "lsh_attention::set_rotation";
    check_round(who, r);
    PERFORMER_PRECONDITION(rotation.rows() == d_ && rotation.cols() == half(), who,
                           ": rotation is ", detail::shape(rotation), ", expected ", d_, "x",
                           half(), " (head_dim x buckets/2)");
    detail::require_finite(who, "rotation", rotation);
    rotations_[static_cast<std::size_t>(r)] = rotation;
    stack_rotations();
  }

  /**
   * @brief Draws every round's rotation afresh from `seed` (round r from
   * detail::derive_seed(seed, r)); options().seed becomes `seed`.
   * @throws nothing but std::bad_alloc.
   */
  void redraw(std::uint64_t seed) {
    const gaussian_sampler sampler;
    for (index r = 0; r < options_.hashes; ++r) {
      rotations_[static_cast<std::size_t>(r)] =
          sampler.sample(d_, half(), detail::derive_seed(seed, static_cast<std::uint64_t>(r)))
              .template cast<T>();
    }
    options_.seed = seed;
    stack_rotations();
  }

  /**
   * @brief The bucket of vector x in round r: argmax over [x^ R_r ; -x^ R_r] with x^ = x/|x|,
   * the first index winning a tie; 0 for a zero vector. Bit for bit the bucket forward() gives
   * a row of q (or of k) equal to x.
   * @throws performer::invalid_argument if x does not have d entries, holds a non-finite
   * value, or r is out of range.
   */
  [[nodiscard]] index bucket_of(const Eigen::Ref<const row_vector<T>>& x, index r) const {
    constexpr const char* who = "lsh_attention::bucket_of";
    check_round(who, r);
    PERFORMER_PRECONDITION(x.size() == d_, who, ": x has ", x.size(), " entries, expected ", d_);
    detail::require_finite(who, "x", x);
    typename workspace_type::lane_type lane;
    prepare_hash_lane(lane);
    std::vector<std::int32_t> all(static_cast<std::size_t>(options_.hashes));
    static_cast<void>(hash_row(x.data(), lane, all.data()));
    return all[static_cast<std::size_t>(r)];
  }

  /**
   * @brief The buckets of every row of x in round r (bucket_of applied to each row).
   * @throws performer::invalid_argument as bucket_of.
   */
  [[nodiscard]] std::vector<index> buckets(const const_matrix_ref<T>& x, index r) const {
    constexpr const char* who = "lsh_attention::buckets";
    check_round(who, r);
    PERFORMER_PRECONDITION(x.cols() == d_, who, ": x is ", detail::shape(x), ", expected ", d_,
                           " columns");
    detail::require_finite(who, "x", x);
    typename workspace_type::lane_type lane;
    prepare_hash_lane(lane);
    std::vector<std::int32_t> all(static_cast<std::size_t>(options_.hashes));
    std::vector<index> result(static_cast<std::size_t>(x.rows()));
    for (index i = 0; i < x.rows(); ++i) {
      static_cast<void>(hash_row(x.row(i).data(), lane, all.data()));
      result[static_cast<std::size_t>(i)] = all[static_cast<std::size_t>(r)];
    }
    return result;
  }

  /**
   * @brief Computes attention for one head (contract of attention_mechanism).
   * @throws performer::invalid_argument on bad input (see detail::check_attention_args), on a
   * head width other than head_dim(), under shared_qk if k does not have q's shape, on more
   * than 2^31 - 1 queries or keys, or if the result overflowed the scalar type.
   */
  void forward(const const_matrix_ref<T>& q, const const_matrix_ref<T>& k,
               const const_matrix_ref<T>& v, matrix_ref<T> out, const attention_mask& mask,
               workspace_type& ws) const {
    constexpr const char* who = "lsh_attention::forward";
    detail::check_attention_args<T>(who, q, k, v, out, mask);
    PERFORMER_PRECONDITION(q.cols() == d_, who, ": q is ", detail::shape(q),
                           " but the rotations are for head width ", d_);
    PERFORMER_PRECONDITION(!options_.shared_qk || k.rows() == q.rows(), who,
                           ": shared_qk requires k to have q's shape (q is ", detail::shape(q),
                           ", k is ", detail::shape(k),
                           "); its values are not used, so pass q itself");
    PERFORMER_PRECONDITION(std::max(q.rows(), k.rows()) <= max_tokens, who, ": at most ",
                           max_tokens, " tokens per sequence (q is ", detail::shape(q), ", k is ",
                           detail::shape(k), ")");
    prepare(q.rows(), k.rows(), v.cols(), ws);
    hash_all(q, k, ws);
    // Sorting is O(h N) and sequential: a small part of the total at any N.
    for (index r = 0; r < options_.hashes; ++r) sort_round(r, q.rows(), k.rows(), mask, ws);

    out.setZero();
    std::fill(ws.row_max.begin(), ws.row_max.end(), -std::numeric_limits<T>::infinity());
    std::fill(ws.row_sum.begin(), ws.row_sum.end(), T(0));
    // Work estimate in double: a huge chunk must not overflow it.
    const bool parallel = static_cast<double>(q.rows()) *
                              static_cast<double>(std::min(options_.chunk, k.rows())) * 2.0 *
                              static_cast<double>(d_ + v.cols()) >=
                          static_cast<double>(parallel_work);
    for (index r = 0; r < options_.hashes; ++r) {
      plan_round(r, q.rows(), k.rows(), ws);
      for_each_item(static_cast<index>(ws.items.size()), parallel, [&](index item, index lane) {
        attend_item(r, ws.items[static_cast<std::size_t>(item)], q, k, v, out, mask.causal, ws,
                    ws.lanes[static_cast<std::size_t>(lane)]);
      });
    }
    for (index i = 0; i < q.rows(); ++i) {
      // row_sum is 0 only for a query that saw no key: its row was never touched (zeros).
      const T l = ws.row_sum[static_cast<std::size_t>(i)];
      if (l > T(0)) out.row(i) /= l;
    }
    detail::require_finite_result(who, out);
  }

 private:
  using work_item = typename workspace_type::work_item;
  using lane_type = typename workspace_type::lane_type;

  static constexpr index query_tile = 64;     ///< B_q: query rows per product
  static constexpr index key_tile = 256;      ///< B_k: window keys per product
  static constexpr index hash_rows = 256;     ///< rows per parallel hashing item
  static constexpr index prefetch_ahead = 8;  ///< gathered rows requested in advance
  /// Fewest multiply-adds worth a parallel region: below it, waking threads costs more than
  /// it saves (and far more on a loaded machine, where a region waits for a descheduled thread).
  static constexpr index parallel_work = index{1} << 20;
  /// The self-mask: finite so that a token alone in its window keeps itself (as in the paper
  /// and trax), and applied as "self logit := -|self logit| - 1e5". A token's own logit
  /// |q_i| / sqrt(d) is the largest it has and every other is at least its negative (keys are
  /// unit vectors), so the self logit ends 1e5 below all others at any norm; trax's plain
  /// -1e5 stops masking once |q_i| / sqrt(d) nears 1e5.
  static constexpr T self_penalty = T(1e5);
  /// Buckets and chunk indices are stored in 32 bits (half the memory, twice the SIMD lanes).
  static constexpr index max_buckets = index{1} << 30;
  static constexpr index max_tokens = std::numeric_limits<std::int32_t>::max();

  [[nodiscard]] index half() const noexcept { return options_.buckets / 2; }

  /// body(i, lane) for i in [0, count): on threads if `parallel`, else in order on lane 0.
  /// Every item computes the same bits either way.
  template <class Body>
  static void for_each_item(index count, bool parallel, Body&& body) {
    if (parallel) {
      detail::parallel_for(count, body);
    } else {
      for (index i = 0; i < count; ++i) body(i, index{0});
    }
  }

  void check_round(const char* who, index r) const {
    PERFORMER_PRECONDITION(r >= 0 && r < options_.hashes, who, ": round ", r,
                           " is out of range (hashes = ", options_.hashes, ")");
  }

  /// All rounds side by side (d x h b/2), so one sweep over a row's entries hashes every round.
  void stack_rotations() {
    stacked_.resize(d_, options_.hashes * half());
    for (index r = 0; r < options_.hashes; ++r) {
      stacked_.middleCols(r * half(), half()) = rotations_[static_cast<std::size_t>(r)];
    }
  }

  void prepare_hash_lane(lane_type& lane) const {
    lane.unit.resize(d_);
    lane.projection.resize(options_.hashes * half());
  }

  /**
   * Buckets of one row in every round into buckets[0..h); returns |x|.
   *
   * Every step has a fixed order of operations that does not depend on where the row or the
   * buffers sit in memory (no Eigen reductions, whose split into packets follows alignment),
   * so a row hashes to the same bits in forward(), bucket_of() and buckets(), on any thread.
   * |x| is taken after scaling by max |x_c|, so that it neither overflows nor underflows.
   */
  T hash_row(const T* x, lane_type& lane, std::int32_t* buckets) const {
    T largest = 0;
    for (index c = 0; c < d_; ++c) largest = std::max(largest, std::abs(x[c]));
    if (largest == T(0)) {
      std::fill(buckets, buckets + options_.hashes, std::int32_t{0});
      return T(0);
    }
    T* unit = lane.unit.data();
    const T inverse = T(1) / largest;
    if (inverse <= std::numeric_limits<T>::max()) {
      for (index c = 0; c < d_; ++c) unit[c] = x[c] * inverse;
    } else {
      for (index c = 0; c < d_; ++c) unit[c] = x[c] / largest;  // subnormal largest entry
    }
    // Four interleaved partial sums: a fixed association that compilers may vectorise as is.
    T partial[4] = {0, 0, 0, 0};
    index c = 0;
    for (; c + 4 <= d_; c += 4) {
      for (index lane_index = 0; lane_index < 4; ++lane_index) {
        partial[lane_index] += unit[c + lane_index] * unit[c + lane_index];
      }
    }
    for (; c < d_; ++c) partial[0] += unit[c] * unit[c];
    const T root = std::sqrt((partial[0] + partial[1]) + (partial[2] + partial[3]));
    const T inverse_root = T(1) / root;  // root is in [1, sqrt(d)]
    for (c = 0; c < d_; ++c) unit[c] *= inverse_root;

    // x^ [R_0 ... R_h-1] in strips of `strip` columns whose sums stay in registers; each entry
    // is the same sequence of multiply-adds over c whatever the strip.
    constexpr index strip = 16;
    const index m = options_.hashes * half();
    const T* rotation = stacked_.data();
    T* projection = lane.projection.data();
    index t0 = 0;
    for (; t0 + strip <= m; t0 += strip) {
      T acc[strip] = {};
      for (c = 0; c < d_; ++c) {
        const T u = unit[c];
        const T* row = rotation + c * m + t0;
        for (index t = 0; t < strip; ++t) acc[t] += u * row[t];
      }
      std::copy_n(acc, strip, projection + t0);
    }
    for (index t = t0; t < m; ++t) {
      T acc = 0;
      for (c = 0; c < d_; ++c) acc += unit[c] * rotation[c * m + t];
      projection[t] = acc;
    }

    const index b2 = half();
    for (index r = 0; r < options_.hashes; ++r) {
      const T* p = projection + r * b2;
      index best = 0;
      T best_value = p[0];
      for (index t = 1; t < b2; ++t) {
        if (p[t] > best_value) {
          best = t;
          best_value = p[t];
        }
      }
      for (index t = 0; t < b2; ++t) {
        if (-p[t] > best_value) {
          best = b2 + t;
          best_value = -p[t];
        }
      }
      buckets[r] = static_cast<std::int32_t>(best);
    }
    return largest * root;
  }

  void prepare(index n_q, index n_k, index d_v, workspace_type& ws) const {
    const auto h = static_cast<std::size_t>(options_.hashes);
    const auto nq = static_cast<std::size_t>(n_q);
    const auto nk = static_cast<std::size_t>(n_k);
    const auto b = static_cast<std::size_t>(options_.buckets);
    const bool shared = options_.shared_qk;
    ws.norm.resize(shared ? nq : 0);
    ws.q_bucket.resize(h * nq);
    ws.q_chunk.resize(h * nq);
    ws.k_bucket.resize(shared ? 0 : h * nk);
    ws.k_chunk.resize(shared ? 0 : h * nk);
    ws.key_order.resize(h * nk);
    ws.bucket_start.resize(h * (b + 1));
    ws.counter.resize(b);
    ws.query_start.resize(b + 1);
    ws.query_order.resize(nq);
    // Each query is in one group per round, and a group yields at most one item per B_q
    // queries: never more items than queries.
    ws.items.reserve(nq);
    ws.row_max.resize(nq);
    ws.row_sum.resize(nq);

    const index lanes =
        std::max(detail::lanes_for((std::max(n_q, n_k) + hash_rows - 1) / hash_rows),
                 detail::lanes_for(n_q));
    if (ws.lanes.size() < static_cast<std::size_t>(lanes))
      ws.lanes.resize(static_cast<std::size_t>(lanes));
    for (auto& lane : ws.lanes) {
      prepare_hash_lane(lane);
      // Fixed tile shapes: the layout (and so every rounding) never depends on earlier calls.
      lane.queries.resize(query_tile, d_);
      lane.keys.resize(key_tile, d_);
      lane.values.resize(key_tile, d_v);
      lane.logits.resize(query_tile, key_tile);
      lane.partial.resize(query_tile, d_v);
      lane.query_buckets.resize(static_cast<std::size_t>(query_tile) * h);
      lane.query_chunks.resize(static_cast<std::size_t>(query_tile) * h);
      lane.key_buckets.resize(static_cast<std::size_t>(key_tile) * h);
      lane.key_chunks.resize(static_cast<std::size_t>(key_tile) * h);
      lane.counts.resize(static_cast<std::size_t>(key_tile));
      lane.visible.resize(static_cast<std::size_t>(query_tile));
      lane.rescale.resize(static_cast<std::size_t>(query_tile));
    }
  }

  void hash_all(const const_matrix_ref<T>& q, const const_matrix_ref<T>& k,
                workspace_type& ws) const {
    const index h = options_.hashes;
    const auto hash_matrix = [&](const const_matrix_ref<T>& x, std::vector<std::int32_t>& buckets,
                                 T* norms) {
      const index blocks = (x.rows() + hash_rows - 1) / hash_rows;
      const bool parallel = x.rows() * d_ * h * half() >= parallel_work;
      for_each_item(blocks, parallel, [&](index block, index lane) {
        const index end = std::min(x.rows(), (block + 1) * hash_rows);
        for (index i = block * hash_rows; i < end; ++i) {
          const T norm = hash_row(x.row(i).data(), ws.lanes[static_cast<std::size_t>(lane)],
                                  buckets.data() + i * h);
          if (norms != nullptr) norms[i] = norm;
        }
      });
    };
    if (options_.shared_qk) {
      hash_matrix(q, ws.q_bucket, ws.norm.data());
    } else {
      hash_matrix(q, ws.q_bucket, nullptr);
      hash_matrix(k, ws.k_bucket, nullptr);
    }
  }

  /// Round r: counting sort of the valid keys by (bucket, position), each key's chunk and
  /// each query's chunk. O(N_q + N_k + b).
  void sort_round(index r, index n_q, index n_k, const attention_mask& mask,
                  workspace_type& ws) const {
    const index h = options_.hashes;
    const index b = options_.buckets;
    const index c = options_.chunk;
    const std::int32_t* kb = (options_.shared_qk ? ws.q_bucket : ws.k_bucket).data();
    index* count = ws.counter.data();
    std::fill(count, count + b, index{0});
    // Sweep key positions alongside the queries: a query's chunk counts the valid keys of its
    // bucket strictly before its position.
    index j = 0;
    for (index i = 0; i < n_q; ++i) {
      const index position = n_q == n_k ? i : i * n_k / n_q;
      for (; j < position; ++j) {
        if (mask.keeps(static_cast<std::size_t>(j))) ++count[kb[j * h + r]];
      }
      ws.q_chunk[static_cast<std::size_t>(i * h + r)] =
          static_cast<std::int32_t>(count[ws.q_bucket[static_cast<std::size_t>(i * h + r)]] / c);
    }
    for (; j < n_k; ++j) {
      if (mask.keeps(static_cast<std::size_t>(j))) ++count[kb[j * h + r]];
    }
    index* start = ws.bucket_start.data() + r * (b + 1);
    start[0] = 0;
    for (index t = 0; t < b; ++t) {
      start[t + 1] = start[t] + count[t];
      count[t] = 0;
    }
    index* order = ws.key_order.data() + r * n_k;
    for (j = 0; j < n_k; ++j) {
      if (!mask.keeps(static_cast<std::size_t>(j))) continue;  // padding never gets a slot
      const index bucket = kb[j * h + r];
      const index rank = count[bucket]++;
      order[start[bucket] + rank] = j;
      if (!options_.shared_qk) {
        ws.k_chunk[static_cast<std::size_t>(j * h + r)] = static_cast<std::int32_t>(rank / c);
      }
    }
  }

  /// Round r: queries by (bucket, position) (stable counting sort), cut into work items of
  /// at most B_q queries sharing one (bucket, chunk) and so one window.
  void plan_round(index r, index n_q, index n_k, workspace_type& ws) const {
    const index h = options_.hashes;
    const index b = options_.buckets;
    const index c = options_.chunk;
    const auto bucket_of_query = [&](index i) {
      return index{ws.q_bucket[static_cast<std::size_t>(i * h + r)]};
    };
    const auto chunk_of_query = [&](index slot) {
      return index{ws.q_chunk[static_cast<std::size_t>(
          ws.query_order[static_cast<std::size_t>(slot)] * h + r)]};
    };
    index* count = ws.counter.data();
    std::fill(count, count + b, index{0});
    for (index i = 0; i < n_q; ++i) ++count[bucket_of_query(i)];
    index* qstart = ws.query_start.data();
    qstart[0] = 0;
    for (index t = 0; t < b; ++t) {
      qstart[t + 1] = qstart[t] + count[t];
      count[t] = 0;
    }
    for (index i = 0; i < n_q; ++i) {
      const index bucket = bucket_of_query(i);
      ws.query_order[static_cast<std::size_t>(qstart[bucket] + count[bucket]++)] = i;
    }
    const index* kstart = ws.bucket_start.data() + r * (b + 1);
    const index order_base = r * n_k;
    ws.items.clear();
    for (index bucket = 0; bucket < b; ++bucket) {
      const index keys = kstart[bucket + 1] - kstart[bucket];
      index g = qstart[bucket];
      while (g < qstart[bucket + 1]) {
        // Queries of a bucket are in position order, so their chunks never decrease.
        const index chunk = chunk_of_query(g);
        index end = g + 1;
        while (end < qstart[bucket + 1] && chunk_of_query(end) == chunk) ++end;
        // chunk * c <= keys (a query's chunk counts keys of its bucket), so neither bound
        // can overflow even for a huge c.
        const index lo = chunk * c - (chunk > 0 ? c : 0);
        const index hi = chunk * c + std::min(c, keys - chunk * c);
        if (lo < hi) {
          for (index t = g; t < end; t += query_tile) {
            ws.items.push_back({t, std::min(query_tile, end - t), order_base + kstart[bucket] + lo,
                                order_base + kstart[bucket] + hi});
          }
        }
        g = end;
      }
    }
  }

  /// One work item of round `round`: the window in key tiles, each two matrix products and an
  /// online-softmax update of the item's output rows.
  void attend_item(index round, const work_item& item, const const_matrix_ref<T>& q,
                   const const_matrix_ref<T>& k, const const_matrix_ref<T>& v, matrix_ref<T>& out,
                   bool causal, workspace_type& ws, lane_type& lane) const {
    const index h = options_.hashes;
    const bool shared = options_.shared_qk;
    const index rows = item.q_count;
    const index* qs = ws.query_order.data() + item.q_begin;
    const T scale = T(1) / std::sqrt(static_cast<T>(d_));
    auto queries = lane.queries.topRows(rows);
    for (index t = 0; t < rows; ++t) {
      if (t + prefetch_ahead < rows) {
        detail::prefetch_row(&q.coeffRef(qs[t + prefetch_ahead], 0), d_);
      }
      // The output rows are read back after the products: fetch them now.
      detail::prefetch_row(&out.coeffRef(qs[t], 0), out.cols());
      queries.row(t) = q.row(qs[t]) * scale;
    }
    if (h > 1) {
      for (index t = 0; t < rows; ++t) {
        std::copy_n(ws.q_bucket.data() + qs[t] * h, h, lane.query_buckets.data() + t * h);
        std::copy_n(ws.q_chunk.data() + qs[t] * h, h, lane.query_chunks.data() + t * h);
      }
    }
    const std::int32_t* key_bucket = (shared ? ws.q_bucket : ws.k_bucket).data();
    const std::int32_t* key_chunk = (shared ? ws.q_chunk : ws.k_chunk).data();
    const index last_query = qs[rows - 1];  // queries are in position order
    for (index w0 = item.w_begin; w0 < item.w_end; w0 += key_tile) {
      const index* ks = ws.key_order.data() + w0;
      if (causal && ks[0] > last_query) break;  // keys are in position order too
      const index w = std::min(key_tile, item.w_end - w0);
      auto keys = lane.keys.topRows(w);
      auto values = lane.values.topRows(w);
      for (index u = 0; u < w; ++u) {
        const index j = ks[u];
        if (u + prefetch_ahead < w) {
          const index ahead = ks[u + prefetch_ahead];
          detail::prefetch_row(shared ? &q.coeffRef(ahead, 0) : &k.coeffRef(ahead, 0), d_);
          detail::prefetch_row(&v.coeffRef(ahead, 0), v.cols());
        }
        if (shared) {
          const T norm = ws.norm[static_cast<std::size_t>(j)];
          const T inverse = norm > T(0) ? T(1) / norm : T(0);
          if (inverse <= std::numeric_limits<T>::max()) {
            keys.row(u) = q.row(j) * inverse;
          } else {
            keys.row(u) = q.row(j) / norm;  // a subnormal norm: its inverse overflows
          }
        } else {
          keys.row(u) = k.row(j);
        }
        values.row(u) = v.row(j);
        for (index r = 0; r < h && h > 1; ++r) {
          lane.key_buckets[static_cast<std::size_t>(r * key_tile + u)] = key_bucket[j * h + r];
          lane.key_chunks[static_cast<std::size_t>(r * key_tile + u)] = key_chunk[j * h + r];
        }
      }
      auto logits = lane.logits.topLeftCorner(rows, w);
      logits.noalias() = queries * keys.transpose();
      for (index t = 0; t < rows; ++t) {
        update_row(round, t, qs[t], ks, w, causal, ws, lane);
      }
      auto partial = lane.partial.topRows(rows);
      partial.noalias() = logits * values;
      for (index t = 0; t < rows; ++t) {
        if (lane.visible[static_cast<std::size_t>(t)] == 0) continue;
        auto o = out.row(qs[t]);
        o = lane.rescale[static_cast<std::size_t>(t)] * o + partial.row(t);
      }
    }
  }

  /// Turns logit row t (query i, tile keys ks[0..w)) into weights exp(s - new max) in place
  /// and updates the query's running maximum and normaliser; lane.rescale[t] is the factor
  /// for its carried output.
  void update_row(index round, index t, index i, const index* ks, index w, bool causal,
                  workspace_type& ws, lane_type& lane) const {
    const index h = options_.hashes;
    auto row = lane.logits.row(t).head(w);
    // Keys are in position order: the ones a causal query sees are a prefix.
    const index e = causal ? static_cast<index>(std::upper_bound(ks, ks + w, i) - ks) : w;
    lane.visible[static_cast<std::size_t>(t)] = e;
    if (e == 0) {
      row.setZero();
      return;
    }
    if (options_.shared_qk) {
      const index* self = std::lower_bound(ks, ks + e, i);
      if (self != ks + e && *self == i) row(self - ks) = -std::abs(row(self - ks)) - self_penalty;
    }
    T& running_max = ws.row_max[static_cast<std::size_t>(i)];
    T& running_sum = ws.row_sum[static_cast<std::size_t>(i)];
    const T new_max = std::max(running_max, row.head(e).maxCoeff());
    const T rescale =
        running_max == -std::numeric_limits<T>::infinity() ? T(0) : std::exp(running_max - new_max);
    row.head(e) = (row.head(e).array() - new_max).exp();
    row.tail(w - e).setZero();
    if (h > 1) {
      // n_ij = rounds whose window of i holds j: this one, plus every other round where j has
      // i's bucket and i's chunk or the one before. Weighting by 1/n_ij (logit - log n_ij,
      // after the stabilising shift) makes each key count once over all rounds.
      std::int32_t* n = lane.counts.data();
      std::fill(n, n + e, std::int32_t{1});
      for (index r = 0; r < h; ++r) {
        if (r == round) continue;
        const std::int32_t qb = lane.query_buckets[static_cast<std::size_t>(t * h + r)];
        const std::int32_t qc = lane.query_chunks[static_cast<std::size_t>(t * h + r)];
        const std::int32_t* kb = lane.key_buckets.data() + r * key_tile;
        const std::int32_t* kc = lane.key_chunks.data() + r * key_tile;
        for (index u = 0; u < e; ++u) {
          // Chunks are in [0, 2^31): the difference cannot overflow.
          n[u] += static_cast<std::int32_t>(kb[u] == qb) &
                  static_cast<std::int32_t>(static_cast<std::uint32_t>(qc - kc[u]) <= 1U);
        }
      }
      std::int32_t most = 1;
      for (index u = 0; u < e; ++u) most = std::max(most, n[u]);
      if (most > 1) {
        T* weight = row.data();
        for (index u = 0; u < e; ++u) weight[u] /= static_cast<T>(n[u]);  // exact when n = 1
      }
    }
    running_sum = rescale * running_sum + row.head(e).sum();
    running_max = new_max;
    lane.rescale[static_cast<std::size_t>(t)] = rescale;
  }

  index d_;
  lsh_options options_;
  std::vector<row_matrix<T>> rotations_;
  row_matrix<T> stacked_;
};

static_assert(attention_mechanism<lsh_attention<float>>);
static_assert(attention_mechanism<lsh_attention<double>>);

}  // namespace performer
