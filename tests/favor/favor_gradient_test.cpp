// Covers performer/favor/favor_gradient.hpp and the feature maps' backward(): every gradient
// against central finite differences in double (support/gradient_check.hpp says why 1e-7), the
// float path against the double one, thread-count independence, the causal backward's memory at
// N = 65,536, and bad arguments.
#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <type_traits>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include <performer/favor/example_feature_map.hpp>
#include <performer/favor/favor_gradient.hpp>
#include <performer/favor/features/elu_features.hpp>
#include <performer/favor/features/favor_plus_plus_features.hpp>
#include <performer/favor/features/hyperbolic_features.hpp>
#include <performer/favor/features/positive_features.hpp>
#include <performer/favor/features/relu_features.hpp>
#include <performer/favor/features/trigonometric_features.hpp>
#include <performer/testing/counting_allocator.hpp>
#include <performer/testing/expect_invalid.hpp>

#include "support/gradient_check.hpp"

namespace favor_favor_gradient_test {
namespace {

using namespace performer;
using performer::test::finite_differences;
using performer::test::gaussian_matrix;
using performer::test::relative_error;

constexpr double fd_tolerance = 1e-7;

/// FAVOR++ with A fixed (not refitted per call): finite differences would otherwise also see A
/// move with the inputs, which the backward holds fixed by contract.
template <class T>
favor_plus_plus_features<T> fixed_pp() {
  favor_plus_plus_features<T> map(false);
  map.set_a(-0.05);
  return map;
}

/// Ragged blocks and chunks: N = 13 spans three blocks of 5 and chunks of 2.
constexpr favor_options small_blocks{
    .block = 5, .chunk = 2, .backward_chunk = 2, .segments = 1, .min_segment = 1};

template <class Map, class Sampler = orthogonal_sampler>
favor_attention<double, Map, Sampler> make(Map map = {}, index_t m = 6) {
  return favor_attention<double, Map, Sampler>(4, m, 17, std::move(map), Sampler{}, small_blocks);
}

template <class A>
row_matrix<double> run(const A& a, const row_matrix<double>& q, const row_matrix<double>& k,
                       const row_matrix<double>& v, const attention_mask& mask) {
  row_matrix<double> out(q.rows(), v.cols());
  typename A::workspace_type ws;
  a.forward(q, k, v, out, mask, ws);
  return out;
}

struct gradients {
  row_matrix<double> dq, dk, dv;
};

/// The backward from the gradient's own forward (its saved key states), or, with
/// from_forward false, from favor_attention::forward's output and no saved states.
template <class A>
gradients backward(const A& a, const row_matrix<double>& q, const row_matrix<double>& k,
                   const row_matrix<double>& v, const row_matrix<double>& dout,
                   const attention_mask& mask, bool from_forward = true) {
  using grad = attention_gradient<A>;
  row_matrix<double> out = run(a, q, k, v, mask);
  typename grad::saved_type saved;
  if (from_forward) {
    typename A::workspace_type fws;
    grad::forward(a, q, k, v, out, mask, fws, saved);
  }
  gradients g{row_matrix<double>(q.rows(), q.cols()), row_matrix<double>(k.rows(), k.cols()),
              row_matrix<double>(v.rows(), v.cols())};
  typename grad::workspace_type ws;
  grad::backward(a, q, k, v, out, dout, g.dq, g.dk, g.dv, mask, ws, saved);
  return g;
}

/// Backward against finite differences, bidirectional and causal, with and without padding
/// (keys 0, 1 and 7 padded: under causal masking queries 0 and 1 see no key).
template <class A>
void check_against_differences(const A& a, double sigma) {
  const std::vector<std::uint8_t> keep{0, 0, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1};
  for (const bool causal : {false, true}) {
    for (const bool padded : {false, true}) {
      const row_matrix<double> q = gaussian_matrix(13, 4, 1, sigma);
      const row_matrix<double> k = gaussian_matrix(13, 4, 2, sigma);
      const row_matrix<double> v = gaussian_matrix(13, 3, 3);
      const row_matrix<double> dout = gaussian_matrix(13, 3, 4);
      const attention_mask mask{causal, padded ? std::span<const std::uint8_t>(keep)
                                               : std::span<const std::uint8_t>{}};
      const auto f = [&](const auto& qq, const auto& kk, const auto& vv) {
        return run(a, qq, kk, vv, mask);
      };
      const auto want = finite_differences(f, q, k, v, dout);
      for (const bool from_forward : {true, false}) {
        const auto got = backward(a, q, k, v, dout, mask, from_forward);
        SCOPED_TRACE(testing::Message() << "causal " << causal << ", padded " << padded
                                        << ", saved states " << from_forward);
        EXPECT_LT(relative_error(got.dq, want.dq), fd_tolerance);
        EXPECT_LT(relative_error(got.dk, want.dk), fd_tolerance);
        EXPECT_LT(relative_error(got.dv, want.dv), fd_tolerance);
        if (padded) {  // no gradient reaches a padded key
          EXPECT_EQ(got.dk.row(7).cwiseAbs().maxCoeff(), 0.0);
          EXPECT_EQ(got.dv.row(0).cwiseAbs().maxCoeff(), 0.0);
        }
      }
    }
  }
}

TEST(FavorGradient, PositiveFeaturesMatchFiniteDifferences) {
  check_against_differences(make<positive_features<double>>(), 1.0);
}
TEST(FavorGradient, HyperbolicFeaturesMatchFiniteDifferences) {
  check_against_differences(make<hyperbolic_features<double>>(), 1.0);
}
TEST(FavorGradient, TrigonometricFeaturesMatchFiniteDifferences) {
  // Small logits keep the (signed) estimate's normaliser away from zero.
  check_against_differences(make<trigonometric_features<double>>({}, 64), 0.3);
}
TEST(FavorGradient, ReluFeaturesMatchFiniteDifferences) {
  check_against_differences(make<relu_features<double>, gaussian_sampler>(), 1.0);
}
TEST(FavorGradient, EluFeaturesMatchFiniteDifferences) {
  check_against_differences(make<elu_features<double>>(), 1.0);
}
TEST(FavorGradient, FavorPlusPlusWithFixedAMatchesFiniteDifferences) {
  check_against_differences(make(fixed_pp<double>()), 1.0);
}

TEST(FavorGradient, ExampleSoftplusFeaturesMatchFiniteDifferences) {
  check_against_differences(make<softplus_features<double>>(), 1.0);
}

TEST(FavorGradient, AdaptiveFavorPlusPlusHoldsTheFittedAFixed) {
  const auto adaptive = make<favor_plus_plus_features<double>>();
  const row_matrix<double> q = gaussian_matrix(13, 4, 1), k = gaussian_matrix(13, 4, 2);
  const row_matrix<double> v = gaussian_matrix(13, 3, 3), dout = gaussian_matrix(13, 3, 4);
  favor_plus_plus_features<double> fitted(false);
  fitted.set_a(favor_plus_plus_features<double>::optimal_a(q, k));
  ASSERT_LT(fitted.a(), -1e-3);  // a real refit, not FAVOR+
  const auto got = backward(adaptive, q, k, v, dout, {});
  const auto want = backward(make(fitted), q, k, v, dout, {});
  EXPECT_LT(relative_error(got.dq, want.dq), 1e-14);
  EXPECT_LT(relative_error(got.dk, want.dk), 1e-14);
}

TEST(FavorGradient, FewerQueriesThanKeys) {
  const auto a = make<positive_features<double>>();
  const row_matrix<double> q = gaussian_matrix(8, 4, 5), k = gaussian_matrix(13, 4, 6);
  const row_matrix<double> v = gaussian_matrix(13, 2, 7), dout = gaussian_matrix(8, 2, 8);
  const auto f = [&](const auto& qq, const auto& kk, const auto& vv) {
    return run(a, qq, kk, vv, {});
  };
  const auto want = finite_differences(f, q, k, v, dout);
  const auto got = backward(a, q, k, v, dout, {});
  EXPECT_LT(relative_error(got.dq, want.dq), fd_tolerance);
  EXPECT_LT(relative_error(got.dk, want.dk), fd_tolerance);
  EXPECT_LT(relative_error(got.dv, want.dv), fd_tolerance);
}

/// A long causal sequence at the default blocking, whose keys' norms grow so that the running
/// maximum of the log scales rises again and again (the stabiliser's rescaling in both sweeps):
/// finite differences on a sample of 40 coordinates per input.
TEST(FavorGradient, CausalStabiliserOverManyChunksMatchesSampledDifferences) {
  const favor_attention<double> a(8, 32, 5, {}, {}, {.block = 64, .chunk = 16, .backward_chunk = 8, .segments = 1});
  const index_t n = 300;
  row_matrix<double> q = gaussian_matrix(n, 8, 9), k = gaussian_matrix(n, 8, 10);
  for (index_t i = 0; i < n; ++i) k.row(i) *= 1.0 + 3.0 * static_cast<double>(i) / n;
  const row_matrix<double> v = gaussian_matrix(n, 5, 11), dout = gaussian_matrix(n, 5, 12);
  const attention_mask mask{.causal = true};
  const auto got = backward(a, q, k, v, dout, mask);
  const auto loss = [&](const row_matrix<double>& qq, const row_matrix<double>& kk,
                        const row_matrix<double>& vv) {
    return (run(a, qq, kk, vv, mask).array() * dout.array()).sum();
  };
  const double h = 1e-5;
  std::mt19937_64 gen(13);
  const auto sample = [&](const row_matrix<double>& grad, int which) {
    const index_t cols = which == 2 ? v.cols() : q.cols();
    double worst = 0;
    for (int s = 0; s < 40; ++s) {
      const index_t i = static_cast<index_t>(gen() % n), j = static_cast<index_t>(gen() % cols);
      row_matrix<double> up[3] = {q, k, v}, down[3] = {q, k, v};
      up[which](i, j) += h;
      down[which](i, j) -= h;
      const double fd = (loss(up[0], up[1], up[2]) - loss(down[0], down[1], down[2])) / (2 * h);
      worst = std::max(worst, std::abs(fd - grad(i, j)));
    }
    return worst / grad.cwiseAbs().maxCoeff();
  };
  EXPECT_LT(sample(got.dq, 0), fd_tolerance);
  EXPECT_LT(sample(got.dk, 1), fd_tolerance);
  EXPECT_LT(sample(got.dv, 2), fd_tolerance);
  // Five stretches of 64 tokens: the forward's key states before each, or the backward's own
  // (summed in another order), give the same gradients but for rounding.
  const auto own = backward(a, q, k, v, dout, mask, false);
  EXPECT_LT(relative_error(own.dq, got.dq), 1e-13);
  EXPECT_LT(relative_error(own.dk, got.dk), 1e-13);
  EXPECT_LT(relative_error(own.dv, got.dv), 1e-13);
}

/// Each map's backward against differences of L = sum(G .* phi exp(log_scale)).
template <class Map>
void check_map(const Map& map, double sigma, bool away_from_kinks = false) {
  const row_matrix<double> w = gaussian_matrix(6, 4, 21);
  const row_matrix<double> x0 = gaussian_matrix(5, 4, 22, sigma);
  const index_t m = map.feature_count(6, 4);
  const row_matrix<double> g = gaussian_matrix(5, m, 23);
  if (away_from_kinks) {
    ASSERT_GT((x0 * w.transpose()).cwiseAbs().minCoeff(), 1e-3);
  }
  const auto features = [&](const row_matrix<double>& x, row_matrix<double>& phi,
                            vector<double>& log_scale) {
    phi.resize(x.rows(), m);
    log_scale.resize(x.rows());
    map.apply(w, x, phi, log_scale);
  };
  row_matrix<double> phi;
  vector<double> log_scale;
  features(x0, phi, log_scale);
  const vector<double> scale = log_scale.array().exp();
  row_matrix<double> dphi = scale.asDiagonal() * g;
  const vector<double> dlog = (g.cwiseProduct(scale.asDiagonal() * phi)).rowwise().sum();
  row_matrix<double> dx(5, 4);
  map.backward(w, x0, phi, log_scale, dphi, dlog, dx);
  const auto loss = [&](const row_matrix<double>& x, const auto&, const auto&) {
    row_matrix<double> p;
    vector<double> ls;
    features(x, p, ls);
    return row_matrix<double>((g.cwiseProduct(ls.array().exp().matrix().asDiagonal() * p))
                                  .rowwise()
                                  .sum());
  };
  const row_matrix<double> ones = row_matrix<double>::Ones(5, 1);
  const auto want = finite_differences(loss, x0, x0, x0, ones);
  EXPECT_LT(relative_error(dx, want.dq), fd_tolerance);
}

TEST(FeatureMapBackward, EveryMapMatchesFiniteDifferences) {
  {
    SCOPED_TRACE("positive");
    check_map(positive_features<double>{}, 1.0);
  }
  {
    SCOPED_TRACE("hyperbolic");
    check_map(hyperbolic_features<double>{}, 1.0);
  }
  {
    SCOPED_TRACE("trigonometric");
    check_map(trigonometric_features<double>{}, 1.0);
  }
  {
    SCOPED_TRACE("relu");
    check_map(relu_features<double>{}, 1.0, true);
  }
  {
    SCOPED_TRACE("elu");
    check_map(elu_features<double>{}, 1.0);
  }
  {
    SCOPED_TRACE("favor++");
    check_map(fixed_pp<double>(), 1.0);
  }
  {
    SCOPED_TRACE("softplus (the example map)");
    check_map(softplus_features<double>{}, 1.0);
  }
}

TEST(FavorGradient, FloatAgreesWithDouble) {
  const favor_attention<float> af(8, 64, 3, {}, {}, {.block = 32, .chunk = 8});
  favor_attention<double> ad(8, 64, 3, {}, {}, {.block = 32, .chunk = 8});
  ad.projection().set_matrix(af.projection().matrix().cast<double>());
  const row_matrix<double> q = gaussian_matrix(100, 8, 31), k = gaussian_matrix(100, 8, 32);
  const row_matrix<double> v = gaussian_matrix(100, 6, 33), dout = gaussian_matrix(100, 6, 34);
  for (const bool causal : {false, true}) {
    const attention_mask mask{.causal = causal};
    const auto want = backward(ad, q, k, v, dout, mask);
    const row_matrix<float> qf = q.cast<float>(), kf = k.cast<float>(), vf = v.cast<float>();
    row_matrix<float> out(100, 6), dq(100, 8), dk(100, 8), dv(100, 6);
    favor_attention<float>::workspace_type fws;
    af.forward(qf, kf, vf, out, mask, fws);
    attention_gradient<favor_attention<float>>::workspace_type ws;
    attention_gradient<favor_attention<float>>::backward(af, qf, kf, vf, out, dout.cast<float>(),
                                                         dq, dk, dv, mask, ws, {});
    SCOPED_TRACE(testing::Message() << "causal " << causal);
    // float rounding (6e-8) amplified by sums over 100 keys and 64 features.
    EXPECT_LT(relative_error(dq.cast<double>(), want.dq), 1e-4);
    EXPECT_LT(relative_error(dk.cast<double>(), want.dk), 1e-4);
    EXPECT_LT(relative_error(dv.cast<double>(), want.dv), 1e-4);
  }
}

TEST(FavorGradient, ThreadCountDoesNotChangeBits) {
#ifndef _OPENMP
  GTEST_SKIP() << "built without OpenMP: there is only one thread count to compare";
#else
  // The forward that fills saved runs in parallel: two bidirectional segments, causal waves of
  // 3 blocks of 16 whose kept states (every other block: P = 32 tokens) fall inside waves.
  const favor_attention<double> a(8, 32, 3, {}, {},
                                  {.block = 16, .chunk = 4, .segments = 2, .min_segment = 32,
                                   .wave_blocks = 3, .parallel_block_work = 1});
  const row_matrix<double> q = gaussian_matrix(200, 8, 41), k = gaussian_matrix(200, 8, 42);
  const row_matrix<double> v = gaussian_matrix(200, 8, 43), dout = gaussian_matrix(200, 8, 44);
  const int threads = omp_get_max_threads();
  for (const bool causal : {false, true}) {
    omp_set_num_threads(1);
    const auto one = backward(a, q, k, v, dout, {.causal = causal});
    omp_set_num_threads(2);
    const auto two = backward(a, q, k, v, dout, {.causal = causal});
    EXPECT_TRUE(one.dq == two.dq && one.dk == two.dk && one.dv == two.dv) << causal;
  }
  omp_set_num_threads(threads);
#endif
}

/// The causal training pass at N = 65,536, d = 64, m = 256 in float: the forward keeps the key
/// states before every stretch of P = 256 tokens (N / P states of M (d_v + 1) floats: as much
/// as N (d_v + 1)), the backward works on one stretch at a time, and neither ever holds an
/// N x M buffer (64 MiB here).
TEST(FavorGradient, CausalBackwardMemoryIsLinearWithoutFeatureRows) {
  if (!counting::available) GTEST_SKIP() << "no counting allocator in this build";
  constexpr index_t n = 65536, d = 64, m = 256;
  const favor_attention<float> a(d, m, 1);
  const row_matrix<float> q = gaussian_matrix(n, d, 51, 0.5).cast<float>();
  const row_matrix<float> k = gaussian_matrix(n, d, 52, 0.5).cast<float>();
  const row_matrix<float> v = gaussian_matrix(n, d, 53).cast<float>();
  const row_matrix<float> dout = gaussian_matrix(n, d, 54).cast<float>();
  row_matrix<float> out(n, d), dq(n, d), dk(n, d), dv(n, d);
  favor_attention<float>::workspace_type fws;
  a.forward(q, k, v, out, {.causal = true}, fws);  // the forward's own workspace, once
  using grad = attention_gradient<favor_attention<float>>;
  grad::saved_type saved;
  const counting::heap_usage kept = counting::measure_heap(
      [&] { grad::forward(a, q, k, v, out, {.causal = true}, fws, saved); });
  const long long b = a.options().block, c = a.options().backward_chunk;
  const long long p = b * ((m + b - 1) / b);  // a stretch: here one block of 256
  const long long state = m * (d + 1) * 4LL;
  const long long states = (n / p) * (state + 256);  // 256: a state's bookkeeping and headers
  EXPECT_LE(kept.retained, states);
  EXPECT_GE(kept.retained, (n / p) * state);  // they are kept, not recomputed
  for (const bool from_forward : {true, false}) {
    const grad::saved_type none;
    const counting::heap_usage u = counting::measure_heap([&] {
      grad::workspace_type ws;
      grad::backward(a, q, k, v, out, dout, dq, dk, dv, {.causal = true}, ws,
                     from_forward ? saved : none);
    });
    EXPECT_TRUE(dq.allFinite() && dk.allFinite() && dv.allFinite());
    // Features and their gradients (3 P M), g (P d_v), a chunk's weighted key features (C M)
    // and two C x C products, the carried and adjoint states, ten vectors of P; without the
    // forward's states, those too.
    const long long stretch =
        (3 * p * m + p * d + c * m + 2 * c * c + 2 * m * (d + 1) + 10 * p) * 4LL;
    const long long eigen = 2LL << 20;  // Eigen's packing buffers
    const long long bound = stretch + eigen + (from_forward ? 0 : states);
    std::printf("[memory] causal FAVOR+ backward, N = %lld, %s: peak %.2f MiB, bound %.2f MiB "
                "(the forward kept %.2f MiB), an N x M buffer %.0f MiB\n",
                static_cast<long long>(n), from_forward ? "from the forward's states" : "alone",
                u.peak / 1048576.0, bound / 1048576.0, kept.retained / 1048576.0,
                n * m * 4.0 / 1048576.0);
    EXPECT_LE(u.peak, bound) << from_forward;
    EXPECT_LT(bound + (from_forward ? states : 0), n * m * 4LL / 2);  // never N x M
  }
}

TEST(FavorGradient, BadArgumentsThrow) {
  const auto a = make<positive_features<double>>();
  using grad = attention_gradient<std::remove_const_t<decltype(a)>>;
  const row_matrix<double> q = gaussian_matrix(6, 4, 1), v = gaussian_matrix(6, 3, 2);
  const row_matrix<double> out = run(a, q, q, v, {});
  row_matrix<double> dout = gaussian_matrix(6, 3, 3), dq(6, 4), dk(6, 4), dv(6, 3);
  grad::workspace_type ws;
  const char* who = "attention_gradient<favor_attention>::backward";
  row_matrix<double> wide(6, 4);
  PERFORMER_EXPECT_INVALID(who, "dout is 6x4 but out is 6x3",
                           grad::backward(a, q, q, v, out, wide, dq, dk, dv, {}, ws, {}));
  row_matrix<double> short_dk(5, 4);
  PERFORMER_EXPECT_INVALID(who, "dk is 5x4 but k is 6x4",
                           grad::backward(a, q, q, v, out, dout, dq, short_dk, dv, {}, ws, {}));
  row_matrix<double> qcopy = q;
  PERFORMER_EXPECT_INVALID(who, "dq overlaps an input",
                           grad::backward(a, qcopy, q, v, out, dout, qcopy, dk, dv, {}, ws, {}));
  PERFORMER_EXPECT_INVALID(who, "dq, dk and dv overlap",
                           grad::backward(a, q, q, v, out, dout, dq, dq, dv, {}, ws, {}));
  // saved from another forward: other keys, or the other masking.
  using saved_type = grad::saved_type;
  std::remove_const_t<decltype(a)>::workspace_type fws;
  saved_type bidirectional;
  row_matrix<double> out2 = out;
  grad::forward(a, q, q, v, out2, {}, fws, bidirectional);
  PERFORMER_EXPECT_INVALID(who, "saved does not come from a forward with these arguments",
                           grad::backward(a, q, q, v, out, dout, dq, dk, dv, {.causal = true},
                                          ws, bidirectional));
  const row_matrix<double> q7 = gaussian_matrix(7, 4, 1), v7 = gaussian_matrix(7, 3, 2);
  row_matrix<double> out7(7, 3);
  saved_type longer;
  grad::forward(a, q7, q7, v7, out7, {}, fws, longer);
  PERFORMER_EXPECT_INVALID(who, "saved does not come from a forward with these arguments",
                           grad::backward(a, q, q, v, out, dout, dq, dk, dv, {}, ws, longer));
  dout(2, 1) = std::nan("");
  PERFORMER_EXPECT_INVALID(who, "dout (6x3) contains a NaN",
                           grad::backward(a, q, q, v, out, dout, dq, dk, dv, {}, ws, {}));
  const row_matrix<double> q5 = gaussian_matrix(6, 5, 1);
  row_matrix<double> dq5(6, 5), dk5(6, 5);
  PERFORMER_EXPECT_INVALID(who, "projection is for head width 4",
                           grad::backward(a, q5, q5, v, out, gaussian_matrix(6, 3, 3), dq5, dk5,
                                          dv, {}, ws, {}));
  // A map's backward checks its gradients' shapes.
  const positive_features<double> map;
  const row_matrix<double> w = gaussian_matrix(6, 4, 7);
  row_matrix<double> phi(6, 6), dphi(6, 6), dx(5, 4);
  vector<double> log_scale(6), dlog = vector<double>::Zero(6);
  map.apply(w, q, phi, log_scale);
  PERFORMER_EXPECT_INVALID("positive_features::backward", "dx is 5x4, expected 6x4",
                           map.backward(w, q, phi, log_scale, dphi, dlog, dx));
}

}  // namespace
}  // namespace favor_favor_gradient_test
