// Covers performer/nn/model_gradient.hpp: the training forward against the model's own, and the
// gradient of every model-level parameter (embeddings, output head, final LayerNorm) and of a
// block's weights against central finite differences in double, with a tied and an untied head.
#include <gtest/gtest.h>

#include <cstdint>
#include <functional>
#include <vector>

#include <performer/favor/favor_gradient.hpp>
#include <performer/nn/model_gradient.hpp>
#include <performer/softmax/softmax_gradient.hpp>
#include <performer/testing/expect_invalid.hpp>

#include "support/gradient_check.hpp"

namespace nn_model_gradient_test {
namespace {

using namespace performer;
using performer::test::gaussian_matrix;

model_config config(bool tied, bool causal) {
  model_config c;
  c.vocab = 6;
  c.layers = 2;
  c.max_positions = 9;
  c.tie_output = tied;
  c.block.d_model = 8;
  c.block.heads = 2;
  c.block.d_ff = 10;
  c.block.causal = causal;
  return c;
}

/// Central differences of L = sum(g .* logits) along every entry of `tensor` (a copy of one of
/// the model's parameters that `install` puts back into a model).
template <class Model, class Tensor>
row_matrix<double> differences(const Model& base, Tensor& tensor,
                               const std::function<void(Model&)>& install,
                               const std::vector<std::int64_t>& tokens,
                               const row_matrix<double>& g) {
  const double h = 1e-5;
  row_matrix<double> fd(tensor.rows(), tensor.cols());
  for (index_t i = 0; i < tensor.rows(); ++i) {
    for (index_t j = 0; j < tensor.cols(); ++j) {
      const double keep = tensor(i, j);
      double side[2];
      for (int s = 0; s < 2; ++s) {
        tensor(i, j) = keep + (s == 0 ? h : -h);
        Model m = base;
        install(m);
        side[s] = (m.forward(tokens).array() * g.array()).sum();
      }
      tensor(i, j) = keep;
      fd(i, j) = (side[0] - side[1]) / (2 * h);
    }
  }
  return fd;
}

template <class A>
void check_model(const A& attention, bool tied, bool causal) {
  SCOPED_TRACE(testing::Message() << "tied " << tied << ", causal " << causal);
  using pass = model_gradient<A>;
  using model_type = transformer_model<A>;
  model_type model(config(tied, causal), attention, 5);
  const row_vector<double> stack_gain = (gaussian_matrix(1, 8, 40, 0.2).array() + 1.0).matrix();
  model.stack().set_final_norm(stack_gain, row_vector<double>(gaussian_matrix(1, 8, 41, 0.1)));
  auto mp = model.parameters();
  mp.b_out = gaussian_matrix(1, 6, 42, 0.1);
  model.set_parameters(mp);
  const std::vector<std::int64_t> tokens{3, 1, 4, 1, 5, 2, 0};
  const row_matrix<double> g = gaussian_matrix(7, 6, 43);

  typename pass::tape_type tape;
  typename pass::workspace_type ws;
  row_matrix<double> logits(7, 6);
  pass::forward(model, tokens, logits, {}, causal, tape, ws);
  EXPECT_LT(test::relative_error(logits, model.forward(tokens)), 1e-13);
  auto grads = pass::zero_gradients(model);
  pass::backward(model, tape, g, grads, ws);

  auto p = model.parameters();
  const auto set_model = [&](model_type& m) { m.set_parameters(p); };
  const auto expect_close = [](const auto& got, const row_matrix<double>& want, const char* name) {
    EXPECT_LT(test::relative_error(row_matrix<double>(got), want, 1e-2), 1e-7) << name;
  };
  expect_close(grads.model.token_embedding,
               differences<model_type>(model, p.token_embedding, set_model, tokens, g),
               "token_embedding");
  expect_close(grads.model.position_embedding,
               differences<model_type>(model, p.position_embedding, set_model, tokens, g),
               "position_embedding");
  expect_close(grads.model.b_out, differences<model_type>(model, p.b_out, set_model, tokens, g),
               "b_out");
  if (!tied) {
    expect_close(grads.model.w_out, differences<model_type>(model, p.w_out, set_model, tokens, g),
                 "w_out");
  }
  row_vector<double> gain = model.stack().final_norm_gain(), bias = model.stack().final_norm_bias();
  const auto set_norm = [&](model_type& m) { m.stack().set_final_norm(gain, bias); };
  expect_close(grads.final_gain, differences<model_type>(model, gain, set_norm, tokens, g),
               "final_gain");
  expect_close(grads.final_bias, differences<model_type>(model, bias, set_norm, tokens, g),
               "final_bias");
  // The first block's query weights: its gradient has crossed the second block and the head.
  auto bp = model.stack().layer(0).parameters();
  const auto set_block = [&](model_type& m) { m.stack().layer(0).set_parameters(bp); };
  expect_close(grads.blocks[0].w_q, differences<model_type>(model, bp.w_q, set_block, tokens, g),
               "layer 0 w_q");
}

TEST(ModelGradient, ExactAttentionMatchesFiniteDifferences) {
  check_model(softmax_attention<double>{}, false, true);
  check_model(softmax_attention<double>{}, true, false);
}

TEST(ModelGradient, FavorAttentionMatchesFiniteDifferences) {
  const favor_attention<double> favor(4, 8, 3, {}, {}, {.block = 3, .chunk = 2, .backward_chunk = 2, .segments = 1});
  check_model(favor, true, true);
}

TEST(ModelGradient, BadArgumentsThrow) {
  using A = softmax_attention<double>;
  using pass = model_gradient<A>;
  const transformer_model<A> model(config(false, true), A{}, 5);
  const std::vector<std::int64_t> tokens{1, 2, 3};
  pass::tape_type tape;
  pass::workspace_type ws;
  row_matrix<double> logits(3, 6);
  auto grads = pass::zero_gradients(model);
  PERFORMER_EXPECT_INVALID("model_gradient::backward", "the tape is empty",
                           pass::backward(model, tape, logits, grads, ws));
  pass::forward(model, tokens, logits, {}, true, tape, ws);
  row_matrix<double> wide(3, 7);
  PERFORMER_EXPECT_INVALID("model_gradient::backward", "dlogits is 3x7, expected 3x6",
                           pass::backward(model, tape, wide, grads, ws));
  pass::gradients_type empty;
  PERFORMER_EXPECT_INVALID("model_gradient::backward", "not shaped like the parameters",
                           pass::backward(model, tape, logits, empty, ws));
  const std::vector<std::int64_t> bad{1, 6};
  row_matrix<double> two(2, 6);
  PERFORMER_EXPECT_INVALID("transformer_model::embed_tokens", "token 1 is 6, outside [0, 6)",
                           pass::forward(model, bad, two, {}, true, tape, ws));
}

}  // namespace
}  // namespace nn_model_gradient_test
