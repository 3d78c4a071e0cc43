/// @file favor/favor_options.hpp
/// @brief Blocking and parallel layout of favor_attention.
#pragma once

#include "../core/types.hpp"

namespace performer {

/**
 * @brief Blocking and parallel layout of favor_attention. None of these changes the
 * estimator, only the order of floating-point sums (and so the last bits of the result).
 */
struct favor_options {
  /// Rows per feature block (B): keys and queries are mapped B rows at a time.
  index_t block = 256;
  /// Tokens per chunk of the causal path (C <= B, else B): a masked C x C product within a
  /// chunk. Smaller chunks do less work (2 C (M + d_v) flops per token on top of the four
  /// products) but in smaller matrix products.
  index_t chunk = 32;
  /// Tokens per chunk of the causal backward pass (favor_gradient.hpp), whose intra-chunk work
  /// per token is about twice the forward's: 16 measured fastest at d = 64, m = 256 (bench
  /// bench_gradient: 115 ms against 121 ms at 32 and 122 ms at 8, N = 16,384, one thread).
  index_t backward_chunk = 16;
  /// Most segments a sequence is split into; segments run in parallel (OpenMP). The causal
  /// path then maps the keys before each segment boundary twice (once to get the segment's
  /// carried state, once in its own pass): about 25% more work at 2 segments, in exchange for
  /// using two cores on one head. 1 disables the split.
  index_t segments = 2;
  /// Fewest tokens per segment: sequences shorter than 2 x this are never split.
  index_t min_segment = 32768;
};

}  // namespace performer
