/// @file lsh/hash_family.hpp
/// @brief The hash-family policy of LSH attention: what lsh_attention needs from a family of
/// locality-sensitive hash functions. angular_hash (random rotations, the Reformer's) is the
/// default; lsh/example_hash_family.hpp is a documented example model to start your own from.
#pragma once

#include <atomic>
#include <concepts>
#include <cstdint>

#include "../core/concepts.hpp"
#include "../core/types.hpp"

namespace performer {

/**
 * @brief A family of locality-sensitive hash functions: h rounds, each mapping a vector of
 * width d to one of b buckets, with vectors at a small angle likely to share a bucket.
 *
 * Requires, for `const H h`, `typename H::tables_type t`, a row `x` (d scalars), `b` buckets:
 * - `H::scalar_type`, a real_scalar;
 * - `h.rounds()`: h >= 1; `h.dim()`: d;
 * - `H::tables_type`, default-constructible: the functions for one bucket count, which the
 *   attention keeps in its workspace (so the family stays const and shareable by threads);
 * - `h.prepare(b, t)`: makes t hash into b buckets (b even, >= 2). It is called on every
 *   forward pass, so it must be cheap when t already holds this family's functions for b:
 *   tables must know which family state built them (angular_hash stamps them);
 * - `h.scratch_size(t)`: scalars of scratch `hash` needs per thread;
 * - `h.hash(t, x, buckets, scratch)`: writes round r's bucket of x, in [0, b), to buckets[r]
 *   for r < h. It must be a pure function of x and t, bit for bit: the same row gets the same
 *   buckets on any thread and wherever it sits in memory (no reductions whose order follows
 *   alignment), so that results do not depend on the thread count.
 * Vectors of norm 0 must hash without dividing by zero (angular_hash sends them to bucket 0).
 */
template <class H>
concept hash_family =
    requires { typename H::scalar_type; typename H::tables_type; } &&
    real_scalar<typename H::scalar_type> && std::default_initializable<typename H::tables_type> &&
    requires(const H& h, index_t b, typename H::tables_type& t, const typename H::tables_type& ct,
             const typename H::scalar_type* x, std::int32_t* buckets,
             typename H::scalar_type* scratch) {
      { h.rounds() } -> std::same_as<index_t>;
      { h.dim() } -> std::same_as<index_t>;
      { h.prepare(b, t) } -> std::same_as<void>;
      { h.scratch_size(ct) } -> std::same_as<index_t>;
      { h.hash(ct, x, buckets, scratch) } -> std::same_as<void>;
    };

namespace detail {

/// A process-wide fresh number, so that tables built from one state of a hash family are
/// never mistaken for another's (two families, or one family before and after a redraw).
[[nodiscard]] inline std::uint64_t next_hash_stamp() noexcept {
  static std::atomic<std::uint64_t> counter{0};
  return ++counter;
}

}  // namespace detail
}  // namespace performer
