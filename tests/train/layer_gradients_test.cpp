// Covers performer/train/layer_gradients.hpp: LayerNorm, GELU / ReLU and linear backward passes
// against central finite differences of the library's own forwards (nn/layers.hpp), in double
// (support/gradient_check.hpp explains the 1e-7 tolerance), the rescaled path of huge rows,
// float against double, accumulation over row blocks and calls, and bad arguments.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <numbers>
#include <utility>

#include <performer/nn/layers.hpp>
#include <performer/testing/expect_invalid.hpp>
#include <performer/train/layer_gradients.hpp>

#include "support/gradient_check.hpp"

// Named as well as anonymous: the unity build compiles several test files as one.
namespace train_layer_gradients_test {
namespace {

using performer::activation;
using performer::index_t;
using performer::row_matrix;
using performer::row_vector;
using performer::test::finite_difference_gradient;
using performer::test::gaussian_matrix;
using performer::test::relative_error;

constexpr double tolerance = 1e-7;

/// L = sum(dy .* layer_norm(x)): its gradient is the backward pass's result for that dy.
double layer_norm_loss(const row_matrix<double>& x, const row_matrix<double>& gain,
                       const row_matrix<double>& bias, double eps, const row_matrix<double>& dy) {
  row_matrix<double> out(x.rows(), x.cols());
  const row_vector<double> g = gain.row(0);
  const row_vector<double> b = bias.row(0);
  performer::detail::layer_norm<double>(x, g, b, eps, out);
  return (out.array() * dy.array()).sum();
}

struct layer_norm_case {
  row_matrix<double> x, gain, bias, dy;
  double eps = 1e-5;
};

/// A non-trivial case: rows with non-zero means, gains of both signs.
layer_norm_case ordinary_case() {
  layer_norm_case c;
  c.x = gaussian_matrix(6, 8, 11);
  c.x.row(1).array() += 3.0;
  c.gain = gaussian_matrix(1, 8, 12);
  c.gain.array() += 0.5;
  c.bias = gaussian_matrix(1, 8, 13);
  c.dy = gaussian_matrix(6, 8, 14);
  return c;
}

/// Checks dx, dgain and dbias against finite differences, with step h for x (relative to its
/// largest entry). The loss is linear in gain and bias: the default step has no truncation
/// error there, and a smaller one would only add rounding.
void expect_layer_norm_gradients(const layer_norm_case& c, double h, double grad_scale = 1.0) {
  row_matrix<double> dx(c.x.rows(), c.x.cols());
  row_vector<double> dgain = row_vector<double>::Zero(c.x.cols());
  row_vector<double> dbias = row_vector<double>::Zero(c.x.cols());
  const row_vector<double> gain = c.gain.row(0);
  performer::layer_norm_backward<double>(c.x, gain, c.eps, c.dy, dx, dgain, dbias);
  const auto ex = finite_difference_gradient(
      [&](const row_matrix<double>& x) { return layer_norm_loss(x, c.gain, c.bias, c.eps, c.dy); },
      c.x, h);
  const auto eg = finite_difference_gradient(
      [&](const row_matrix<double>& g) { return layer_norm_loss(c.x, g, c.bias, c.eps, c.dy); },
      c.gain);
  const auto eb = finite_difference_gradient(
      [&](const row_matrix<double>& b) { return layer_norm_loss(c.x, c.gain, b, c.eps, c.dy); },
      c.bias);
  // grad_scale brings a gradient of tiny magnitude (huge rows) to unit scale before comparing.
  EXPECT_LE(relative_error(dx * grad_scale, ex * grad_scale), tolerance);
  EXPECT_LE(relative_error(dgain, eg), tolerance);
  EXPECT_LE(relative_error(dbias, eb), tolerance);
}

TEST(LayerNormBackward, MatchesFiniteDifferences) {
  expect_layer_norm_gradients(ordinary_case(), 1e-5);
}

// Rows of spread ~1e-3: var ~1e-6 sits below eps = 1e-5, so a backward that dropped eps (or
// used it differently from the forward) is off by a factor of several; and a constant row
// (var = 0), where only eps keeps the normaliser finite. The function varies on the scale
// sqrt(var + eps) ~ 3e-3, hence the smaller step: truncation (1e-8 / 3e-3)^2 ~ 1e-11.
TEST(LayerNormBackward, MatchesWhereEpsDominatesTheVariance) {
  layer_norm_case c = ordinary_case();
  c.x *= 1e-3;
  c.x.row(4).setConstant(0.7e-3);
  expect_layer_norm_gradients(c, 1e-8);
}

// Rows of magnitude 1e200: their squared deviations overflow double, so the forward divides
// them by max |x| first. The gradient (~1e-200) is compared after scaling it back by 1e200;
// the finite-difference step is relative to the entries, so it probes the same function.
TEST(LayerNormBackward, MatchesOnRescaledHugeRows) {
  layer_norm_case c = ordinary_case();
  c.x *= 1e200;
  const double var = (c.x.row(0).array() - c.x.row(0).mean()).square().sum();
  ASSERT_FALSE(std::isfinite(var)) << "the case must take the forward's rescaled path";
  expect_layer_norm_gradients(c, 1e-5, 1e200);
  // One huge row among ordinary ones: the rows are independent and dgain sums O(1) terms.
  layer_norm_case mixed = ordinary_case();
  mixed.x.row(2) *= 1e200;
  row_matrix<double> dx(6, 8);
  row_vector<double> dgain = row_vector<double>::Zero(8), dbias = row_vector<double>::Zero(8);
  performer::layer_norm_backward<double>(mixed.x, row_vector<double>(mixed.gain.row(0)),
                                         mixed.eps, mixed.dy, dx, dgain, dbias);
  EXPECT_TRUE(dx.allFinite() && dgain.allFinite());
  EXPECT_LT(dx.row(2).cwiseAbs().maxCoeff(), 1e-190);
}

TEST(LayerNormBackward, FloatAgreesWithDouble) {
  const layer_norm_case c = ordinary_case();
  const row_vector<double> gain = c.gain.row(0);
  row_matrix<double> dx(6, 8);
  row_vector<double> dgain = row_vector<double>::Zero(8), dbias = row_vector<double>::Zero(8);
  performer::layer_norm_backward<double>(c.x, gain, c.eps, c.dy, dx, dgain, dbias);
  row_matrix<float> dxf(6, 8);
  row_vector<float> dgainf = row_vector<float>::Zero(8), dbiasf = row_vector<float>::Zero(8);
  performer::layer_norm_backward<float>(c.x.cast<float>(), gain.cast<float>(), 1e-5f,
                                        c.dy.cast<float>(), dxf, dgainf, dbiasf);
  // The constant row's r = 1/sqrt(eps) ~ 316 amplifies float rounding of its (zero) deviations.
  EXPECT_LE(relative_error(dxf.cast<double>(), dx), 1e-4);
  EXPECT_LE(relative_error(row_matrix<double>(dgainf.cast<double>()), dgain), 1e-5);
  EXPECT_LE(relative_error(row_matrix<double>(dbiasf.cast<double>()), dbias), 1e-6);
}

// The contract a blocked caller relies on: dx per row, dgain and dbias summed over blocks.
TEST(LayerNormBackward, AccumulatesParameterGradientsOverRowBlocks) {
  const layer_norm_case c = ordinary_case();
  const row_vector<double> gain = c.gain.row(0);
  row_matrix<double> dx(6, 8), dx_blocks(6, 8);
  row_vector<double> dgain = row_vector<double>::Zero(8), dbias = row_vector<double>::Zero(8);
  performer::layer_norm_backward<double>(c.x, gain, c.eps, c.dy, dx, dgain, dbias);
  row_vector<double> dgain2 = row_vector<double>::Zero(8), dbias2 = row_vector<double>::Zero(8);
  for (const auto& [r0, rows] : {std::pair<index_t, index_t>{0, 4}, {4, 2}}) {
    performer::layer_norm_backward<double>(c.x.middleRows(r0, rows), gain, c.eps,
                                           c.dy.middleRows(r0, rows),
                                           dx_blocks.middleRows(r0, rows), dgain2, dbias2);
  }
  EXPECT_TRUE(dx == dx_blocks);
  EXPECT_LE((dgain - dgain2).cwiseAbs().maxCoeff(), 1e-14);
  EXPECT_LE((dbias - dbias2).cwiseAbs().maxCoeff(), 1e-14);
}

TEST(LayerNormBackward, RejectsBadArguments) {
  const layer_norm_case c = ordinary_case();
  const row_vector<double> gain = c.gain.row(0);
  row_matrix<double> dx(6, 8), small(5, 8);
  row_vector<double> dgain = row_vector<double>::Zero(8), dbias = row_vector<double>::Zero(8);
  row_vector<double> short_gain = row_vector<double>::Ones(7);
  using performer::layer_norm_backward;
  PERFORMER_EXPECT_INVALID("layer_norm_backward", "dy is 5x8, expected 6x8",
                           layer_norm_backward<double>(c.x, gain, 1e-5, small, dx, dgain, dbias));
  PERFORMER_EXPECT_INVALID("layer_norm_backward", "dx is 5x8, expected 6x8",
                           layer_norm_backward<double>(c.x, gain, 1e-5, c.dy, small, dgain, dbias));
  PERFORMER_EXPECT_INVALID("layer_norm_backward", "gain is 1x7, expected 1x8",
                           layer_norm_backward<double>(c.x, short_gain, 1e-5, c.dy, dx, dgain,
                                                       dbias));
  PERFORMER_EXPECT_INVALID("layer_norm_backward", "dbias is 1x7, expected 1x8",
                           layer_norm_backward<double>(c.x, gain, 1e-5, c.dy, dx, dgain,
                                                       short_gain));
  PERFORMER_EXPECT_INVALID("layer_norm_backward", "eps must be positive and finite",
                           layer_norm_backward<double>(c.x, gain, 0.0, c.dy, dx, dgain, dbias));
  row_matrix<double> dy = c.dy;
  PERFORMER_EXPECT_INVALID("layer_norm_backward", "dx overlaps x or dy",
                           layer_norm_backward<double>(c.x, gain, 1e-5, dy, dy, dgain, dbias));
}

/// L = sum(dy .* act(pre)), the loss whose gradient activation_backward returns.
double activation_loss(activation act, const row_matrix<double>& pre,
                       const row_matrix<double>& dy) {
  row_matrix<double> out = pre;
  performer::detail::apply_activation<double>(act, out);
  return (out.array() * dy.array()).sum();
}

TEST(ActivationBackward, MatchesFiniteDifferences) {
  row_matrix<double> pre = gaussian_matrix(5, 7, 21, 2.0);
  pre(0, 0) = 9.0;  // GELU's tails: the derivative tends to 1 and 0
  pre(0, 1) = -9.0;
  pre(0, 2) = 0.0;  // smooth for GELU (derivative 1/2); ReLU's kink is handled below
  const row_matrix<double> dy = gaussian_matrix(5, 7, 22);
  for (const activation act : {activation::gelu, activation::relu}) {
    row_matrix<double> x = pre;
    if (act == activation::relu) {  // away from the kink, where differences are one-sided
      x = x.unaryExpr([](double v) { return std::abs(v) < 0.1 ? v + 0.3 : v; });
    }
    row_matrix<double> grad = dy;
    performer::activation_backward<double>(act, x, grad);
    const auto expected = finite_difference_gradient(
        [&](const row_matrix<double>& p) { return activation_loss(act, p, dy); }, x);
    EXPECT_LE(relative_error(grad, expected), tolerance)
        << (act == activation::gelu ? "gelu" : "relu");
  }
}

TEST(ActivationBackward, ReluPassesOnlyPositiveInputsAndGeluHasItsClosedForm) {
  const row_matrix<double> pre{{-2.0, -0.0, 0.0, 1e-300, 3.0}};
  row_matrix<double> grad = row_matrix<double>::Constant(1, 5, 2.5);
  performer::activation_backward<double>(activation::relu, pre, grad);
  EXPECT_TRUE(grad == (row_matrix<double>{{0.0, 0.0, 0.0, 2.5, 2.5}}));
  // GELU'(0) = 1/2, GELU'(1) = Phi(1) + phi(1), GELU'(x) -> 1 and 0 in the tails.
  const row_matrix<double> g_pre{{0.0, 1.0, 40.0, -40.0}};
  row_matrix<double> g = row_matrix<double>::Ones(1, 4);
  performer::activation_backward<double>(activation::gelu, g_pre, g);
  const double phi1 = std::exp(-0.5) / std::sqrt(2.0 * std::numbers::pi);
  const double cdf1 = 0.5 * std::erfc(-1.0 / std::sqrt(2.0));
  EXPECT_EQ(g(0, 0), 0.5);
  EXPECT_NEAR(g(0, 1), cdf1 + phi1, 1e-15);
  EXPECT_EQ(g(0, 2), 1.0);
  EXPECT_EQ(g(0, 3), 0.0);
}

TEST(ActivationBackward, RejectsBadArguments) {
  row_matrix<double> pre = gaussian_matrix(3, 4, 1), grad(3, 5);
  PERFORMER_EXPECT_INVALID("activation_backward", "dy is 3x5, expected 3x4",
                           performer::activation_backward<double>(activation::gelu, pre, grad));
  PERFORMER_EXPECT_INVALID("activation_backward", "dy overlaps pre",
                           performer::activation_backward<double>(activation::relu, pre, pre));
}

/// L = sum(dy .* (x w + b)).
double linear_loss(const row_matrix<double>& x, const row_matrix<double>& w,
                   const row_matrix<double>& b, const row_matrix<double>& dy) {
  row_matrix<double> y = x * w;
  y.rowwise() += b.row(0);
  return (y.array() * dy.array()).sum();
}

// Two calls (two row blocks of a batch): dx is each call's own, dw and db their sums.
TEST(LinearBackward, MatchesFiniteDifferencesAndAccumulates) {
  const row_matrix<double> w = gaussian_matrix(3, 5, 31), b = gaussian_matrix(1, 5, 32);
  const row_matrix<double> x1 = gaussian_matrix(4, 3, 33), dy1 = gaussian_matrix(4, 5, 34);
  const row_matrix<double> x2 = gaussian_matrix(2, 3, 35), dy2 = gaussian_matrix(2, 5, 36);
  row_matrix<double> dx1(4, 3), dx2(2, 3), dw = row_matrix<double>::Zero(3, 5);
  row_vector<double> db = row_vector<double>::Zero(5);
  performer::linear_backward<double>(x1, w, dy1, dx1, dw, db);
  performer::linear_backward<double>(x2, w, dy2, dx2, dw, db);
  struct grads {
    row_matrix<double> dx, dw, db;
  };
  const auto fd = [&](const row_matrix<double>& x, const row_matrix<double>& dy) {
    using m = row_matrix<double>;
    return grads{
        finite_difference_gradient([&](const m& v) { return linear_loss(v, w, b, dy); }, x),
        finite_difference_gradient([&](const m& v) { return linear_loss(x, v, b, dy); }, w),
        finite_difference_gradient([&](const m& v) { return linear_loss(x, w, v, dy); }, b)};
  };
  const auto e1 = fd(x1, dy1);
  const auto e2 = fd(x2, dy2);
  EXPECT_LE(relative_error(dx1, e1.dx), tolerance);
  EXPECT_LE(relative_error(dx2, e2.dx), tolerance);
  EXPECT_LE(relative_error(dw, e1.dw + e2.dw), tolerance);
  EXPECT_LE(relative_error(db, e1.db + e2.db), tolerance);
  // Without dx (a first layer): the same parameter gradients.
  row_matrix<double> dw_only = row_matrix<double>::Zero(3, 5);
  row_vector<double> db_only = row_vector<double>::Zero(5);
  performer::linear_backward<double>(x1, dy1, dw_only, db_only);
  performer::linear_backward<double>(x2, dy2, dw_only, db_only);
  EXPECT_LE((dw_only - dw).cwiseAbs().maxCoeff(), 1e-15);
  EXPECT_LE((db_only - db).cwiseAbs().maxCoeff(), 1e-15);
}

TEST(LinearBackward, FloatAgreesWithDouble) {
  const row_matrix<double> w = gaussian_matrix(6, 4, 41), x = gaussian_matrix(9, 6, 42);
  const row_matrix<double> dy = gaussian_matrix(9, 4, 43);
  row_matrix<double> dx(9, 6), dw = row_matrix<double>::Zero(6, 4);
  row_vector<double> db = row_vector<double>::Zero(4);
  performer::linear_backward<double>(x, w, dy, dx, dw, db);
  row_matrix<float> dxf(9, 6), dwf = row_matrix<float>::Zero(6, 4);
  row_vector<float> dbf = row_vector<float>::Zero(4);
  performer::linear_backward<float>(x.cast<float>(), w.cast<float>(), dy.cast<float>(), dxf, dwf,
                                    dbf);
  EXPECT_LE(relative_error(dxf.cast<double>(), dx), 1e-6);
  EXPECT_LE(relative_error(dwf.cast<double>(), dw), 1e-6);
  EXPECT_LE(relative_error(row_matrix<double>(dbf.cast<double>()), db), 1e-6);
}

TEST(LinearBackward, RejectsBadArguments) {
  const row_matrix<double> w = gaussian_matrix(3, 5, 1), x = gaussian_matrix(4, 3, 2);
  row_matrix<double> dy = gaussian_matrix(4, 5, 3);
  row_matrix<double> dx(4, 3), dw = row_matrix<double>::Zero(3, 5), wide(3, 6);
  row_vector<double> db = row_vector<double>::Zero(5), short_db = row_vector<double>::Zero(4);
  using performer::linear_backward;
  PERFORMER_EXPECT_INVALID("linear_backward", "w is 3x6, expected 3x5",
                           linear_backward<double>(x, wide, dy, dx, dw, db));
  PERFORMER_EXPECT_INVALID("linear_backward", "dx is 3x6, expected 4x3",
                           linear_backward<double>(x, w, dy, wide, dw, db));
  PERFORMER_EXPECT_INVALID("linear_backward", "dw is 3x6, expected 3x5",
                           linear_backward<double>(x, dy, wide, db));
  PERFORMER_EXPECT_INVALID("linear_backward", "db is 1x4, expected 1x5",
                           linear_backward<double>(x, dy, dw, short_db));
  PERFORMER_EXPECT_INVALID("linear_backward", "dy is 3x5 but x is 4x3",
                           linear_backward<double>(x, dy.topRows(3), dw, db));
  row_matrix<double> both(4, 8);  // dx in columns 0..2, dy in columns 3..7: they overlap
  both.rightCols(5) = dy;
  PERFORMER_EXPECT_INVALID("linear_backward", "dx overlaps x, w, dy or dw",
                           linear_backward<double>(x, w, both.rightCols(5), both.leftCols(3), dw,
                                                   db));
}

}  // namespace
}  // namespace train_layer_gradients_test
