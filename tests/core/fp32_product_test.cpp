// performer's float product (core/detail/fp32_product.hpp): the portable code against a double
// product within float's accumulation bound, the order of its sums (one rounding per product,
// along the depth), and the AVX-512 kernel against the portable code bit for bit on every tile
// shape, edge and layout (reported skipped on a CPU without AVX-512F).
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include <performer/core/detail/fp32_product.hpp>

namespace performer::test {
namespace core_fp32_product_test {
namespace {

using detail::fp32::lhs_view;
using detail::fp32::rhs_view;

struct operands {
  std::vector<float> a, b;
  lhs_view lhs;
  rhs_view rhs;
};

// a: rows x depth, row-major with a gap of 3 after each row, or its transpose stored
// (transposed: depth rows of `rows`); b: depth x cols with leading dimension cols + gap. Every
// buffer holds exactly what its view spans, so a read past it is a read outside it.
operands make(index_t rows, index_t depth, index_t cols, bool transposed, index_t gap,
              std::mt19937& gen) {
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  operands o;
  const index_t ld_a = transposed ? rows : depth + 3;
  o.a.resize(
      static_cast<std::size_t>(std::max<index_t>(transposed ? depth * rows : rows * ld_a - 3, 0)));
  for (float& x : o.a) x = u(gen);
  const index_t ld_b = cols + gap;
  o.b.resize(static_cast<std::size_t>(std::max<index_t>(depth * ld_b - gap, 0)));
  for (float& x : o.b) x = u(gen);
  o.lhs = transposed ? lhs_view{o.a.data(), rows, 1, rows} : lhs_view{o.a.data(), rows, ld_a, 1};
  o.rhs = rhs_view{o.b.data(), depth, cols, ld_b};
  return o;
}

TEST(Fp32Product, PortableIsWithinFloatsAccumulationBoundOfDouble) {
  std::mt19937 gen(3);
  for (const index_t depth : {1, 7, 64, 300}) {
    const operands o = make(9, depth, 37, false, 5, gen);
    const index_t ldc = 40;
    std::vector<float> c(static_cast<std::size_t>(9 * ldc), 0.5f);
    detail::fp32::product_portable(o.lhs, o.rhs, c.data(), ldc);
    // Higham's bound for a recursive sum of depth + 1 terms with fused products: each step
    // rounds once, so |error| <= gamma_(depth) (|c0| + sum |a||b|), gamma_n = n u / (1 - n u).
    const double u = 0x1p-24;
    const double gamma = depth * u / (1 - depth * u);
    for (index_t i = 0; i < 9; ++i) {
      for (index_t j = 0; j < 37; ++j) {
        double exact = 0.5, magnitude = 0.5;
        for (index_t p = 0; p < depth; ++p) {
          exact += double(o.lhs.at(i, p)) * o.rhs.row(p)[j];
          magnitude += std::fabs(double(o.lhs.at(i, p)) * o.rhs.row(p)[j]);
        }
        ASSERT_LE(std::fabs(c[i * ldc + j] - exact), gamma * magnitude) << depth << " " << i;
      }
    }
  }
}

// 2^24 + 1 rounds to 2^24 (to even) only when 1 is added after 2^24: in order, one rounding per
// product, the sum of (2^24, 1, -2^24) is 0, and 1 in any order that adds 1 last or pairs the
// large terms first. The kernels must all give 0, the bits of the documented order.
TEST(Fp32Product, SumsAlongTheDepthInOrderWithOneRoundingPerProduct) {
  const std::vector<float> a = {1.0f, 1.0f, 1.0f};
  const std::vector<float> b = {0x1p24f, 1.0f, -0x1p24f};
  float c = 7.0f;
  detail::fp32::product({a.data(), 1, 3, 1}, {b.data(), 3, 1, 1}, &c, 1, false);
  EXPECT_EQ(c, 0.0f);
  // One rounding per product: float(1/3) is 11184811 2^-25, so 3 float(1/3) = 1 + 2^-25
  // exactly, a product that rounds to 1 as a float. Added to -1 in one fma it leaves 2^-25; a
  // rounded product, or the two terms the other way round, would leave 0.
  const float third = 1.0f / 3.0f;
  ASSERT_EQ(third, 11184811 * 0x1p-25f);
  const std::vector<float> x = {1.0f, 3.0f};
  const std::vector<float> y = {-1.0f, third};
  detail::fp32::product({x.data(), 1, 2, 1}, {y.data(), 2, 1, 1}, &c, 1, false);
  EXPECT_EQ(c, 0x1p-25f);
}

TEST(Fp32Product, WithoutAccumulateCIsNotReadAndColumnsPastItAreLeftAlone) {
  std::mt19937 gen(5);
  const operands o = make(7, 20, 21, false, 0, gen);
  const index_t ldc = 24;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> c(static_cast<std::size_t>(7 * ldc), nan), want(c.size(), nan);
  detail::fp32::product(o.lhs, o.rhs, c.data(), ldc, false);
  for (index_t i = 0; i < 7; ++i) std::fill_n(&want[i * ldc], 21, 0.0f);
  detail::fp32::product_portable(o.lhs, o.rhs, want.data(), ldc);
  for (index_t i = 0; i < 7; ++i) {
    for (index_t j = 0; j < ldc; ++j) {
      if (j < 21) {
        ASSERT_EQ(c[i * ldc + j], want[i * ldc + j]) << i << " " << j;
      } else {
        ASSERT_TRUE(std::isnan(c[i * ldc + j])) << "column " << j << " past the product";
      }
    }
  }
}

TEST(Fp32Product, Avx512GivesThePortableBits) {
#ifdef PERFORMER_FP32_X86
  if (!detail::avx512f_available()) GTEST_SKIP() << "this CPU does not run AVX-512F";
  std::mt19937 gen(9);
  int compared = 0;
  // Rows through every tile height and its remainders; columns through every group of column
  // registers (1 to 5, and several groups of 4) with full and partial last registers; depths
  // across the 128-row spans.
  for (const index_t rows : {1, 5, 6, 13, 33}) {
    for (const index_t cols : {1, 16, 17, 40, 64, 65, 80, 97, 130, 256}) {
      for (const index_t depth : {1, 31, 128, 129, 300}) {
        for (const bool transposed : {false, true}) {
          for (const bool accumulate : {false, true}) {
            const operands o = make(rows, depth, cols, transposed, cols % 3, gen);
            const index_t ldc = cols + 2;
            std::vector<float> c(static_cast<std::size_t>(rows * ldc));
            for (float& x : c) x = std::ldexp(1.0f, -(static_cast<int>(gen() % 9)));
            std::vector<float> want = c;
            detail::fp32::product_avx512(o.lhs, o.rhs, c.data(), ldc, accumulate);
            detail::fp32::product_portable(o.lhs, o.rhs, want.data(), ldc, accumulate);
            for (std::size_t e = 0; e < c.size(); ++e) {
              ASSERT_EQ(std::bit_cast<std::uint32_t>(c[e]), std::bit_cast<std::uint32_t>(want[e]))
                  << rows << "x" << depth << "x" << cols << " transposed " << transposed
                  << " accumulate " << accumulate << " element " << e;
            }
            ++compared;
          }
        }
      }
    }
  }
  EXPECT_EQ(compared, 5 * 10 * 5 * 2 * 2);
#else
  GTEST_SKIP() << "not an x86-64 build: the AVX-512 kernel is not compiled";
#endif
}

}  // namespace
}  // namespace core_fp32_product_test
}  // namespace performer::test
