// Covers performer/favor/favor_attention.hpp: approximation of exact softmax (error ~ 1/sqrt(m)),
// causal vs bidirectional, the stabiliser under extreme norms, accumulator precision, segments,
// the causal waves, redraws and bad configuration. The contract every mechanism shares
// (conformance, determinism, allocation) is in conformance_test.cpp and its siblings; the decoder
// in favor_decoder_test.cpp.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include <performer/favor/favor_attention.hpp>
#include <performer/favor/favor_decoder.hpp>
#include <performer/favor/features/elu_features.hpp>
#include <performer/favor/features/favor_plus_plus_features.hpp>
#include <performer/favor/features/hyperbolic_features.hpp>
#include <performer/favor/features/relu_features.hpp>
#include <performer/favor/features/trigonometric_features.hpp>
#include <performer/performer.hpp>
#include <performer/testing/allocation.hpp>
#include <performer/testing/detail/extreme_contract.hpp>
#include <performer/testing/helpers.hpp>
#include <performer/testing/oracle.hpp>

#include "favor/makers.hpp"

// Named as well as anonymous: the unity build compiles several test files as one.
namespace favor_favor_attention_test {
namespace {

using performer::attention_mask;
using performer::favor_attention;
using performer::index_t;
using performer::row_matrix;
using performer::conformance::random_matrix;
using performer::conformance::relative_difference;
using performer::conformance::run;

/// Mean relative error of FAVOR+ (m features) against exact attention over `seeds` draws.
double mean_error(index_t m, bool causal, int seeds) {
  const index_t n = 96;
  const index_t d = 16;
  // Logits q.k/sqrt(d) of order 1: the regime where softmax weights are spread out and the
  // estimator's variance is moderate (docs/algorithms.md §5.5: keep |x+y|^2 small).
  const auto q = random_matrix<double>(n, d, 1, 0.6);
  const auto k = random_matrix<double>(n, d, 2, 0.6);
  const auto v = random_matrix<double>(n, 8, 3);
  const auto exact = performer::oracle::softmax_attention(q, k, v, attention_mask{causal, {}});
  double total = 0;
  for (int s = 0; s < seeds; ++s) {
    const favor_attention<double> favor(d, m, static_cast<std::uint64_t>(100 + s));
    const auto approx = run(favor, q, k, v, attention_mask{causal, {}});
    total += (approx - exact).norm() / exact.norm();
  }
  return total / seeds;
}

TEST(FavorAttention, ErrorFallsLikeOneOverSqrtM) {
  // The kernel estimate's variance is ~1/m (Performer Lemma 2), so the output error's standard
  // deviation is ~1/sqrt(m): a log-log slope of -1/2. Averaging 8 draws per m keeps the slope's
  // noise well inside the +-0.15 band (orthogonal features lower the constant, not the slope).
  std::vector<double> logs_m;
  std::vector<double> logs_e;
  for (const index_t m : {16, 64, 256, 1024}) {
    logs_m.push_back(std::log(static_cast<double>(m)));
    logs_e.push_back(std::log(mean_error(m, false, 8)));
  }
  const double mx = std::accumulate(logs_m.begin(), logs_m.end(), 0.0) / 4;
  const double my = std::accumulate(logs_e.begin(), logs_e.end(), 0.0) / 4;
  double sxy = 0;
  double sxx = 0;
  for (std::size_t i = 0; i < 4; ++i) {
    sxy += (logs_m[i] - mx) * (logs_e[i] - my);
    sxx += (logs_m[i] - mx) * (logs_m[i] - mx);
  }
  const double slope = sxy / sxx;
  EXPECT_NEAR(slope, -0.5, 0.15) << "errors: " << std::exp(logs_e[0]) << " ... "
                                 << std::exp(logs_e[3]);
  EXPECT_LT(std::exp(logs_e[3]), 0.05);  // m = 1024: a few percent
}

TEST(FavorAttention, CausalConvergesToExactCausalSoftmax) {
  const double e64 = mean_error(64, true, 6);
  const double e1024 = mean_error(1024, true, 6);
  // 16x the features: the error should shrink by about 4x; demand at least 2.5x.
  EXPECT_LT(e1024 * 2.5, e64) << e64 << " vs " << e1024;
  EXPECT_LT(e1024, 0.05);
}

TEST(FavorAttention, CausalLastRowEqualsBidirectional) {
  const auto q = random_matrix<double>(70, 16, 4);
  const auto k = random_matrix<double>(70, 16, 5);
  const auto v = random_matrix<double>(70, 6, 6);
  const favor_attention<double> favor(16, 128, 3, {}, {}, {.block = 32, .chunk = 16});
  const auto causal = run(favor, q, k, v, attention_mask{true, {}});
  const auto bidir = run(favor, q, k, v);
  // Same keys, same features, different summation order: rounding only.
  EXPECT_LE(relative_difference(causal.row(69), bidir.row(69)), 1e-13);
}

TEST(FavorAttention, ExtremeNormsStayFiniteAndMatchDoubleEvaluation) {
  // Query and key norms up to 100: exp(|x~|^2/2) alone would overflow any float (|x~|^2/2 =
  // 1250 at d = 16). The stabiliser keeps every exponent <= 0, so outputs stay finite and
  // inside the values' range. Where float's exponent range still holds every feature
  // (norm 10: feature exponents within ~+-40 of the row maximum), the float result equals the
  // same estimator evaluated in double; at norm 100 features below e^-87 underflow in float
  // (their double values are e^-300), so there only finiteness and convexity are demanded.
  const index_t d = 16;
  for (const float norm : {10.0F, 30.0F, 100.0F}) {
    auto q = random_matrix<float>(40, d, 7);
    auto k = random_matrix<float>(40, d, 8);
    const auto v = random_matrix<float>(40, 4, 9);
    for (index_t i = 0; i < 40; ++i) {
      q.row(i) *= norm / q.row(i).norm();
      k.row(i) *= norm / k.row(i).norm();
    }
    favor_attention<float> f32(d, 64, 11);
    favor_attention<double> f64(d, 64, 11);
    f64.projection().set_matrix(f32.projection().matrix().cast<double>());
    for (const bool causal : {false, true}) {
      // At norm 100 a query's feature products can all underflow float; whether they do depends
      // on the platform's exp (subnormals on SSE and AVX2, flushed to zero by Eigen's AVX-512
      // exp), and then the documented error is the answer. Below that, a result is demanded.
      row_matrix<float> a;
      try {
        a = run(f32, q, k, v, attention_mask{causal, {}});
      } catch (const performer::invalid_argument& e) {
        ASSERT_GE(norm, 100.0F) << e.what();
        ASSERT_TRUE(performer::conformance::extreme::mentions_vanished_normaliser(e.what()))
            << e.what();
        continue;
      }
      ASSERT_TRUE(a.allFinite()) << "norm " << norm;
      for (index_t c = 0; c < 4; ++c) {
        EXPECT_GE(a.col(c).minCoeff(), v.col(c).minCoeff() - 1e-5F);
        EXPECT_LE(a.col(c).maxCoeff(), v.col(c).maxCoeff() + 1e-5F);
      }
      if (norm <= 10.0F) {
        const auto b = run(f64, q.cast<double>(), k.cast<double>(), v.cast<double>(),
                           attention_mask{causal, {}});
        // Feature exponents ~|w||x~| ~ 20 carry float rounding ~20 * 6e-8 each; 1e-4 of the
        // values' scale leaves an order of magnitude for the sums.
        EXPECT_LE(relative_difference(a.cast<double>(), b), 1e-4) << "causal=" << causal;
      }
    }
  }
}

TEST(FavorAttention, DoubleAccumulationTracksDoubleReference) {
  const auto q = random_matrix<float>(300, 16, 12);
  const auto k = random_matrix<float>(300, 16, 13);
  const auto v = random_matrix<float>(300, 8, 14);
  favor_attention<float, performer::positive_features<float>, performer::orthogonal_sampler, double>
      mixed(16, 64, 5);
  favor_attention<double> ref(16, 64, 5);
  ref.projection().set_matrix(mixed.projection().matrix().cast<double>());
  for (const bool causal : {false, true}) {
    const auto a = run(mixed, q, k, v, attention_mask{causal, {}});
    const auto b =
        run(ref, q.cast<double>(), k.cast<double>(), v.cast<double>(), attention_mask{causal, {}});
    // Only the features are float (relative error ~1e-6 each); the sums are double.
    EXPECT_LE(relative_difference(a.cast<double>(), b), 2e-5);
  }
}

// Every visible weight underflowing (den = 0 exactly) is an overflow error, not the zero row
// of a query without keys.
TEST(FavorAttention, VanishingNormaliserThrowsInsteadOfZeroRow) {
  const favor_attention<float> favor(2, 4, 3);
  row_matrix<float> q(2, 2), k(2, 2), v(2, 1), out(2, 1);
  q << 0.5F, 0.25F, 0.1F, 0.2F;
  k << 3e19F, 0.0F, 0.5F, 0.5F;  // query 0 sees only key 0, whose weight is 0 in float
  v << 1.0F, 2.0F;
  EXPECT_THROW(run(favor, q, k, v, attention_mask{true, {}}), performer::invalid_argument);
  performer::favor_decoder<float> decoder(favor, 1);
  EXPECT_THROW(decoder.step(q.row(0), k.row(0), v.row(0), out.row(0)), performer::invalid_argument);
  EXPECT_EQ(decoder.position(), 1);  // the token was added; the context stays usable
  decoder.step(q.row(1), k.row(1), v.row(1), out.row(1));
  EXPECT_FLOAT_EQ(out(1, 0), 2.0F);
}

TEST(FavorAttention, ProjectionRedrawAndUserMatrix) {
  favor_attention<double> favor(8, 16, 1);
  const row_matrix<double> first = favor.projection().matrix();
  const auto q = random_matrix<double>(10, 8, 1);
  const auto v = random_matrix<double>(10, 3, 2);
  const auto before = run(favor, q, q, v);
  favor.projection().redraw();
  EXPECT_NE(favor.projection().matrix(), first);
  EXPECT_GT(relative_difference(run(favor, q, q, v), before), 1e-6);
  favor.projection().set_matrix(first);
  EXPECT_EQ(run(favor, q, q, v), before);
  EXPECT_THROW(favor.projection().set_matrix(row_matrix<double>::Ones(16, 7)),
               performer::invalid_argument);
}

TEST(FavorAttention, RejectsBadConfigurationAndInput) {
  EXPECT_THROW(favor_attention<float>(16, 0), performer::invalid_argument);
  EXPECT_THROW(favor_attention<float>(0, 16), performer::invalid_argument);
  EXPECT_THROW(favor_attention<float>(16, 16, 0, {}, {}, {.block = 0}),
               performer::invalid_argument);
  EXPECT_THROW(favor_attention<float>(16, 16, 0, {}, {}, {.chunk = 0}),
               performer::invalid_argument);
  const favor_attention<float> favor(16, 16, 0);
  const auto q = random_matrix<float>(5, 12, 1);
  const auto v = random_matrix<float>(5, 3, 1);
  EXPECT_THROW(static_cast<void>(run(favor, q, q, v)), performer::invalid_argument);
}

}  // namespace
}  // namespace favor_favor_attention_test

namespace favor_favor_attention_test {
namespace {

// Bidirectional segments change only the order of the sums: a split and an unsplit pass agree
// to rounding, with padding. The causal path does not use segments at all: the same bits.
TEST(FavorAttention, SegmentsChangeOnlyRounding) {
  const index_t n = 203;
  const auto q = random_matrix<double>(n, 8, 1);
  const auto k = random_matrix<double>(n, 8, 2);
  const auto v = random_matrix<double>(n, 5, 3);
  std::vector<std::uint8_t> keep(static_cast<std::size_t>(n), 1);
  for (std::size_t j = 0; j < keep.size(); j += 7) keep[j] = 0;
  const favor_attention<double> whole(8, 32, 4, {}, {}, {.block = 16, .chunk = 8, .segments = 1});
  const favor_attention<double> split(8, 32, 4, {}, {},
                                      {.block = 16, .chunk = 8, .segments = 5, .min_segment = 10});
  const attention_mask bidirectional{false, keep};
  const row_matrix<double> a = performer::attend(whole, q, k, v, bidirectional);
  const row_matrix<double> b = performer::attend(split, q, k, v, bidirectional);
  EXPECT_LT((a - b).cwiseAbs().maxCoeff(), 1e-13);
  const attention_mask causal{true, keep};
  EXPECT_TRUE(performer::conformance::same_bits(performer::attend(whole, q, k, v, causal),
                                                performer::attend(split, q, k, v, causal)));
}

// The causal waves (favor/detail/causal_pass.hpp) on a small layout that has every case: blocks
// of 16 in waves of 3, chunks of 4, N = 16 * 3 * 3 + 7 (three full waves, then a wave of one
// ragged block), padding, and keys with the largest log scale a key can have early in two
// blocks, so that many later queries' block-local shifts lie far below their global ones (a
// correction that skipped a rescale, or took another block's state, would be far off).
struct wave_problem {
  static constexpr index_t n = 16 * 3 * 3 + 7;
  static constexpr index_t d = 8;
  row_matrix<double> q = random_matrix<double>(n, d, 11, 0.8);
  row_matrix<double> k = random_matrix<double>(n, d, 12, 0.8);
  row_matrix<double> v = random_matrix<double>(n, 5, 13);
  std::vector<std::uint8_t> keep = std::vector<std::uint8_t>(static_cast<std::size_t>(n), 1);

  /// Waves on several threads (with more than one), however small the blocks.
  static performer::favor_options options(index_t wave_blocks) {
    return {.block = 16, .chunk = 4, .wave_blocks = wave_blocks, .parallel_block_work = 1};
  }

  explicit wave_problem(const favor_attention<double>& a) {
    index_t longest = 0;
    a.projection().matrix().rowwise().squaredNorm().maxCoeff(&longest);
    const row_matrix<double> loud = a.projection().matrix().row(longest) * std::pow(d, 0.25);
    k.row(18) = loud;   // block 1, chunk 0: every later query's shift
    k.row(101) = loud;  // block 6, chunk 1: ties it (the maximum does not rise)
    for (std::size_t j = 5; j < keep.size(); j += 9) keep[j] = 0;
    keep[0] = keep[1] = 0;  // the first queries see no key
  }
};

/// Causal FAVOR from the mechanism's own feature map and projection, summed in long double with
/// each query's shift the largest log scale among the keys it sees: no blocks, chunks or waves.
row_matrix<double> exact_causal(const favor_attention<double>& a, const wave_problem& p) {
  const index_t n = wave_problem::n;
  const index_t m = a.feature_count();
  row_matrix<double> phi_q(n, m), phi_k(n, m);
  performer::vector<double> log_q(n), log_k(n);
  a.feature_map().apply(a.projection().matrix(), p.q, phi_q, log_q);
  a.feature_map().apply(a.projection().matrix(), p.k, phi_k, log_k);
  row_matrix<double> out = row_matrix<double>::Zero(n, p.v.cols());
  for (index_t i = 0; i < n; ++i) {
    double shift = -std::numeric_limits<double>::infinity();
    for (index_t j = 0; j <= i; ++j) {
      if (p.keep[static_cast<std::size_t>(j)] != 0) shift = std::max(shift, log_k(j));
    }
    long double den = 0;
    Eigen::Matrix<long double, 1, Eigen::Dynamic> num =
        Eigen::Matrix<long double, 1, Eigen::Dynamic>::Zero(p.v.cols());
    for (index_t j = 0; j <= i; ++j) {
      if (p.keep[static_cast<std::size_t>(j)] == 0) continue;
      long double dot = 0;
      for (index_t f = 0; f < m; ++f) dot += static_cast<long double>(phi_q(i, f)) * phi_k(j, f);
      const long double c = std::exp(static_cast<long double>(log_k(j)) - shift) * dot;
      den += c;
      num += c * p.v.row(j).cast<long double>();
    }
    if (den != 0) out.row(i) = (num / den).cast<double>();
  }
  return out;
}

// Each output is a convex combination of values in [-1, 1] (positive features): the ratio of two
// sums of positive terms, each term through at most N + 2M + a few dozen roundings (the key
// sums, the feature dot products, the rescales), so the relative error of num and den is at most
// about (151 + 64 + 48) u = 3e-14 and the output moves by at most twice that; the features
// themselves (the same map on rows grouped differently) differ by a few u. 1e-12 leaves a
// margin of 15; an output with a lost or misplaced term is off by orders more.
TEST(FavorAttention, CausalWavesMatchAnExactSumOfTheSameFeatures) {
  const favor_attention<double> a(wave_problem::d, 32, 5, {}, {}, wave_problem::options(3));
  const wave_problem p(a);
  const row_matrix<double> got = performer::attend(a, p.q, p.k, p.v, attention_mask{true, p.keep});
  const row_matrix<double> want = exact_causal(a, p);
  EXPECT_LT((got - want).cwiseAbs().maxCoeff(), 1e-12);
  EXPECT_TRUE(got.topRows(2).isZero(0)) << "queries that see no key get zero rows";
}

// The bits depend on N and the options only: a block's sums depend on its own tokens and the
// state of the keys before it, which the prefix adds up block by block in the same order
// whatever the wave width or the thread count. So 1, 2 and 3 threads (3 splits a wave of 3 one
// block per thread, 2 unevenly) and any wave width give the same bits, the default (0: one block
// per thread, so W itself follows the thread count) included.
TEST(FavorAttention, CausalBitsDoNotDependOnThreadsOrWaveWidth) {
  const favor_attention<double> a(wave_problem::d, 32, 5, {}, {}, wave_problem::options(3));
  const wave_problem p(a);
  const attention_mask mask{true, p.keep};
  const row_matrix<double> base = performer::attend(a, p.q, p.k, p.v, mask);
  for (const index_t wave : {index_t{0}, index_t{1}, index_t{2}, index_t{10}, index_t{64}}) {
    const favor_attention<double> other(wave_problem::d, 32, 5, {}, {},
                                        wave_problem::options(wave));
    EXPECT_TRUE(
        performer::conformance::same_bits(performer::attend(other, p.q, p.k, p.v, mask), base))
        << "wave_blocks " << wave;
  }
#ifdef _OPENMP
  const int threads = omp_get_max_threads();
  const int eigen_threads = Eigen::nbThreads();
  Eigen::setNbThreads(1);  // Eigen's own product split is not the library's to answer for
  const favor_attention<double> per_thread(wave_problem::d, 32, 5, {}, {},
                                           wave_problem::options(0));
  for (const int t : {1, 2, 3}) {
    omp_set_num_threads(t);
    EXPECT_TRUE(performer::conformance::same_bits(performer::attend(a, p.q, p.k, p.v, mask), base))
        << t << " threads";
    EXPECT_TRUE(
        performer::conformance::same_bits(performer::attend(per_thread, p.q, p.k, p.v, mask), base))
        << t << " threads, one block per thread";
  }
  omp_set_num_threads(threads);
  Eigen::setNbThreads(eigen_threads);
#endif
}

// N = 65,536 (N x N floats would be 16 GiB): 256 blocks in 32 causal waves, 2 bidirectional
// segments that run on separate threads. The workspace bound is the same formula as at any N,
// with no N in it.
TEST(FavorAttention, PeakMemoryIsBoundedAtSixtyFiveThousandTokens) {
  if (!performer::counting::available) GTEST_SKIP() << "no counting allocator in this build";
  constexpr index_t n = 65536;
  using maker = performer::test::favor_maker<favor_attention<float>>;
  Eigen::setNbThreads(1);
  const auto q = random_matrix<float>(n, 64, 4);
  const auto k = random_matrix<float>(n, 64, 5);
  const auto v = random_matrix<float>(n, 64, 6);
  row_matrix<float> out(n, 64);
  const favor_attention<float> favor(64, 256, 7);
  for (const bool causal : {false, true}) {
    const auto u = performer::counting::measure_heap([&] {
      favor_attention<float>::workspace_type ws;
      favor.forward(q, k, v, out, {.causal = causal}, ws);
    });
    const long long bound = maker::workspace_bytes(favor, n, 64, causal) +
                            performer::conformance::eigen_allowance<float>;
    ASSERT_LT(bound, static_cast<long long>(n) * 256 * 4) << "the bound holds an N x M buffer";
    EXPECT_LE(u.peak, bound) << "causal " << causal;
  }
}

}  // namespace
}  // namespace favor_favor_attention_test
