// batched_attention: every (sequence, head) pair of a batch, in either layout, gives exactly what
// the mechanism gives for that sequence alone and unpadded; padding is never read; the bits do
// not depend on the thread count; bad batches are rejected with a message naming the problem.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include <performer/nn/batched_attention.hpp>
#include <performer/testing/counting_allocator.hpp>
#include <performer/testing/expect_invalid.hpp>
#include <performer/testing/helpers.hpp>
#include <performer/testing/oracle.hpp>
#include <performer/testing/registry.hpp>

#include "instances/instances.hpp"

namespace performer::test {
// Named as well as anonymous: the unity build compiles several test files as one.
namespace nn_batched_attention_test {
namespace {

using conformance::random_matrix;
using conformance::same_bits;

/// One buffer of B x H x N x w scalars in a layout, filled from a seed.
template <class T>
struct batch_buffer {
  std::vector<T> data;
  head_batch<T> view;
  batch_buffer(index_t b, index_t h, index_t n, index_t w, head_layout layout, std::uint64_t seed)
      : data(static_cast<std::size_t>(b * h * n * w)) {
    const row_matrix<T> values = random_matrix<T>(b * h * n, w, seed);
    std::copy(values.data(), values.data() + values.size(), data.begin());
    view = {data.data(), b, h, n, w, layout};
  }
  [[nodiscard]] head_batch<const T> in() const { return {data.data(), view.batch, view.heads, view.tokens, view.width, view.layout}; }
};

/// Batch shapes of one check: lengths 0 and full included, cross-attention when n_k != n_q.
struct shape {
  index_t batch = 3, heads = 2, n_q = 23, n_k = 23, d = 8, d_v = 5;
};

template <class Entry, class T>
struct mechanism_case {
  using entry = Entry;
  using scalar = T;
};

template <class Case>
class BatchedAttention : public ::testing::Test {
 protected:
  using T = typename Case::scalar;
  using A = typename Case::entry::template type<T>;
  static A make(index_t d) { return Case::entry::template make<T>(d, 16, 7); }

  /// The mechanism on sequence b, head h alone: its real rows copied into fresh matrices.
  static row_matrix<T> alone(const A& a, const head_batch<const T>& q, const head_batch<const T>& k,
                             const head_batch<const T>& v, index_t b, index_t h, index_t nq,
                             index_t nk, const attention_mask& mask) {
    const row_matrix<T> qb = q.head(b, h, 0, nq);
    const row_matrix<T> kb = k.head(b, h, 0, nk);
    const row_matrix<T> vb = v.head(b, h, 0, nk);
    return conformance::run(a, qb, kb, vb, mask);
  }

  /// Same arithmetic, but Eigen peels its vectorised loops to aligned addresses, so a strided
  /// head and its contiguous copy may sum in another order: a few ulp per dot product of 8 and
  /// per softmax over at most 29 keys. A wrong row, head or length is off by O(1).
  static constexpr double tolerance = std::is_same_v<T, float> ? 1e-5 : 1e-13;

  /// Runs a batch and checks each pair against alone(), and its padding for zeros.
  static void check(const shape& s, head_layout lq, head_layout lk, head_layout lout,
                    bool causal, std::vector<index_t> q_lengths, std::vector<index_t> k_lengths) {
    const A a = make(s.d);
    const batch_buffer<T> q(s.batch, s.heads, s.n_q, s.d, lq, 1);
    batch_buffer<T> k(s.batch, s.heads, s.n_k, s.d, lk, 2);
    if (registry::keys_are_queries<typename Case::entry>()) k.data = q.data;
    const batch_buffer<T> v(s.batch, s.heads, s.n_k, s.d_v, lq, 3);
    batch_buffer<T> out(s.batch, s.heads, s.n_q, s.d_v, lout, 4);
    batched_attention(a, q.in(), k.in(), v.in(), out.view, {causal, q_lengths, k_lengths, {}});
    for (index_t b = 0; b < s.batch; ++b) {
      const index_t nq = q_lengths.empty() ? s.n_q : q_lengths[static_cast<std::size_t>(b)];
      const index_t nk = k_lengths.empty() ? s.n_k : k_lengths[static_cast<std::size_t>(b)];
      for (index_t h = 0; h < s.heads; ++h) {
        const row_matrix<T> got = out.view.head(b, h);
        SCOPED_TRACE(::testing::Message() << "sequence " << b << ", head " << h << ", causal " << causal);
        if (nq > 0 && nk > 0) {
          const row_matrix<T> expected = alone(a, q.in(), k.in(), v.in(), b, h, nq, nk, {causal, {}});
          EXPECT_LE(conformance::relative_difference(got.topRows(nq), expected), tolerance);
        } else {
          EXPECT_TRUE(got.topRows(nq).isZero(0));
        }
        EXPECT_TRUE(got.bottomRows(s.n_q - nq).isZero(0)) << "padded output rows must be zero";
      }
    }
  }
};

using cases = ::testing::Types<mechanism_case<registry::softmax, double>,
                               mechanism_case<registry::tiled, float>,
                               mechanism_case<registry::favor, float>,
                               mechanism_case<registry::lsh, float>,
                               mechanism_case<registry::lsh_qk, double>>;
TYPED_TEST_SUITE(BatchedAttention, cases);

TYPED_TEST(BatchedAttention, EachSequenceAsIfAloneInEveryLayout) {
  using L = head_layout;
  for (const bool causal : {false, true}) {
    if (causal && !TestFixture::A::supports_causal) continue;
    for (const L layout : {L::bnhd, L::bhnd}) {
      TestFixture::check({}, layout, layout, layout, causal, {}, {});
      TestFixture::check({}, layout, layout, layout, causal, {23, 9, 1}, {23, 9, 1});
      TestFixture::check({.batch = 4}, layout, layout, layout, causal, {0, 5, 23, 17}, {0, 5, 23, 17});
    }
  }
}

TYPED_TEST(BatchedAttention, CrossAttentionWithMixedLayoutsAndValueWidth) {
  if (registry::keys_are_queries<typename TypeParam::entry>()) GTEST_SKIP() << "shared-QK has no separate keys";
  using L = head_layout;
  const shape s{.batch = 2, .heads = 3, .n_q = 11, .n_k = 29, .d = 8, .d_v = 3};
  TestFixture::check(s, L::bnhd, L::bhnd, L::bhnd, false, {}, {});
  TestFixture::check(s, L::bhnd, L::bnhd, L::bnhd, false, {11, 4}, {29, 0});
}

TYPED_TEST(BatchedAttention, ThreadCountDoesNotChangeBits) {
#ifndef _OPENMP
  GTEST_SKIP() << "built without OpenMP: there is only one thread count to compare";
#else
  using S = typename TestFixture::T;
  const auto a = TestFixture::make(8);
  const int threads = omp_get_max_threads();
  const int eigen_threads = Eigen::nbThreads();
  Eigen::setNbThreads(1);  // Eigen's own threaded products block differently (README, Threads)
  // Six pairs (run across pairs) and one long pair (run inside the mechanism).
  for (const shape s : {shape{}, shape{.batch = 1, .heads = 1, .n_q = 1500, .n_k = 1500}}) {
    const batch_buffer<S> q(s.batch, s.heads, s.n_q, s.d, head_layout::bnhd, 1);
    const batch_buffer<S> v(s.batch, s.heads, s.n_k, s.d_v, head_layout::bnhd, 3);
    std::vector<row_matrix<S>> results;
    for (const int t : {1, 2, 3}) {
      omp_set_num_threads(t);
      batch_buffer<S> out(s.batch, s.heads, s.n_q, s.d_v, head_layout::bnhd, 4);
      batched_attention(a, q.in(), q.in(), v.in(), out.view, {TestFixture::A::supports_causal, {}, {}, {}});
      results.emplace_back(Eigen::Map<row_matrix<S>>(out.data.data(), s.batch * s.n_q, s.heads * s.d_v));
    }
    EXPECT_TRUE(same_bits(results[0], results[1])) << "1 and 2 threads differ at N = " << s.n_q;
    EXPECT_TRUE(same_bits(results[0], results[2])) << "1 and 3 threads differ at N = " << s.n_q;
  }
  omp_set_num_threads(threads);
  Eigen::setNbThreads(eigen_threads);
#endif
}

}  // namespace
}  // namespace nn_batched_attention_test
using namespace nn_batched_attention_test;  // for what follows

// Exact attention through the batch against the independent long double reference, with
// per-token key masks: the only approximation is double rounding (relative 1e-12 is ~4,500 ulp,
// far above the O(N d) ulp a softmax of 23 keys accumulates, far below any indexing mistake).
TEST(BatchedAttentionExact, KeyMaskAndLengthsMatchTheReference) {
  const softmax_attention<double> a;
  const index_t batch = 2, heads = 2, n = 23, d = 8, d_v = 5;
  const std::vector<index_t> lengths{23, 14};
  std::vector<std::uint8_t> keep(static_cast<std::size_t>(batch * n), 1);
  for (std::size_t j = 2; j < keep.size(); j += 5) keep[j] = 0;
  batch_buffer<double> q(batch, heads, n, d, head_layout::bnhd, 11);
  batch_buffer<double> k(batch, heads, n, d, head_layout::bhnd, 12);
  batch_buffer<double> v(batch, heads, n, d_v, head_layout::bnhd, 13);
  batch_buffer<double> out(batch, heads, n, d_v, head_layout::bhnd, 14);
  for (const bool causal : {false, true}) {
    batched_attention(a, q.in(), k.in(), v.in(), out.view, {causal, lengths, lengths, keep});
    for (index_t b = 0; b < batch; ++b) {
      const index_t len = lengths[static_cast<std::size_t>(b)];
      const std::span<const std::uint8_t> row(keep.data() + b * n, static_cast<std::size_t>(len));
      for (index_t h = 0; h < heads; ++h) {
        const row_matrix<double> expected = oracle::softmax_attention(
            q.view.head(b, h, 0, len), k.view.head(b, h, 0, len), v.view.head(b, h, 0, len),
            attention_mask{causal, row});
        const row_matrix<double> got = out.view.head(b, h, 0, len);
        EXPECT_LT(conformance::relative_difference(got, expected), 1e-12)
            << "sequence " << b << ", head " << h << ", causal " << causal;
      }
    }
  }
}

TEST(BatchedAttentionExact, PaddingIsNeverRead) {
  const softmax_attention<float> a;
  const std::vector<index_t> lengths{7, 3};
  batch_buffer<float> q(2, 2, 9, 4, head_layout::bnhd, 21);
  batch_buffer<float> v(2, 2, 9, 4, head_layout::bnhd, 22);
  batch_buffer<float> clean(2, 2, 9, 4, head_layout::bnhd, 23);
  batched_attention(a, q.in(), q.in(), v.in(), clean.view, batch_mask::padded(lengths, true));
  for (index_t b = 0; b < 2; ++b) {
    for (index_t h = 0; h < 2; ++h) {
      const index_t len = lengths[static_cast<std::size_t>(b)];
      q.view.head(b, h, len, 9 - len).setConstant(std::numeric_limits<float>::quiet_NaN());
      v.view.head(b, h, len, 9 - len).setConstant(std::numeric_limits<float>::infinity());
    }
  }
  batch_buffer<float> out(2, 2, 9, 4, head_layout::bnhd, 24);
  batched_attention(a, q.in(), q.in(), v.in(), out.view, batch_mask::padded(lengths, true));
  EXPECT_EQ(out.data, clean.data);
}

TEST(BatchedAttentionExact, WarmWorkspaceAllocatesNothing) {
  if (!counting::available) GTEST_SKIP() << "no counting allocator in this build (sanitizer)";
  const tiled_softmax_attention<float> a;
  const batch_buffer<float> q(4, 2, 300, 8, head_layout::bhnd, 31);
  const batch_buffer<float> v(4, 2, 300, 8, head_layout::bhnd, 32);
  batch_buffer<float> out(4, 2, 300, 8, head_layout::bhnd, 33);
  batched_workspace<tiled_softmax_attention<float>> ws;
  const batch_mask mask{true, {}, {}, {}};
  batched_attention(a, q.in(), q.in(), v.in(), out.view, mask, ws);
  const auto usage = counting::measure_heap(
      [&] { batched_attention(a, q.in(), q.in(), v.in(), out.view, mask, ws); });
  EXPECT_EQ(usage.allocations, 0U);
}

}  // namespace performer::test
