// The reference fixtures (tests/io/fixtures, written by tools/reference/make_fixtures.py): six
// tiny models covering every option of docs/model_format.md, stored as F32, each with a token
// sequence and the logits the independent PyTorch reference (tools/reference) computed for it in
// float64. Each model is loaded through io::load_model (and io::load_any_model) as a float and a
// double model, whose logits must match the reference's to 1e-5 (float) and 1e-10 (double)
// relative to the largest |logit|. Causal models are also run on every prefix of their tokens:
// row t of the logits must not change when the later tokens are absent (the logits a
// token-by-token decoder must reproduce).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <variant>
#include <vector>

#include <performer/io/model_file.hpp>
#include <performer/io/safetensors.hpp>

#include "io/support.hpp"

namespace performer::test {
// Named as well as anonymous: the unity build compiles several test files as one.
namespace io_reference_fixtures_test {
namespace {

using io_support::fixtures_dir;

struct fixture {
  const char* name;
  const char* kind;  // the file's attention.kind
  bool causal;
};

// What tools/reference/make_fixtures.py writes (see its FIXTURES table for the options each has).
constexpr fixture fixtures[] = {
    {"exact_bidirectional", "softmax", false}, {"exact_causal", "softmax", true},
    {"favor_bidirectional", "favor", false},   {"favor_causal", "favor", true},
    {"lsh_bidirectional", "lsh", false},       {"lsh_causal", "lsh", true},
};

std::filesystem::path model_path(const fixture& f) {
  return fixtures_dir() / (std::string(f.name) + ".safetensors");
}

struct expected_logits {
  std::vector<std::int64_t> tokens;
  row_matrix<double> logits;  // tokens x vocab
  double scale = 0;           // the largest |logit|
};

expected_logits read_expected(const fixture& f) {
  const io::safetensors_file file(fixtures_dir() / (std::string(f.name) + ".expected.safetensors"));
  expected_logits e{file.read_int64("tokens"), file.read<double>("logits")};
  e.scale = e.logits.cwiseAbs().maxCoeff();
  return e;
}

/// max |got - want| / max |want|.
template <class T>
double relative_error(const row_matrix<T>& got, const Eigen::Ref<const row_matrix<double>>& want,
                      double scale) {
  return (got.template cast<double>() - want).cwiseAbs().maxCoeff() / scale;
}

/// The model's logits for the fixture's tokens, and (causal) for every prefix of them.
template <class A>
void expect_reference_logits(const transformer_model<A>& model, const fixture& f,
                             const expected_logits& e, double tolerance) {
  using T = typename A::scalar_type;
  ASSERT_EQ(model.config().block.causal, f.causal);
  const auto n = static_cast<index_t>(e.tokens.size());
  ASSERT_EQ(e.logits.rows(), n);
  ASSERT_EQ(e.logits.cols(), model.config().vocab);
  const row_matrix<T> logits = model.forward(e.tokens);
  EXPECT_LE(relative_error(logits, e.logits, e.scale), tolerance);
  if (!f.causal) return;
  double worst = 0;
  for (index_t t = 1; t <= n; ++t) {
    const row_matrix<T> prefix =
        model.forward(std::span<const std::int64_t>(e.tokens.data(), static_cast<std::size_t>(t)));
    worst = std::max(worst, relative_error(prefix, e.logits.topRows(t), e.scale));
  }
  EXPECT_LE(worst, tolerance) << "prefixes of the causal sequence";
}

template <class T>
void check_fixture(const fixture& f, double tolerance) {
  SCOPED_TRACE(f.name);
  const io::model_description description = io::read_model_config(model_path(f));
  ASSERT_EQ(description.attention.kind, f.kind);
  const expected_logits e = read_expected(f);
  const std::string kind = f.kind;
  if (kind == "softmax") {
    expect_reference_logits(io::load_model<softmax_attention<T>>(model_path(f)), f, e, tolerance);
  } else if (kind == "favor") {
    expect_reference_logits(io::load_model<favor_attention<T>>(model_path(f)), f, e, tolerance);
  } else {
    expect_reference_logits(io::load_model<lsh_attention<T>>(model_path(f)), f, e, tolerance);
  }
  // The same through the loader that lets the file choose the mechanism.
  std::visit([&](const auto& model) {
    const row_matrix<T> logits = model.forward(e.tokens);
    EXPECT_LE(relative_error(logits, e.logits, e.scale), tolerance) << "load_any_model";
  }, io::load_any_model<T>(model_path(f)));
}

TEST(ReferenceFixtures, DoubleModelsMatchTheReference) {
  for (const fixture& f : fixtures) check_fixture<double>(f, 1e-10);
}

TEST(ReferenceFixtures, FloatModelsMatchTheReference) {
  for (const fixture& f : fixtures) check_fixture<float>(f, 1e-5);
}

}  // namespace
}  // namespace io_reference_fixtures_test
}  // namespace performer::test
