// Covers performer/nn/block_gradient.hpp: the training forward against the block's own forward,
// and dL/dx and dL/d(every parameter) against central finite differences in double
// (support/gradient_check.hpp says why 1e-7), for exact and FAVOR+ attention, both LayerNorm
// placements, GELU and ReLU, rotary embeddings, causal masking and key padding; and the heads,
// run in parallel, give the bits of one thread.
#include <gtest/gtest.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include <cstdint>
#include <string>
#include <vector>

#include <performer/favor/favor_gradient.hpp>
#include <performer/nn/block_gradient.hpp>
#include <performer/softmax/softmax_gradient.hpp>
#include <performer/testing/expect_invalid.hpp>
#include <performer/testing/helpers.hpp>

#include "support/gradient_check.hpp"

namespace nn_block_gradient_test {
namespace {

using namespace performer;
using performer::test::gaussian_matrix;

constexpr double fd_tolerance = 1e-7;

struct variant {
  norm_placement norm;
  activation act;
  bool rotary, causal, padded;
};

std::string describe(const variant& v) {
  return std::string(v.norm == norm_placement::pre ? "pre-LN" : "post-LN") +
         (v.act == activation::gelu ? ", GELU" : ", ReLU") + (v.rotary ? ", rotary" : "") +
         (v.causal ? ", causal" : "") + (v.padded ? ", padded" : "");
}

block_config config_of(const variant& v) {
  block_config c;
  c.d_model = 8;
  c.heads = 2;
  c.d_ff = 12;
  c.norm = v.norm;
  c.ffn_activation = v.act;
  c.rotary = v.rotary;
  return c;
}

/// Parameters drawn by the block, then given non-trivial biases and LayerNorm gains so that
/// every term of the backward is exercised.
template <class Block>
void perturb_parameters(Block& b) {
  auto p = b.parameters();
  unsigned seed = 100;
  for (auto* r : {&p.b_q, &p.b_k, &p.b_v, &p.b_o, &p.b_ff1, &p.b_ff2, &p.norm1_bias,
                  &p.norm2_bias}) {
    *r = gaussian_matrix(1, r->cols(), seed++, 0.1);
  }
  for (auto* r : {&p.norm1_gain, &p.norm2_gain}) {
    *r = (gaussian_matrix(1, r->cols(), seed++, 0.2).array() + 1.0).matrix();
  }
  b.set_parameters(p);
}

template <class A>
void check_block(const A& attention, const variant& v) {
  SCOPED_TRACE(describe(v));
  using grad = block_gradient<A>;
  transformer_block<A> block(config_of(v), attention, 7);
  perturb_parameters(block);
  const index_t n = 7;
  const row_matrix<double> x = gaussian_matrix(n, 8, 11);
  const row_matrix<double> dy = gaussian_matrix(n, 8, 12);
  const std::vector<std::uint8_t> keep{1, 1, 0, 1, 1, 1, 0};
  const std::span<const std::uint8_t> mask =
      v.padded ? std::span<const std::uint8_t>(keep) : std::span<const std::uint8_t>{};

  typename grad::tape_type tape;
  typename grad::workspace_type ws;
  row_matrix<double> y(n, 8), dx(n, 8);
  grad::forward(block, x, y, mask, v.causal, tape, ws);
  row_matrix<double> plain(n, 8);
  typename transformer_block<A>::workspace_type bws;
  block.forward(x, plain, mask, bws, v.causal);
  EXPECT_LT(test::relative_error(y, plain), 1e-13) << "the training forward is another function";

  auto grads = grad::zero_gradients(block);
  grad::backward(block, tape, dy, dx, grads, ws);

  const auto loss_at = [&](const transformer_block<A>& b, const row_matrix<double>& input) {
    row_matrix<double> out(n, 8);
    typename transformer_block<A>::workspace_type w;
    b.forward(input, out, mask, w, v.causal);
    return (out.array() * dy.array()).sum();
  };
  // dL/dx.
  const auto fdx = test::finite_differences(
      [&](const row_matrix<double>& xx, const auto&, const auto&) {
        row_matrix<double> out(n, 8);
        typename transformer_block<A>::workspace_type w;
        block.forward(xx, out, mask, w, v.causal);
        return out;
      },
      x, x, x, dy);
  EXPECT_LT(test::relative_error(dx, fdx.dq), fd_tolerance) << "dx";

  // dL/d(parameter), every entry of every tensor.
  auto params = block.parameters();
  const auto& grad_tensors = grads;
  const double h = 1e-5;
  int index = 0;
  auto walk = [&](auto& tensor, auto& gradient, const char* name) {
    row_matrix<double> fd(tensor.rows(), tensor.cols());
    for (index_t i = 0; i < tensor.rows(); ++i) {
      for (index_t j = 0; j < tensor.cols(); ++j) {
        const double keep_value = tensor(i, j);
        tensor(i, j) = keep_value + h;
        transformer_block<A> up(config_of(v), attention, 7);
        up.set_parameters(params);
        tensor(i, j) = keep_value - h;
        transformer_block<A> down(config_of(v), attention, 7);
        down.set_parameters(params);
        tensor(i, j) = keep_value;
        fd(i, j) = (loss_at(up, x) - loss_at(down, x)) / (2 * h);
      }
    }
    // Floor 1e-2: without rotary, exact attention's dL/db_k is 0 (a shared shift of a query's
    // logits), so its scale is the differences' noise.
    EXPECT_LT(test::relative_error(row_matrix<double>(gradient), fd, 1e-2), fd_tolerance) << name;
    ++index;
  };
  walk(params.w_q, grad_tensors.w_q, "w_q");
  walk(params.w_k, grad_tensors.w_k, "w_k");
  walk(params.w_v, grad_tensors.w_v, "w_v");
  walk(params.w_o, grad_tensors.w_o, "w_o");
  walk(params.b_q, grad_tensors.b_q, "b_q");
  walk(params.b_k, grad_tensors.b_k, "b_k");
  walk(params.b_v, grad_tensors.b_v, "b_v");
  walk(params.b_o, grad_tensors.b_o, "b_o");
  walk(params.norm1_gain, grad_tensors.norm1_gain, "norm1_gain");
  walk(params.norm1_bias, grad_tensors.norm1_bias, "norm1_bias");
  walk(params.norm2_gain, grad_tensors.norm2_gain, "norm2_gain");
  walk(params.norm2_bias, grad_tensors.norm2_bias, "norm2_bias");
  walk(params.w_ff1, grad_tensors.w_ff1, "w_ff1");
  walk(params.b_ff1, grad_tensors.b_ff1, "b_ff1");
  walk(params.w_ff2, grad_tensors.w_ff2, "w_ff2");
  walk(params.b_ff2, grad_tensors.b_ff2, "b_ff2");
  EXPECT_EQ(index, 16);
}

const std::vector<variant> variants{
    {norm_placement::pre, activation::gelu, false, false, false},
    {norm_placement::pre, activation::relu, true, true, true},
    {norm_placement::post, activation::gelu, true, false, true},
    {norm_placement::post, activation::relu, false, true, false},
};

TEST(BlockGradient, ExactAttentionMatchesFiniteDifferences) {
  for (const auto& v : variants) check_block(softmax_attention<double>{}, v);
}

TEST(BlockGradient, FavorAttentionMatchesFiniteDifferences) {
  const favor_attention<double> favor(4, 8, 3, {}, {}, {.block = 3, .chunk = 2, .backward_chunk = 2, .segments = 1});
  for (const auto& v : variants) check_block(favor, v);
}

TEST(BlockGradient, BackwardAccumulatesParameterGradients) {
  using A = softmax_attention<double>;
  using grad = block_gradient<A>;
  const variant v{norm_placement::pre, activation::gelu, false, true, false};
  const transformer_block<A> block(config_of(v), A{}, 7);
  const row_matrix<double> x = gaussian_matrix(5, 8, 1), dy = gaussian_matrix(5, 8, 2);
  grad::tape_type tape;
  grad::workspace_type ws;
  row_matrix<double> y(5, 8), dx(5, 8);
  grad::forward(block, x, y, {}, true, tape, ws);
  auto once = grad::zero_gradients(block);
  grad::backward(block, tape, dy, dx, once, ws);
  auto twice = grad::zero_gradients(block);
  grad::backward(block, tape, dy, dx, twice, ws);
  grad::backward(block, tape, dy, dx, twice, ws);
  EXPECT_LT(test::relative_error(twice.w_ff1, row_matrix<double>(2 * once.w_ff1)), 1e-15);
  EXPECT_LT(test::relative_error(row_matrix<double>(twice.norm1_gain),
                                 row_matrix<double>(2 * once.norm1_gain)),
            1e-15);
}

// The heads run in parallel (one per lane); each head's result must not depend on which
// thread ran it or on how many there are. FAVOR+ at 2,048 tokens and min_segment 256 would
// split each head into segments if it ran alone, so this also covers a mechanism that would
// have threaded itself. (At 80 tokens the heads were too short to overlap: lanes sharing one
// workspace went unnoticed.)
TEST(BlockGradient, HeadsInParallelGiveTheBitsOfOneThread) {
#ifndef _OPENMP
  GTEST_SKIP() << "built without OpenMP: there is only one thread count to compare";
#else
  using A = favor_attention<float>;
  using grad = block_gradient<A>;
  block_config c;
  c.d_model = 32;
  c.heads = 4;
  c.rotary = true;
  const A favor(8, 16, 5, {}, {}, {.block = 64, .chunk = 16, .min_segment = 256});
  const transformer_block<A> block(c, favor, 9);
  const index_t n = 2048;
  const row_matrix<float> x = gaussian_matrix(n, 32, 21).cast<float>();
  const row_matrix<float> dy = gaussian_matrix(n, 32, 22).cast<float>();
  struct result {
    row_matrix<float> y, dx;
    grad::parameters_type grads;
  };
  const auto run = [&](bool causal) {
    result r{row_matrix<float>(n, 32), row_matrix<float>(n, 32), grad::zero_gradients(block)};
    grad::tape_type tape;
    grad::workspace_type ws;
    grad::forward(block, x, r.y, {}, causal, tape, ws);
    grad::backward(block, tape, dy, r.dx, r.grads, ws);
    return r;
  };
  const int threads = omp_get_max_threads();
  const int eigen_threads = Eigen::nbThreads();
  Eigen::setNbThreads(1);  // Eigen's own threaded products block differently (README, Threads)
  for (const bool causal : {false, true}) {
    SCOPED_TRACE(::testing::Message() << "causal=" << causal);
    std::vector<result> results;
    for (const int t : {1, 2, 3}) {
      omp_set_num_threads(t);
      results.push_back(run(causal));
    }
    for (std::size_t t = 1; t < results.size(); ++t) {
      EXPECT_TRUE(conformance::same_bits(results[0].y, results[t].y)) << t + 1 << " threads";
      EXPECT_TRUE(conformance::same_bits(results[0].dx, results[t].dx)) << t + 1 << " threads";
      EXPECT_TRUE(conformance::same_bits(results[0].grads.w_q, results[t].grads.w_q)) << t + 1 << " threads";
      EXPECT_TRUE(conformance::same_bits(results[0].grads.w_v, results[t].grads.w_v)) << t + 1 << " threads";
    }
  }
  omp_set_num_threads(threads);
  Eigen::setNbThreads(eigen_threads);
#endif
}

TEST(BlockGradient, BadArgumentsThrow) {
  using A = softmax_attention<double>;
  using grad = block_gradient<A>;
  block_config c = config_of({norm_placement::pre, activation::gelu, false, false, false});
  const transformer_block<A> block(c, A{}, 7);
  const row_matrix<double> x = gaussian_matrix(5, 8, 1);
  grad::tape_type tape;
  grad::workspace_type ws;
  row_matrix<double> y(5, 8), dx(5, 8), dy = gaussian_matrix(5, 8, 2);
  grad::forward(block, x, y, {}, false, tape, ws);
  auto grads = grad::zero_gradients(block);
  row_matrix<double> short_dy(4, 8);
  PERFORMER_EXPECT_INVALID("block_gradient::backward", "dy is 4x8 and dx is 5x8",
                           grad::backward(block, tape, short_dy, dx, grads, ws));
  dy(1, 1) = std::nan("");
  PERFORMER_EXPECT_INVALID("block_gradient::backward", "dy (5x8) contains a NaN",
                           grad::backward(block, tape, dy, dx, grads, ws));
  grad::parameters_type empty;
  PERFORMER_EXPECT_INVALID("block_gradient::backward", "not shaped like the parameters",
                           grad::backward(block, tape, gaussian_matrix(5, 8, 3), dx, empty, ws));
  c.cross_attention = true;
  const transformer_block<A> cross(c, A{}, 7);
  PERFORMER_EXPECT_INVALID("block_gradient::forward", "cross-attention blocks have no backward",
                           grad::forward(cross, x, y, {}, false, tape, ws));
}

}  // namespace
}  // namespace nn_block_gradient_test
