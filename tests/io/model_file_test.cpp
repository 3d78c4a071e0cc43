// save_model / load_model: for every storable mechanism, float and double, and the config
// variants (causal, rotary, post-LN, ReLU, tied head, learned positions), a saved and loaded
// model gives the original's logits bit for bit; load_any_model picks the mechanism from the
// file; BF16 files round every weight to bfloat16 and no further; the file holds exactly the
// names, shapes and metadata of docs/model_format.md.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <set>
#include <string>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

#include <performer/io/model_file.hpp>
#include <performer/testing/expect_invalid.hpp>
#include <performer/testing/helpers.hpp>

#include "io/models.hpp"
#include "io/support.hpp"

namespace performer::test {
// Named as well as anonymous: the unity build compiles several test files as one.
namespace io_model_file_test {
namespace {

using namespace io_support;
using conformance::same_bits;

template <class T>
struct ModelFile : ::testing::Test {};
using scalars = ::testing::Types<float, double>;
TYPED_TEST_SUITE(ModelFile, scalars);

/// Saves `m` in its own scalar's type, loads it as the same mechanism, compares the logits'
/// bits, and returns the loaded model.
template <class A>
transformer_model<A> round_trip(const transformer_model<A>& m, const temp_dir& dir,
                                const char* what) {
  const auto path = dir.file("model.safetensors");
  io::save_model(m, path);
  auto loaded = io::load_model<A>(path);
  EXPECT_TRUE(same_bits(loaded.forward(tokens), m.forward(tokens))) << what;
  return loaded;
}

TYPED_TEST(ModelFile, EveryMechanismAndVariantBitForBit) {
  using T = TypeParam;
  const temp_dir dir;
  for (const int variant : {0, 1, 2}) {
    SCOPED_TRACE(::testing::Message() << "variant " << variant);
    round_trip(softmax_model<T>(variant, 1), dir, "softmax");
    round_trip(tiled_model<T>(variant, 2), dir, "tiled softmax");
    const auto favor = round_trip(favor_model<T>(variant, 3), dir, "favor");
    round_trip(lsh_model<T>(variant, 4, /*shared_qk=*/true), dir, "lsh shared-QK");
    const auto lsh = round_trip(lsh_model<T>(variant, 5, /*shared_qk=*/false), dir, "lsh");
    EXPECT_EQ(lsh.stack().layer(1).attention().options().buckets, 4);
    EXPECT_EQ(lsh.stack().layer(1).attention().options().chunk, 2);
    EXPECT_FALSE(lsh.stack().layer(1).attention().options().shared_qk);
    EXPECT_EQ(favor.stack().layer(0).attention().projection().features(), 12);
  }
}

TYPED_TEST(ModelFile, SavedAgainGivesTheSameBytes) {
  using T = TypeParam;
  const temp_dir dir;
  const auto m = favor_model<T>(2, 6);
  io::save_model(m, dir.file("a.safetensors"));
  io::save_model(io::load_model<favor_attention<T>>(dir.file("a.safetensors")), dir.file("b.safetensors"));
  EXPECT_EQ(read_bytes(dir.file("a.safetensors")), read_bytes(dir.file("b.safetensors")));
}

TYPED_TEST(ModelFile, LoadAnyModelChoosesTheMechanism) {
  using T = TypeParam;
  const temp_dir dir;
  const auto path = dir.file("any.safetensors");
  const auto check = [&](const auto& m, std::size_t index) {
    io::save_model(m, path);
    const io::any_model<T> any = io::load_any_model<T>(path);
    EXPECT_EQ(any.index(), index);
    std::visit([&](const auto& loaded) { EXPECT_TRUE(same_bits(loaded.forward(tokens), m.forward(tokens))); },
               any);
  };
  check(softmax_model<T>(1, 7), 0);
  check(favor_model<T>(0, 8), 1);
  check(lsh_model<T>(2, 9), 2);
  // A tiled model is saved as exact attention; it loads as either exact mechanism.
  const auto tiled = tiled_model<T>(0, 10);
  io::save_model(tiled, path);
  EXPECT_EQ(io::load_any_model<T>(path).index(), 0u);
  const auto exact = io::load_model<softmax_attention<T>>(path);
  EXPECT_LE(conformance::relative_difference(exact.forward(tokens), tiled.forward(tokens)),
            (std::is_same_v<T, float> ? 1e-5 : 1e-12));
}

TEST(ModelFile, Bf16FileRoundsEachWeightOnce) {
  const temp_dir dir;
  const auto m = softmax_model<float>(2, 11);
  io::save_model(m, dir.file("bf16.safetensors"), io::dtype::bf16);
  const io::safetensors_file f(dir.file("bf16.safetensors"));
  for (const auto& t : f.tensors()) EXPECT_EQ(t.type, io::dtype::bf16) << t.name;
  const auto loaded = io::load_model<softmax_attention<float>>(dir.file("bf16.safetensors"));
  const auto within = [](const auto& a, const auto& b, const char* name) {
    for (index_t i = 0; i < a.size(); ++i) {
      EXPECT_LE(std::abs(a.data()[i] - b.data()[i]), std::ldexp(std::abs(b.data()[i]), -8)) << name;
    }
  };
  within(loaded.parameters().token_embedding, m.parameters().token_embedding, "token_embedding");
  within(loaded.parameters().w_out, m.parameters().w_out, "w_out");
  within(loaded.stack().layer(2).parameters().w_ff2, m.stack().layer(2).parameters().w_ff2, "w_ff2");
  within(loaded.stack().final_norm_gain(), m.stack().final_norm_gain(), "final gain");
  EXPECT_LE(conformance::relative_difference(loaded.forward(tokens), m.forward(tokens)), 0.05);
  // BF16 values are exact in float: saving the loaded model as BF16 again changes no byte.
  io::save_model(loaded, dir.file("again.safetensors"), io::dtype::bf16);
  EXPECT_EQ(read_bytes(dir.file("again.safetensors")), read_bytes(dir.file("bf16.safetensors")));
}

TEST(ModelFile, FloatFileIntoADoubleModelAndBack) {
  const temp_dir dir;
  const auto m = favor_model<float>(1, 12);
  io::save_model(m, dir.file("f32.safetensors"));
  const auto wide = io::load_model<favor_attention<double>>(dir.file("f32.safetensors"));
  EXPECT_TRUE(same_bits(wide.stack().layer(1).parameters().w_q,
                        m.stack().layer(1).parameters().w_q.cast<double>()));
  EXPECT_LE(conformance::relative_difference(wide.forward(tokens), m.forward(tokens).cast<double>()),
            1e-5);
  // A double model saved as F32 loads as float with each weight rounded once.
  io::save_model(wide, dir.file("narrow.safetensors"), io::dtype::f32);
  const auto narrow = io::load_model<favor_attention<float>>(dir.file("narrow.safetensors"));
  EXPECT_TRUE(same_bits(narrow.forward(tokens), m.forward(tokens)));
}

TEST(ModelFile, ReadModelConfig) {
  const temp_dir dir;
  const auto path = dir.file("c.safetensors");
  io::save_model(lsh_model<float>(1, 13, false, 8), path);
  const io::model_description d = io::read_model_config(path);
  const model_config expected = small_model(1);
  EXPECT_EQ(d.config.vocab, expected.vocab);
  EXPECT_EQ(d.config.layers, expected.layers);
  EXPECT_EQ(d.config.max_positions, expected.max_positions);
  EXPECT_EQ(d.config.tie_output, expected.tie_output);
  EXPECT_EQ(d.config.block.d_model, expected.block.d_model);
  EXPECT_EQ(d.config.block.heads, expected.block.heads);
  EXPECT_EQ(d.config.block.d_ff, expected.block.d_ff);
  EXPECT_EQ(d.config.block.causal, expected.block.causal);
  EXPECT_EQ(d.config.block.norm, expected.block.norm);
  EXPECT_EQ(d.config.block.ffn_activation, expected.block.ffn_activation);
  EXPECT_EQ(d.config.block.layer_norm_eps, expected.block.layer_norm_eps);
  EXPECT_EQ(d.config.block.rotary, expected.block.rotary);
  EXPECT_EQ(d.config.block.rotary_base, expected.block.rotary_base);
  EXPECT_EQ(d.config.block.rotary_pairs, expected.block.rotary_pairs);
  EXPECT_EQ(d.attention.kind, "lsh");
  EXPECT_EQ(d.attention.rounds, 3);
  EXPECT_EQ(d.attention.buckets, 8);
  EXPECT_EQ(d.attention.chunk, 2);
  EXPECT_FALSE(d.attention.shared_qk);
  // d_ff = 0 (4 d_model) is stored explicitly.
  auto cfg = small_model(0);
  cfg.block.d_ff = 0;
  io::save_model(transformer_model<softmax_attention<float>>(cfg, softmax_attention<float>{}), path);
  EXPECT_EQ(io::read_model_config(path).config.block.d_ff, 64);
}

// The caller's metadata entries are stored beside the format's and read back; the format's own
// keys are refused.
TEST(ModelFile, CallerMetadataIsStoredAndTheFormatsKeysAreRefused) {
  const temp_dir dir;
  const auto path = dir.file("meta.safetensors");
  const transformer_model<softmax_attention<float>> m(small_model(0), softmax_attention<float>{}, 3);
  io::save_model(m, path, io::dtype::f32, {{"alphabet", "ACDEFGHIKLMNP"}, {"note", "a \"quoted\" note"}});
  const io::safetensors_file f(path);
  EXPECT_EQ(f.metadata().at("alphabet"), "ACDEFGHIKLMNP");
  EXPECT_EQ(f.metadata().at("note"), "a \"quoted\" note");
  EXPECT_EQ(f.metadata().at("format_version"), io::model_format_version);
  const auto back = io::load_model<softmax_attention<float>>(path);
  const std::vector<std::int64_t> tokens{1, 5, 12};
  EXPECT_EQ(back.forward(tokens), m.forward(tokens));
  for (const char* key : {"format", "format_version", "config"}) {
    PERFORMER_EXPECT_INVALID("save_model", std::string("the metadata key \"") + key + "\" is the format's own",
                             io::save_model(m, path, io::dtype::f32, {{key, "x"}}));
  }
}

// The names, shapes and metadata keys of docs/model_format.md, written out for one small model.
TEST(ModelFile, HoldsTheDocumentedNamesShapesAndKeys) {
  const temp_dir dir;
  const auto path = dir.file("names.safetensors");
  auto cfg = small_model(2);
  cfg.layers = 1;
  transformer_model<favor_attention<float>> m(cfg, favor_attention<float>(8, 12));
  io::save_model(m, path);
  const io::safetensors_file f(path);
  using shape = std::vector<std::int64_t>;
  const std::vector<std::pair<std::string, shape>> expected{
      {"tok_embed.weight", {13, 16}}, {"pos_embed.weight", {20, 16}},
      {"layers.0.norm1.weight", {16}}, {"layers.0.norm1.bias", {16}},
      {"layers.0.attn.q_proj.weight", {16, 16}}, {"layers.0.attn.q_proj.bias", {16}},
      {"layers.0.attn.k_proj.weight", {16, 16}}, {"layers.0.attn.k_proj.bias", {16}},
      {"layers.0.attn.v_proj.weight", {16, 16}}, {"layers.0.attn.v_proj.bias", {16}},
      {"layers.0.attn.o_proj.weight", {16, 16}}, {"layers.0.attn.o_proj.bias", {16}},
      {"layers.0.norm2.weight", {16}}, {"layers.0.norm2.bias", {16}},
      {"layers.0.ffn.fc1.weight", {24, 16}}, {"layers.0.ffn.fc1.bias", {24}},
      {"layers.0.ffn.fc2.weight", {16, 24}}, {"layers.0.ffn.fc2.bias", {16}},
      {"layers.0.attn.projection", {12, 8}}, {"norm.weight", {16}}, {"norm.bias", {16}},
      {"head.weight", {13, 16}}, {"head.bias", {13}}};
  EXPECT_EQ(f.tensors().size(), expected.size());
  for (const auto& [name, s] : expected) {
    ASSERT_TRUE(f.contains(name)) << name;
    EXPECT_EQ(f.info(name).shape, s) << name;
  }
  // nn.Linear layout: [out, in], the transpose of the library's w_ff1 (d_model x d_ff).
  EXPECT_TRUE(same_bits(f.read<float>("layers.0.ffn.fc1.weight"),
                        row_matrix<float>(m.stack().layer(0).parameters().w_ff1.transpose())));
  EXPECT_TRUE(same_bits(f.read<float>("layers.0.attn.projection"),
                        m.stack().layer(0).attention().projection().matrix()));

  EXPECT_EQ(f.metadata().at("format"), "performer-model");
  EXPECT_EQ(f.metadata().at("format_version"), "1");
  const auto config = nlohmann::json::parse(f.metadata().at("config"));
  std::set<std::string> keys;
  for (const auto& [k, v] : config.items()) keys.insert(k);
  EXPECT_EQ(keys, (std::set<std::string>{"vocab", "layers", "d_model", "heads", "d_ff", "causal", "norm",
                                         "activation", "layer_norm_eps", "rotary", "rotary_base",
                                         "rotary_pairs", "max_positions", "tie_output", "attention"}));
  EXPECT_EQ(config["attention"],
            nlohmann::json::parse(R"({"kind": "favor", "features": 12, "feature_map": "positive"})"));
  EXPECT_EQ(config["norm"], "pre");
  EXPECT_EQ(config["activation"], "gelu");
  EXPECT_EQ(config["rotary_pairs"], "half");
}

TEST(ModelFile, LshRotationsAbove32BucketsWhenSet) {
  const temp_dir dir;
  auto m = lsh_model<double>(0, 14, true, 64);
  for (index_t l = 0; l < m.stack().layers(); ++l) {
    auto& h = m.stack().layer(l).attention().hash_family();
    for (index_t r = 0; r < h.rounds(); ++r) {
      h.set_rotation(r, conformance::random_matrix<double>(8, 32, 100 + static_cast<std::uint64_t>(l * 10 + r)));
    }
  }
  round_trip(m, dir, "lsh, 64 buckets, set rotations");
}

}  // namespace
}  // namespace io_model_file_test
}  // namespace performer::test
