// load_model on files whose tensors disagree with their config: missing, misshapen, of a
// non-real type, unexpected under the format's names, non-finite, or beyond float's range;
// and save_model on models the format cannot store. Each is a performer::invalid_argument
// naming the function (or, for a value, the reader), the file, the tensor and the problem.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <limits>
#include <string>

#include <nlohmann/json.hpp>

#include <performer/io/model_file.hpp>
#include <performer/testing/expect_invalid.hpp>

#include "io/models.hpp"
#include "io/support.hpp"

namespace performer::test {
// Named as well as anonymous: the unity build compiles several test files as one.
namespace io_model_file_tensors_bad_input_test {
namespace {

using namespace io_support;
using nlohmann::json;

constexpr const char* load = "load_model";

/// Overwrites element `i` of tensor `name` (stored as V) in the file at `path`.
template <class V>
void patch(const std::filesystem::path& path, const std::string& name, std::size_t i, V value) {
  bytes raw = read_bytes(path);
  std::uint64_t n = 0;
  std::memcpy(&n, raw.data(), 8);
  const std::size_t at = 8 + n + io::safetensors_file(path).info(name).begin + i * sizeof(V);
  std::memcpy(raw.data() + at, &value, sizeof(V));
  write_bytes(path, raw);
}

TEST(ModelFileBadInput, MissingMisshapenOrMistypedTensors) {
  const temp_dir dir;
  const auto good = dir.file("good.safetensors");
  const auto bad = dir.file("bad.safetensors");
  io::save_model(softmax_model<double>(0, 1), good);  // F64: 8-byte elements, as I64's
  const auto fails = [&](std::string_view fragment, int line) {
    conformance::expect_invalid([&] { static_cast<void>(io::load_model<softmax_attention<double>>(bad)); },
                                load, {std::string_view(bad.string()), fragment}, __FILE__, line);
  };
  rewrite(good, bad, [](json& h, json&) { h["spare.fc1.bias"] = h["layers.1.ffn.fc1.bias"]; h.erase("layers.1.ffn.fc1.bias"); });
  fails("no tensor 'layers.1.ffn.fc1.bias' (expected shape [24])", __LINE__);
  rewrite(good, bad, [](json& h, json&) { h["x"] = h["tok_embed.weight"]; h.erase("tok_embed.weight"); });
  fails("no tensor 'tok_embed.weight' (expected shape [13, 16])", __LINE__);
  rewrite(good, bad, [](json&, json& c) { c["d_ff"] = 12; });
  fails("tensor 'layers.0.ffn.fc1.weight' has shape [24, 16], expected [12, 16]", __LINE__);
  rewrite(good, bad, [](json& h, json&) { h["head.bias"]["shape"] = {13, 1}; });
  fails("tensor 'head.bias' has shape [13, 1], expected [13]", __LINE__);
  rewrite(good, bad, [](json&, json& c) { c["vocab"] = 12; });
  fails("tensor 'tok_embed.weight' has shape [13, 16], expected [12, 16]", __LINE__);
  rewrite(good, bad, [](json& h, json&) { h["head.bias"]["dtype"] = "I64"; });
  fails("tensor 'head.bias' is I64; model tensors are F32, F64 or BF16", __LINE__);
  // The format's names that this config does not have: a tied head, positions, a projection.
  rewrite(good, bad, [](json&, json& c) { c["tie_output"] = true; });
  fails("unexpected tensor 'head.weight' for this config (softmax attention, 2 layers, tied head, no learned positions)", __LINE__);
  const json empty = {{"dtype", "F64"}, {"shape", {0, 8}}, {"data_offsets", {0, 0}}};
  rewrite(good, bad, [&](json& h, json&) { h["layers.0.attn.projection"] = empty; });
  fails("unexpected tensor 'layers.0.attn.projection'", __LINE__);
  rewrite(good, bad, [&](json& h, json&) { h["pos_embed.weight"] = empty; });
  fails("unexpected tensor 'pos_embed.weight'", __LINE__);
  rewrite(good, bad, [](json&, json& c) { c["layers"] = 1; });
  fails("unexpected tensor 'layers.1.", __LINE__);
  // Names outside the format's are ignored (a file may carry test inputs).
  rewrite(good, bad, [&](json& h, json&) { h["inputs.ids"] = empty; });
  EXPECT_EQ(io::load_model<softmax_attention<double>>(bad).config().layers, 2);
}

TEST(ModelFileBadInput, NonFiniteOrOutOfRangeValues) {
  const temp_dir dir;
  const auto path = dir.file("values.safetensors");
  const char* read = "safetensors_file::read";
  io::save_model(favor_model<float>(2, 3), path);
  patch(path, "layers.1.attn.v_proj.bias", 2, std::numeric_limits<float>::quiet_NaN());
  PERFORMER_EXPECT_INVALID(read, "tensor 'layers.1.attn.v_proj.bias' holds a NaN or an infinity (element 2)",
                           io::load_model<favor_attention<float>>(path));
  io::save_model(favor_model<float>(2, 3), path);
  patch(path, "layers.2.attn.projection", 5, std::numeric_limits<float>::infinity());
  PERFORMER_EXPECT_INVALID(read, "tensor 'layers.2.attn.projection' holds a NaN or an infinity (element 5)",
                           io::load_model<favor_attention<double>>(path));
  io::save_model(favor_model<double>(0, 4), path);
  patch(path, "tok_embed.weight", 7, 1e300);
  PERFORMER_EXPECT_INVALID(read, "tensor 'tok_embed.weight' holds 1e+300 (element 7), beyond the range of float",
                           io::load_model<favor_attention<float>>(path));
  EXPECT_EQ(io::load_model<favor_attention<double>>(path).parameters().token_embedding(0, 7), 1e300);
}

TEST(ModelFileBadInput, ModelsTheFormatCannotStore) {
  const temp_dir dir;
  const auto path = dir.file("s.safetensors");
  const char* save = "save_model";
  PERFORMER_EXPECT_INVALID(save, "set lsh_options::buckets to an even count in [2, 128] (got 0)",
                           io::save_model(lsh_model<float>(0, 5, true, 0), path));
  PERFORMER_EXPECT_INVALID(save, "with 64 buckets, drawn LSH rotations are hashed as two factorised rotations",
                           io::save_model(lsh_model<float>(0, 6, true, 64), path));
  transformer_model<favor_attention<float>> mixed(
      small_model(0), [](index_t l) { return favor_attention<float>(8, l == 0 ? 8 : 16); });
  PERFORMER_EXPECT_INVALID(save, "layer 1's mechanism is configured unlike layer 0's", io::save_model(mixed, path));
  PERFORMER_EXPECT_INVALID("safetensors_writer", "cannot store float or double tensors as I64",
                           io::save_model(softmax_model<float>(0, 7), path, io::dtype::i64));
  PERFORMER_EXPECT_INVALID("safetensors_writer::write", "cannot open",
                           io::save_model(softmax_model<float>(0, 7), dir.file("missing/dir/m.safetensors")));
  EXPECT_FALSE(std::filesystem::exists(path));
}

}  // namespace
}  // namespace io_model_file_tensors_bad_input_test
}  // namespace performer::test
