// transformer_block::forward_batch: a batch of padded sequences gives, for each, what forward()
// gives on it alone and unpadded (FAVOR+ and exact, with rotary positions and causal masks);
// padding is never read and comes out zero; the bits do not depend on the thread count; bad
// batches are rejected.
#include <gtest/gtest.h>

#include <cstdint>
#include <limits>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include <performer/nn/transformer_block.hpp>
#include <performer/testing/expect_invalid.hpp>
#include <performer/testing/helpers.hpp>

#include "instances/instances.hpp"

namespace performer::test {
// Named as well as anonymous: the unity build compiles several test files as one.
namespace nn_transformer_block_batch_test {
namespace {

using conformance::random_matrix;
using conformance::relative_difference;

constexpr index_t batch = 3, n = 40, d_model = 16;
const std::vector<index_t> lengths{40, 17, 1};

/// Each sequence alone through forward(), against its rows of forward_batch(). The products
/// over B N rows may block differently from those over N: float rounding, ~1e-6 per sublayer.
template <class Block>
void expect_batch_matches_alone(const Block& block, double tol) {
  using T = typename Block::scalar_type;
  row_matrix<T> x = random_matrix<T>(batch * n, d_model, 3);
  for (index_t b = 0; b < batch; ++b) {  // padding that must not be read
    const index_t len = lengths[static_cast<std::size_t>(b)];
    x.middleRows(b * n + len, n - len).setConstant(std::numeric_limits<T>::quiet_NaN());
  }
  row_matrix<T> y(batch * n, d_model);
  typename Block::workspace_type ws;
  block.forward_batch(x, batch, y, lengths, ws);
  for (index_t b = 0; b < batch; ++b) {
    const index_t len = lengths[static_cast<std::size_t>(b)];
    const row_matrix<T> alone = block.forward(x.middleRows(b * n, len));
    EXPECT_LE(relative_difference(y.middleRows(b * n, len), alone), tol) << "sequence " << b;
    EXPECT_TRUE(y.middleRows(b * n + len, n - len).isZero(0)) << "sequence " << b;
  }
}

TEST(TransformerBlockBatch, EachSequenceAsIfAlone) {
  for (const bool causal : {false, true}) {
    for (const bool rotary : {false, true}) {
      const block_config cfg{.d_model = d_model, .heads = 2, .d_ff = 24, .causal = causal, .rotary = rotary};
      SCOPED_TRACE(::testing::Message() << "causal " << causal << ", rotary " << rotary);
      expect_batch_matches_alone(transformer_block<softmax_attention<double>>(cfg, {}, 4), 1e-12);
      expect_batch_matches_alone(transformer_block<softmax_attention<float>>(cfg, {}, 4), 1e-5);
      expect_batch_matches_alone(
          transformer_block<favor_attention<float>>(cfg, favor_attention<float>(8, 32, 5), 4), 1e-5);
    }
  }
}

TEST(TransformerBlockBatch, ThreadCountDoesNotChangeBits) {
#ifndef _OPENMP
  GTEST_SKIP() << "built without OpenMP: there is only one thread count to compare";
#else
  const transformer_block<favor_attention<float>> block({.d_model = d_model, .heads = 2, .causal = true},
                                                        favor_attention<float>(8, 32, 5), 4);
  const row_matrix<float> x = random_matrix<float>(batch * n, d_model, 6);
  const int threads = omp_get_max_threads();
  const int eigen_threads = Eigen::nbThreads();
  Eigen::setNbThreads(1);  // Eigen's own threaded products block differently (README, Threads)
  std::vector<row_matrix<float>> results;
  for (const int t : {1, 2, 3}) {
    omp_set_num_threads(t);
    row_matrix<float> y(batch * n, d_model);
    decltype(block)::workspace_type ws;
    block.forward_batch(x, batch, y, lengths, ws);
    results.push_back(y);
  }
  omp_set_num_threads(threads);
  Eigen::setNbThreads(eigen_threads);
  EXPECT_TRUE(conformance::same_bits(results[0], results[1]));
  EXPECT_TRUE(conformance::same_bits(results[0], results[2]));
#endif
}

TEST(TransformerBlockBatchBadInput, ShapesLengthsAndValues) {
  const transformer_block<softmax_attention<float>> block({.d_model = 8, .heads = 2}, {});
  decltype(block)::workspace_type ws;
  const char* who = "transformer_block::forward_batch";
  row_matrix<float> x = random_matrix<float>(12, 8, 1);
  row_matrix<float> y(12, 8);
  PERFORMER_EXPECT_INVALID(who, "x is 12x8, not a positive multiple of 5 sequences",
                           block.forward_batch(x, 5, y, {}, ws));
  PERFORMER_EXPECT_INVALID(who, "not a positive multiple of 0 sequences", block.forward_batch(x, 0, y, {}, ws));
  row_matrix<float> wide = random_matrix<float>(12, 9, 1);
  PERFORMER_EXPECT_INVALID(who, "x is 12x9 but d_model is 8", block.forward_batch(wide, 3, y, {}, ws));
  row_matrix<float> short_y(11, 8);
  PERFORMER_EXPECT_INVALID(who, "y is 11x8, expected 12x8", block.forward_batch(x, 3, short_y, {}, ws));
  PERFORMER_EXPECT_INVALID(who, "y overlaps x", block.forward_batch(x, 3, x, {}, ws));
  const std::vector<index_t> too_long{4, 5, 1};
  PERFORMER_EXPECT_INVALID(who, "lengths[1] is 5, outside [0, 4]", block.forward_batch(x, 3, y, too_long, ws));
  const std::vector<index_t> two{4, 4};
  PERFORMER_EXPECT_INVALID(who, "lengths has 2 entries, expected 3", block.forward_batch(x, 3, y, two, ws));
  x(5, 2) = std::numeric_limits<float>::infinity();  // sequence 1, a real token
  PERFORMER_EXPECT_INVALID(who, "x (4x8) contains a NaN or an infinity", block.forward_batch(x, 3, y, {}, ws));
  const std::vector<index_t> short_lengths{4, 1, 4};  // now row 5 is padding: accepted
  EXPECT_NO_THROW(block.forward_batch(x, 3, y, short_lengths, ws));
}

}  // namespace
}  // namespace nn_transformer_block_batch_test
}  // namespace performer::test
