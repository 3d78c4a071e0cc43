/// @file lsh/lsh_options.hpp
/// @brief Bucketing and chunking parameters of lsh_attention, and the number of buckets a
/// sequence gets when it is left to the library (docs/algorithms.md §6.9).
#pragma once

#include <algorithm>
#include <cstdint>

#include "../core/types.hpp"

namespace performer {

/// Parameters of lsh_attention (validated by its constructor).
struct lsh_options {
  /// b: buckets per hash round; even and >= 2, or 0 (the default) for b chosen from the
  /// number of keys: about 2 N_k / chunk, as in the Reformer paper and trax, so that the work
  /// per query stays constant as N grows (see lsh_bucket_count).
  index_t buckets = 0;
  /// h: hash rounds (used to build the default hash family); each adds candidate keys.
  index_t hashes = 4;
  /// c: keys per chunk; a query sees its own chunk of its bucket and the one before.
  index_t chunk = 64;
  /// Reformer's shared-QK attention: the keys are the normalised queries and `k` is ignored.
  bool shared_qk = true;
  /// Seeds the default hash family's random rotations.
  std::uint64_t seed = 0;
};

/// The most buckets a round may have (bucket indices are stored in 32 bits).
inline constexpr index_t lsh_max_buckets = index_t{1} << 30;

/**
 * @brief The number of buckets lsh_attention uses for n_keys keys: options.buckets when set,
 * else 2 n_keys / chunk rounded to the nearest power of two (at least 2). With that many
 * buckets a bucket holds about chunk / 2 keys whatever N is, so a query's window, and the
 * work per query, do not grow with N (docs/algorithms.md §6.9).
 */
[[nodiscard]] inline index_t lsh_bucket_count(const lsh_options& options, index_t n_keys) {
  if (options.buckets > 0) return options.buckets;
  const double target = 2.0 * static_cast<double>(n_keys) / static_cast<double>(options.chunk);
  index_t b = 2;
  // The nearest power of two in log scale: go up while the next one is closer.
  while (b < lsh_max_buckets && static_cast<double>(b) * static_cast<double>(b) * 2.0 <= target * target) {
    b *= 2;
  }
  return b;
}

}  // namespace performer
