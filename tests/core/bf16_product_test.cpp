// bfloat16 rounding and products (core/bfloat16.hpp, core/detail/bf16_product.hpp): the rounding
// against Eigen's own bfloat16, the portable product against a double product of the same
// bfloat16 values within float's accumulation bound, and the AVX512-BF16 product against the
// portable one bit for bit (reported skipped on a CPU without AVX512-BF16).
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <utility>
#include <vector>

#include <performer/core/bfloat16.hpp>
#include <performer/core/detail/bf16_product.hpp>

namespace performer::test {
namespace core_bf16_product_test {
namespace {

using detail::bf16::lhs_view;
using detail::bf16::packed_rhs;
using detail::bf16::pair;
using detail::bf16::round;
using detail::bf16::widen;

constexpr float float_min = std::numeric_limits<float>::min();

TEST(Bf16Rounding, NearestEvenAsEigenForNormalValues) {
  std::mt19937 gen(7);
  std::uniform_int_distribution<std::uint32_t> bits;
  int compared = 0;
  for (int i = 0; i < 200000; ++i) {
    const float x = std::bit_cast<float>(bits(gen));
    if (!std::isfinite(x) || std::fabs(x) < float_min) continue;
    ASSERT_EQ(round(x), Eigen::bfloat16(x).value) << x;
    ++compared;
  }
  EXPECT_GT(compared, 150000);
}

// The unit roundoff every bound of docs/algorithms.md §10 builds on: 8 significant bits, so a
// normal value moves by at most 2^-8 of itself (half the spacing 2^-7 at 1), and just below a
// halfway point it moves by nearly that much, more than 2^-9.
TEST(Bf16Rounding, RelativeErrorIsAtMostTwoToTheMinusEight) {
  std::mt19937 gen(11);
  std::uniform_real_distribution<float> significand(1.0f, 2.0f);
  std::uniform_int_distribution<int> exponent(-120, 120);
  double worst = 0.0;
  for (int i = 0; i < 200000; ++i) {
    const float x = std::ldexp(significand(gen), exponent(gen));
    worst = std::max(worst, std::fabs(static_cast<double>(widen(round(x))) - x) / x);
  }
  EXPECT_LE(worst, 0x1p-8);
  const float below_halfway = 1.0f + 0x1p-8f - 0x1p-20f;
  const double moved =
      (below_halfway - static_cast<double>(widen(round(below_halfway)))) / below_halfway;
  EXPECT_GT(moved, 0x1p-9);
  EXPECT_LE(moved, 0x1p-8);
}

TEST(Bf16Rounding, TiesSpecialValuesAndSubnormals) {
  EXPECT_EQ(round(1.0f), 0x3F80);
  EXPECT_EQ(round(1.0f + 0x1p-8f), 0x3F80);      // halfway, down to the even 1.0
  EXPECT_EQ(round(1.0f + 3 * 0x1p-8f), 0x3F82);  // halfway, up to the even neighbour
  EXPECT_EQ(round(1.0f + 0x1p-8f + 0x1p-20f), 0x3F81);
  EXPECT_EQ(round(-2.0f), 0xC000);
  EXPECT_EQ(round(std::numeric_limits<float>::infinity()), 0x7F80);
  EXPECT_EQ(round(std::numeric_limits<float>::max()), 0x7F80);  // rounds past bfloat16's max
  EXPECT_TRUE(std::isnan(widen(round(std::numeric_limits<float>::quiet_NaN()))));
  EXPECT_TRUE(std::isnan(widen(round(std::bit_cast<float>(0x7F800001u)))));  // low-bit NaN
  EXPECT_EQ(round(float_min / 4), 0x0000);
  EXPECT_EQ(round(-float_min / 4), 0x8000);
  EXPECT_EQ(round(float_min), 0x0080);
  // Subnormals read as zero, even the largest, which rounding alone would raise to float_min.
  EXPECT_EQ(round(std::bit_cast<float>(0x007FFFFFu)), 0x0000);
  EXPECT_EQ(round(std::bit_cast<float>(0x807FFFFFu)), 0x8000);
  EXPECT_EQ(round(std::nextafter(float_min, 1.0f)), 0x0080);  // normal: rounds down to float_min
  EXPECT_EQ(widen(0x3F80), 1.0f);
}

struct problem {
  index_t rows, depth, cols;
  bool pair_major;  // the left operand stored pairs of rows interleaved (row_step 1)
};

// Random bfloat16 operands of a problem, c's starting values, and the double reference
// c + a b with the error bound of float sums over the depth.
struct operands {
  problem shape;
  std::vector<pair> a;
  packed_rhs b;
  std::vector<float> c_start;
  std::vector<double> exact, bound;
  index_t ldc;

  explicit operands(problem s, unsigned seed) : shape(s), ldc(s.cols + 3) {
    std::mt19937 gen(seed);
    std::normal_distribution<float> normal;
    const index_t pairs = (s.depth + 1) / 2;
    row_matrix<float> af = row_matrix<float>::Zero(s.rows, 2 * pairs);
    row_matrix<float> bf = row_matrix<float>::Zero(2 * pairs, s.cols);
    for (index_t i = 0; i < s.rows; ++i) {
      for (index_t k = 0; k < s.depth; ++k) af(i, k) = widen(round(normal(gen)));
    }
    for (index_t k = 0; k < s.depth; ++k) {
      for (index_t j = 0; j < s.cols; ++j) bf(k, j) = widen(round(normal(gen)));
    }
    b.assign(s.depth, s.cols, [&](index_t k, index_t j) { return bf(k, j); });
    a.resize(static_cast<std::size_t>(s.rows * pairs));
    for (index_t i = 0; i < s.rows; ++i) {
      for (index_t p = 0; p < pairs; ++p) {
        const std::size_t at =
            static_cast<std::size_t>(s.pair_major ? p * s.rows + i : i * pairs + p);
        a[at] = detail::bf16::pack(af(i, 2 * p), af(i, 2 * p + 1));
      }
    }
    c_start.resize(static_cast<std::size_t>(s.rows * ldc));
    for (float& x : c_start) x = normal(gen);
    exact.assign(c_start.size(), 0.0);
    bound.assign(c_start.size(), 0.0);
    // Each of the 2 ceil(K/2) additions rounds once: |error| <= gamma (|c| + sum |a b|).
    const double gamma = 2.0 * static_cast<double>(pairs) * 0x1p-24 * 1.01;
    for (index_t i = 0; i < s.rows; ++i) {
      for (index_t j = 0; j < ldc; ++j) {
        const auto at = static_cast<std::size_t>(i * ldc + j);
        double sum = c_start[at], magnitude = std::fabs(c_start[at]);
        if (j < s.cols) {
          for (index_t k = 0; k < s.depth; ++k) {
            sum += static_cast<double>(af(i, k)) * bf(k, j);
            magnitude += std::fabs(static_cast<double>(af(i, k)) * bf(k, j));
          }
        }
        exact[at] = sum;
        bound[at] = j < s.cols ? gamma * magnitude : 0.0;
      }
    }
  }

  [[nodiscard]] lhs_view lhs() const {
    const index_t pairs = (shape.depth + 1) / 2;
    return shape.pair_major ? lhs_view{a.data(), shape.rows, 1, shape.rows}
                            : lhs_view{a.data(), shape.rows, pairs, 1};
  }

  [[nodiscard]] std::vector<float> run(bf16_backend backend) const {
    std::vector<float> c = c_start;
    detail::bf16::product(lhs(), b, c.data(), ldc, backend);
    return c;
  }
};

// Shapes that reach every tile: rows past multiples of 6 and 32, and rows that leave every
// smaller tile (8, 4, 2, 1) of the avx512_bf16 backend's 5, 6, 8 and 12-row tiles; odd depths;
// columns in 1 to 9 registers with a partial last one (a last group of 1 to 5 registers);
// depths of more than one span of 128 pairs (the last one partial).
const problem shapes[] = {
    {1, 1, 1, false},     {7, 3, 15, false},   {13, 64, 16, false},  {6, 65, 17, true},
    {19, 256, 80, true},  {25, 64, 256, false}, {5, 2, 100, true},   {12, 33, 65, false},
    {3, 128, 49, true},   {37, 601, 40, false}, {33, 520, 20, true}, {31, 40, 9, false},
    {23, 17, 30, true},   {15, 70, 47, false},  {29, 9, 65, true},   {31, 300, 144, false},
    {11, 8, 97, true}};

// Every output of `backend` within the float-sum bound of the double product.
void expect_within_bound(bf16_backend backend, unsigned seed) {
  for (const problem& s : shapes) {
    const operands ops(s, seed++);
    const auto c = ops.run(backend);
    for (std::size_t at = 0; at < c.size(); ++at) {
      ASSERT_LE(std::fabs(c[at] - ops.exact[at]), ops.bound[at])
          << bf16_name(backend) << ": rows " << s.rows << " depth " << s.depth << " cols " << s.cols
          << " at " << at;
    }
  }
}

TEST(Bf16Product, PortableWithinFloatSumBoundOfDoubleProduct) {
  expect_within_bound(bf16_backend::portable, 1);
}

TEST(Bf16Product, AddsTheOddProductFirst) {
  // c = 2^-24 plus the pair (even 2^-24 * 1, odd 1 * 1). Odd first: 1 + 2^-24 rounds to 1 (a
  // tie, to even), and 1 + 2^-24 again to 1. Even first: 2^-23, then 1 + 2^-23, which float holds.
  packed_rhs b;
  b.assign(2, 1, [](index_t, index_t) { return 1.0f; });
  const pair a = detail::bf16::pack(0x1p-24f, 1.0f);
  for (const bf16_backend backend : {bf16_backend::portable, bf16_backend::avx512_bf16}) {
    if (!bf16_available(backend)) continue;  // Avx512Bf16GivesThePortableBits reports the skip
    float c = 0x1p-24f;
    detail::bf16::product(lhs_view{&a, 1, 1, 1}, b, &c, 1, backend);
    EXPECT_EQ(c, 1.0f) << bf16_name(bf16_resolve(backend));
  }
}

TEST(Bf16Product, FlushesSubnormalSums) {
  packed_rhs b;
  b.assign(2, 1, [](index_t k, index_t) { return k == 0 ? 0x1p-70f : 0.0f; });
  const pair a = detail::bf16::pack(0x1p-70f, 0.0f);  // product 2^-140: a float subnormal
  for (const bf16_backend backend : {bf16_backend::portable, bf16_backend::avx512_bf16}) {
    if (!bf16_available(backend)) continue;  // Avx512Bf16GivesThePortableBits reports the skip
    float c = 0.0f;
    detail::bf16::product(lhs_view{&a, 1, 1, 1}, b, &c, 1, backend);
    EXPECT_EQ(c, 0.0f) << bf16_name(bf16_resolve(backend));
  }
}

TEST(Bf16Product, AmxWithinFloatSumBoundOfDoubleProduct) {
  if (!bf16_available(bf16_backend::amx)) GTEST_SKIP() << "this CPU or OS does not run AMX-BF16";
  expect_within_bound(bf16_backend::amx, 50);
}

TEST(Bf16Product, Avx512Bf16GivesThePortableBits) {
  if (!bf16_available(bf16_backend::avx512_bf16))
    GTEST_SKIP() << "this CPU does not run AVX512-BF16";
  unsigned seed = 100;
  for (const problem& s : shapes) {
    const operands ops(s, seed++);
    const auto fast = ops.run(bf16_backend::avx512_bf16);
    const auto portable = ops.run(bf16_backend::portable);
    for (std::size_t at = 0; at < fast.size(); ++at) {
      ASSERT_EQ(std::bit_cast<std::uint32_t>(fast[at]), std::bit_cast<std::uint32_t>(portable[at]))
          << "rows " << s.rows << " depth " << s.depth << " cols " << s.cols << " at " << at;
    }
  }
}

// accumulate = false: c = a b whatever c held (NaN here), the same bits as adding to zeros;
// the columns past b.cols untouched; an empty depth gives zeros.
TEST(Bf16Product, OverwritesWithoutAccumulate) {
  for (const bf16_backend backend :
       {bf16_backend::portable, bf16_backend::avx512_bf16, bf16_backend::amx}) {
    if (!bf16_available(backend)) continue;  // the backend's own tests report the skip
    unsigned seed = 200;
    for (const problem& s : shapes) {
      const operands ops(s, seed++);
      std::vector<float> from_zero(ops.c_start.size(), 0.0f);
      detail::bf16::product(ops.lhs(), ops.b, from_zero.data(), ops.ldc, backend);
      std::vector<float> c(ops.c_start.size(), std::numeric_limits<float>::quiet_NaN());
      detail::bf16::product(ops.lhs(), ops.b, c.data(), ops.ldc, backend, false);
      for (std::size_t at = 0; at < c.size(); ++at) {
        if (static_cast<index_t>(at) % ops.ldc < s.cols) {
          ASSERT_EQ(std::bit_cast<std::uint32_t>(c[at]),
                    std::bit_cast<std::uint32_t>(from_zero[at]))
              << bf16_name(backend) << ": rows " << s.rows << " depth " << s.depth << " at " << at;
        } else {
          ASSERT_TRUE(std::isnan(c[at])) << bf16_name(backend) << ": wrote past b.cols at " << at;
        }
      }
    }
    packed_rhs empty;
    empty.assign(0, 3, [](index_t, index_t) { return 1.0f; });
    const pair a = 0;
    std::vector<float> c(3, std::numeric_limits<float>::quiet_NaN());
    detail::bf16::product(lhs_view{&a, 1, 1, 1}, empty, c.data(), 3, backend, false);
    EXPECT_EQ(c, std::vector<float>(3, 0.0f)) << bf16_name(backend);
  }
}

// reset() zeroes only when the shape changes, so a shape that shrinks within the same padded
// size must still find its padding (columns past cols, rows past the depth, the tail) zero after
// a larger shape filled them, or AMX tiles, which read the padding, would add stale values.
TEST(Bf16PackedRhs, ResetLeavesThePaddingZero) {
  packed_rhs b;
  const auto fill = [&] {
    for (index_t p = 0; p < b.depth_pairs(); ++p) std::fill_n(b.row(p), b.cols, pair{0x3F803F80u});
  };
  const auto padding_is_zero = [&] {
    for (index_t p = 0; p < b.tile_pairs(); ++p) {
      for (index_t j = p < b.depth_pairs() ? b.cols : 0; j < b.stride; ++j) {
        if (b.row(p)[j] != 0) return false;
      }
    }
    return std::all_of(b.pairs.end() - 16, b.pairs.end(), [](pair x) { return x == 0; });
  };
  b.reset(9, 20);
  fill();
  for (const auto& [depth, cols] : {std::pair{9, 20}, std::pair{9, 17}, std::pair{5, 17}}) {
    b.reset(depth, cols);
    ASSERT_EQ(b.depth, depth);
    ASSERT_EQ(b.cols, cols);
    EXPECT_TRUE(padding_is_zero()) << depth << " x " << cols;
    fill();
  }
}

TEST(Bf16Backend, ResolvesToWhatTheCpuRuns) {
  EXPECT_EQ(bf16_resolve(bf16_backend::portable), bf16_backend::portable);
  const bf16_backend fastest = bf16_available(bf16_backend::amx) ? bf16_backend::amx
                               : bf16_available(bf16_backend::avx512_bf16)
                                   ? bf16_backend::avx512_bf16
                                   : bf16_backend::portable;
  EXPECT_EQ(bf16_resolve(bf16_backend::automatic), fastest);
  for (const bf16_backend fast : {bf16_backend::amx, bf16_backend::avx512_bf16}) {
    if (bf16_available(fast)) {
      EXPECT_EQ(bf16_resolve(fast), fast);
    } else {
      EXPECT_THROW((void)bf16_resolve(fast), invalid_argument) << bf16_name(fast);
    }
  }
}

}  // namespace
}  // namespace core_bf16_product_test
}  // namespace performer::test
