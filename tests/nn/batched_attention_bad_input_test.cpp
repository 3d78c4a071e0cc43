// batched_attention's bad input: each documented check fires with its own message, and a
// mechanism's rejection names the sequence and head, the first in (b, h) order on any number
// of threads.
#include <gtest/gtest.h>

#include <cstdint>
#include <limits>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include <performer/nn/batched_attention.hpp>
#include <performer/testing/expect_invalid.hpp>

#include "instances/instances.hpp"

namespace performer::test {
// Named as well as anonymous: the unity build compiles several test files as one.
namespace nn_batched_attention_bad_input_test {
namespace {

constexpr const char* who = "batched_attention";

/// A valid self-attention batch, B = 2, H = 2, N = 6, d = d_v = 4, that each test breaks once.
struct valid_batch {
  static constexpr index_t b = 2, h = 2, n = 6, d = 4;
  std::vector<float> q = std::vector<float>(b * h * n * d, 0.25f);
  std::vector<float> v = std::vector<float>(b * h * n * d, 0.5f);
  std::vector<float> out = std::vector<float>(b * h * n * d);
  head_batch<const float> qv = bnhd_view<const float>(q.data(), b, n, h, d);
  head_batch<const float> vv = bnhd_view<const float>(v.data(), b, n, h, d);
  head_batch<float> ov = bnhd_view(out.data(), b, n, h, d);
  softmax_attention<float> a;
  void run(const batch_mask& mask = {}) const { batched_attention(a, qv, qv, vv, ov, mask); }
  void run_q(head_batch<const float> q2) const { batched_attention(a, q2, qv, vv, ov, {}); }
};

TEST(BatchedAttentionBadInput, MismatchedExtents) {
  valid_batch x;
  auto q = x.qv;
  q.batch = 1;
  PERFORMER_EXPECT_INVALID(who, "batch sizes differ", x.run_q(q));
  q = x.qv;
  q.heads = 1;
  PERFORMER_EXPECT_INVALID(who, "head counts differ", x.run_q(q));
  q = x.qv;
  q.width = 2;
  PERFORMER_EXPECT_INVALID(who, "k has head width 4 but q has 2", x.run_q(q));
  q = x.qv;
  q.tokens = 3;
  PERFORMER_EXPECT_INVALID(who, "out has 6 tokens of width 4, expected 3", x.run_q(q));
  auto v = x.vv;
  v.tokens = 3;
  PERFORMER_EXPECT_INVALID(who, "v has 3 tokens but k has 6",
                           batched_attention(x.a, x.qv, x.qv, v, x.ov, {}));
  q = x.qv;
  q.width = -1;
  PERFORMER_EXPECT_INVALID(who, "q has a negative extent", x.run_q(q));
  q = x.qv;
  q.data = nullptr;
  PERFORMER_EXPECT_INVALID(who, "q has no data for 96 scalars", x.run_q(q));
}

TEST(BatchedAttentionBadInput, OutputOverlappingAnInput) {
  valid_batch x;
  auto out = x.ov;
  out.data = x.v.data() + 5;
  PERFORMER_EXPECT_INVALID(who, "out overlaps an input",
                           batched_attention(x.a, x.qv, x.qv, x.vv, out, {}));
}

TEST(BatchedAttentionBadInput, LengthsAndKeyMask) {
  const valid_batch x;
  const std::vector<index_t> one{6};
  const std::vector<index_t> too_long{6, 7};
  const std::vector<index_t> negative{-1, 6};
  const std::vector<index_t> shorter{6, 5};
  const std::vector<std::uint8_t> keep(11, 1);
  PERFORMER_EXPECT_INVALID(who, "query_lengths has 1 entries, expected 2", x.run({false, one, {}, {}}));
  PERFORMER_EXPECT_INVALID(who, "key_lengths[1] is 7, outside [0, 6]", x.run({false, {}, too_long, {}}));
  PERFORMER_EXPECT_INVALID(who, "query_lengths[0] is -1", x.run({false, negative, {}, {}}));
  PERFORMER_EXPECT_INVALID(who, "key_mask has 11 entries, expected 12", x.run({false, {}, {}, keep}));
  PERFORMER_EXPECT_INVALID(who, "equal query and key lengths (sequence 1 has 5 and 6)",
                           x.run({true, shorter, {}, {}}));
}

TEST(BatchedAttentionBadInput, CausalCrossAttention) {
  valid_batch x;
  auto q = x.qv;
  auto out = x.ov;
  q.tokens = out.tokens = 3;
  PERFORMER_EXPECT_INVALID(who, "causal masking needs as many queries as keys",
                           batched_attention(x.a, q, x.qv, x.vv, out, {true, {}, {}, {}}));
}

// A NaN in sequence 1, head 0 and in sequence 0, head 1: the message names the earlier pair on
// every thread count (with two threads the pairs (0,1) and (1,0) run on different threads).
TEST(BatchedAttentionBadInput, MechanismErrorsNameTheFirstPair) {
  valid_batch x;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  bnhd_view(x.q.data(), 2, 6, 2, 4).head(1, 0)(2, 1) = nan;
  bnhd_view(x.q.data(), 2, 6, 2, 4).head(0, 1)(4, 3) = nan;
#ifdef _OPENMP
  const int threads = omp_get_max_threads();
  for (const int t : {1, 2, 3}) {
    omp_set_num_threads(t);
#endif
    PERFORMER_EXPECT_INVALID(who, "batched_attention: sequence 0, head 1: softmax_attention::forward: q",
                             x.run());
#ifdef _OPENMP
  }
  omp_set_num_threads(threads);
#endif
  // A NaN in padding is not read.
  const std::vector<index_t> lengths{4, 2};
  bnhd_view(x.q.data(), 2, 6, 2, 4).head(0, 1)(4, 3) = 0.0f;
  EXPECT_NO_THROW(x.run(batch_mask::padded(lengths)));
}

}  // namespace
}  // namespace nn_batched_attention_bad_input_test
}  // namespace performer::test
