/// @file io/model_description.hpp
/// @brief What a model file's metadata says: the model_config and the attention mechanism, read
/// from and written to the JSON of docs/model_format.md with every key checked.
#pragma once

#include <cmath>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "../core/error.hpp"
#include "../core/types.hpp"
#include "../nn/transformer_model.hpp"

namespace performer::io {

/// The attention section of a model file's config.
struct attention_description {
  std::string kind;                   ///< "softmax", "favor" or "lsh"
  index_t features = 0;               ///< favor: m, the projection's rows
  std::string feature_map;            ///< favor: "positive"
  index_t rounds = 0;                 ///< lsh: hash rounds h
  index_t buckets = 0;                ///< lsh: b, even, 2 to 128
  index_t chunk = 0;                  ///< lsh: keys per chunk
  bool shared_qk = false;             ///< lsh: keys are the normalised queries
};

/// A model file's configuration: everything but the tensors.
struct model_description {
  model_config config;  ///< block.d_ff is explicit (never 0)
  attention_description attention;
};

/// The metadata values that identify a model file.
inline constexpr std::string_view model_format_name = "performer-model";
inline constexpr std::string_view model_format_version = "1";

namespace detail {

/// The config object of docs/model_format.md.
[[nodiscard]] inline nlohmann::json config_json(const model_description& m) {
  const block_config& b = m.config.block;
  nlohmann::json attention = {{"kind", m.attention.kind}};
  if (m.attention.kind == "favor") {
    attention["features"] = m.attention.features;
    attention["feature_map"] = m.attention.feature_map;
  } else if (m.attention.kind == "lsh") {
    attention["rounds"] = m.attention.rounds;
    attention["buckets"] = m.attention.buckets;
    attention["chunk"] = m.attention.chunk;
    attention["shared_qk"] = m.attention.shared_qk;
  }
  return {{"vocab", m.config.vocab},
          {"layers", m.config.layers},
          {"d_model", b.d_model},
          {"heads", b.heads},
          {"d_ff", b.d_ff},
          {"causal", b.causal},
          {"norm", b.norm == norm_placement::pre ? "pre" : "post"},
          {"activation", b.ffn_activation == activation::gelu ? "gelu" : "relu"},
          {"layer_norm_eps", b.layer_norm_eps},
          {"rotary", b.rotary},
          {"rotary_base", b.rotary_base},
          {"rotary_pairs", b.rotary_pairs == rotary_pairing::half ? "half" : "interleaved"},
          {"max_positions", m.config.max_positions},
          {"tie_output", m.config.tie_output},
          {"attention", attention}};
}

/// Reads typed keys of one JSON object; every failure names `who`, the file and the key.
class config_reader {
 public:
  config_reader(const nlohmann::json& object, std::string prefix, std::string_view who,
                std::string_view where)
      : object_(object), prefix_(std::move(prefix)), who_(who), where_(where) {}

  [[nodiscard]] const nlohmann::json& at(const char* key) const {
    fail_unless(object_.contains(key), "has no \"", key, "\"");
    return object_.at(key);
  }
  /// An integer in [low, 2^31 - 1]: sizes beyond are a corrupt file, not a model.
  [[nodiscard]] index_t integer(const char* key, index_t low) const {
    const nlohmann::json& v = at(key);
    fail_unless(v.is_number_integer(), "\"", key, "\" must be an integer, not ", v.dump());
    const auto x = v.get<std::int64_t>();
    fail_unless(x >= low && x <= 2147483647, "\"", key, "\" is ", x, ", outside [", low,
                ", 2147483647]");
    return static_cast<index_t>(x);
  }
  [[nodiscard]] double number(const char* key) const {
    const nlohmann::json& v = at(key);
    fail_unless(v.is_number(), "\"", key, "\" must be a number, not ", v.dump());
    return v.get<double>();
  }
  [[nodiscard]] bool boolean(const char* key) const {
    const nlohmann::json& v = at(key);
    fail_unless(v.is_boolean(), "\"", key, "\" must be true or false, not ", v.dump());
    return v.get<bool>();
  }
  /// One of the strings `a` and `b`: returns whether it is `a`.
  [[nodiscard]] bool choice(const char* key, const char* a, const char* b) const {
    const nlohmann::json& v = at(key);
    fail_unless(v.is_string() && (v == a || v == b), "\"", key, "\" must be \"", a, "\" or \"", b,
                "\", not ", v.dump());
    return v == a;
  }

  template <class... Parts>
  void fail_unless(bool ok, const Parts&... parts) const {
    PERFORMER_PRECONDITION(ok, who_, ": ", where_, ": ", prefix_, " ", parts...);
  }

 private:
  const nlohmann::json& object_;
  std::string prefix_;
  std::string_view who_, where_;
};

/**
 * @brief The description in a file's metadata.
 * @throws performer::invalid_argument "<who>: <where>: ..." if format or format_version is
 * missing or not this format's, config is missing or not a JSON object, a key is missing or of
 * the wrong JSON type or out of range, or the shapes disagree (heads not dividing d_model, an
 * odd head width with rotary, LSH buckets odd or outside [2, 128]).
 */
[[nodiscard]] inline model_description parse_description(
    const std::map<std::string, std::string>& metadata, std::string_view who,
    std::string_view where) {
  const auto meta = [&](const char* key) -> const std::string& {
    const auto it = metadata.find(key);
    PERFORMER_PRECONDITION(it != metadata.end(), who, ": ", where,
                           ": not a performer model file (__metadata__ has no \"", key, "\")");
    return it->second;
  };
  PERFORMER_PRECONDITION(meta("format") == model_format_name, who, ": ", where, ": format is \"",
                         meta("format"), "\", expected \"", model_format_name, "\"");
  PERFORMER_PRECONDITION(meta("format_version") == model_format_version, who, ": ", where,
                         ": format_version \"", meta("format_version"),
                         "\" is not supported (this reader reads ", model_format_version, ")");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(meta("config"));
  } catch (const nlohmann::json::exception& e) {
    PERFORMER_THROW(invalid_argument(
        performer::detail::message(who, ": ", where, ": config is not valid JSON (", e.what(), ")")));
  }
  PERFORMER_PRECONDITION(j.is_object(), who, ": ", where, ": config is not a JSON object");
  const config_reader c(j, "config", who, where);

  model_description m;
  m.config.vocab = c.integer("vocab", 1);
  m.config.layers = c.integer("layers", 1);
  m.config.max_positions = c.integer("max_positions", 0);
  m.config.tie_output = c.boolean("tie_output");
  block_config& b = m.config.block;
  b.d_model = c.integer("d_model", 1);
  b.heads = c.integer("heads", 1);
  b.d_ff = c.integer("d_ff", 1);
  b.causal = c.boolean("causal");
  b.norm = c.choice("norm", "pre", "post") ? norm_placement::pre : norm_placement::post;
  b.ffn_activation = c.choice("activation", "gelu", "relu") ? activation::gelu : activation::relu;
  b.layer_norm_eps = c.number("layer_norm_eps");
  b.rotary = c.boolean("rotary");
  b.rotary_base = c.number("rotary_base");
  b.rotary_pairs = c.choice("rotary_pairs", "half", "interleaved") ? rotary_pairing::half
                                                                   : rotary_pairing::interleaved;
  c.fail_unless(b.d_model % b.heads == 0, "heads (", b.heads, ") does not divide d_model (",
                b.d_model, ")");
  c.fail_unless(std::isfinite(b.layer_norm_eps) && b.layer_norm_eps > 0,
                "\"layer_norm_eps\" must be positive (got ", b.layer_norm_eps, ")");
  c.fail_unless(!b.rotary || (b.d_model / b.heads) % 2 == 0,
                "rotary needs an even head width (d_model / heads = ", b.d_model / b.heads, ")");
  c.fail_unless(!b.rotary || (std::isfinite(b.rotary_base) && b.rotary_base > 1),
                "\"rotary_base\" must be greater than 1 (got ", b.rotary_base, ")");

  const nlohmann::json& aj = c.at("attention");
  c.fail_unless(aj.is_object(), "\"attention\" must be an object, not ", aj.dump());
  const config_reader a(aj, "config.attention", who, where);
  attention_description& d = m.attention;
  const nlohmann::json& kind = a.at("kind");
  a.fail_unless(kind == "softmax" || kind == "favor" || kind == "lsh",
                "\"kind\" must be \"softmax\", \"favor\" or \"lsh\", not ", kind.dump());
  d.kind = kind.get<std::string>();
  if (d.kind == "favor") {
    d.features = a.integer("features", 1);
    const nlohmann::json& map = a.at("feature_map");
    a.fail_unless(map == "positive", "\"feature_map\" must be \"positive\", not ", map.dump());
    d.feature_map = "positive";
  } else if (d.kind == "lsh") {
    d.rounds = a.integer("rounds", 1);
    d.buckets = a.integer("buckets", 2);
    a.fail_unless(d.buckets % 2 == 0 && d.buckets <= 128,
                  "\"buckets\" must be even and in [2, 128] (got ", d.buckets, ")");
    d.chunk = a.integer("chunk", 1);
    d.shared_qk = a.boolean("shared_qk");
  }
  return m;
}

}  // namespace detail
}  // namespace performer::io
