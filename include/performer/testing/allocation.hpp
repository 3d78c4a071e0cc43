/// @file testing/allocation.hpp
/// @brief Reusable GoogleTest suite: what a mechanism allocates, measured with the counting
/// allocator (performer/testing/counting_allocator.hpp, which the test executable must define
/// once). Without it (sanitizer builds, non-glibc systems) every test reports itself skipped.
///
/// Checks, for the maker's mechanism at d = d_v = 64, float or double:
/// - NoAllocationAfterWarmUp: a second forward pass with the same shapes and a reused workspace
///   makes no allocation at all (48 tokens, with a mask, causal and not);
/// - LongSequenceReusesItsWorkspace: at N = 16,384 the second pass leaves no byte allocated and
///   its transient allocations (Eigen's matrix-product packing buffers) stay below
///   eigen_allowance (1.25 MiB in float), so nothing grows with N or with the number of calls;
/// - PeakWithinWorkspaceBound: the first pass at N = 8,192 (fresh workspace) peaks below the
///   maker's `workspace_bytes(a, n, d_v, causal)` (the mechanism's workspace counted field by
///   field) plus 1 MiB for Eigen; for a maker with `quadratic_memory = true` (the materialized
///   reference) the peak is instead at least N^2 scalars, which proves the counter sees Eigen.
/// A maker may set `large_sequences = false` (tiny tiles that make N = 16,384 slow) to skip the
/// last two, with a reason in the output.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <cstdio>
#include <vector>

#include "../core/attention_mask.hpp"
#include "../core/detail/parallel.hpp"
#include "../core/types.hpp"
#include "counting_allocator.hpp"
#include "helpers.hpp"
#include "maker_traits.hpp"

namespace performer::conformance {

using counting::heap_usage;
using counting::measure_heap;

/// Allowance for Eigen's matrix-product packing buffers and the OpenMP runtime, for scalar T:
/// Eigen packs at most a kc x mc block of the left operand and a kc x nc block of the right
/// one, never more than the operands, which the mechanisms keep to tiles. The largest is a
/// tiled-softmax tile product (256 x 512 by 512 x 64: 640 KiB of operands in float, measured
/// 1 MiB of packing at its peak); twice the operands are allowed.
template <class T>
inline constexpr long long eigen_allowance = (5LL << 18) * static_cast<long long>(sizeof(T)) / 4;

template <class Maker>
class attention_allocation : public ::testing::Test {
 protected:
  using attention_type = typename Maker::attention_type;
  using T = typename attention_type::scalar_type;
  static constexpr index_t d = 64;
  static constexpr index_t d_v = 64;
  static constexpr bool shared_qk = maker_traits<Maker>::shared_qk;
  static constexpr bool large_sequences = maker_traits<Maker>::large_sequences;
  static constexpr bool quadratic_memory = maker_traits<Maker>::quadratic_memory;

  void SetUp() override {
    if (!performer::counting::available) {
      GTEST_SKIP() << "no counting allocator in this build (sanitizers replace malloc "
                      "themselves, and the replacement needs glibc): nothing to measure";
    }
    // Eigen's threading of single products off: each tile product would open an OpenMP region
    // of its own. The library's parallel loops still run on every thread.
    Eigen::setNbThreads(1);
#ifdef _OPENMP
    // Start the thread team now: its first region allocates the runtime's bookkeeping.
#pragma omp parallel
    {
      [[maybe_unused]] volatile int touch = 0;
    }
#endif
  }

  /// One line per measurement in the test's output, for the README's table (MiB).
  static void report_peak(bool causal, long long peak, long long bound) {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    std::printf("[memory] %s.%s%s: peak %.3f MiB, bound %.3f MiB (N = 8192, N x N would be %.0f MiB)\n",
                info->test_suite_name(), info->name(), causal ? " causal" : "",
                static_cast<double>(peak) / (1 << 20), static_cast<double>(bound) / (1 << 20),
                8192.0 * 8192.0 * sizeof(T) / (1 << 20));
  }

  struct problem {
    row_matrix<T> q, k, v, out;
  };
  static problem make_problem(index_t n) {
    problem p{random_matrix<T>(n, d, 91), random_matrix<T>(n, d, 92), random_matrix<T>(n, d_v, 93),
              row_matrix<T>(n, d_v)};
    if (shared_qk) p.k = p.q;
    return p;
  }
};

TYPED_TEST_SUITE_P(attention_allocation);

TYPED_TEST_P(attention_allocation, NoAllocationAfterWarmUp) {
  const auto a = TypeParam::make(TestFixture::d);
  auto p = TestFixture::make_problem(48);
  std::vector<std::uint8_t> keep(48, 1);
  keep[5] = keep[6] = keep[40] = 0;
  for (const bool causal : {false, true}) {
    if (causal && !TestFixture::attention_type::supports_causal) continue;
    typename TestFixture::attention_type::workspace_type ws;
    const attention_mask mask{causal, keep};
    a.forward(p.q, p.k, p.v, p.out, mask, ws);  // sizes the workspace
    const heap_usage u = measure_heap([&] { a.forward(p.q, p.k, p.v, p.out, mask, ws); });
    EXPECT_EQ(u.allocations, 0U) << "causal " << causal << ": " << u.peak << " bytes at peak";
    EXPECT_EQ(u.retained, 0) << "causal " << causal;
  }
}

TYPED_TEST_P(attention_allocation, LongSequenceReusesItsWorkspace) {
  if (!TestFixture::large_sequences) GTEST_SKIP() << "the maker's tiles are too small for N = 16,384";
  if (TestFixture::quadratic_memory) GTEST_SKIP() << "quadratic memory: 16,384^2 scalars per call";
  constexpr index_t n = 16384;
  const auto a = TypeParam::make(TestFixture::d);
  auto p = TestFixture::make_problem(n);
  for (const bool causal : {false, true}) {
    if (causal && !TestFixture::attention_type::supports_causal) continue;
    typename TestFixture::attention_type::workspace_type ws;
    a.forward(p.q, p.k, p.v, p.out, {.causal = causal}, ws);
    const heap_usage u = measure_heap([&] { a.forward(p.q, p.k, p.v, p.out, {.causal = causal}, ws); });
    EXPECT_EQ(u.retained, 0) << "causal " << causal;
    EXPECT_LE(u.peak, eigen_allowance<typename TestFixture::T>) << "causal " << causal << ", " << u.allocations
                                       << " allocations";
    ::testing::Test::RecordProperty(causal ? "second_call_allocations_causal" : "second_call_allocations",
                                    static_cast<int>(u.allocations));
  }
}

TYPED_TEST_P(attention_allocation, PeakWithinWorkspaceBound) {
  if (!TestFixture::large_sequences) GTEST_SKIP() << "the maker's tiles are too small for N = 8,192";
  using T = typename TestFixture::T;
  constexpr index_t n = 8192;
  const auto a = TypeParam::make(TestFixture::d);
  auto p = TestFixture::make_problem(n);
  const long long square = static_cast<long long>(n) * n * static_cast<long long>(sizeof(T));
  for (const bool causal : {false, true}) {
    if (causal && !TestFixture::attention_type::supports_causal) continue;
    const heap_usage u = measure_heap([&] {
      typename TestFixture::attention_type::workspace_type ws;
      a.forward(p.q, p.k, p.v, p.out, {.causal = causal}, ws);
    });
    EXPECT_TRUE(p.out.allFinite());
    if (TestFixture::quadratic_memory) {
      EXPECT_GE(u.peak, square) << "the counter misses Eigen's N x N allocation";
      TestFixture::report_peak(causal, u.peak, square);
      continue;
    }
    if constexpr (requires { TypeParam::workspace_bytes(a, n, TestFixture::d_v, causal); }) {
      const long long bound = TypeParam::workspace_bytes(a, n, TestFixture::d_v, causal) + eigen_allowance<T>;
      ASSERT_LT(bound, square / 64) << "the bound itself grows like N^2";
      EXPECT_LE(u.peak, bound) << "causal " << causal << ": peak " << u.peak << " B, bound " << bound;
      TestFixture::report_peak(causal, u.peak, bound);
    } else {
      GTEST_SKIP() << "the maker states no workspace bound";
    }
  }
}

REGISTER_TYPED_TEST_SUITE_P(attention_allocation, NoAllocationAfterWarmUp,
                            LongSequenceReusesItsWorkspace, PeakWithinWorkspaceBound);

}  // namespace performer::conformance
