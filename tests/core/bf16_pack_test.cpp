// Packing float rows into bfloat16 pairs (core/detail/bf16_pack.hpp): the portable packers against
// pack() element by element, and the AVX512-BF16 packers against the portable ones bit for bit on
// every kind of float and every length up to three registers (reported skipped on a CPU without
// AVX512-BF16).
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <utility>
#include <vector>

#include <performer/core/detail/bf16_pack.hpp>

namespace performer::test {
namespace core_bf16_pack_test {
namespace {

using detail::bf16::pack;
using detail::bf16::pair;
using detail::bf16::round;
using detail::bf16::widen;

// Rows of odd length get a zero high half; the pairs of two rows carry the weighted, rounded
// values, and their sums the same rounded values.
TEST(Bf16Packing, RowsAndPairsOfRowsMatchPack) {
  const std::vector<float> x{1.0f, 1.00390625f, -3.3f, 1e-39f, 7.77f};  // a tie, a subnormal
  std::vector<pair> row(3);
  detail::bf16::pack_row_portable(x.data(), 5, row.data());
  EXPECT_EQ(row, (std::vector<pair>{pack(x[0], x[1]), pack(x[2], x[3]), pack(x[4], 0.0f)}));
  const std::vector<float> y{2.0f, -0.1f, 5.0f, 3e38f, 0.3f};
  std::vector<pair> pairs(5);
  std::vector<float> sums(5, 1.0f);
  detail::bf16::pack_two_rows_portable(x.data(), 0.5f, y.data(), 0.25f, 5, pairs.data(),
                                       sums.data());
  for (std::size_t i = 0; i < 5; ++i) {
    EXPECT_EQ(pairs[i], pack(x[i] * 0.5f, y[i] * 0.25f)) << i;
    EXPECT_EQ(sums[i], 1.0f + (widen(round(x[i] * 0.5f)) + widen(round(y[i] * 0.25f)))) << i;
  }
  detail::bf16::pack_two_rows_portable(x.data(), 2.0f, nullptr, 0.0f, 5, pairs.data(),
                                       sums.data());
  for (std::size_t i = 0; i < 5; ++i) EXPECT_EQ(pairs[i], pack(x[i] * 2.0f, 0.0f));
}

/// Floats of every kind: random bit patterns (all exponents, NaNs with any payload), ties and
/// near-ties at random exponents, subnormals up to the largest, zeros, infinities, float's max.
std::vector<float> every_kind(std::size_t n, unsigned seed) {
  std::mt19937 gen(seed);
  std::uniform_int_distribution<std::uint32_t> bits;
  std::uniform_int_distribution<int> kind(0, 5);
  std::vector<float> x(n);
  for (float& e : x) {
    std::uint32_t b = bits(gen);
    switch (kind(gen)) {
      case 0:  // a tie or one step either side of it
        b = (b & 0xFFFF0000u) | (0x8000u + (b & 3u) - 1u);
        break;
      case 1:  // subnormal, the largest included
        b = (b & 0x807FFFFFu) | ((b & 1u) != 0 ? 0x007FFFFFu : 0u);
        break;
      case 2:  // NaN or infinity
        b = (b & 0x807FFFFFu) | 0x7F800000u;
        break;
      case 3:  // rounds past bfloat16's largest, or zero
        b = (b & 1u) != 0 ? 0x7F7FFFFFu : 0u;
        b |= (bits(gen) & 1u) << 31;
        break;
      default:
        break;
    }
    e = std::bit_cast<float>(b);
  }
  return x;
}

/// The bits of each sum, any NaN as one value: which of two NaNs an addition passes on depends
/// on the order the compiler gives its operands, in either packer.
std::vector<std::uint32_t> bits_of(const std::vector<float>& x) {
  std::vector<std::uint32_t> b(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) {
    b[i] = std::isnan(x[i]) ? 0x7FC00000u : std::bit_cast<std::uint32_t>(x[i]);
  }
  return b;
}

TEST(Bf16Packing, Avx512GivesThePortableBits) {
#ifdef PERFORMER_BF16_PACK_X86
  if (!bf16_available(bf16_backend::avx512_bf16)) {
    GTEST_SKIP() << "this CPU does not run AVX512-BF16";
  }
  unsigned seed = 1;
  for (index_t n = 0; n <= 49; ++n) {
    const auto a = every_kind(static_cast<std::size_t>(n), seed++);
    const auto b = every_kind(static_cast<std::size_t>(n), seed++);
    // A guard pair past the end: neither packer may write beyond its row.
    const auto slots = static_cast<std::size_t>(n + 1);
    std::vector<pair> fast(slots, 0xDEADBEEFu), portable(slots, 0xDEADBEEFu);
    detail::bf16::pack_row_avx512(a.data(), n, fast.data());
    detail::bf16::pack_row_portable(a.data(), n, portable.data());
    ASSERT_EQ(fast, portable) << "pack_row, n = " << n;
    ASSERT_EQ(fast[static_cast<std::size_t>((n + 1) / 2)], 0xDEADBEEFu) << n;
    std::vector<float> fast_rounded(slots, 0.5f), portable_rounded(slots, 0.5f);
    detail::bf16::round_row_avx512(a.data(), n, fast_rounded.data());
    detail::bf16::round_row_portable(a.data(), n, portable_rounded.data());
    ASSERT_EQ(bits_of(fast_rounded), bits_of(portable_rounded)) << "round_row, n = " << n;
    ASSERT_EQ(fast_rounded[static_cast<std::size_t>(n)], 0.5f) << n;
    for (const float wa : {1.0f, 0.375f, 0x1p-100f}) {
      for (const bool two : {true, false}) {
        const float wb = 3.0f;
        std::vector<float> fast_sum(slots, 0.5f), portable_sum(slots, 0.5f);
        detail::bf16::pack_two_rows_avx512(a.data(), wa, two ? b.data() : nullptr, wb, n,
                                           fast.data(), fast_sum.data());
        detail::bf16::pack_two_rows_portable(a.data(), wa, two ? b.data() : nullptr, wb, n,
                                             portable.data(), portable_sum.data());
        ASSERT_EQ(fast, portable) << "pack_two_rows, n = " << n << ", wa = " << wa;
        ASSERT_EQ(bits_of(fast_sum), bits_of(portable_sum)) << "sums, n = " << n;
        ASSERT_EQ(fast[static_cast<std::size_t>(n)], 0xDEADBEEFu) << n;
        ASSERT_EQ(fast_sum[static_cast<std::size_t>(n)], 0.5f) << n;
        detail::bf16::pack_two_rows_avx512(a.data(), wa, two ? b.data() : nullptr, wb, n,
                                           fast.data(), nullptr);
        ASSERT_EQ(fast, portable) << "pack_two_rows without sums, n = " << n;
      }
    }
  }
#else
  GTEST_SKIP() << "not an x86-64 build";
#endif
}

// transpose_pairs against the element-by-element layout, with and without the register blocks,
// on shapes of full blocks, edges of both kinds and none; the bits are copied, never changed.
TEST(Bf16Packing, TransposePairsLaysOutEveryRowsPairsContiguously) {
  std::mt19937 gen(5);
  std::uniform_int_distribution<pair> bits;
  for (const auto& [rows, cols] : {std::pair{16, 16}, std::pair{37, 35}, std::pair{128, 32},
                                   std::pair{5, 40}, std::pair{33, 7}, std::pair{0, 3}}) {
    const index_t step = rows + 3;  // pairs step apart, with a gap
    std::vector<pair> from(static_cast<std::size_t>(step * cols + 1));
    for (pair& x : from) x = bits(gen);
    const index_t width = cols + 5;
    for (const bool blocks : {false, true}) {
      if (blocks && !bf16_available(bf16_backend::avx512_bf16)) continue;  // reported below
      std::vector<pair> to(static_cast<std::size_t>(rows * width + 1), 0xDEADBEEFu);
      detail::bf16::transpose_pairs(from.data(), step, rows, cols, to.data(), width, blocks);
      for (index_t i = 0; i < rows; ++i) {
        for (index_t p = 0; p < width; ++p) {
          const pair want = p < cols ? from[static_cast<std::size_t>(i + p * step)] : 0xDEADBEEFu;
          ASSERT_EQ(to[static_cast<std::size_t>(i * width + p)], want)
              << rows << " x " << cols << ", blocks " << blocks << ", at " << i << ", " << p;
        }
      }
      ASSERT_EQ(to.back(), 0xDEADBEEFu);
    }
  }
  if (!bf16_available(bf16_backend::avx512_bf16)) {
    GTEST_SKIP() << "this CPU does not run AVX512-BF16: the element-by-element layout only";
  }
}

// The packers take the fast path on a CPU that has it: the dispatching calls give the same bits
// as the portable ones wherever they run.
TEST(Bf16Packing, DispatchGivesThePortableBits) {
  const auto a = every_kind(40, 99);
  const auto b = every_kind(40, 100);
  std::vector<pair> out(20), portable(20);
  detail::bf16::pack_row(a.data(), 39, out.data());
  detail::bf16::pack_row_portable(a.data(), 39, portable.data());
  EXPECT_EQ(out, portable);
  std::vector<float> sum(40, 0.0f), portable_sum(40, 0.0f);
  std::vector<pair> two(40), portable_two(40);
  detail::bf16::pack_two_rows(a.data(), 0.5f, b.data(), 2.0f, 40, two.data(), sum.data());
  detail::bf16::pack_two_rows_portable(a.data(), 0.5f, b.data(), 2.0f, 40, portable_two.data(),
                                       portable_sum.data());
  EXPECT_EQ(two, portable_two);
  EXPECT_EQ(bits_of(sum), bits_of(portable_sum));
}

}  // namespace
}  // namespace core_bf16_pack_test
}  // namespace performer::test
