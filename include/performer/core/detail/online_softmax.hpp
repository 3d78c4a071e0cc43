/// @file core/detail/online_softmax.hpp
/// @brief The running-maximum rescaling of online softmax (docs/algorithms.md §1.1), shared by
/// every mechanism that accumulates exponentials in pieces: the tiled exact kernel (per query,
/// over key tiles), LSH (per query, over windows and rounds) and FAVOR (per state, over key
/// blocks, chunks, segments and decoding steps).
///
/// Sums of exp(x_j) are kept relative to a running maximum c: the carried sums hold
/// sum_j exp(x_j - c). When a new piece raises the maximum to c' > c, the carried sums are
/// multiplied by exp(c - c'); an empty state has c = -inf and multiplies by 0.
#pragma once

#include <cmath>
#include <limits>

namespace performer::detail {

/// exp(x - shift), with x = -inf (a masked entry, or a state holding nothing yet) mapped to
/// exactly 0: Eigen's vectorised exp clamps and would return a tiny positive number instead.
template <class S>
[[nodiscard]] S shifted_exp(S x, S shift) {
  return x == -std::numeric_limits<S>::infinity() ? S(0) : std::exp(x - shift);
}

/**
 * @brief Raises a running maximum to max(running, candidate) and returns the factor the sums
 * carried relative to the old maximum must be multiplied by to be relative to the new one:
 * 1 when the maximum did not rise, exp(old - new) when it did, 0 when nothing was carried.
 */
template <class S>
[[nodiscard]] S raise_running_max(S& running, S candidate) {
  if (!(candidate > running)) return S(1);
  const S factor = shifted_exp(running, candidate);
  running = candidate;
  return factor;
}

}  // namespace performer::detail
