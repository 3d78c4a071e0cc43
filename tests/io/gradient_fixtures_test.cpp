// The gradient fixtures (tests/io/fixtures/NAME.gradients.safetensors, written by
// tools/reference/make_fixtures.py): PyTorch autograd's gradients of
// L = sum(cotangent .* logits) for the six reference models, every parameter's under its PyTorch
// name, stored as a model file of the same layout (so the loader's name mapping, itself checked
// against PyTorch's forward, maps the gradients too). model_gradient must reproduce each tensor
// to 1e-10 in double and 1e-5 in float, relative to the largest gradient entry of the model.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <cstdint>
#include <filesystem>
#include <string>
#include <type_traits>
#include <vector>

#include <performer/favor/favor_gradient.hpp>
#include <performer/io/model_file.hpp>
#include <performer/io/safetensors.hpp>

#include "io/support.hpp"
#include <performer/lsh/lsh_gradient.hpp>
#include <performer/nn/model_gradient.hpp>
#include <performer/softmax/softmax_gradient.hpp>

namespace performer::test {
namespace io_gradient_fixtures_test {
namespace {

using io_support::fixtures_dir;

std::filesystem::path file(const std::string& name, const char* suffix) {
  return fixtures_dir() / (name + suffix);
}

/// Every gradient tensor of `ours` beside the same one of `theirs`, named.
template <class T, class F>
void pair_up(const model_gradients<T>& ours, const auto& theirs, F&& f) {
  const auto& m = theirs.parameters();
  f("token_embedding", ours.model.token_embedding, m.token_embedding);
  f("position_embedding", ours.model.position_embedding, m.position_embedding);
  f("w_out", ours.model.w_out, m.w_out);
  f("b_out", ours.model.b_out, m.b_out);
  f("final_norm_gain", ours.final_gain, theirs.stack().final_norm_gain());
  f("final_norm_bias", ours.final_bias, theirs.stack().final_norm_bias());
  for (std::size_t l = 0; l < ours.blocks.size(); ++l) {
    const auto& g = ours.blocks[l];
    const auto& p = theirs.stack().layer(static_cast<index_t>(l)).parameters();
    const std::string at = "layer " + std::to_string(l) + " ";
    f(at + "w_q", g.w_q, p.w_q);
    f(at + "w_k", g.w_k, p.w_k);
    f(at + "w_v", g.w_v, p.w_v);
    f(at + "w_o", g.w_o, p.w_o);
    f(at + "b_q", g.b_q, p.b_q);
    f(at + "b_k", g.b_k, p.b_k);
    f(at + "b_v", g.b_v, p.b_v);
    f(at + "b_o", g.b_o, p.b_o);
    f(at + "norm1_gain", g.norm1_gain, p.norm1_gain);
    f(at + "norm1_bias", g.norm1_bias, p.norm1_bias);
    f(at + "norm2_gain", g.norm2_gain, p.norm2_gain);
    f(at + "norm2_bias", g.norm2_bias, p.norm2_bias);
    f(at + "w_ff1", g.w_ff1, p.w_ff1);
    f(at + "b_ff1", g.b_ff1, p.b_ff1);
    f(at + "w_ff2", g.w_ff2, p.w_ff2);
    f(at + "b_ff2", g.b_ff2, p.b_ff2);
  }
}

template <class A>
void check(const std::string& name, double tolerance) {
  using T = typename A::scalar_type;
  SCOPED_TRACE(name);
  const auto model = io::load_model<A>(file(name, ".safetensors"));
  const io::safetensors_file expected(file(name, ".expected.safetensors"));
  const std::vector<std::int64_t> tokens = expected.read_int64("tokens");
  const row_matrix<T> cotangent = expected.read<double>("cotangent").template cast<T>();

  using pass = model_gradient<A>;
  typename pass::tape_type tape;
  typename pass::workspace_type ws;
  row_matrix<T> logits(static_cast<index_t>(tokens.size()), model.config().vocab);
  pass::forward(model, tokens, logits, {}, model.config().block.causal, tape, ws);
  auto grads = pass::zero_gradients(model);
  pass::backward(model, tape, cotangent, grads, ws);

  // PyTorch's gradients, read as a double model of the same mechanism.
  using reference_attention = std::conditional_t<
      std::is_same_v<A, softmax_attention<T>>, softmax_attention<double>,
      std::conditional_t<std::is_same_v<A, favor_attention<T>>, favor_attention<double>,
                         lsh_attention<double>>>;
  const auto theirs = io::load_model<reference_attention>(file(name, ".gradients.safetensors"));
  double scale = 0;
  pair_up(grads, theirs, [&](const std::string&, const auto&, const auto& want) {
    if (want.size() > 0) scale = std::max(scale, want.cwiseAbs().maxCoeff());
  });
  ASSERT_GT(scale, 0.0);
  int compared = 0;
  double worst = 0;
  pair_up(grads, theirs, [&](const std::string& tensor, const auto& got, const auto& want) {
    ASSERT_EQ(got.rows(), want.rows()) << tensor;
    ASSERT_EQ(got.cols(), want.cols()) << tensor;
    if (want.size() == 0) return;
    const double error = (got.template cast<double>() - want).cwiseAbs().maxCoeff() / scale;
    EXPECT_LE(error, tolerance) << tensor;
    worst = std::max(worst, error);
    ++compared;
  });
  EXPECT_GE(compared, 2 * 16 + 4);  // every block tensor and the model's own
  std::printf("[gradients] %s (%s): %d tensors, worst error %.2e of the largest gradient %.3f\n",
              name.c_str(), sizeof(T) == 4 ? "float" : "double", compared, worst, scale);
}

const char* const names[] = {"exact_bidirectional", "exact_causal", "favor_bidirectional",
                             "favor_causal", "lsh_bidirectional", "lsh_causal"};

template <class T>
void check_all(double tolerance) {
  for (const char* name : names) {
    const std::string n(name);
    if (n.starts_with("exact")) check<softmax_attention<T>>(n, tolerance);
    if (n.starts_with("favor")) check<favor_attention<T>>(n, tolerance);
    if (n.starts_with("lsh")) check<lsh_attention<T>>(n, tolerance);
  }
}

TEST(GradientFixtures, DoubleMatchesPyTorchAutograd) { check_all<double>(1e-10); }

TEST(GradientFixtures, FloatMatchesPyTorchAutograd) { check_all<float>(1e-5); }

}  // namespace
}  // namespace io_gradient_fixtures_test
}  // namespace performer::test
