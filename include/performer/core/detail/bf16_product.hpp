/// @file core/detail/bf16_product.hpp
/// @brief C += A B with bfloat16 A and B and float C, as VDPBF16PS computes it: along the depth,
/// pairs of products, the odd one first, each added to the float sum with one rounding, bfloat16
/// subnormals read as zero and float subnormal sums flushed to zero. The portable backend follows
/// the same steps with std::fma, so the two give the same bits; AMX tiles sum in an order of
/// their own, within the same error bound (docs/algorithms.md §10).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define PERFORMER_BF16_X86 1
#endif

#include "../bfloat16.hpp"
#include "../types.hpp"
#include "aligned_buffer.hpp"
#include "bf16_pack.hpp"
#include "register_tiles.hpp"

namespace performer::detail::bf16 {

using detail::aligned_buffer;

/// The right operand, K x n, packed as ceil(K / 2) rows of pairs, each row padded to a multiple
/// of 16 columns with zeros (one AVX-512 register of float sums), and zero rows up to a multiple
/// of 16 rows (one AMX tile's depth), then 16 pairs more: an AMX tile of the last 16 columns
/// may read past the row's end, into columns whose sums are not kept. O(K n) memory.
struct packed_rhs {
  aligned_buffer<pair> pairs;
  index_t depth = 0, cols = 0, stride = 0;

  [[nodiscard]] index_t depth_pairs() const noexcept { return (depth + 1) / 2; }
  [[nodiscard]] index_t tile_pairs() const noexcept { return (depth_pairs() + 15) / 16 * 16; }
  [[nodiscard]] const pair* row(index_t p) const noexcept { return pairs.data() + p * stride; }

  /// Shapes the operand as depth_ x cols_ with zero padding, for a caller that then fills every
  /// row p < depth_pairs(), columns [0, cols), itself (row(p)). Allocates only when the shape
  /// grows, and zeroes only when it changes: the fills never touch the padding (a per-chunk
  /// state of 41 KiB was zeroed, then overwritten, for every chunk of a causal pass).
  void reset(index_t depth_, index_t cols_) {
    if (depth_ == depth && cols_ == cols && !pairs.empty()) return;
    depth = depth_;
    cols = cols_;
    stride = (cols + 15) / 16 * 16;
    pairs.assign(static_cast<std::size_t>(tile_pairs() * stride + 16), 0);
  }
  [[nodiscard]] pair* row(index_t p) noexcept { return pairs.data() + p * stride; }

  /// Packs b(k, j) for k < depth, j < cols (an odd depth gets a zero last row). Allocates only
  /// when the shape grows.
  template <class Get>
  void assign(index_t depth_, index_t cols_, Get&& b) {
    reset(depth_, cols_);
    for (index_t p = 0; p < depth_pairs(); ++p) {
      for (index_t j = 0; j < cols; ++j) {
        const float odd = 2 * p + 1 < depth ? static_cast<float>(b(2 * p + 1, j)) : 0.0f;
        pairs[static_cast<std::size_t>(p * stride + j)] =
            pack(static_cast<float>(b(2 * p, j)), odd);
      }
    }
  }
};

/// The left operand, rows x K: pair p of row i is at data[i * row_step + p * pair_step]. A
/// row-major bfloat16 matrix has row_step = ld / 2, pair_step = 1; a pair-major one (pairs of
/// rows interleaved, as the key features are stored) has row_step = 1, pair_step = rows.
struct lhs_view {
  const pair* data = nullptr;
  index_t rows = 0, row_step = 0, pair_step = 0;
  [[nodiscard]] pair at(index_t i, index_t p) const noexcept {
    return data[i * row_step + p * pair_step];
  }
};

/// A float with the subnormals flushed to a zero of the same sign (VDPBF16PS's FTZ and DAZ).
[[nodiscard]] inline float flush(float x) noexcept {
  return std::fabs(x) < std::numeric_limits<float>::min() ? std::copysign(0.0f, x) : x;
}

/// c (rows x b.cols, row-major, leading dimension ldc) += a b (= a b without `accumulate`), in
/// standard C++. The pairs go in the outer loop, so each row of b is widened once; every sum
/// still takes its pairs in order.
inline void product_portable(const lhs_view& a, const packed_rhs& b, float* c, index_t ldc,
                             bool accumulate = true) {
  const index_t cols = b.cols;
  if (!accumulate) {
    for (index_t i = 0; i < a.rows; ++i) std::fill_n(c + i * ldc, cols, 0.0f);
  }
  std::vector<float> odd_values(static_cast<std::size_t>(cols)), even_values(odd_values.size());
  float* odd = odd_values.data();
  float* even = even_values.data();
  for (index_t p = 0; p < b.depth_pairs(); ++p) {
    const pair* row = b.row(p);
    for (index_t j = 0; j < cols; ++j) {
      odd[j] = flush(widen(static_cast<std::uint16_t>(row[j] >> 16)));
      even[j] = flush(widen(static_cast<std::uint16_t>(row[j] & 0xFFFFu)));
    }
    for (index_t i = 0; i < a.rows; ++i) {
      const pair w = a.at(i, p);
      const float a_odd = flush(widen(static_cast<std::uint16_t>(w >> 16)));
      const float a_even = flush(widen(static_cast<std::uint16_t>(w & 0xFFFFu)));
      float* out = c + i * ldc;
      for (index_t j = 0; j < cols; ++j) {
        out[j] = flush(std::fma(a_even, even[j], flush(std::fma(a_odd, odd[j], out[j]))));
      }
    }
  }
}

#ifdef PERFORMER_BF16_X86
#define PERFORMER_BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

/// The pairs [p0, p1) of rows [i0, i0 + R) and column registers [t0, t0 + T) of c += a b;
/// `last` masks the final register's columns when it passes b.cols. R T sums stay in registers
/// across the pairs; they start from c, or from zero when `from_zero`.
template <std::size_t R, std::size_t T>
PERFORMER_BF16_TARGET inline void product_tile(const lhs_view& a, const packed_rhs& b, float* c,
                                               index_t ldc, index_t i0, index_t t0, index_t p0,
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
    const pair* row = b.row(p) + 16 * t0;
    __m512bh rhs[T];
    for (std::size_t t = 0; t < T; ++t) rhs[t] = (__m512bh)_mm512_loadu_si512(row + 16 * t);
    for (std::size_t r = 0; r < R; ++r) {
      const pair w = a.at(i0 + static_cast<index_t>(r), p);
      const auto lhs = (__m512bh)_mm512_set1_epi32(static_cast<int>(w));
      for (std::size_t t = 0; t < T; ++t) sum[r][t] = _mm512_dpbf16_ps(sum[r][t], lhs, rhs[t]);
    }
  }
  for (std::size_t r = 0; r < R; ++r) {
    for (std::size_t t = 0; t < T; ++t) _mm512_mask_storeu_ps(at(r, t), mask(t), sum[r][t]);
  }
}

/// The rows [i, a.rows) of column registers [t0, t0 + T) and pairs [p0, p1), in tiles of R
/// rows, then of 8, 4, 2 and 1 below R: three or four tiles at most for the rest.
template <std::size_t R, std::size_t T>
PERFORMER_BF16_TARGET inline void product_rows(const lhs_view& a, const packed_rhs& b, float* c,
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

/// Column registers [t0, t0 + T) of c += a b. The depth goes in spans of 128 pairs, so that
/// the span of b (at most 40 KiB) stays in L1 across the rows; the sums go through c between
/// spans, which leaves every addition and its order as they were.
template <std::size_t T>
PERFORMER_BF16_TARGET inline void product_columns(const lhs_view& a, const packed_rhs& b, float* c,
                                                  index_t ldc, index_t t0, __mmask16 last,
                                                  bool accumulate) {
  constexpr index_t span = 128;
  for (index_t p0 = 0; p0 < b.depth_pairs(); p0 += span) {
    const index_t p1 = std::min(p0 + span, b.depth_pairs());
    product_rows<tile_rows<T>, T>(a, b, c, ldc, 0, t0, p0, p1, last, p0 == 0 && !accumulate);
  }
}

/// Column registers in the groups for_column_groups makes.
PERFORMER_BF16_TARGET inline void product_avx512(const lhs_view& a, const packed_rhs& b, float* c,
                                                 index_t ldc, bool accumulate = true) {
  const index_t registers = b.stride / 16;
  const index_t tail = b.cols - 16 * (registers - 1);  // columns in the last register, 1..16
  const auto full = static_cast<__mmask16>(0xFFFF);
  const auto last = static_cast<__mmask16>((1u << tail) - 1u);
  for_column_groups(registers, [&](auto width, index_t t, bool holds_last) {
    product_columns<decltype(width)::value>(a, b, c, ldc, t, holds_last ? last : full,
                                            accumulate);
  });
}
#undef PERFORMER_BF16_TARGET

/// AMX tile configuration (palette 1): tiles 0 to 7 of 16 rows x 64 bytes. The product uses 0 to 3
/// for a 32 x 32 block of sums, 4 and 5 for two 16-row slices of the left operand, 6 and 7 for
/// two 16-column slices of the right one.
struct alignas(64) tile_config {
  std::uint8_t palette = 1, start_row = 0;
  std::uint8_t reserved[14] = {};
  std::uint16_t bytes_per_row[16] = {64, 64, 64, 64, 64, 64, 64, 64};
  std::uint8_t rows[16] = {16, 16, 16, 16, 16, 16, 16, 16};
};

#define PERFORMER_AMX_TARGET __attribute__((target("amx-tile,amx-bf16")))

/// c += a b on AMX tiles, by 32 x 32 blocks of c. The depth goes in spans of 128 pairs, each span
/// of b (at most 128 KiB for 256 columns) serving every block of c before the next, so a long
/// depth reads b from memory once instead of once per 32 rows; the sums pass through c between
/// spans as floats, which changes no bit. Each span of the left operand is copied, 32 rows at a
/// time, into a zero-padded panel (a tile row must be 64 contiguous bytes); blocks of c on the
/// edges go through a 32 x 32 scratch block. Allocates those two buffers once per thread.
PERFORMER_AMX_TARGET inline void product_amx(const lhs_view& a, const packed_rhs& b, float* c,
                                             index_t ldc, bool accumulate = true) {
  constexpr index_t edge = 32, span = 128;
  thread_local aligned_buffer<pair> panel;
  thread_local aligned_buffer<float> scratch;
  panel.resize(static_cast<std::size_t>(edge * span));
  scratch.resize(static_cast<std::size_t>(edge * edge));
  const tile_config config;
  _tile_loadconfig(&config);
  const auto bytes = [](index_t n) { return static_cast<long>(n * 4); };
  for (index_t s0 = 0; s0 < b.tile_pairs(); s0 += span) {
    const index_t width = std::min(span, b.tile_pairs() - s0);  // a multiple of 16
    const index_t filled = std::min(width, b.depth_pairs() - s0);
    const bool from_zero = s0 == 0 && !accumulate;
    for (index_t i0 = 0; i0 < a.rows; i0 += edge) {
      const index_t rows = std::min(edge, a.rows - i0);
      // Zeros only where the copy leaves the panel's rows short: past the depth or the rows.
      if (rows < edge || filled < width) {
        std::fill_n(panel.begin(), edge * width, pair{0});
      }
      // Along whichever of a's steps is 1: the other order reads a cache line per pair.
      if (a.pair_step == 1) {
        for (index_t r = 0; r < rows; ++r) {
          std::copy_n(&a.data[(i0 + r) * a.row_step + s0], filled, &panel[r * width]);
        }
      } else {
        // Pair-major (the fold's keys): its rows are contiguous, the panel's pairs are.
        transpose_pairs(&a.data[i0 + s0 * a.pair_step], a.pair_step, rows, filled, panel.data(),
                        width);
      }
      for (index_t j0 = 0; j0 < b.cols; j0 += edge) {
        const index_t cols = std::min(edge, b.cols - j0);
        const bool inside = rows == edge && cols == edge;
        float* block = inside ? c + i0 * ldc + j0 : scratch.data();
        const index_t ld = inside ? ldc : edge;
        if (!inside) {
          std::fill(scratch.begin(), scratch.end(), 0.0f);
          for (index_t r = 0; r < rows && !from_zero; ++r) {
            std::copy_n(c + (i0 + r) * ldc + j0, cols, block + r * ld);
          }
        }
        if (from_zero) {
          _tile_zero(0);
          _tile_zero(1);
          _tile_zero(2);
          _tile_zero(3);
        } else {
          _tile_loadd(0, block, bytes(ld));
          _tile_loadd(1, block + 16, bytes(ld));
          _tile_loadd(2, block + 16 * ld, bytes(ld));
          _tile_loadd(3, block + 16 * ld + 16, bytes(ld));
        }
        for (index_t p0 = 0; p0 < width; p0 += 16) {
          _tile_loadd(4, panel.data() + p0, bytes(width));
          _tile_loadd(5, panel.data() + 16 * width + p0, bytes(width));
          _tile_loadd(6, b.row(s0 + p0) + j0, bytes(b.stride));
          _tile_loadd(7, b.row(s0 + p0) + j0 + 16, bytes(b.stride));
          _tile_dpbf16ps(0, 4, 6);
          _tile_dpbf16ps(1, 4, 7);
          _tile_dpbf16ps(2, 5, 6);
          _tile_dpbf16ps(3, 5, 7);
        }
        _tile_stored(0, block, bytes(ld));
        _tile_stored(1, block + 16, bytes(ld));
        _tile_stored(2, block + 16 * ld, bytes(ld));
        _tile_stored(3, block + 16 * ld + 16, bytes(ld));
        if (!inside) {
          for (index_t r = 0; r < rows; ++r) {
            std::copy_n(block + r * ld, cols, c + (i0 + r) * ldc + j0);
          }
        }
      }
    }
  }
  _tile_release();
}
#undef PERFORMER_AMX_TARGET
#endif

/// c (a.rows x b.cols floats, row-major, leading dimension ldc >= b.cols) += a b, a being
/// a.rows x b.depth; without `accumulate`, c = a b (c's old contents are not read, so they need
/// not be initialised). Time O(rows depth cols). The portable backend allocates two rows of
/// b.cols floats per call, amx two buffers once per thread, avx512_bf16 nothing.
/// @throws performer::invalid_argument if the CPU or OS does not run the requested backend.
inline void product(const lhs_view& a, const packed_rhs& b, float* c, index_t ldc,
                    bf16_backend backend = bf16_backend::automatic, bool accumulate = true) {
  if (a.rows == 0 || b.cols == 0) return;
  if (b.depth_pairs() == 0) {  // an empty sum: the kernels' span loops would not run
    for (index_t i = 0; i < a.rows && !accumulate; ++i) std::fill_n(c + i * ldc, b.cols, 0.0f);
    return;
  }
#ifdef PERFORMER_BF16_X86
  switch (bf16_resolve(backend)) {
    case bf16_backend::avx512_bf16:
      product_avx512(a, b, c, ldc, accumulate);
      return;
    case bf16_backend::amx:
      product_amx(a, b, c, ldc, accumulate);
      return;
    default:
      break;
  }
#else
  (void)bf16_resolve(backend);
#endif
  product_portable(a, b, c, ldc, accumulate);
}

}  // namespace performer::detail::bf16
