// Covers performer/train/adamw.hpp: two steps against the published update rule computed here
// in double, decoupled weight decay and its per-tensor exemption, global-norm clipping, a small
// quadratic problem, bit-for-bit determinism, strided views, a restored optimiser resuming with
// the bits of one that never stopped, and bad options, gradients and restored state.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>
#include <vector>

#include <performer/testing/expect_invalid.hpp>
#include <performer/testing/helpers.hpp>
#include <performer/train/adamw.hpp>

#include "support/gradient_check.hpp"

// Named as well as anonymous: the unity build compiles several test files as one.
namespace train_adamw_test {
namespace {

using performer::adamw;
using performer::adamw_options;
using performer::const_matrix_ref;
using performer::decay_policy;
using performer::index_t;
using performer::row_matrix;
using performer::conformance::same_bits;
using performer::test::gaussian_matrix;

// Algorithm 2 of Loshchilov and Hutter (2019), with PyTorch's schedule multiplier eta_t = lr
// (so the decay is lr * wd * p), one entry at a time: written from the paper, not the header.
TEST(Adamw, TwoStepsMatchThePublishedRule) {
  const adamw_options o{.learning_rate = 0.1, .beta1 = 0.8, .beta2 = 0.95, .eps = 1e-3,
                        .weight_decay = 0.3, .max_grad_norm = 0.0};
  const row_matrix<double> start{{0.5, -1.0}, {2.0, 0.25}};
  const row_matrix<double> g1{{0.3, -0.2}, {1.5, 0.0}};
  const row_matrix<double> g2{{-0.1, 0.4}, {1.0, 2.0}};
  row_matrix<double> p = start;
  adamw<double> opt(o);
  EXPECT_EQ(opt.add("p", p), 0u);
  opt.step({g1});
  opt.step({g2});
  EXPECT_EQ(opt.steps(), 2);
  for (index_t i = 0; i < 2; ++i) {
    for (index_t j = 0; j < 2; ++j) {
      double x = start(i, j), m = 0, v = 0;
      for (int t = 1; t <= 2; ++t) {
        const double g = (t == 1 ? g1 : g2)(i, j);
        m = o.beta1 * m + (1 - o.beta1) * g;
        v = o.beta2 * v + (1 - o.beta2) * g * g;
        const double m_hat = m / (1 - std::pow(o.beta1, t));
        const double v_hat = v / (1 - std::pow(o.beta2, t));
        x = x - o.learning_rate * (m_hat / (std::sqrt(v_hat) + o.eps) + o.weight_decay * x);
      }
      EXPECT_NEAR(p(i, j), x, 1e-15 * (1 + std::abs(x))) << "entry " << i << ", " << j;
    }
  }
}

// A zero gradient leaves m = v = 0, so the only change is the decay: p (1 - lr wd), which an
// exempt tensor does not get. With a gradient, the decay is added outside the Adam ratio: the
// difference that weight decay makes after one step is exactly -lr wd p, whatever g is (Adam
// with an L2 penalty would instead feed wd p into m and v).
TEST(Adamw, WeightDecayIsDecoupledAndPerTensor) {
  const row_matrix<double> start = gaussian_matrix(3, 4, 1);
  const row_matrix<double> zero = row_matrix<double>::Zero(3, 4);
  row_matrix<double> decayed = start, exempt = start;
  adamw<double> opt({.learning_rate = 0.01, .weight_decay = 0.1});
  opt.add("decayed", decayed);
  opt.add("exempt", exempt, decay_policy::exempt);
  opt.step({zero, zero});
  EXPECT_LE((decayed - start * (1 - 0.01 * 0.1)).cwiseAbs().maxCoeff(), 1e-17);
  EXPECT_TRUE(exempt == start);

  const row_matrix<double> g = gaussian_matrix(3, 4, 2);
  row_matrix<double> with = start, without = start;
  adamw<double> a({.learning_rate = 0.01, .weight_decay = 0.1});
  adamw<double> b({.learning_rate = 0.01, .weight_decay = 0.0});
  a.add("p", with);
  b.add("p", without);
  a.step({g});
  b.step({g});
  // Rounding only: with and without are O(|start|) <= 3, each rounded to 2^-52 of that.
  EXPECT_LE(((with - without) + 0.01 * 0.1 * start).cwiseAbs().maxCoeff(), 2e-15);
  EXPECT_TRUE(same_bits(a.first_moment(0), b.first_moment(0)));
}

// Gradients of global norm 5 (3 and 4 in two tensors) clipped to 1: step returns 5 and the
// moments, m = (1 - beta1) c g and v = (1 - beta2) (c g)^2, show the clipped gradient c g of
// norm 1. A bound above the norm leaves the gradients alone.
TEST(Adamw, ClipsTheGlobalNormAndReturnsItBeforeClipping) {
  const row_matrix<double> ga{{3.0, 0.0}}, gb{{0.0}, {0.0}, {0.0}};
  row_matrix<double> gb4 = gb;
  gb4(1, 0) = 4.0;
  for (const double max_norm : {1.0, 10.0}) {
    row_matrix<double> pa = row_matrix<double>::Zero(1, 2), pb = row_matrix<double>::Zero(3, 1);
    adamw<double> opt({.beta1 = 0.9, .beta2 = 0.99, .max_grad_norm = max_norm});
    opt.add("a", pa);
    opt.add("b", pb);
    EXPECT_DOUBLE_EQ(opt.step({ga, gb4}), 5.0);
    const double scale = std::min(1.0, max_norm / 5.0);
    const double m_norm = std::hypot(opt.first_moment(0).norm(), opt.first_moment(1).norm());
    EXPECT_NEAR(m_norm / (1 - 0.9), 5.0 * scale, 1e-14) << "max_norm " << max_norm;
    EXPECT_NEAR(opt.second_moment(1)(1, 0) / (1 - 0.99), 16.0 * scale * scale, 1e-13);
  }
  // global_norm on its own, and its rescaled path for double gradients beyond 1e154.
  const row_matrix<double> big = row_matrix<double>::Constant(2, 2, 1e200);
  const std::vector<const_matrix_ref<double>> tensors{big, ga};
  EXPECT_DOUBLE_EQ(performer::global_norm<double>(tensors), 2e200);
}

// min |p - target|^2 from a random start (entries up to 2.5 away), gradient 2 (p - target), the
// learning rate decaying linearly from 0.1 through set_learning_rate, as a schedule would.
// Measured: max |p - target| is 0.036 after 100 steps, 2.5e-4 after 200 and 3e-7 after 300.
TEST(Adamw, SolvesASmallQuadratic) {
  const row_matrix<double> target = gaussian_matrix(3, 4, 3);
  row_matrix<double> p = gaussian_matrix(3, 4, 4);
  adamw<double> opt({.learning_rate = 0.1, .weight_decay = 0.0});
  opt.add("p", p);
  const int steps = 300;
  for (int t = 0; t < steps; ++t) {
    opt.set_learning_rate(0.1 * (1.0 - static_cast<double>(t) / steps));
    const row_matrix<double> g = 2.0 * (p - target);
    opt.step({g});
  }
  EXPECT_LT((p - target).cwiseAbs().maxCoeff(), 1e-4);
}

TEST(Adamw, IsBitwiseDeterministicAndUpdatesStridedViewsInPlace) {
  const auto run = [] {
    row_matrix<float> w = gaussian_matrix(5, 6, 5).cast<float>();
    performer::row_vector<float> bias = performer::row_vector<float>::Ones(6);
    adamw<float> opt({.weight_decay = 0.05, .max_grad_norm = 0.5});
    opt.add("w", w.middleCols(1, 4));  // a strided block: columns 0 and 5 are not registered
    opt.add("bias", bias, decay_policy::exempt);
    for (int t = 0; t < 5; ++t) {
      const row_matrix<float> gw = gaussian_matrix(5, 4, 10 + t).cast<float>();
      const performer::row_vector<float> gb = gaussian_matrix(1, 6, 20 + t).cast<float>();
      opt.step({gw, gb});
    }
    return std::pair{w, bias};
  };
  const auto [w1, b1] = run();
  const auto [w2, b2] = run();
  EXPECT_TRUE(same_bits(w1, w2) && same_bits(b1, b2));
  const row_matrix<float> w0 = gaussian_matrix(5, 6, 5).cast<float>();
  EXPECT_TRUE(w1.col(0) == w0.col(0) && w1.col(5) == w0.col(5));
  EXPECT_FALSE(w1.middleCols(1, 4) == w0.middleCols(1, 4));
}

TEST(Adamw, RejectsBadOptions) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  for (const double lr : {0.0, -1e-3, nan, inf}) {
    PERFORMER_EXPECT_INVALID("adamw", "learning_rate must be positive and finite",
                             adamw<double>({.learning_rate = lr}));
  }
  for (const double beta : {1.0, -0.1, nan}) {
    PERFORMER_EXPECT_INVALID("adamw", "beta1 must be in [0, 1)", adamw<double>({.beta1 = beta}));
    PERFORMER_EXPECT_INVALID("adamw", "beta2 must be in [0, 1)", adamw<double>({.beta2 = beta}));
  }
  for (const double eps : {0.0, -1e-8, nan, inf}) {
    PERFORMER_EXPECT_INVALID("adamw", "eps must be positive and finite",
                             adamw<double>({.eps = eps}));
  }
  for (const double wd : {-0.01, nan, inf}) {
    PERFORMER_EXPECT_INVALID("adamw", "weight_decay must be >= 0 and finite",
                             adamw<double>({.weight_decay = wd}));
  }
  for (const double norm : {-1.0, nan, inf}) {
    PERFORMER_EXPECT_INVALID("adamw", "max_grad_norm must be >= 0 and finite",
                             adamw<double>({.max_grad_norm = norm}));
  }
  EXPECT_NO_THROW((adamw<double>({.beta1 = 0.0, .beta2 = 0.0, .weight_decay = 0.0})));
  adamw<double> opt;
  PERFORMER_EXPECT_INVALID("adamw::set_learning_rate", "learning_rate must be positive",
                           opt.set_learning_rate(0.0));
  EXPECT_EQ(opt.options().learning_rate, 1e-3);
}

// Every check runs before anything changes: after a refused step the parameters, the moments
// and the step count are as they were.
TEST(Adamw, RejectsBadGradientsAndTensorsWithoutSideEffects) {
  row_matrix<double> w = gaussian_matrix(2, 3, 6), b = gaussian_matrix(1, 3, 7);
  const row_matrix<double> w0 = w;
  adamw<double> opt;
  opt.add("w", w);
  opt.add("b", b);
  const row_matrix<double> gw = gaussian_matrix(2, 3, 8), gb = gaussian_matrix(1, 3, 9);
  row_matrix<double> bad_b = gb;
  bad_b(0, 2) = std::numeric_limits<double>::quiet_NaN();
  const row_matrix<double> wide(1, 4);
  PERFORMER_EXPECT_INVALID("adamw::step", "1 gradients for 2 registered tensors", opt.step({gw}));
  PERFORMER_EXPECT_INVALID("adamw::step", "gradient 1 (b) is 1x4, expected 1x3",
                           opt.step({gw, wide}));
  PERFORMER_EXPECT_INVALID("adamw::step", "gradient 1 (b) contains a NaN or an infinity",
                           opt.step({gw, bad_b}));
  EXPECT_TRUE(w == w0);
  EXPECT_EQ(opt.steps(), 0);
  EXPECT_TRUE(opt.first_moment(0).isZero(0.0));

  row_matrix<double> empty, nan_param = w0, late = w0;
  nan_param(1, 1) = std::numeric_limits<double>::infinity();
  PERFORMER_EXPECT_INVALID("adamw::add", "empty is empty", opt.add("empty", empty));
  PERFORMER_EXPECT_INVALID("adamw::add", "nan_param (2x3) contains a NaN or an infinity",
                           opt.add("nan_param", nan_param));
  PERFORMER_EXPECT_INVALID("adamw::add", "again overlaps the registered tensor w",
                           opt.add("again", w.rightCols(1)));
  opt.step({gw, gb});
  PERFORMER_EXPECT_INVALID("adamw::add", "late is added after the first step",
                           opt.add("late", late));
}

// A run of 7 steps against one stopped after 3 whose state (parameters, moments, step count)
// goes to a new optimiser, which takes the other 4: the same bits, with a learning-rate change
// after the restore (a schedule) and clipping active.
TEST(Adamw, RestoredOptimiserResumesWithTheSameBits) {
  const adamw_options options{.weight_decay = 0.05, .max_grad_norm = 1.0};
  const auto gradient = [](int t, index_t cols, int which) {
    return gaussian_matrix(3, cols, 100 + 10 * t + which).cast<float>().eval();
  };
  const auto train = [&](adamw<float>& opt, int from, int to) {
    for (int t = from; t < to; ++t) {
      if (t == 5) opt.set_learning_rate(3e-4);
      opt.step({gradient(t, 4, 0), gradient(t, 2, 1).topRows(1)});
    }
  };
  const auto optimiser_of = [&](row_matrix<float>& w, row_matrix<float>& b) {
    adamw<float> opt(options);
    opt.add("w", w);
    opt.add("b", b, decay_policy::exempt);
    return opt;
  };
  row_matrix<float> w = gaussian_matrix(3, 4, 1).cast<float>();
  row_matrix<float> b = gaussian_matrix(1, 2, 2).cast<float>();
  row_matrix<float> w1 = w, b1 = b;
  adamw<float> straight = optimiser_of(w, b);
  train(straight, 0, 7);

  adamw<float> first = optimiser_of(w1, b1);
  train(first, 0, 3);
  row_matrix<float> w2 = w1, b2 = b1;  // the "checkpoint" of the parameters
  adamw<float> resumed = optimiser_of(w2, b2);
  const std::vector<const_matrix_ref<float>> m{first.first_moment(0), first.first_moment(1)};
  const std::vector<const_matrix_ref<float>> v{first.second_moment(0), first.second_moment(1)};
  resumed.restore(first.steps(), m, v);
  EXPECT_EQ(resumed.steps(), 3);
  train(resumed, 3, 7);
  EXPECT_TRUE(same_bits(w2, w) && same_bits(b2, b));
  EXPECT_TRUE(same_bits(resumed.second_moment(0), straight.second_moment(0)));

  // Without the moments (a model-only checkpoint) the continuation differs: the test can fail.
  row_matrix<float> w3 = w1, b3 = b1;
  adamw<float> fresh = optimiser_of(w3, b3);
  train(fresh, 3, 7);
  EXPECT_FALSE(w3 == w);
}

// Every check of restore() runs before anything changes.
TEST(Adamw, RejectsBadRestoredStateWithoutSideEffects) {
  row_matrix<double> w = gaussian_matrix(2, 3, 6), b = gaussian_matrix(1, 3, 7);
  adamw<double> opt;
  opt.add("w", w);
  opt.add("b", b);
  opt.step({gaussian_matrix(2, 3, 8), gaussian_matrix(1, 3, 9)});
  const row_matrix<double> m0 = opt.first_moment(1);
  const row_matrix<double> mw = gaussian_matrix(2, 3, 10), mb = gaussian_matrix(1, 3, 11);
  const row_matrix<double> vw = mw.cwiseAbs(), vb = mb.cwiseAbs();
  row_matrix<double> nan_b = mb, negative_b = vb;
  nan_b(0, 1) = std::numeric_limits<double>::quiet_NaN();
  negative_b(0, 2) = -1e-30;
  const row_matrix<double> wide(1, 4);
  using list = std::vector<const_matrix_ref<double>>;
  PERFORMER_EXPECT_INVALID("adamw::restore", "the step count is -1, expected >= 0",
                           opt.restore(-1, list{mw, mb}, list{vw, vb}));
  PERFORMER_EXPECT_INVALID("adamw::restore", "1 first and 2 second moments for 2 registered",
                           opt.restore(4, list{mw}, list{vw, vb}));
  PERFORMER_EXPECT_INVALID("adamw::restore", "the first moment of b is 1x4, expected 1x3",
                           opt.restore(4, list{mw, wide}, list{vw, vb}));
  PERFORMER_EXPECT_INVALID("adamw::restore", "the first moment of b contains a NaN",
                           opt.restore(4, list{mw, nan_b}, list{vw, vb}));
  PERFORMER_EXPECT_INVALID("adamw::restore", "the second moment of b has a negative entry",
                           opt.restore(4, list{mw, mb}, list{vw, negative_b}));
  PERFORMER_EXPECT_INVALID("adamw::restore", "the first moment of w is not zero at step 0",
                           opt.restore(0, list{mw, mb}, list{vw, vb}));
  EXPECT_EQ(opt.steps(), 1);
  EXPECT_TRUE(opt.first_moment(1) == m0);
  opt.restore(4, list{mw, mb}, list{vw, vb});
  EXPECT_EQ(opt.steps(), 4);
  EXPECT_TRUE(opt.second_moment(1) == vb);
}

}  // namespace
}  // namespace train_adamw_test
