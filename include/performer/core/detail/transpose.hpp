/// @file core/detail/transpose.hpp
/// @brief Transposing matrices of 4-byte elements (floats, pairs of bfloat16) into the layouts
/// performer's own products read, in 16 x 16 blocks held in AVX-512 registers where the CPU runs
/// AVX-512F; and that check.
#pragma once

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define PERFORMER_TRANSPOSE_X86 1
#endif

#include "../types.hpp"

namespace performer::detail {

#ifdef PERFORMER_TRANSPOSE_X86
/// Whether the CPU and OS run AVX-512F (the GCC and clang runtime checks include the OS's
/// saving of the registers).
[[nodiscard]] inline bool cpu_runs_avx512f() noexcept {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f");
}

#define PERFORMER_TRANSPOSE_TARGET __attribute__((target("avx512f")))

/// to[i * width + p] = from[i + p * step] for i, p < 16, for 4-byte elements: 16 loads along the
/// rows, a transpose in registers (unpacks of 32 and 64 bits, then of 128-bit lanes twice) and 16
/// stores along the pairs. The maskz forms with every lane: the plain ones start from
/// _mm512_undefined (GCC 12: maybe-uninitialised).
template <class E>
PERFORMER_TRANSPOSE_TARGET inline void transpose_block(const E* from, index_t step, E* to,
                                                       index_t width) {
  static_assert(sizeof(E) == 4);
  constexpr __mmask16 all = 0xFFFF;
  constexpr __mmask8 all64 = 0xFF;
  __m512i r[16], t[16];
  for (index_t p = 0; p < 16; ++p) r[p] = _mm512_loadu_si512(from + p * step);
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_maskz_unpacklo_epi32(all, r[i], r[i + 1]);
    t[i + 1] = _mm512_maskz_unpackhi_epi32(all, r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_maskz_unpacklo_epi64(all64, t[i], t[i + 2]);
    r[i + 1] = _mm512_maskz_unpackhi_epi64(all64, t[i], t[i + 2]);
    r[i + 2] = _mm512_maskz_unpacklo_epi64(all64, t[i + 1], t[i + 3]);
    r[i + 3] = _mm512_maskz_unpackhi_epi64(all64, t[i + 1], t[i + 3]);
  }
  for (int i = 0; i < 4; ++i) {
    t[i] = _mm512_maskz_shuffle_i32x4(all, r[i], r[i + 4], 0x88);
    t[i + 4] = _mm512_maskz_shuffle_i32x4(all, r[i], r[i + 4], 0xDD);
    t[i + 8] = _mm512_maskz_shuffle_i32x4(all, r[i + 8], r[i + 12], 0x88);
    t[i + 12] = _mm512_maskz_shuffle_i32x4(all, r[i + 8], r[i + 12], 0xDD);
  }
  for (int i = 0; i < 4; ++i) {
    r[i] = _mm512_maskz_shuffle_i32x4(all, t[i], t[i + 8], 0x88);
    r[i + 8] = _mm512_maskz_shuffle_i32x4(all, t[i], t[i + 8], 0xDD);
    r[i + 4] = _mm512_maskz_shuffle_i32x4(all, t[i + 4], t[i + 12], 0x88);
    r[i + 12] = _mm512_maskz_shuffle_i32x4(all, t[i + 4], t[i + 12], 0xDD);
  }
  for (index_t i = 0; i < 16; ++i) _mm512_storeu_si512(to + i * width, r[i]);
}
#undef PERFORMER_TRANSPOSE_TARGET
#else
[[nodiscard]] inline bool cpu_runs_avx512f() noexcept { return false; }
#endif

/// cpu_runs_avx512f(), checked once.
[[nodiscard]] inline bool avx512f_available() noexcept {
  static const bool available = cpu_runs_avx512f();
  return available;
}

/// to[i * width + p] = from[i + p * step] for i < rows, p < cols, 4-byte elements: a matrix
/// whose rows are `step` apart read down its columns. With `blocks` (by default where the CPU
/// runs AVX-512F), in 16 x 16 blocks transposed in registers and only the edges one by one:
/// element by element the copy took 29% of the AMX product's time in a causal pass, and
/// Eigen's transpose of a causal block's key features 21% of a float causal pass. O(rows cols).
template <class E>
inline void transpose_32(const E* from, index_t step, index_t rows, index_t cols, E* to,
                         index_t width, bool blocks = avx512f_available()) noexcept {
  static_assert(sizeof(E) == 4);
  index_t block_rows = 0, block_cols = 0;
#ifdef PERFORMER_TRANSPOSE_X86
  if (blocks) {
    block_rows = rows / 16 * 16;
    block_cols = cols / 16 * 16;
    for (index_t i0 = 0; i0 < block_rows; i0 += 16) {
      for (index_t p0 = 0; p0 < block_cols; p0 += 16) {
        transpose_block(from + i0 + p0 * step, step, to + i0 * width + p0, width);
      }
    }
  }
#else
  (void)blocks;
#endif
  for (index_t p = 0; p < cols; ++p) {
    for (index_t i = p < block_cols ? block_rows : 0; i < rows; ++i) {
      to[i * width + p] = from[i + p * step];
    }
  }
}

}  // namespace performer::detail
