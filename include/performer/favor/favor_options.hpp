/// @file favor/favor_options.hpp
/// @brief Blocking and parallel layout of favor_attention.
#pragma once

#include "../core/types.hpp"

namespace performer {

/// Which code runs favor_attention's O(N m d) and O(N M d_v) products when its scalar and its
/// sums are float (docs/algorithms.md §11). Either way the bits are the same on any thread
/// count; they differ between the two.
enum class favor_products {
  /// performer's AVX-512 kernels (projection, key state, output) where the CPU runs AVX-512F,
  /// else Eigen's. The kernels read the operands where they lie; Eigen copies them into panels.
  automatic,
  /// Eigen's products everywhere (and always for double).
  eigen,
};

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
  /// bench_gradient's favor_backward_chunk/C, N = 16,384, one thread: 106 ms against 158 ms at
  /// 8, 108 ms at 32 and 124 ms at 64).
  index_t backward_chunk = 16;
  /// Most segments the bidirectional path splits a sequence into; their key states are summed
  /// in parallel (OpenMP). 1 disables the split. The causal path does not use it.
  index_t segments = 2;
  /// Fewest tokens per bidirectional segment: sequences shorter than 2 x this are never split.
  /// A segment of 4,096 keys is about a millisecond of work at d = 64, m = 256, far above the
  /// cost of waking a thread; 32,768 (before stop 32) left the key state of 16,384 tokens on
  /// one thread, and two threads 1.14 to 1.22 times as fast as one instead of 1.9
  /// (bench_favor_bf16; README, "Against PyTorch, one head").
  index_t min_segment = 4096;
  /// Blocks per wave of the causal path (W; last, so that positional initialisers written
  /// before it existed keep their meaning): its blocks start from an empty state and run in
  /// parallel, then a prefix over their key states gives each the keys before it; 0: one block
  /// per thread. The bits depend on N and the other options only, never on W or the thread
  /// count. Each block of a wave holds B (M + d_v) + (B / C) M d_v of workspace, which a later
  /// phase reads back: one block per thread kept it in cache and was 2% to 7% faster than the
  /// former default of 8 on two threads (docs/algorithms.md §2.4).
  index_t wave_blocks = 0;
  /// Least work per causal block, B M (d + d_v) multiply-adds, for which the waves run on
  /// several threads; below it the blocks run in order on one. Waking threads for microseconds
  /// of work costs more than it saves, and far more on busy cores (a tiny model's causal tests
  /// ran 1,000 times slower on two oversubscribed threads). The bits are the same either way.
  index_t parallel_block_work = index_t{1} << 20;
  /// Whose products run a float call (favor_products).
  favor_products products = favor_products::automatic;
};

}  // namespace performer
