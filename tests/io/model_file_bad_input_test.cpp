// load_model, load_any_model, read_model_config and save_model on bad input: a file of another
// mechanism, config errors (missing keys, wrong JSON types, values out of range, inconsistent
// shapes), missing, misshapen, mistyped or unexpected tensors, non-finite and out-of-range
// values, and models the format cannot store. Each is a performer::invalid_argument naming the
// function, the file and the problem. Bad files are made from a good one by editing its header.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <functional>
#include <limits>
#include <string>
#include <tuple>

#include <nlohmann/json.hpp>

#include <performer/io/model_file.hpp>
#include <performer/testing/expect_invalid.hpp>

#include "io/models.hpp"
#include "io/support.hpp"

namespace performer::test {
// Named as well as anonymous: the unity build compiles several test files as one.
namespace io_model_file_bad_input_test {
namespace {

using namespace io_support;
using nlohmann::json;

/// A saved softmax model (variant 0: untied, no positions, 2 layers) and a path for edits.
struct files {
  temp_dir dir;
  std::filesystem::path good = dir.file("good.safetensors");
  std::filesystem::path bad = dir.file("bad.safetensors");
  files() { io::save_model(softmax_model<float>(0, 1), good); }
  void edit(const std::function<void(json&, json&)>& e) const { rewrite(good, bad, e); }
  void edit_config(const std::function<void(json&)>& e) const {
    rewrite(good, bad, [&](json&, json& c) { e(c); });
  }
};

constexpr const char* load = "load_model";

/// load_model<softmax_attention<float>> on f.bad fails naming the file and `fragment`.
#define EXPECT_LOAD_FAILS(fragment)                                                          \
  ::performer::conformance::expect_invalid(                                                  \
      [&] { static_cast<void>(io::load_model<softmax_attention<float>>(f.bad)); }, load,      \
      {std::string_view(f.bad.string()), std::string_view(fragment)}, __FILE__, __LINE__)

TEST(ModelFileBadInput, AnotherMechanism) {
  const temp_dir dir;
  const auto path = dir.file("favor.safetensors");
  io::save_model(favor_model<float>(0, 2), path);
  PERFORMER_EXPECT_INVALID(load, "the file holds \"favor\" attention, which cannot load as a \"softmax\" mechanism",
                           io::load_model<softmax_attention<float>>(path));
  PERFORMER_EXPECT_INVALID(load, "holds \"favor\" attention, which cannot load as a \"lsh\"",
                           io::load_model<lsh_attention<double>>(path));
  PERFORMER_EXPECT_INVALID(load, "holds \"favor\" attention, which cannot load as a \"softmax\"",
                           io::load_model<tiled_softmax_attention<double>>(path));
  io::save_model(softmax_model<float>(0, 3), path);
  PERFORMER_EXPECT_INVALID(load, "holds \"softmax\" attention, which cannot load as a \"favor\"",
                           io::load_model<favor_attention<float>>(path));
}

TEST(ModelFileBadInput, NotAModelFile) {
  files f;
  f.edit([](json& h, json&) { h["__metadata__"].erase("format"); });
  EXPECT_LOAD_FAILS("not a performer model file (__metadata__ has no \"format\")");
  PERFORMER_EXPECT_INVALID("read_model_config", "not a performer model file", io::read_model_config(f.bad));
  PERFORMER_EXPECT_INVALID("load_any_model", "not a performer model file", io::load_any_model<float>(f.bad));
  f.edit([](json& h, json&) { h.erase("__metadata__"); });
  EXPECT_LOAD_FAILS("__metadata__ has no \"format\"");
  f.edit([](json& h, json&) { h["__metadata__"]["format"] = "pt"; });
  EXPECT_LOAD_FAILS("format is \"pt\", expected \"performer-model\"");
  f.edit([](json& h, json&) { h["__metadata__"]["format_version"] = "2"; });
  EXPECT_LOAD_FAILS("format_version \"2\" is not supported (this reader reads 1)");
  f.edit([](json& h, json&) { h["__metadata__"].erase("config"); });
  EXPECT_LOAD_FAILS("__metadata__ has no \"config\"");
}

TEST(ModelFileBadInput, ConfigNotJsonOrNotAnObject) {
  files f;  // rewrite() writes a parsed config back: the broken texts are written here
  const bytes raw = read_bytes(f.good);
  std::uint64_t n = 0;
  std::memcpy(&n, raw.data(), 8);
  json header = json::parse(std::string(raw.begin() + 8, raw.begin() + 8 + static_cast<std::ptrdiff_t>(n)));
  const bytes data(raw.begin() + 8 + static_cast<std::ptrdiff_t>(n), raw.end());
  header["__metadata__"]["config"] = "{\"vocab\": ";
  write_bytes(f.bad, safetensors_bytes(header.dump(), data));
  EXPECT_LOAD_FAILS("config is not valid JSON");
  header["__metadata__"]["config"] = "[13, 2]";
  write_bytes(f.bad, safetensors_bytes(header.dump(), data));
  EXPECT_LOAD_FAILS("config is not a JSON object");
}

TEST(ModelFileBadInput, ConfigKeysAndTypes) {
  files f;
  for (const char* key : {"vocab", "layers", "d_model", "heads", "d_ff", "causal", "norm", "activation",
                          "layer_norm_eps", "rotary", "rotary_base", "rotary_pairs", "max_positions",
                          "tie_output", "attention"}) {
    f.edit_config([&](json& c) { c.erase(key); });
    EXPECT_LOAD_FAILS(std::string("config has no \"") + key + "\"");
  }
  f.edit_config([](json& c) { c["vocab"] = "13"; });
  EXPECT_LOAD_FAILS("config \"vocab\" must be an integer, not \"13\"");
  f.edit_config([](json& c) { c["d_model"] = 16.0; });
  EXPECT_LOAD_FAILS("\"d_model\" must be an integer, not 16.0");
  f.edit_config([](json& c) { c["causal"] = 1; });
  EXPECT_LOAD_FAILS("\"causal\" must be true or false, not 1");
  f.edit_config([](json& c) { c["norm"] = "middle"; });
  EXPECT_LOAD_FAILS("\"norm\" must be \"pre\" or \"post\", not \"middle\"");
  f.edit_config([](json& c) { c["activation"] = "swish"; });
  EXPECT_LOAD_FAILS("\"activation\" must be \"gelu\" or \"relu\"");
  f.edit_config([](json& c) { c["rotary_pairs"] = 2; });
  EXPECT_LOAD_FAILS("\"rotary_pairs\" must be \"half\" or \"interleaved\", not 2");
  f.edit_config([](json& c) { c["layer_norm_eps"] = "1e-5"; });
  EXPECT_LOAD_FAILS("\"layer_norm_eps\" must be a number");
  f.edit_config([](json& c) { c["attention"] = "softmax"; });
  EXPECT_LOAD_FAILS("\"attention\" must be an object, not \"softmax\"");
}

TEST(ModelFileBadInput, ConfigValues) {
  files f;
  f.edit_config([](json& c) { c["vocab"] = 0; });
  EXPECT_LOAD_FAILS("\"vocab\" is 0, outside [1, 2147483647]");
  f.edit_config([](json& c) { c["layers"] = -2; });
  EXPECT_LOAD_FAILS("\"layers\" is -2, outside [1, 2147483647]");
  f.edit_config([](json& c) { c["d_ff"] = 0; });
  EXPECT_LOAD_FAILS("\"d_ff\" is 0, outside [1,");
  f.edit_config([](json& c) { c["max_positions"] = std::int64_t{1} << 40; });
  EXPECT_LOAD_FAILS("\"max_positions\" is 1099511627776, outside [0, 2147483647]");
  f.edit_config([](json& c) { c["heads"] = 3; });
  EXPECT_LOAD_FAILS("heads (3) does not divide d_model (16)");
  f.edit_config([](json& c) { c["layer_norm_eps"] = -1e-5; });
  EXPECT_LOAD_FAILS("\"layer_norm_eps\" must be positive");
  f.edit_config([](json& c) { c["rotary"] = true; c["heads"] = 16; });
  EXPECT_LOAD_FAILS("rotary needs an even head width (d_model / heads = 1)");
  f.edit_config([](json& c) { c["rotary"] = true; c["rotary_base"] = 1.0; });
  EXPECT_LOAD_FAILS("\"rotary_base\" must be greater than 1");
}

TEST(ModelFileBadInput, AttentionSection) {
  files f;
  f.edit_config([](json& c) { c["attention"] = json::object(); });
  EXPECT_LOAD_FAILS("config.attention has no \"kind\"");
  f.edit_config([](json& c) { c["attention"]["kind"] = "flash"; });
  EXPECT_LOAD_FAILS("config.attention \"kind\" must be \"softmax\", \"favor\" or \"lsh\", not \"flash\"");
  PERFORMER_EXPECT_INVALID("load_any_model", "not \"flash\"", io::load_any_model<double>(f.bad));
  PERFORMER_EXPECT_INVALID("read_model_config", "not \"flash\"", io::read_model_config(f.bad));
  f.edit_config([](json& c) { c["attention"] = {{"kind", "favor"}, {"feature_map", "positive"}}; });
  EXPECT_LOAD_FAILS("config.attention has no \"features\"");
  f.edit_config([](json& c) { c["attention"] = {{"kind", "favor"}, {"features", 8}, {"feature_map", "relu"}}; });
  EXPECT_LOAD_FAILS("\"feature_map\" must be \"positive\", not \"relu\"");
  const json lsh = {{"kind", "lsh"}, {"rounds", 2}, {"buckets", 4}, {"chunk", 2}, {"shared_qk", true}};
  for (const auto& edit :
       {std::tuple<const char*, json, const char*>{"buckets", 7, "\"buckets\" must be even and in [2, 128] (got 7)"},
        {"buckets", 256, "\"buckets\" must be even and in [2, 128] (got 256)"},
        {"buckets", 0, "\"buckets\" is 0, outside [2,"},
        {"rounds", 0, "\"rounds\" is 0, outside [1,"},
        {"chunk", 1.5, "\"chunk\" must be an integer"},
        {"shared_qk", "yes", "\"shared_qk\" must be true or false"}}) {
    // (Not a structured binding: clang 14 cannot capture one in a lambda.)
    f.edit_config([&](json& c) {
      c["attention"] = lsh;
      c["attention"][std::get<0>(edit)] = std::get<1>(edit);
    });
    EXPECT_LOAD_FAILS(std::get<2>(edit));
  }
}

}  // namespace
}  // namespace io_model_file_bad_input_test
}  // namespace performer::test
