/// @file core/detail/bf16_exp.hpp
/// @brief The exponential of the exponential feature maps, accurate to what a bfloat16 operand
/// keeps (docs/algorithms.md §10.3), with about 60% of the instructions of Eigen's float exp.
#pragma once

#include <algorithm>
#include <bit>
#include <cstdint>

#include "../types.hpp"

namespace performer::detail::bf16 {

/// Bound on exp_row's relative error at the argument x = (row[j] - top) scale, computed exactly
/// (docs/algorithms.md §10.3): the polynomial's 2.83e-6; three roundings of t (the difference,
/// scale log2(e) and their product), each moving the result by |x| 2^-24; the roundings of the
/// polynomial's scaled coefficients and steps, weighted by the size of their terms, below
/// 8 2^-24 in all, with or without fused multiply-adds (the product by 2^i is exact). 1.9e-5 at
/// x = -86.6, below which exp_row gives 0; float's own exp of its rounded argument is off by
/// |x| 2^-23 there. bfloat16's rounding, which the products apply next, is up to 2^-9 = 2.0e-3.
[[nodiscard]] constexpr double exp_row_error(double x) noexcept {
  return 2.83e-6 + (3.0 * (x < 0.0 ? -x : x) + 8.0) * 0x1p-24;
}

/**
 * @brief row[j] = factor exp((row[j] - top) scale) for j < n and row[j] <= top (the features'
 * stabilised exponents; past t = 127, 2^i would wrap into the sign bit), to a relative error
 * below exp_row_error, plus half of float's smallest subnormal absolute: 2^i 2^f with
 * i = round(t), t = (row[j] - top) scale log2(e), |f| <= 1/2, and 2^f from a polynomial of
 * degree 4 fitted to its relative error (exact at f = 0, so row[j] = top gives factor exactly).
 * Where t < -125 it gives 0: the exact value is below factor 2^-125, which bfloat16's products
 * flush to zero anyway when factor < 1/2 (the features' 1/sqrt(m) for m > 4). NaN stays NaN.
 * The loop is plain C++ that the compiler vectorises, so every bfloat16 backend sees the same
 * bits. O(n), about 16 vector instructions per 16 floats.
 */
inline void exp_row(float* row, index_t n, float top, float scale, float factor) noexcept {
  // exp(x) = 2^(x log2 e); the rounding constant 1.5 * 2^23 leaves round(t) in r's low bits.
  constexpr float magic = 0x1.8p23f;
  constexpr std::uint32_t exponent_bias = std::bit_cast<std::uint32_t>(magic) - 127;
  // One rounding, not two: log2(e) as a float is 0.22 of its last place low.
  const auto a = static_cast<float>(static_cast<double>(scale) * 1.4426950408889634);
  // 2^f ~ 1 + f (c1 + f (c2 + f (c3 + f c4))) on [-1/2, 1/2], times factor.
  const float c0 = factor;
  const float c1 = 0.6931241893038946f * factor;
  const float c2 = 0.24024099077808841f * factor;
  const float c3 = 0.05590646278849143f * factor;
  const float c4 = 0.009582838333031007f * factor;
  for (index_t j = 0; j < n; ++j) {
    // row[j] - top <= 0 exactly (rounding is monotone), so t <= 0 and i <= 0.
    const float t = (row[j] - top) * a;
    // Clamped, so 2^i stays a normal float; the select below zeroes what the clamp moved.
    const float tc = std::max(t, -125.0f);
    const float r = tc + magic;
    const float f = tc - (r - magic);
    const float p = (((c4 * f + c3) * f + c2) * f + c1) * f + c0;
    // 2^i times p rather than i added to p's exponent field, so a NaN t gives NaN (unsigned:
    // a NaN's bits shift without overflow).
    const float two_i = std::bit_cast<float>((std::bit_cast<std::uint32_t>(r) - exponent_bias)
                                             << 23);
    row[j] = t < -125.0f ? 0.0f : p * two_i;
  }
}

}  // namespace performer::detail::bf16
