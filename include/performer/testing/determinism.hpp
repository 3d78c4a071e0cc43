/// @file testing/determinism.hpp
/// @brief Reusable GoogleTest suite: a mechanism's results are the same bits for the same seed
/// and on any number of threads (README, "Threads and determinism").
///
/// Instantiate it with the same makers as the conformance suite:
/// @code
/// INSTANTIATE_TYPED_TEST_SUITE_P(mine, attention_determinism, ::testing::Types<my_maker>);
/// @endcode
/// A maker may set `static constexpr index_t determinism_n = ...` (default 1,500 tokens) to a
/// length at which its parallel paths engage. Eigen's own threading of single products is
/// switched off for the comparison: Eigen 3.4 blocks a product's depth differently on several
/// threads, which the library cannot control (README).
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "../core/attention_mask.hpp"
#include "../core/types.hpp"
#include "helpers.hpp"
#include "maker_traits.hpp"

namespace performer::conformance {

template <class Maker>
class attention_determinism : public ::testing::Test {
 protected:
  using attention_type = typename Maker::attention_type;
  using T = typename attention_type::scalar_type;
  static constexpr index_t d = 16;
  static constexpr index_t d_v = 8;
  static constexpr index_t n = maker_traits<Maker>::determinism_n;
  static constexpr bool shared_qk = maker_traits<Maker>::shared_qk;

  /// The inputs: a sequence with a few padded keys, so masked paths run too.
  struct problem {
    row_matrix<T> q, k, v;
    std::vector<std::uint8_t> keep;
  };
  static problem make_problem() {
    problem p{random_matrix<T>(n, d, 81), random_matrix<T>(n, d, 82),
              random_matrix<T>(n, d_v, 83), std::vector<std::uint8_t>(n, 1)};
    if (shared_qk) p.k = p.q;
    for (std::size_t j = 3; j < p.keep.size(); j += 17) p.keep[j] = 0;
    return p;
  }
};

TYPED_TEST_SUITE_P(attention_determinism);

TYPED_TEST_P(attention_determinism, SameSeedSameBits) {
  const auto p = TestFixture::make_problem();
  const auto a = TypeParam::make(TestFixture::d);
  const auto b = TypeParam::make(TestFixture::d);
  for (const bool causal : {false, true}) {
    if (causal && !TestFixture::attention_type::supports_causal) continue;
    const attention_mask mask{causal, p.keep};
    EXPECT_TRUE(same_bits(run(a, p.q, p.k, p.v, mask), run(b, p.q, p.k, p.v, mask)))
        << "two mechanisms made alike gave different bits (causal " << causal << ")";
  }
}

TYPED_TEST_P(attention_determinism, ThreadCountDoesNotChangeBits) {
#ifndef _OPENMP
  GTEST_SKIP() << "built without OpenMP: there is only one thread count to compare";
#else
  const auto p = TestFixture::make_problem();
  const auto a = TypeParam::make(TestFixture::d);
  const int eigen_threads = Eigen::nbThreads();
  const int threads = omp_get_max_threads();
  Eigen::setNbThreads(1);
  for (const bool causal : {false, true}) {
    if (causal && !TestFixture::attention_type::supports_causal) continue;
    const attention_mask mask{causal, p.keep};
    omp_set_num_threads(1);
    const auto one = run(a, p.q, p.k, p.v, mask);
    omp_set_num_threads(2);
    const auto two = run(a, p.q, p.k, p.v, mask);
    omp_set_num_threads(3);
    const auto three = run(a, p.q, p.k, p.v, mask);
    EXPECT_TRUE(same_bits(one, two)) << "1 and 2 threads differ (causal " << causal << ")";
    EXPECT_TRUE(same_bits(one, three)) << "1 and 3 threads differ (causal " << causal << ")";
  }
  omp_set_num_threads(threads);
  Eigen::setNbThreads(eigen_threads);
#endif
}

REGISTER_TYPED_TEST_SUITE_P(attention_determinism, SameSeedSameBits, ThreadCountDoesNotChangeBits);

}  // namespace performer::conformance
