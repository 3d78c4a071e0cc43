// Covers performer/io/checkpoint.hpp: training resumed from a checkpoint (load_model, a new
// trainer, load_optimizer_state) has the bits of a run that never stopped, for a float FAVOR+
// and a double exact-attention model; resuming from the model alone does not; and every bad
// checkpoint is refused with a message that names the file, leaving the trainer unchanged.
#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include <performer/favor/favor_gradient.hpp>
#include <performer/io/checkpoint.hpp>
#include <performer/softmax/softmax_gradient.hpp>
#include <performer/testing/expect_invalid.hpp>
#include <performer/train/trainer.hpp>

#include "io/support.hpp"

namespace io_checkpoint_test {
namespace {

using namespace performer;
using performer::test::io_support::temp_dir;

model_config small_config() {
  model_config c;
  c.vocab = 7;
  c.layers = 2;
  c.max_positions = 12;
  c.block.d_model = 16;
  c.block.heads = 2;
  c.block.d_ff = 32;
  c.block.causal = true;
  return c;
}

template <class A>
A make_attention(index_t head, std::uint64_t seed) {
  if constexpr (requires { A(head, 8, seed); }) {
    return A(head, 8, seed);
  } else {
    return A();
  }
}

template <class A>
transformer_model<A> make_model(const model_config& c = small_config()) {
  return transformer_model<A>(
      c, [&](index_t, std::uint64_t seed) { return make_attention<A>(c.block.d_model / 2, seed); },
      3);
}

/// Step `step`'s batch: next-token prediction on two sequences drawn from the step's seed.
void batch(std::int64_t step, std::vector<std::vector<std::int64_t>>& in,
           std::vector<std::vector<std::int64_t>>& target) {
  detail::xoshiro256ss rng(detail::derive_seed(17, static_cast<std::uint64_t>(step)));
  in.assign(2, {});
  target.assign(2, {});
  for (std::size_t b = 0; b < 2; ++b) {
    for (int i = 0; i < 10; ++i) in[b].push_back(static_cast<std::int64_t>(rng.uniform() * 7));
    target[b].assign(in[b].begin() + 1, in[b].end());
    target[b].push_back(-1);
  }
}

const adamw_options options{.learning_rate = 3e-3, .weight_decay = 0.1, .max_grad_norm = 1.0};

/// Steps [from, to) of the run; the losses appended.
template <class A>
void train(trainer<A>& t, std::int64_t from, std::int64_t to, std::vector<double>& losses) {
  std::vector<std::vector<std::int64_t>> in, target;
  for (std::int64_t s = from; s < to; ++s) {
    batch(s, in, target);
    losses.push_back(t.step(in, target));
  }
}

template <class A>
class Checkpoint : public ::testing::Test {};
using mechanisms = ::testing::Types<favor_attention<float>, softmax_attention<double>>;
TYPED_TEST_SUITE(Checkpoint, mechanisms);

TYPED_TEST(Checkpoint, ResumedTrainingHasTheBitsOfAnUninterruptedRun) {
  using A = TypeParam;
  const std::vector<std::int64_t> probe{1, 5, 2, 6, 0, 3};
  std::vector<double> straight_losses;
  auto straight = make_model<A>();
  trainer<A> straight_trainer(straight, options);
  train(straight_trainer, 0, 8, straight_losses);

  temp_dir dir;
  const auto path = dir.file("run.safetensors");
  std::vector<double> losses;
  {
    auto first = make_model<A>();
    trainer<A> t(first, options);
    train(t, 0, 4, losses);
    io::save_checkpoint(t, path, {{"note", "step 4"}});
  }
  auto resumed = io::load_model<A>(path);
  trainer<A> t(resumed, options);
  io::load_optimizer_state(t, path);
  EXPECT_EQ(t.optimizer().steps(), 4);
  train(t, 4, 8, losses);
  EXPECT_EQ(losses, straight_losses);
  EXPECT_TRUE(resumed.forward(probe) == straight.forward(probe));
  EXPECT_EQ(io::safetensors_file(path).metadata().at("note"), "step 4");

  // The model alone (AdamW's moments restarted at 0) continues differently.
  auto model_only = io::load_model<A>(path);
  trainer<A> fresh(model_only, options);
  std::vector<double> fresh_losses;
  train(fresh, 4, 8, fresh_losses);
  EXPECT_FALSE(model_only.forward(probe) == straight.forward(probe));
}

using favor = favor_attention<float>;

/// Writes the model of `t` with an "optimizer" entry `state` and, unless `moments` is false,
/// its moments; with `skip`, that tensor's second moment is left out.
void write_checkpoint(const trainer<favor>& t, const std::filesystem::path& path,
                      const std::string& state, bool moments = true, const std::string& skip = "") {
  io::safetensors_writer w = io::detail::model_writer(t.model(), io::dtype::f32, {}, "test");
  const adamw<float>& opt = t.optimizer();
  for (std::size_t i = 0; moments && i < opt.size(); ++i) {
    w.add(io::checkpoint_first_moment + opt.name(i), opt.first_moment(i));
    if (opt.name(i) != skip) w.add(io::checkpoint_second_moment + opt.name(i), opt.second_moment(i));
  }
  w.set_metadata("optimizer", state);
  w.write(path);
}

TEST(CheckpointBadInput, IsRefusedWithTheFileNamedAndTheTrainerUnchanged) {
  temp_dir dir;
  auto model = make_model<favor>();
  trainer<favor> t(model, options);
  std::vector<double> losses;
  train(t, 0, 2, losses);
  const auto model_file = dir.file("model.safetensors");
  io::save_model(model, model_file);
  const auto at = [&](const char* name) { return dir.file(name); };
  const std::string tensors = std::to_string(t.optimizer().size());
  const std::string good_state =
      R"({"kind": "adamw", "steps": 2, "beta1": 0.9, "beta2": 0.999, "tensors": )" + tensors + "}";
  write_checkpoint(t, at("not_json"), "{steps");
  write_checkpoint(t, at("sgd"), R"({"kind": "sgd"})");
  write_checkpoint(t, at("negative"), R"({"kind": "adamw", "steps": -3})");
  write_checkpoint(t, at("betas"),
                   R"({"kind": "adamw", "steps": 2, "beta1": 0.8, "beta2": 0.999, "tensors": 1})");
  write_checkpoint(t, at("count"),
                   R"({"kind": "adamw", "steps": 2, "beta1": 0.9, "beta2": 0.999, "tensors": 3})");
  write_checkpoint(t, at("missing"), good_state, true, "layers.1.w_ff2");
  write_checkpoint(t, at("no_moments"), good_state, false);

  const row_matrix<float> m0 = t.optimizer().first_moment(0);
  const char* who = "load_optimizer_state";
  PERFORMER_EXPECT_INVALID(who, "model.safetensors: no optimiser state",
                           io::load_optimizer_state(t, model_file));
  PERFORMER_EXPECT_INVALID(who, "not_json: optimizer is not valid JSON",
                           io::load_optimizer_state(t, at("not_json")));
  PERFORMER_EXPECT_INVALID(who, "sgd: optimizer \"kind\" must be \"adamw\", not \"sgd\"",
                           io::load_optimizer_state(t, at("sgd")));
  PERFORMER_EXPECT_INVALID(who, "negative: optimizer \"steps\" is -3, outside [0,",
                           io::load_optimizer_state(t, at("negative")));
  PERFORMER_EXPECT_INVALID(who, "\"beta1\" is 0.8 but the trainer's is 0.9",
                           io::load_optimizer_state(t, at("betas")));
  PERFORMER_EXPECT_INVALID(who, "holds the moments of 3 tensors but the trainer has " + tensors,
                           io::load_optimizer_state(t, at("count")));
  PERFORMER_EXPECT_INVALID(who, "missing: no tensor 'optimizer.exp_avg_sq.layers.1.w_ff2'",
                           io::load_optimizer_state(t, at("missing")));
  PERFORMER_EXPECT_INVALID(who, "no tensor 'optimizer.exp_avg.token_embedding'",
                           io::load_optimizer_state(t, at("no_moments")));

  // A model of another shape: one layer, so fewer tensors.
  model_config one_layer = small_config();
  one_layer.layers = 1;
  auto small = make_model<favor>(one_layer);
  trainer<favor> other(small, options);
  const auto other_path = dir.file("one_layer");
  io::save_checkpoint(other, other_path);
  PERFORMER_EXPECT_INVALID(who, "but the trainer has " + tensors + " (a model of another shape)",
                           io::load_optimizer_state(t, other_path));

  PERFORMER_EXPECT_INVALID("save_checkpoint", "the metadata key \"optimizer\" is the checkpoint's",
                           io::save_checkpoint(t, at("x"), {{"optimizer", "mine"}}));
  PERFORMER_EXPECT_INVALID("save_checkpoint", "the metadata key \"config\" is the format's own",
                           io::save_checkpoint(t, at("x"), {{"config", "mine"}}));
  EXPECT_EQ(t.optimizer().steps(), 2);
  EXPECT_TRUE(t.optimizer().first_moment(0) == m0);
}

}  // namespace
}  // namespace io_checkpoint_test
