/// @file train/trainer.hpp
/// @brief Training a transformer_model: one step = forward and backward of every sequence of a
/// batch, the mean cross-entropy over its counted targets, and an AdamW update.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "../core/error.hpp"
#include "../core/gradient.hpp"
#include "../core/types.hpp"
#include "../nn/model_gradient.hpp"
#include "adamw.hpp"
#include "loss.hpp"

namespace performer {

/**
 * @brief Trains a transformer_model in place: step() runs the batch's sequences through
 * model_gradient, takes the mean cross-entropy over every counted target of the batch (so a
 * token weighs the same in a short sequence as in a long one), and applies adamw to every
 * parameter.
 *
 * The trainer keeps the optimiser's copy of the parameters (AdamW updates them in place) and
 * writes them back into the model after each step, with the model's own checks. Weight decay
 * applies to the linear maps' weights only; embeddings, biases and LayerNorm gains and biases
 * are exempt (GPT-2's and minGPT's recipe).
 *
 * Memory: the parameters twice more (the copy and the gradients) plus AdamW's two moments,
 * and one sequence's tape at a time (model_gradient). Time per step: about 3 forwards per
 * sequence. The same model, batch and options give the same bits on any thread count.
 */
template <class Attention>
  requires differentiable_attention<Attention>
class trainer {
 public:
  using T = typename Attention::scalar_type;
  using model_type = transformer_model<Attention>;
  using pass = model_gradient<Attention>;

  /**
   * @param model trained in place; it must outlive the trainer and keep its shape.
   * @throws performer::invalid_argument on bad options (adamw) or a model without parameters.
   */
  trainer(model_type& model, const adamw_options& options)
      : model_(model), optimizer_(options) {
    params_ = model.parameters();
    grads_ = pass::zero_gradients(model);
    for (index_t l = 0; l < model.stack().layers(); ++l) {
      blocks_.push_back(model.stack().layer(l).parameters());
    }
    final_gain_ = model.stack().final_norm_gain();
    final_bias_ = model.stack().final_norm_bias();
    visit(params_, blocks_, final_gain_, final_bias_,
          [&](const std::string& name, auto& tensor, decay_policy decay) {
            optimizer_.add(name, tensor, decay);
          });
    visit(grads_.model, grads_.blocks, grads_.final_gain, grads_.final_bias,
          [&](const std::string&, auto& tensor, decay_policy) { gradient_views_.emplace_back(tensor); });
  }

  trainer(const trainer&) = delete;
  trainer& operator=(const trainer&) = delete;

  /**
   * @brief One optimiser step over a batch: inputs[b] are sequence b's token ids, targets[b]
   * the ids to predict at each position (-1: not counted; for a causal language model the
   * input shifted by one, for a masked-LM the originals of the masked positions).
   * @return the batch's mean cross-entropy (nats) before the update.
   * @throws performer::invalid_argument on an empty batch, inputs and targets of different
   * counts or lengths, no counted target in the batch, or what model_gradient, cross_entropy
   * and adamw throw (a non-finite gradient names its tensor); the model is unchanged then.
   */
  double step(std::span<const std::vector<std::int64_t>> inputs,
              std::span<const std::vector<std::int64_t>> targets);

  /// The model being trained.
  [[nodiscard]] const model_type& model() const noexcept { return model_; }
  [[nodiscard]] adamw<T>& optimizer() noexcept { return optimizer_; }
  [[nodiscard]] const adamw<T>& optimizer() const noexcept { return optimizer_; }
  /// The global gradient norm of the last step, before clipping.
  [[nodiscard]] double last_gradient_norm() const noexcept { return last_norm_; }

 private:
  /// Calls f(name, tensor, decay) on every non-empty tensor, in one fixed order.
  template <class F>
  static void visit(model_parameters<T>& m, std::vector<block_parameters<T>>& blocks,
                    row_vector<T>& gain, row_vector<T>& bias, F&& f) {
    const auto put = [&](const std::string& name, auto& tensor, decay_policy decay) {
      if (tensor.size() > 0) f(name, tensor, decay);
    };
    put("token_embedding", m.token_embedding, decay_policy::exempt);
    put("position_embedding", m.position_embedding, decay_policy::exempt);
    put("w_out", m.w_out, decay_policy::decay);
    put("b_out", m.b_out, decay_policy::exempt);
    for (std::size_t l = 0; l < blocks.size(); ++l) {
      const std::string layer = "layers." + std::to_string(l) + ".";
      for_each_tensor(blocks[l], [&](const char* name, auto& tensor) {
        // The linear maps' weights (the matrices) decay; biases and LayerNorm's do not.
        constexpr bool weight = std::remove_reference_t<decltype(tensor)>::RowsAtCompileTime != 1;
        put(layer + name, tensor, weight ? decay_policy::decay : decay_policy::exempt);
      });
    }
    put("final_norm_gain", gain, decay_policy::exempt);
    put("final_norm_bias", bias, decay_policy::exempt);
  }

  static void zero(model_gradients<T>& g) {
    visit(g.model, g.blocks, g.final_gain, g.final_bias,
          [](const std::string&, auto& tensor, decay_policy) { tensor.setZero(); });
  }

  model_type& model_;
  adamw<T> optimizer_;
  model_parameters<T> params_;
  std::vector<block_parameters<T>> blocks_;
  row_vector<T> final_gain_, final_bias_;
  model_gradients<T> grads_;
  std::vector<const_matrix_ref<T>> gradient_views_;
  typename pass::tape_type tape_;
  typename pass::workspace_type ws_;
  row_matrix<T> logits_;
  std::vector<double> counted_;  // each sequence's counted targets, in the current step
  double last_norm_ = 0;
};

template <class Attention>
  requires differentiable_attention<Attention>
double trainer<Attention>::step(std::span<const std::vector<std::int64_t>> inputs,
                                std::span<const std::vector<std::int64_t>> targets) {
  constexpr const char* who = "trainer::step";
  PERFORMER_PRECONDITION(!inputs.empty() && inputs.size() == targets.size(), who, ": ",
                         inputs.size(), " input sequences and ", targets.size(),
                         " target sequences; expected the same positive number");
  counted_.assign(inputs.size(), 0.0);
  double total = 0;
  for (std::size_t b = 0; b < inputs.size(); ++b) {
    PERFORMER_PRECONDITION(inputs[b].size() == targets[b].size() && !inputs[b].empty(), who,
                           ": sequence ", b, " has ", inputs[b].size(), " inputs and ",
                           targets[b].size(), " targets");
    for (const std::int64_t t : targets[b]) counted_[b] += t == -1 ? 0.0 : 1.0;
    total += counted_[b];
  }
  PERFORMER_PRECONDITION(total > 0, who, ": no target in the batch is counted (all are -1)");
  zero(grads_);
  double loss = 0;
  const bool causal = model_.config().block.causal;
  for (std::size_t b = 0; b < inputs.size(); ++b) {
    const auto n = static_cast<index_t>(inputs[b].size());
    logits_.resize(n, model_.config().vocab);
    pass::forward(model_, inputs[b], logits_, {}, causal, tape_, ws_);
    const double counted = counted_[b];
    if (counted == 0) continue;
    // cross_entropy averages over this sequence's targets; rescale to the batch's mean.
    loss += cross_entropy<T>(logits_, targets[b], logits_) * counted / total;
    logits_ *= static_cast<T>(counted / total);
    pass::backward(model_, tape_, logits_, grads_, ws_);
  }
  last_norm_ = optimizer_.step(gradient_views_);
  model_.set_parameters(params_);
  for (index_t l = 0; l < model_.stack().layers(); ++l) {
    model_.stack().layer(l).set_parameters(blocks_[static_cast<std::size_t>(l)]);
  }
  model_.stack().set_final_norm(final_gain_, final_bias_);
  return loss;
}

}  // namespace performer
