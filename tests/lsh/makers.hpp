// LSH as the typed suites make it (its class templates are compiled once for all test
// executables: instances/instances.hpp).
#pragma once

#include <gtest/gtest.h>

#include <cstdint>

#include <performer/core/detail/parallel.hpp>
#include <performer/lsh/example_hash_family.hpp>
#include <performer/lsh/lsh_attention.hpp>
#include <performer/testing/extreme_reference.hpp>

#include "instances/instances.hpp"

namespace performer::test {

/// What every LSH maker shares. A later token can join an earlier query's work item, which
/// changes the shape of the item's products and so, in the last bits, how Eigen sums them: the
/// causal check allows rounding instead of demanding the same bits (the earlier query still
/// never computes with the later key: lsh_attention_test checks that with an exact reference).
template <class A>
struct lsh_maker_base {
  using attention_type = A;
  using T = typename A::scalar_type;
  static constexpr bool exact_causal_prefix = false;
  static constexpr conformance::extreme_reference extreme_values = conformance::extreme_reference::lsh_window;

  /// The workspace, field by field (lsh_attention::workspace_type, detail::lsh_plan,
  /// detail::lsh_lane), for N_q = N_k = n, h rounds, b buckets: per token row_max, row_sum and
  /// (shared-QK) the norm's two factors in T, q_bucket and q_chunk (and without shared-QK k_bucket and k_chunk)
  /// in int32 per round, key_order per round, query_order, visible_keys, fallback and the
  /// reserved work items (4 indices each); per round bucket_start, plus counter and
  /// query_start; the hash tables; per lane (one per thread) the hashing scratch, the tiles
  /// (B_q = 64 queries, B_k = 256 keys), their bucket and chunk copies and counts.
  static long long workspace_bytes(const A& a, index_t n, index_t d_v, bool /*causal*/) {
    const long long t = sizeof(T);
    const long long ix = sizeof(index_t);
    const long long h = a.options().hashes;
    const long long b = a.bucket_count(n);
    const long long d = a.head_dim();
    const bool shared = a.options().shared_qk;
    typename A::hash_type::tables_type tables;
    a.hash_family().prepare(b, tables);
    const long long table_scalars = a.hash_family().scratch_size(tables);
    const long long per_token = (shared ? 4 : 2) * t + (shared ? 2 : 4) * h * 4 + h * ix + 3 * ix +
                                4 * ix;
    const long long per_lane = (table_scalars + 64 * d + 256 * d + 256 * d_v + 64 * 256 + 64 * d_v +
                                64) * t +
                               (2 * h * (64 + 256) + 256) * 4 + 64 * ix;
    return n * per_token + (h * (b + 1) + 2 * b + 1) * ix + table_scalars * t +
           detail::available_threads() * per_lane;
  }
};

/// Separate keys; round 0 gets a zero rotation, so every token is in bucket 0 there and that
/// round is plain chunked local attention, while the other rounds hash with random rotations.
/// The union of windows always holds the local one, so a causal first query sees its own key.
/// With Chunk = 5 the suites' cross-attention comparison does not apply: a cross-attention
/// query's position is floor(i N_k / N_q), so removing keys moves queries to other chunks.
template <class T, index_t Chunk, bool CrossPadding>
struct lsh_maker : lsh_maker_base<lsh_attention<T>> {
  static constexpr bool cross_padding_equivalence = CrossPadding;
  static constexpr bool large_sequences = Chunk >= 64;
  static lsh_attention<T> make(index_t head_dim) {
    lsh_attention<T> a(head_dim,
                       {.buckets = 4, .hashes = 3, .chunk = Chunk, .shared_qk = false, .seed = 5});
    a.hash_family().set_rotation(0, row_matrix<T>::Zero(head_dim, 2));
    return a;
  }
};

/// The default options with separate keys: hashing alone decides every window, so a query's
/// buckets may hold no key it can see (the fallback's case).
template <class T>
struct lsh_default_maker : lsh_maker_base<lsh_attention<T>> {
  static constexpr bool cross_padding_equivalence = false;
  static lsh_attention<T> make(index_t head_dim) { return lsh_attention<T>(head_dim, {.shared_qk = false}); }
};

/// Shared-QK (the library's default): keys are the normalised queries.
template <class T>
struct lsh_shared_maker : lsh_maker_base<lsh_attention<T>> {
  static constexpr bool shared_qk = true;
  static lsh_attention<T> make(index_t head_dim) {
    return lsh_attention<T>(head_dim, {.buckets = 4, .hashes = 3, .chunk = 5, .seed = 8});
  }
};

/// The default options and shared-QK, as users get them.
template <class T>
struct lsh_library_default_maker : lsh_maker_base<lsh_attention<T>> {
  static constexpr bool shared_qk = true;
  static lsh_attention<T> make(index_t head_dim) { return lsh_attention<T>(head_dim); }
};

/// The documented example hash family (lsh/example_hash_family.hpp) in the attention.
template <class T>
struct lsh_sign_maker : lsh_maker_base<lsh_attention<T, sign_projection_hash<T>>> {
  static constexpr bool cross_padding_equivalence = false;
  static lsh_attention<T, sign_projection_hash<T>> make(index_t head_dim) {
    return {sign_projection_hash<T>(head_dim, 4, 3), {.shared_qk = false}};
  }
  /// The same hyperplanes drawn in double (the float ones are them rounded): the extreme-values
  /// suite compares float with double where both hash every token alike.
  static lsh_attention<double, sign_projection_hash<double>> double_twin(
      const lsh_attention<T, sign_projection_hash<T>>& a, index_t /*n_keys*/) {
    return {sign_projection_hash<double>(a.head_dim(), 4, 3), {.shared_qk = false}};
  }
};

using lsh_makers =
    ::testing::Types<lsh_maker<float, 5, false>, lsh_maker<double, 5, false>,
                     lsh_maker<float, 64, true>, lsh_maker<double, 64, true>,
                     lsh_default_maker<float>, lsh_default_maker<double>, lsh_shared_maker<float>,
                     lsh_shared_maker<double>, lsh_library_default_maker<float>,
                     lsh_sign_maker<float>>;

/// One maker per distinct configuration kind (local first round, default separate keys,
/// shared-QK, the library's defaults, the example family): the suites whose checks do not
/// depend on the chunk length (determinism, allocation, bad input) run on these.
using lsh_core_makers =
    ::testing::Types<lsh_maker<float, 64, true>, lsh_maker<double, 5, false>,
                     lsh_default_maker<float>, lsh_shared_maker<double>,
                     lsh_library_default_maker<float>, lsh_sign_maker<float>>;

}  // namespace performer::test
