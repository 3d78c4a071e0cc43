/// @file core/detail/fp32_product.hpp
/// @brief C += A B in float, every product added to its sum by one fused multiply-add, along the
/// depth in order: performer's AVX-512 kernel, which reads both operands where they lie (Eigen
/// copies them into panels first), and a portable twin with std::fma that gives the same bits
/// for every result that is not a NaN (which NaN a sum of NaNs keeps is the hardware's and the
/// compiler's choice) (docs/algorithms.md §11).
#pragma once

#include <algorithm>
#include <cmath>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define PERFORMER_FP32_X86 1
#endif

#include "../types.hpp"
#include "register_tiles.hpp"
#include "transpose.hpp"

namespace performer::detail::fp32 {

/// The left operand, rows x depth: a(i, p) = data[i * row_step + p * depth_step]. A row-major
/// matrix has depth_step = 1; the transpose of one (a key block's features, for their state) has
/// row_step = 1.
struct lhs_view {
  const float* data = nullptr;
  index_t rows = 0, row_step = 0, depth_step = 0;
  [[nodiscard]] const float& at(index_t i, index_t p) const noexcept {
    return data[i * row_step + p * depth_step];
  }
};

/// The right operand, depth x cols, row-major with leading dimension ld >= cols: b(p, j) =
/// data[p * ld + j]. Nothing past column cols is read.
struct rhs_view {
  const float* data = nullptr;
  index_t depth = 0, cols = 0, ld = 0;
  [[nodiscard]] const float* row(index_t p) const noexcept { return data + p * ld; }
};

/// c (a.rows x b.cols, row-major, leading dimension ldc) += a b, or = a b without `accumulate`,
/// in standard C++: c_ij = fma(a_ip, b_pj, c_ij) for p = 0, 1, ... (from c_ij = +0 without
/// `accumulate`). The depth goes in the outer loop, so that where the build has FMA
/// instructions (x86-64-v3) g++ -O3 vectorises along b's rows; without them each product is a
/// call to fmaf. Each sum still takes its products in order.
inline void product_portable(const lhs_view& a, const rhs_view& b, float* c, index_t ldc,
                             bool accumulate = true) {
  if (!accumulate) {
    for (index_t i = 0; i < a.rows; ++i) std::fill_n(c + i * ldc, b.cols, 0.0f);
  }
  for (index_t p = 0; p < b.depth; ++p) {
    const float* row = b.row(p);
    for (index_t i = 0; i < a.rows; ++i) {
      const float x = a.at(i, p);
      float* out = c + i * ldc;
      for (index_t j = 0; j < b.cols; ++j) out[j] = std::fma(x, row[j], out[j]);
    }
  }
}

#ifdef PERFORMER_FP32_X86
#define PERFORMER_FP32_TARGET __attribute__((target("avx512f")))

/// Rows [i0, i0 + R), column registers [t0, t0 + T) and depth [p0, p1) of c += a b; `last`
/// masks the final register's columns, in b's loads as in c's, so no operand needs padding.
/// The R T sums stay in registers across the depth; they start from c, or from +0. Inlined by
/// force: compiled on its own inside the library, g++ 12 stored the sums to the stack at every
/// step of the depth, at less than half the rate (a favor_attention call took 28 ms, not 11).
template <std::size_t R, std::size_t T>
PERFORMER_FP32_TARGET __attribute__((always_inline)) inline void product_tile(
    const lhs_view& a, const rhs_view& b, float* c, index_t ldc, index_t i0, index_t t0, index_t p0,
    index_t p1, __mmask16 last, bool from_zero) {
  __m512 sum[R][T];
  const auto mask = [&](std::size_t t) {
    return t == T - 1 ? last : static_cast<__mmask16>(0xFFFF);
  };
  const auto at = [&](std::size_t r, std::size_t t) {
    return c + (i0 + static_cast<index_t>(r)) * ldc + 16 * (t0 + static_cast<index_t>(t));
  };
  for (std::size_t r = 0; r < R; ++r) {
    for (std::size_t t = 0; t < T; ++t) {
      sum[r][t] = from_zero ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(mask(t), at(r, t));
    }
  }
  for (index_t p = p0; p < p1; ++p) {
    const float* row = b.row(p) + 16 * t0;
    __m512 rhs[T];
    for (std::size_t t = 0; t < T; ++t) rhs[t] = _mm512_maskz_loadu_ps(mask(t), row + 16 * t);
    for (std::size_t r = 0; r < R; ++r) {
      const __m512 lhs = _mm512_set1_ps(a.at(i0 + static_cast<index_t>(r), p));
      for (std::size_t t = 0; t < T; ++t) sum[r][t] = _mm512_fmadd_ps(lhs, rhs[t], sum[r][t]);
    }
  }
  for (std::size_t r = 0; r < R; ++r) {
    for (std::size_t t = 0; t < T; ++t) _mm512_mask_storeu_ps(at(r, t), mask(t), sum[r][t]);
  }
}

/// Rows [i, a.rows) in tiles of R rows, then of 8, 4, 2 and 1 below R.
template <std::size_t R, std::size_t T>
PERFORMER_FP32_TARGET inline void product_rows(const lhs_view& a, const rhs_view& b, float* c,
                                               index_t ldc, index_t i, index_t t0, index_t p0,
                                               index_t p1, __mmask16 last, bool from_zero) {
  constexpr auto rows = static_cast<index_t>(R);
  for (; i + rows <= a.rows; i += rows) {
    product_tile<R, T>(a, b, c, ldc, i, t0, p0, p1, last, from_zero);
  }
  if constexpr (R > 1) {
    if (i < a.rows) {
      constexpr std::size_t next = R > 8 ? 8 : R > 4 ? 4 : R / 2;
      product_rows<next, T>(a, b, c, ldc, i, t0, p0, p1, last, from_zero);
    }
  }
}

/// Column registers [t0, t0 + T), the depth in spans of 128 rows of b (at most 40 KiB, which
/// stay in L1 across the rows); the sums pass through c between spans, which changes no bit.
template <std::size_t T>
PERFORMER_FP32_TARGET inline void product_columns(const lhs_view& a, const rhs_view& b, float* c,
                                                  index_t ldc, index_t t0, __mmask16 last,
                                                  bool accumulate) {
  constexpr index_t span = 128;
  for (index_t p0 = 0; p0 < b.depth; p0 += span) {
    const index_t p1 = std::min(p0 + span, b.depth);
    product_rows<tile_rows<T>, T>(a, b, c, ldc, 0, t0, p0, p1, last, p0 == 0 && !accumulate);
  }
}

/// Column registers in the groups for_column_groups makes.
PERFORMER_FP32_TARGET inline void product_avx512(const lhs_view& a, const rhs_view& b, float* c,
                                                 index_t ldc, bool accumulate = true) {
  const index_t registers = (b.cols + 15) / 16;
  const index_t tail = b.cols - 16 * (registers - 1);  // columns in the last register, 1..16
  const auto full = static_cast<__mmask16>(0xFFFF);
  const auto last = static_cast<__mmask16>((1u << tail) - 1u);
  for_column_groups(registers, [&](auto width, index_t t, bool holds_last) {
    product_columns<decltype(width)::value>(a, b, c, ldc, t, holds_last ? last : full, accumulate);
  });
}
#undef PERFORMER_FP32_TARGET
#endif

/// c (a.rows x b.cols floats, row-major, leading dimension ldc >= b.cols) += a b, a being
/// a.rows x b.depth; without `accumulate`, c = a b (c's old contents are not read). The AVX-512
/// kernel where the CPU runs it, else the portable code: the same bits either way, NaNs aside
/// (a NaN stays a NaN). Time
/// O(rows depth cols); allocates nothing.
inline void product(const lhs_view& a, const rhs_view& b, float* c, index_t ldc,
                    bool accumulate = true) {
  if (a.rows == 0 || b.cols == 0) return;
  if (b.depth == 0) {  // an empty sum: the kernel's span loop would not run
    for (index_t i = 0; i < a.rows && !accumulate; ++i) std::fill_n(c + i * ldc, b.cols, 0.0f);
    return;
  }
#ifdef PERFORMER_FP32_X86
  if (avx512f_available()) {
    product_avx512(a, b, c, ldc, accumulate);
    return;
  }
#endif
  product_portable(a, b, c, ldc, accumulate);
}

}  // namespace performer::detail::fp32
