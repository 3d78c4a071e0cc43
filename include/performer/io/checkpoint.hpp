/// @file io/checkpoint.hpp
/// @brief A training checkpoint in one safetensors file (docs/model_format.md, "Checkpoints"):
/// the model file of save_model plus the AdamW state of its trainer. load_model reads the model
/// from it as from any model file; load_optimizer_state puts the optimiser's state back into a
/// trainer built on that model, and training resumes with the bits of a run that never stopped.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "../core/error.hpp"
#include "../core/gradient.hpp"
#include "../core/types.hpp"
#include "../train/trainer.hpp"
#include "model_description.hpp"
#include "model_file.hpp"
#include "safetensors.hpp"
#include "safetensors_writer.hpp"

namespace performer::io {

/// Name prefixes of the optimiser's tensors in a checkpoint: AdamW's first and second moments
/// of each parameter tensor, named as the trainer registered it (e.g. "layers.0.w_q"), in the
/// library's own layout (the trainer's x W orientation, not PyTorch's [out, in]).
inline constexpr const char* checkpoint_first_moment = "optimizer.exp_avg.";
inline constexpr const char* checkpoint_second_moment = "optimizer.exp_avg_sq.";

/**
 * @brief Writes `t`'s model (as save_model, at full precision: F32 for float, F64 for double)
 * and its optimiser's state (the step count, beta1, beta2 and both moments of every tensor) to
 * `path`. The model and the moments are referred to while writing, not copied: O(1) extra
 * memory beyond save_model's. Time O(parameters).
 * @throws performer::invalid_argument as save_model, or if a `metadata` key is "optimizer"
 * (the checkpoint's own).
 */
template <storable_attention A>
  requires differentiable_attention<A>
void save_checkpoint(const trainer<A>& t, const std::filesystem::path& path,
                     const std::map<std::string, std::string>& metadata = {}) {
  constexpr const char* who = "save_checkpoint";
  using T = typename A::scalar_type;
  PERFORMER_PRECONDITION(!metadata.contains("optimizer"), who,
                         ": the metadata key \"optimizer\" is the checkpoint's own; choose "
                         "another name");
  safetensors_writer w = detail::model_writer(t.model(), default_dtype<T>, metadata, who);
  const adamw<T>& opt = t.optimizer();
  for (std::size_t i = 0; i < opt.size(); ++i) {
    w.add(checkpoint_first_moment + opt.name(i), opt.first_moment(i));
    w.add(checkpoint_second_moment + opt.name(i), opt.second_moment(i));
  }
  const nlohmann::json state = {{"kind", "adamw"},
                                {"steps", opt.steps()},
                                {"beta1", opt.options().beta1},
                                {"beta2", opt.options().beta2},
                                {"tensors", opt.size()}};
  w.set_metadata("optimizer", state.dump());
  w.write(path);
}

/**
 * @brief Restores the optimiser state a checkpoint holds into `t` (adamw::restore): its step
 * count and the moments of every tensor the trainer registered. Build `t` on the model
 * load_model read from the same file, with the run's adamw_options: the learning rate, weight
 * decay, eps and clipping may change (a schedule), beta1 and beta2 may not, since the bias
 * correction's beta^t would no longer match the moments. O(parameters); the file is mapped.
 * @throws performer::invalid_argument naming the file if it has no optimiser state (a model
 * file), its "optimizer" entry is not valid (JSON, kind "adamw", an integer step count >= 0,
 * betas), its betas differ from t's, it holds moments for a different number of tensors, a
 * tensor's moment is missing or of another shape; as safetensors_file (a malformed file, a NaN
 * or an infinity); or as adamw::restore (a negative second moment). On a throw, t is unchanged.
 */
template <storable_attention A>
  requires differentiable_attention<A>
void load_optimizer_state(trainer<A>& t, const std::filesystem::path& path) {
  constexpr const char* who = "load_optimizer_state";
  using T = typename A::scalar_type;
  const safetensors_file f(path);
  const std::string where = f.path().string();
  const auto entry = f.metadata().find("optimizer");
  PERFORMER_PRECONDITION(entry != f.metadata().end(), who, ": ", where,
                         ": no optimiser state (__metadata__ has no \"optimizer\"): a model "
                         "file, not a checkpoint");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(entry->second);
  } catch (const nlohmann::json::exception& e) {
    PERFORMER_THROW(invalid_argument(performer::detail::message(
        who, ": ", where, ": optimizer is not valid JSON (", e.what(), ")")));
  }
  PERFORMER_PRECONDITION(j.is_object(), who, ": ", where, ": optimizer is not a JSON object");
  const detail::config_reader r(j, "optimizer", who, where);
  r.fail_unless(r.at("kind") == "adamw", "\"kind\" must be \"adamw\", not ", r.at("kind").dump());
  const index_t steps = r.integer("steps", 0);
  adamw<T>& opt = t.optimizer();
  for (const auto& [key, mine] : {std::pair{"beta1", opt.options().beta1},
                                  std::pair{"beta2", opt.options().beta2}}) {
    const double saved = r.number(key);
    r.fail_unless(saved == mine, "\"", key, "\" is ", saved, " but the trainer's is ", mine,
                  "; the moments' bias correction needs the betas they were made with");
  }
  const index_t tensors = r.integer("tensors", 0);
  r.fail_unless(tensors == static_cast<index_t>(opt.size()), "holds the moments of ", tensors,
                " tensors but the trainer has ", opt.size(), " (a model of another shape)");

  std::vector<row_matrix<T>> first, second;
  for (std::size_t i = 0; i < opt.size(); ++i) {
    for (auto [prefix, into] : {std::pair{checkpoint_first_moment, &first},
                                std::pair{checkpoint_second_moment, &second}}) {
      const std::string name = prefix + opt.name(i);
      const index_t rows = opt.first_moment(i).rows(), cols = opt.first_moment(i).cols();
      PERFORMER_PRECONDITION(f.contains(name), who, ": ", where, ": no tensor '", name,
                             "' (the trainer has a ", rows, "x", cols, " tensor ", opt.name(i),
                             ")");
      into->push_back(f.read<T>(name));
      PERFORMER_PRECONDITION(into->back().rows() == rows && into->back().cols() == cols, who,
                             ": ", where, ": tensor '", name, "' is ",
                             performer::detail::shape(into->back()), ", expected ", rows, "x",
                             cols);
    }
  }
  const std::vector<const_matrix_ref<T>> m(first.begin(), first.end());
  const std::vector<const_matrix_ref<T>> v(second.begin(), second.end());
  opt.restore(steps, m, v);
}

}  // namespace performer::io
