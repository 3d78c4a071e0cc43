/// @file core/detail/bf16_pack.hpp
/// @brief Rounding float rows to bfloat16 pairs, the operands of core/detail/bf16_product.hpp:
/// in standard C++, or with AVX512-BF16's conversion where the CPU has it (the same bits).
#pragma once

#include <cstdint>
#include <type_traits>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define PERFORMER_BF16_PACK_X86 1
#endif

#include "../bfloat16.hpp"
#include "../types.hpp"
#include "transpose.hpp"

namespace performer::detail::bf16 {

/// Two bfloat16 values adjacent along the depth: element 2p in the low half, 2p + 1 in the high.
using pair = std::uint32_t;

[[nodiscard]] constexpr pair pack(float even, float odd) noexcept {
  return static_cast<pair>(round(even)) | (static_cast<pair>(round(odd)) << 16);
}

/// pack_row, round_row and pack_two_rows in standard C++ (any CPU); the compiler vectorises them.
inline void pack_row_portable(const float* x, index_t n, pair* out) noexcept {
  for (index_t p = 0; p < n / 2; ++p) out[p] = pack(x[2 * p], x[2 * p + 1]);
  if (n % 2 != 0) out[n / 2] = pack(x[n - 1], 0.0f);
}

inline void round_row_portable(const float* x, index_t n, float* out) noexcept {
  for (index_t i = 0; i < n; ++i) out[i] = widen(round(x[i]));
}

inline void pack_two_rows_portable(const float* a, float wa, const float* b, float wb, index_t n,
                                   pair* out, float* sum) noexcept {
  const auto run = [&](auto with_odd, auto with_sum) {
    for (index_t i = 0; i < n; ++i) {
      const std::uint16_t even = round(a[i] * wa);
      const std::uint16_t odd = with_odd ? round(b[i] * wb) : std::uint16_t{0};
      if constexpr (with_sum) sum[i] += widen(even) + widen(odd);
      out[i] = static_cast<pair>(even) | (static_cast<pair>(odd) << 16);
    }
  };
  if (b != nullptr) {
    sum != nullptr ? run(std::true_type{}, std::true_type{})
                   : run(std::true_type{}, std::false_type{});
  } else {
    sum != nullptr ? run(std::false_type{}, std::true_type{})
                   : run(std::false_type{}, std::false_type{});
  }
}

#ifdef PERFORMER_BF16_PACK_X86
#define PERFORMER_BF16_PACK_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

// The maskz forms with every lane: the plain ones start from _mm512_undefined, which GCC 12 flags
// as maybe-uninitialised.
constexpr __mmask16 all = 0xFFFF;

/// Each lane's low 16 bits moved to its high half.
PERFORMER_BF16_PACK_TARGET inline __m512i shift_high(__m512i x) noexcept {
  return _mm512_maskz_slli_epi32(all, x, 16);
}

/// 16 floats to bfloat16 bits in the low halves of 16 lanes. VCVTNEPS2BF16 rounds to nearest
/// even, reads subnormals as zero and quietens NaNs: round()'s steps, in one instruction instead
/// of about twenty.
PERFORMER_BF16_PACK_TARGET inline __m512i round16(__m512 x) noexcept {
  const __m256bh h = _mm512_cvtneps_pbh(x);
  // A vector cast, not std::bit_cast: a call returning a 256-bit vector outside this target
  // would change the ABI (clang refuses it in a baseline build).
  return _mm512_maskz_cvtepu16_epi32(all, (__m256i)h);
}

/// A mask of the first min(n, 16) lanes (none for n <= 0).
constexpr __mmask16 first(index_t n) noexcept {
  return static_cast<__mmask16>(n >= 16 ? 0xFFFFu : n <= 0 ? 0u : (1u << n) - 1u);
}

PERFORMER_BF16_PACK_TARGET inline void pack_row_avx512(const float* x, index_t n,
                                                       pair* out) noexcept {
  // Even and odd elements come apart by a shuffle of 32 floats; a row of odd length gets a zero.
  const __m512i evens = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
  const __m512i odds = _mm512_add_epi32(evens, _mm512_set1_epi32(1));
  for (index_t i = 0; i < n; i += 32) {
    const index_t left = n - i;
    const __m512 lo = _mm512_maskz_loadu_ps(first(left), x + i);
    const __m512 hi = _mm512_maskz_loadu_ps(first(left - 16), x + i + 16);
    const __m512i even = round16(_mm512_permutex2var_ps(lo, evens, hi));
    const __m512i odd = round16(_mm512_permutex2var_ps(lo, odds, hi));
    _mm512_mask_storeu_epi32(out + i / 2, first((left + 1) / 2),
                             _mm512_or_si512(even, shift_high(odd)));
  }
}

PERFORMER_BF16_PACK_TARGET inline void round_row_avx512(const float* x, index_t n,
                                                        float* out) noexcept {
  for (index_t i = 0; i < n; i += 16) {
    const __mmask16 m = first(n - i);
    const __m512i bits = shift_high(round16(_mm512_maskz_loadu_ps(m, x + i)));
    _mm512_mask_storeu_ps(out + i, m, _mm512_castsi512_ps(bits));
  }
}

PERFORMER_BF16_PACK_TARGET inline void pack_two_rows_avx512(const float* a, float wa,
                                                            const float* b, float wb, index_t n,
                                                            pair* out, float* sum) noexcept {
  const __m512 va = _mm512_set1_ps(wa);
  const __m512 vb = _mm512_set1_ps(wb);
  for (index_t i = 0; i < n; i += 16) {
    const __mmask16 m = first(n - i);
    const __m512i even = round16(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, a + i), va));
    const __m512i odd = b != nullptr ? round16(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, b + i), vb))
                                     : _mm512_setzero_si512();
    const __m512i high = shift_high(odd);
    if (sum != nullptr) {
      const __m512 both =
          _mm512_add_ps(_mm512_castsi512_ps(shift_high(even)), _mm512_castsi512_ps(high));
      _mm512_mask_storeu_ps(sum + i, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, sum + i), both));
    }
    _mm512_mask_storeu_epi32(out + i, m, _mm512_or_si512(even, high));
  }
}

#undef PERFORMER_BF16_PACK_TARGET
#endif

/// Whether the packers take AVX512-BF16's conversion: on a CPU that has it, whatever backend
/// the products use, since the bits are the same.
[[nodiscard]] inline bool packs_with_avx512() noexcept {
  return bf16_available(bf16_backend::avx512_bf16);
}

/// x[0, n) rounded to bfloat16 as n / 2 pairs, rounded up, in out: a row of a row-major left
/// operand, zero after an odd n. O(n).
inline void pack_row(const float* x, index_t n, pair* out) noexcept {
#ifdef PERFORMER_BF16_PACK_X86
  if (packs_with_avx512()) return pack_row_avx512(x, n, out);
#endif
  pack_row_portable(x, n, out);
}

/// out[i] = x[i] rounded to bfloat16 and widened back to float (exact), for i < n. O(n).
inline void round_row(const float* x, index_t n, float* out) noexcept {
#ifdef PERFORMER_BF16_PACK_X86
  if (packs_with_avx512()) return round_row_avx512(x, n, out);
#endif
  round_row_portable(x, n, out);
}

/// out[i] = the pair (a[i] wa, b[i] wb), each rounded to bfloat16, for i < n; sum[i] += the two
/// rounded values unless sum is null. Two rows of a pair-major left operand (or one row of pairs
/// of a packed_rhs); b = nullptr: a zero second row. O(n).
inline void pack_two_rows(const float* a, float wa, const float* b, float wb, index_t n, pair* out,
                          float* sum) noexcept {
#ifdef PERFORMER_BF16_PACK_X86
  if (packs_with_avx512()) return pack_two_rows_avx512(a, wa, b, wb, n, out, sum);
#endif
  pack_two_rows_portable(a, wa, b, wb, n, out, sum);
}

/// transpose_32 for pairs: a pair-major operand (rows contiguous, pairs `step` apart) laid out
/// with each row's pairs contiguous, as an AMX panel or a packed_rhs of transposed rows needs.
/// By default in 16 x 16 blocks where the CPU has AVX512-BF16. O(rows cols).
inline void transpose_pairs(const pair* from, index_t step, index_t rows, index_t cols, pair* to,
                            index_t width, bool blocks = packs_with_avx512()) noexcept {
  transpose_32(from, step, rows, cols, to, width, blocks);
}

}  // namespace performer::detail::bf16
