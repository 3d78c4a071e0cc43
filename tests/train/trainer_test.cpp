// Covers performer/train/trainer.hpp: a small causal FAVOR+ model learns to copy a random
// sequence (its loss must fall far below chance in a fixed number of steps), training is
// deterministic, and bad batches are refused without touching the model.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include <performer/favor/favor_gradient.hpp>
#include <performer/random/detail/generator.hpp>
#include <performer/testing/expect_invalid.hpp>
#include <performer/train/trainer.hpp>

namespace train_trainer_test {
namespace {

using namespace performer;
using favor = favor_attention<float>;

constexpr std::int64_t payload = 8;    // tokens 0..7 are copied
constexpr std::int64_t separator = 8;  // then the separator, then the copy
constexpr index_t half = 6;

model_config copy_config() {
  model_config c;
  c.vocab = 9;
  c.layers = 2;
  c.max_positions = 2 * half + 1;
  c.block.d_model = 32;
  c.block.heads = 4;
  c.block.d_ff = 64;
  c.block.causal = true;
  return c;
}

/// A batch of "x_1 .. x_6 SEP x_1 .. x_6": inputs all but the last token, targets the next
/// token where it is determined (after the separator), -1 elsewhere.
void copy_batch(std::uint64_t seed, std::size_t batch, std::vector<std::vector<std::int64_t>>& in,
                std::vector<std::vector<std::int64_t>>& target) {
  detail::xoshiro256ss rng(seed);
  in.assign(batch, {});
  target.assign(batch, {});
  for (std::size_t b = 0; b < batch; ++b) {
    std::vector<std::int64_t> x(half);
    for (auto& t : x) t = static_cast<std::int64_t>(rng.uniform() * payload);
    std::vector<std::int64_t> seq = x;
    seq.push_back(separator);
    seq.insert(seq.end(), x.begin(), x.end());
    in[b].assign(seq.begin(), seq.end() - 1);
    target[b].assign(seq.size() - 1, -1);
    for (index_t i = half; i < 2 * half; ++i) {
      target[b][static_cast<std::size_t>(i)] = seq[static_cast<std::size_t>(i + 1)];
    }
  }
}

favor make_favor(index_t, std::uint64_t seed) { return favor(8, 16, seed); }

/// Chance is ln 8 = 2.08 nats per copied token; after 250 steps of 16 sequences the model must
/// copy almost surely (measured: see the test's output).
TEST(Trainer, CausalFavorModelLearnsToCopy) {
  transformer_model<favor> model(copy_config(), make_favor, 3);
  trainer<favor> t(model, {.learning_rate = 3e-3, .weight_decay = 0.01, .max_grad_norm = 1.0});
  std::vector<std::vector<std::int64_t>> in, target;
  double first = 0, last = 0;
  for (int s = 0; s < 250; ++s) {
    copy_batch(static_cast<std::uint64_t>(s), 16, in, target);
    const double loss = t.step(in, target);
    ASSERT_TRUE(std::isfinite(loss)) << "step " << s;
    if (s == 0) first = loss;
    last = loss;
  }
  copy_batch(999, 64, in, target);  // held out
  int right = 0, counted = 0;
  for (std::size_t b = 0; b < in.size(); ++b) {
    const row_matrix<float> logits = model.forward(in[b]);
    for (std::size_t i = 0; i < target[b].size(); ++i) {
      if (target[b][i] < 0) continue;
      index_t best = 0;
      logits.row(static_cast<index_t>(i)).maxCoeff(&best);
      right += best == target[b][i] ? 1 : 0;
      ++counted;
    }
  }
  std::printf("[training] copy task: loss %.3f -> %.3f nats, held-out accuracy %d/%d\n", first,
              last, right, counted);
  EXPECT_GT(first, 1.8);  // starts near chance
  EXPECT_LT(last, 0.2);
  EXPECT_GT(right, counted * 95 / 100);
}

TEST(Trainer, SameSeedSameBits) {
  std::vector<std::vector<std::int64_t>> in, target;
  copy_batch(5, 4, in, target);
  const auto train = [&] {
    transformer_model<favor> model(copy_config(), make_favor, 3);
    trainer<favor> t(model, {.learning_rate = 1e-3});
    for (int s = 0; s < 3; ++s) t.step(in, target);
    return model.forward(in[0]);
  };
  EXPECT_TRUE(train() == train());
}

TEST(Trainer, BadBatchesThrowAndLeaveTheModel) {
  transformer_model<favor> model(copy_config(), make_favor, 3);
  trainer<favor> t(model, {});
  std::vector<std::vector<std::int64_t>> in, target;
  copy_batch(1, 2, in, target);
  const row_matrix<float> before = model.forward(in[0]);
  const auto none = std::vector<std::vector<std::int64_t>>{};
  PERFORMER_EXPECT_INVALID("trainer::step", "0 input sequences and 0 target sequences",
                           t.step(none, none));
  auto short_target = target;
  short_target[1].pop_back();
  PERFORMER_EXPECT_INVALID("trainer::step", "sequence 1 has 12 inputs and 11 targets",
                           t.step(in, short_target));
  auto ignored = target;
  for (auto& seq : ignored) seq.assign(seq.size(), -1);
  PERFORMER_EXPECT_INVALID("trainer::step", "no target in the batch is counted",
                           t.step(in, ignored));
  auto out_of_range = target;
  out_of_range[0][8] = 9;
  EXPECT_THROW(t.step(in, out_of_range), performer::invalid_argument);
  EXPECT_TRUE(model.forward(in[0]) == before);
  EXPECT_EQ(t.optimizer().steps(), 0);
}

}  // namespace
}  // namespace train_trainer_test
