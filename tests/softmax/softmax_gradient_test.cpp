// Covers performer/softmax/softmax_gradient.hpp and tiled_softmax_gradient.hpp: both backward
// passes against central finite differences of their own forward (every mask, cross-attention,
// d_v != d, ragged tiles crossing the causal diagonal), against each other in float and double,
// the saved log-normalisers, large logits, thread-count independence and bad input.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include <performer/core/detail/parallel.hpp>
#include <performer/softmax/softmax_gradient.hpp>
#include <performer/softmax/tiled_softmax_gradient.hpp>
#include <performer/testing/counting_allocator.hpp>
#include <performer/testing/expect_invalid.hpp>
#include <performer/testing/helpers.hpp>

#include "support/gradient_check.hpp"

// Named as well as anonymous: the unity build compiles several test files as one.
namespace softmax_softmax_gradient_test {
namespace {

using performer::attention_gradient;
using performer::attention_mask;
using performer::index_t;
using performer::row_matrix;
using performer::softmax_attention;
using performer::tiled_softmax_attention;
using performer::conformance::run;
using performer::conformance::same_bits;
using performer::test::gaussian_matrix;
using performer::test::relative_error;

/// A forward with its saved state, then the backward: everything a test looks at.
template <class A>
struct pass {
  using T = typename A::scalar_type;
  row_matrix<T> out, dq, dk, dv;
  typename attention_gradient<A>::saved_type saved;
};

template <class A>
pass<A> forward_backward(const A& a, const row_matrix<typename A::scalar_type>& q,
                         const row_matrix<typename A::scalar_type>& k,
                         const row_matrix<typename A::scalar_type>& v,
                         const row_matrix<typename A::scalar_type>& dout,
                         const attention_mask& mask) {
  using G = attention_gradient<A>;
  pass<A> p;
  p.out.resize(q.rows(), v.cols());
  p.dq.resize(q.rows(), q.cols());
  p.dk.resize(k.rows(), k.cols());
  p.dv.resize(v.rows(), v.cols());
  typename A::workspace_type forward_ws;
  typename G::workspace_type backward_ws;
  G::forward(a, q, k, v, p.out, mask, forward_ws, p.saved);
  G::backward(a, q, k, v, p.out, dout, p.dq, p.dk, p.dv, mask, backward_ws, p.saved);
  return p;
}

/// Small tiles for the tiled mechanism: ragged last tiles, and a causal diagonal that crosses
/// tiles (3 queries x 4 keys).
template <class A>
A make_small() {
  if constexpr (requires { A(3, 4); }) {
    return A(3, 4);
  } else {
    return A{};
  }
}

struct gradient_case {
  const char* name;
  index_t n_q, n_k, d, d_v;
  bool causal;
  std::vector<std::uint8_t> keep;  // empty: no padding
};

std::vector<gradient_case> gradient_cases() {
  return {
      {"bidirectional", 9, 9, 4, 3, false, {}},
      {"causal", 11, 11, 3, 5, true, {}},
      {"padded", 10, 10, 4, 4, false, {1, 0, 1, 1, 0, 1, 1, 1, 0, 1}},
      // Keys 0-2 are padding: under the causal mask queries 0-2 see no key (zero rows).
      {"causal_padded", 12, 12, 3, 2, true, {0, 0, 0, 1, 1, 0, 1, 1, 1, 0, 1, 1}},
      {"cross_7x13", 7, 13, 5, 3, false, {}},
      {"cross_13x7_padded", 13, 7, 3, 4, false, {1, 1, 0, 1, 0, 1, 1}},
      {"d_v_below_d", 9, 9, 5, 2, false, {}},
      {"d_v_above_d_causal", 8, 8, 3, 6, true, {}},
      {"every_key_padded", 5, 6, 3, 2, false, {0, 0, 0, 0, 0, 0}},
  };
}

template <class A>
struct SoftmaxGradientFiniteDifferences : ::testing::Test {};
using double_mechanisms =
    ::testing::Types<softmax_attention<double>, tiled_softmax_attention<double>>;
TYPED_TEST_SUITE(SoftmaxGradientFiniteDifferences, double_mechanisms);

TYPED_TEST(SoftmaxGradientFiniteDifferences, MatchesCentralDifferences) {
  const TypeParam a = make_small<TypeParam>();
  unsigned seed = 10;
  for (const gradient_case& c : gradient_cases()) {
    SCOPED_TRACE(c.name);
    const auto q = gaussian_matrix(c.n_q, c.d, ++seed);
    const auto k = gaussian_matrix(c.n_k, c.d, ++seed);
    const auto v = gaussian_matrix(c.n_k, c.d_v, ++seed);
    const auto dout = gaussian_matrix(c.n_q, c.d_v, ++seed);
    const attention_mask mask{c.causal, c.keep};
    const auto p = forward_backward(a, q, k, v, dout, mask);
    const auto numeric = performer::test::finite_differences(
        [&](const row_matrix<double>& qq, const row_matrix<double>& kk,
            const row_matrix<double>& vv) { return run(a, qq, kk, vv, mask); },
        q, k, v, dout);
    // 1e-7 relative: see gradient_check.hpp (truncation and rounding both near 1e-10).
    EXPECT_LE(relative_error(p.dq, numeric.dq), 1e-7);
    EXPECT_LE(relative_error(p.dk, numeric.dk), 1e-7);
    EXPECT_LE(relative_error(p.dv, numeric.dv), 1e-7);
    if (c.causal && !c.keep.empty()) {  // the queries that see no key get exactly zero
      EXPECT_TRUE(p.dq.topRows(3).isZero(0.0));
      EXPECT_TRUE(p.out.topRows(3).isZero(0.0));
    }
  }
}

template <class A>
struct SoftmaxGradientMasking : ::testing::Test {};
using all_mechanisms = ::testing::Types<softmax_attention<float>, softmax_attention<double>,
                                        tiled_softmax_attention<float>,
                                        tiled_softmax_attention<double>>;
TYPED_TEST_SUITE(SoftmaxGradientMasking, all_mechanisms);

// Masked weights must be exactly 0, not Eigen's exp(-inf) (a tiny positive number): a leak of
// 1e-308 hides below rounding in every comparison above, so it is caught where the true
// gradient is exactly zero.
TYPED_TEST(SoftmaxGradientMasking, MaskedKeysGetExactlyZeroGradient) {
  using T = typename TypeParam::scalar_type;
  const TypeParam a = make_small<TypeParam>();
  const row_matrix<T> q = gaussian_matrix(13, 4, 501).cast<T>();
  const row_matrix<T> k = gaussian_matrix(13, 4, 502).cast<T>();
  const row_matrix<T> v = gaussian_matrix(13, 3, 503).cast<T>();
  row_matrix<T> dout = gaussian_matrix(13, 3, 504).cast<T>();
  // Padded keys, with and without the causal mask: no query weighs them.
  const std::vector<std::uint8_t> keep{1, 1, 0, 1, 1, 1, 0, 0, 1, 1, 1, 1, 0};
  // Padded key 2's logits reach ~1e3, past exp's range in either type: it must be masked
  // before the exponential (exp overflows to inf, and inf * 0 is NaN).
  row_matrix<T> k_far = k;
  k_far.row(2) *= T(1000);
  for (const bool causal : {false, true}) {
    const auto p = forward_backward(a, q, k_far, v, dout, {causal, keep});
    for (index_t j = 0; j < 13; ++j) {
      if (keep[static_cast<std::size_t>(j)] != 0) continue;
      EXPECT_TRUE(p.dk.row(j).isZero(0.0)) << "padded key " << j << " causal=" << causal;
      EXPECT_TRUE(p.dv.row(j).isZero(0.0)) << "padded key " << j << " causal=" << causal;
    }
  }
  // Causal: only queries 11 and 12 see key 11; with their dout zero, key 11's gradients are
  // exactly zero unless queries 9 and 10, in the same 3 x 4 diagonal tile, leak their future.
  dout.bottomRows(2).setZero();
  const auto p = forward_backward(a, q, k, v, dout, {true, {}});
  for (const index_t j : {11, 12}) {
    EXPECT_TRUE(p.dk.row(j).isZero(0.0)) << "key " << j << ": " << p.dk.row(j);
    EXPECT_TRUE(p.dv.row(j).isZero(0.0)) << "key " << j << ": " << p.dv.row(j);
  }
}

/// Tiled (ragged tiles) against the materialized reference in double, on cases a little larger
/// than the finite-difference ones.
struct comparison_case {
  index_t n_q, n_k;
  bool causal, padded;
};
constexpr comparison_case comparison_cases[] = {
    {40, 40, false, false}, {40, 40, true, false}, {40, 40, true, true}, {23, 37, false, true}};

std::vector<std::uint8_t> padding(index_t n_k) {
  std::vector<std::uint8_t> keep(static_cast<std::size_t>(n_k), 1);
  for (std::size_t j = 0; j < keep.size(); j += 5) keep[j] = 0;  // key 0 too: a zero row
  return keep;
}

TEST(SoftmaxGradient, TiledMatchesMaterialized) {
  const softmax_attention<double> plain;
  unsigned seed = 100;
  for (const comparison_case& c : comparison_cases) {
    SCOPED_TRACE(::testing::Message() << c.n_q << "x" << c.n_k << " causal=" << c.causal
                                      << " padded=" << c.padded);
    const auto q = gaussian_matrix(c.n_q, 8, ++seed);
    const auto k = gaussian_matrix(c.n_k, 8, ++seed);
    const auto v = gaussian_matrix(c.n_k, 6, ++seed);
    const auto dout = gaussian_matrix(c.n_q, 6, ++seed);
    const auto keep = c.padded ? padding(c.n_k) : std::vector<std::uint8_t>{};
    const attention_mask mask{c.causal, keep};
    const auto ref = forward_backward(plain, q, k, v, dout, mask);
    const auto tiled = forward_backward(tiled_softmax_attention<double>(5, 7), q, k, v, dout, mask);
    // Same maths in double, different summation order (the online forward's out, hence D).
    EXPECT_LE(relative_error(tiled.dq, ref.dq), 1e-12);
    EXPECT_LE(relative_error(tiled.dk, ref.dk), 1e-12);
    EXPECT_LE(relative_error(tiled.dv, ref.dv), 1e-12);
    // Float: logits |s| <~ 10 carry ~1e-6 relative rounding into each weight, and sums of 40
    // terms a few float roundings more (measured ~3e-7); a wrong term is off by O(1).
    const tiled_softmax_attention<float> tiled_float(5, 7);
    const auto f = forward_backward(tiled_float, row_matrix<float>(q.cast<float>()),
                                    row_matrix<float>(k.cast<float>()),
                                    row_matrix<float>(v.cast<float>()),
                                    row_matrix<float>(dout.cast<float>()), mask);
    EXPECT_LE(relative_error(f.dq.cast<double>(), ref.dq), 1e-5);
    EXPECT_LE(relative_error(f.dk.cast<double>(), ref.dk), 1e-5);
    EXPECT_LE(relative_error(f.dv.cast<double>(), ref.dv), 1e-5);
  }
}

TEST(SoftmaxGradient, TiledForwardSavesTheLogSumExpAndTheSameOut) {
  const tiled_softmax_attention<double> a(5, 7);
  unsigned seed = 200;
  for (const comparison_case& c : comparison_cases) {
    SCOPED_TRACE(::testing::Message() << c.n_q << "x" << c.n_k << " causal=" << c.causal
                                      << " padded=" << c.padded);
    const auto q = gaussian_matrix(c.n_q, 8, ++seed);
    const auto k = gaussian_matrix(c.n_k, 8, ++seed);
    const auto v = gaussian_matrix(c.n_k, 6, ++seed);
    const auto keep = c.padded ? padding(c.n_k) : std::vector<std::uint8_t>{};
    const attention_mask mask{c.causal, keep};
    row_matrix<double> out(c.n_q, 6);
    tiled_softmax_attention<double>::workspace_type ws;
    attention_gradient<tiled_softmax_attention<double>>::saved_type saved;
    attention_gradient<tiled_softmax_attention<double>>::forward(a, q, k, v, out, mask, ws, saved);
    EXPECT_TRUE(same_bits(out, run(a, q, k, v, mask)));  // the forward's own kernel
    ASSERT_EQ(saved.log_normaliser.size(), c.n_q);
    // log sum_j exp(q_i . k_j / sqrt(d)) over the visible keys, in long double, no shift.
    for (index_t i = 0; i < c.n_q; ++i) {
      long double sum = 0;
      for (index_t j = 0; j < c.n_k; ++j) {
        if ((c.causal && j > i) || (c.padded && keep[static_cast<std::size_t>(j)] == 0)) continue;
        long double dot = 0;
        for (index_t t = 0; t < 8; ++t) dot += static_cast<long double>(q(i, t)) * k(j, t);
        sum += std::exp(dot / std::sqrt(8.0L));
      }
      const double lse = saved.log_normaliser(i);
      if (sum == 0) {
        EXPECT_EQ(lse, -std::numeric_limits<double>::infinity()) << "query " << i;
      } else {
        const auto expected = static_cast<double>(std::log(sum));
        EXPECT_NEAR(lse, expected, 1e-13 * (1 + std::abs(expected))) << "query " << i;
      }
    }
  }
}

TEST(SoftmaxGradient, LargeLogitsStayFiniteAndAgree) {
  // Logits in the thousands: exp(S - lse) must be formed from the saved lse, never exp(S).
  // Keys come in near-twins (2j + 1 is 2j moved by ~1e-3 before the scaling), so that rows
  // have near-ties whose weights, and therefore gradients, are far from 0 or 1: with
  // independent keys every row is one-hot and every gradient but dV vanishes below rounding.
  auto q = gaussian_matrix(12, 4, 301);
  auto k = gaussian_matrix(12, 4, 302);
  const auto nudge = gaussian_matrix(12, 4, 305, 1e-3);
  for (index_t j = 1; j < 12; j += 2) k.row(j) = k.row(j - 1) + nudge.row(j);
  const auto v = gaussian_matrix(12, 3, 303);
  const auto dout = gaussian_matrix(12, 3, 304);
  q *= 30.0;
  k *= 30.0;
  for (const bool causal : {false, true}) {
    for (const bool padded : {false, true}) {
      SCOPED_TRACE(::testing::Message() << "causal=" << causal << " padded=" << padded);
      const auto keep = padded ? padding(12) : std::vector<std::uint8_t>{};
      const attention_mask mask{causal, keep};
      const auto ref = forward_backward(softmax_attention<double>{}, q, k, v, dout, mask);
      const auto tiled = forward_backward(tiled_softmax_attention<double>(3, 4), q, k, v, dout,
                                          mask);
      for (const auto* m : {&ref.dq, &ref.dk, &ref.dv, &tiled.dq, &tiled.dk, &tiled.dv}) {
        EXPECT_TRUE(m->allFinite());
      }
      // Logits ~1e3 carry absolute rounding ~1e-13 into every weight (and the two passes sum
      // in different orders): 1e-9 relative, as for the forward at such logits.
      EXPECT_LE(relative_error(tiled.dq, ref.dq), 1e-9);
      EXPECT_LE(relative_error(tiled.dk, ref.dk), 1e-9);
      EXPECT_LE(relative_error(tiled.dv, ref.dv), 1e-9);
      // The near-ties make the check bite (dQ is smaller: twins' keys nearly cancel in dS K).
      EXPECT_GT(ref.dk.cwiseAbs().maxCoeff(), 1.0);
      EXPECT_GT(ref.dq.cwiseAbs().maxCoeff(), 1e-3);
    }
  }
}

TEST(SoftmaxGradient, ThreadCountDoesNotChangeBits) {
#ifndef _OPENMP
  GTEST_SKIP() << "built without OpenMP: there is only one thread count to compare";
#else
  // 256 x 256 x (16 + 8) multiply-adds: past the parallel threshold, so one thread runs the
  // single sweep and two or three run the two passes; 8 x 6 tiles of 32 x 48 (ragged).
  const auto q = gaussian_matrix(256, 16, 401);
  const auto k = gaussian_matrix(256, 16, 402);
  const auto v = gaussian_matrix(256, 8, 403);
  const auto dout = gaussian_matrix(256, 8, 404);
  std::vector<std::uint8_t> keep(256, 1);
  for (std::size_t j = 3; j < keep.size(); j += 17) keep[j] = 0;
  keep[0] = 0;
  const tiled_softmax_attention<double> a(32, 48);
  const int threads = omp_get_max_threads();
  const int eigen_threads = Eigen::nbThreads();
  Eigen::setNbThreads(1);  // Eigen's own threaded products block differently (README, Threads)
  for (const bool causal : {false, true}) {
    SCOPED_TRACE(::testing::Message() << "causal=" << causal);
    const attention_mask mask{causal, keep};
    std::vector<pass<tiled_softmax_attention<double>>> results;
    for (const int t : {1, 2, 3}) {
      omp_set_num_threads(t);
      results.push_back(forward_backward(a, q, k, v, dout, mask));
    }
    for (std::size_t t = 1; t < results.size(); ++t) {
      EXPECT_TRUE(same_bits(results[0].dq, results[t].dq)) << "dq, " << t + 1 << " threads";
      EXPECT_TRUE(same_bits(results[0].dk, results[t].dk)) << "dk, " << t + 1 << " threads";
      EXPECT_TRUE(same_bits(results[0].dv, results[t].dv)) << "dv, " << t + 1 << " threads";
      EXPECT_TRUE(same_bits(results[0].saved.log_normaliser, results[t].saved.log_normaliser));
    }
    // Both paths are also right, not merely equal.
    const auto ref = forward_backward(softmax_attention<double>{}, q, k, v, dout, mask);
    EXPECT_LE(relative_error(results[1].dq, ref.dq), 1e-12);
    EXPECT_LE(relative_error(results[1].dk, ref.dk), 1e-12);
    EXPECT_LE(relative_error(results[1].dv, ref.dv), 1e-12);
  }
  omp_set_num_threads(threads);
  Eigen::setNbThreads(eigen_threads);
#endif
}

template <class A>
struct SoftmaxGradientBadInput : ::testing::Test {};
using float_mechanisms = ::testing::Types<softmax_attention<float>, tiled_softmax_attention<float>>;
TYPED_TEST_SUITE(SoftmaxGradientBadInput, float_mechanisms);

TYPED_TEST(SoftmaxGradientBadInput, RejectedWithTheArgumentNamed) {
  using A = TypeParam;
  using G = attention_gradient<A>;
  using performer::conformance::random_matrix;
  const std::string who =
      std::is_same_v<A, softmax_attention<float>> ? "softmax_attention::backward"
                                                  : "tiled_softmax_attention::backward";
  const A a = make_small<A>();
  const auto q = random_matrix<float>(6, 4, 1);
  const auto k = random_matrix<float>(5, 4, 2);
  const auto v = random_matrix<float>(5, 3, 3);
  const auto dout = random_matrix<float>(6, 3, 4);
  row_matrix<float> out(6, 3);
  typename A::workspace_type forward_ws;
  typename G::saved_type saved;
  G::forward(a, q, k, v, out, {}, forward_ws, saved);
  row_matrix<float> dq(6, 4), dk(5, 4), dv(5, 3);
  typename G::workspace_type ws;
  const auto backward = [&](const row_matrix<float>& qq, const row_matrix<float>& go,
                            row_matrix<float>& gq, row_matrix<float>& gk, row_matrix<float>& gv) {
    G::backward(a, qq, k, v, out, go, gq, gk, gv, {}, ws, saved);
    return 0;
  };
  backward(q, dout, dq, dk, dv);  // the valid call passes

  const row_matrix<float> wide_dout = random_matrix<float>(6, 4, 5);
  PERFORMER_EXPECT_INVALID(who, "dout is 6x4 but out is 6x3; they need the same shape",
                           backward(q, wide_dout, dq, dk, dv));
  row_matrix<float> bad_dq(6, 3), bad_dk(4, 4), bad_dv(5, 2);
  PERFORMER_EXPECT_INVALID(who, "dq is 6x3 but q is 6x4", backward(q, dout, bad_dq, dk, dv));
  PERFORMER_EXPECT_INVALID(who, "dk is 4x4 but k is 5x4", backward(q, dout, dq, bad_dk, dv));
  PERFORMER_EXPECT_INVALID(who, "dv is 5x2 but v is 5x3", backward(q, dout, dq, dk, bad_dv));
  // dq is q's own buffer: the gradient would overwrite the input it is computed from.
  row_matrix<float> shared = q;
  PERFORMER_EXPECT_INVALID(who, "dq overlaps an input", backward(shared, dout, shared, dk, dv));
  row_matrix<float> nan_dout = dout;
  nan_dout(2, 1) = std::numeric_limits<float>::quiet_NaN();
  PERFORMER_EXPECT_INVALID(who, "dout (6x3) contains a NaN or an infinity",
                           backward(q, nan_dout, dq, dk, dv));
  if constexpr (std::is_same_v<A, tiled_softmax_attention<float>>) {
    saved.log_normaliser.resize(5);
    PERFORMER_EXPECT_INVALID(who, "saved.log_normaliser has 5 entries, expected 6",
                             backward(q, dout, dq, dk, dv));
  } else {
    saved.weights.resize(5, 6);
    PERFORMER_EXPECT_INVALID(who, "saved.weights is 5x6, expected 6x5",
                             backward(q, dout, dq, dk, dv));
  }
}

/// The tiled backward at N = 16,384, d = 64 in float, causal: D and two B_q x B_k tiles per
/// lane, never the N x N weights (1 GiB here) the materialized backward holds.
TEST(SoftmaxGradient, TiledBackwardMemoryHasNoSquareBuffer) {
  if (!performer::counting::available) GTEST_SKIP() << "no counting allocator in this build";
  constexpr index_t n = 16384, d = 64;
  const tiled_softmax_attention<float> a;
  using G = attention_gradient<tiled_softmax_attention<float>>;
  const row_matrix<float> q = gaussian_matrix(n, d, 61, 0.3).cast<float>();
  const row_matrix<float> k = gaussian_matrix(n, d, 62, 0.3).cast<float>();
  const row_matrix<float> v = gaussian_matrix(n, d, 63).cast<float>();
  const row_matrix<float> dout = gaussian_matrix(n, d, 64).cast<float>();
  row_matrix<float> out(n, d), dq(n, d), dk(n, d), dv(n, d);
  tiled_softmax_attention<float>::workspace_type fws;
  G::saved_type saved;
  const attention_mask mask{.causal = true};
  G::forward(a, q, k, v, out, mask, fws, saved);
  const auto u = performer::counting::measure_heap([&] {
    G::workspace_type ws;
    G::backward(a, q, k, v, out, dout, dq, dk, dv, mask, ws, saved);
  });
  EXPECT_TRUE(dq.allFinite() && dk.allFinite() && dv.allFinite());
  const long long lanes = performer::detail::lanes_for(n / a.query_block()) + 1;
  const long long tiles = lanes * (2 * a.query_block() * a.key_block() + a.key_block()) * 4LL;
  const long long bound = tiles + n * 4LL + (2LL << 20);  // D, and Eigen's packing buffers
  std::printf("[memory] tiled exact backward, N = %lld: peak %.2f MiB, bound %.2f MiB, N x N "
              "would be %.0f MiB\n",
              static_cast<long long>(n), u.peak / 1048576.0, bound / 1048576.0,
              n * static_cast<double>(n) * 4 / 1048576.0);
  EXPECT_LE(u.peak, bound);
}

}  // namespace
}  // namespace softmax_softmax_gradient_test
