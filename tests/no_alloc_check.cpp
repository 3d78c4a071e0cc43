// Separate executable: built with EIGEN_RUNTIME_NO_MALLOC, so any heap allocation by Eigen while
// allocation is switched off aborts. After a warm-up call with the same shapes, a forward pass
// with a caller-provided workspace must allocate nothing. Small shapes on purpose: Eigen's large
// matrix products allocate packing buffers beyond EIGEN_STACK_ALLOCATION_LIMIT regardless.
#define EIGEN_RUNTIME_NO_MALLOC
#undef NDEBUG  // Eigen checks the allocation flag with eigen_assert: keep it on in Release
#include <gtest/gtest.h>

#include <performer/performer.hpp>
#include <performer/testing/helpers.hpp>

namespace {

using performer::row_matrix;
using performer::conformance::random_matrix;

template <class A>
void expect_no_allocation(const A& mechanism, bool causal) {
  using T = typename A::scalar_type;
  const auto q = random_matrix<T>(48, 16, 1);
  const auto k = random_matrix<T>(48, 16, 2);
  const auto v = random_matrix<T>(48, 8, 3);
  const std::vector<std::uint8_t> keep(48, 1);
  row_matrix<T> out(48, 8);
  typename A::workspace_type ws;
  const performer::attention_mask mask{causal, keep};
  mechanism.forward(q, k, v, out, mask, ws);  // warm-up sizes the workspace
  Eigen::internal::set_is_malloc_allowed(false);
  mechanism.forward(q, k, v, out, mask, ws);
  Eigen::internal::set_is_malloc_allowed(true);
  SUCCEED();
}

TEST(NoAllocation, SoftmaxAttention) {
  expect_no_allocation(performer::softmax_attention<float>{}, false);
  expect_no_allocation(performer::softmax_attention<double>{}, true);
}

TEST(NoAllocation, TiledSoftmaxAttention) {
  expect_no_allocation(performer::tiled_softmax_attention<float>(16, 16), false);
  expect_no_allocation(performer::tiled_softmax_attention<float>(16, 16), true);
}

TEST(NoAllocation, FavorAttention) {
  // Blocks, chunks and segments smaller than the sequence: every path, ragged ends included.
  const performer::favor_options options{.block = 16, .chunk = 6, .segments = 2, .min_segment = 16};
  for (const bool causal : {false, true}) {
    expect_no_allocation(performer::favor_attention<float>(16, 16, 1, {}, {}, options), causal);
    expect_no_allocation(performer::favor_attention<double, performer::hyperbolic_features<double>>(
                             16, 8, 1, {}, {}, options),
                         causal);
  }
}

TEST(NoAllocation, FavorDecoderStep) {
  const performer::favor_attention<float> favor(16, 16, 1);
  performer::favor_decoder<float> decoder(favor, 8);
  const auto x = random_matrix<float>(3, 16, 4);
  const auto v = random_matrix<float>(3, 8, 5);
  performer::row_vector<float> out(8);
  decoder.step(x.row(0), x.row(1), v.row(0), out);
  Eigen::internal::set_is_malloc_allowed(false);
  decoder.step(x.row(1), x.row(2), v.row(1), out);
  decoder.step(x.row(2), x.row(0), v.row(2), out);
  Eigen::internal::set_is_malloc_allowed(true);
  SUCCEED();
}

TEST(NoAllocation, TransformerBlock) {
  const performer::block_config cfg{.d_model = 32, .heads = 4, .d_ff = 48, .causal = true};
  const performer::transformer_block<performer::tiled_softmax_attention<float>> block(
      cfg, performer::tiled_softmax_attention<float>(16, 16), 1);
  const auto x = random_matrix<float>(40, 32, 4);
  row_matrix<float> y(40, 32);
  decltype(block)::workspace_type ws;
  block.forward(x, y, {}, ws);
  Eigen::internal::set_is_malloc_allowed(false);
  block.forward(x, y, {}, ws);
  Eigen::internal::set_is_malloc_allowed(true);
  SUCCEED();
}

}  // namespace
