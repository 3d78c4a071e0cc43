/// @file io/model_file.hpp
/// @brief A whole transformer_model in one safetensors file (docs/model_format.md): save_model,
/// load_model for a mechanism known at compile time, load_any_model for one chosen by the file,
/// and read_model_config for the configuration alone.
#pragma once

#include <filesystem>
#include <map>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "../core/concepts.hpp"
#include "../core/error.hpp"
#include "../core/types.hpp"
#include "../nn/transformer_model.hpp"
#include "attention_io.hpp"
#include "block_tensors.hpp"
#include "model_description.hpp"
#include "safetensors.hpp"
#include "safetensors_writer.hpp"

namespace performer::io {

/// A model whose mechanism a file chooses at run time (see load_any_model). Use std::visit.
template <real_scalar T>
using any_model = std::variant<transformer_model<softmax_attention<T>>,
                               transformer_model<favor_attention<T>>,
                               transformer_model<lsh_attention<T>>>;

namespace detail {

[[nodiscard]] inline std::string layer_prefix(index_t l) {
  return "layers." + std::to_string(l) + ".";
}

/// Every tensor the file of `m` holds, with its shape (docs/model_format.md, "Tensors").
template <class Io>
[[nodiscard]] std::vector<expected_tensor> expected_tensors(const model_description& m) {
  const model_config& c = m.config;
  const index_t d = c.block.d_model, f = c.block.d_ff;
  std::vector<expected_tensor> out{{"tok_embed.weight", {c.vocab, d}},
                                   {"norm.weight", {d}},
                                   {"norm.bias", {d}},
                                   {"head.bias", {c.vocab}}};
  if (c.max_positions > 0) out.push_back({"pos_embed.weight", {c.max_positions, d}});
  if (!c.tie_output) out.push_back({"head.weight", {c.vocab, d}});
  for (index_t l = 0; l < c.layers; ++l) {
    const std::string p = layer_prefix(l);
    for (const char* proj : {"q_proj", "k_proj", "v_proj", "o_proj"}) {
      out.push_back({p + "attn." + proj + ".weight", {d, d}});
      out.push_back({p + "attn." + proj + ".bias", {d}});
    }
    for (const char* norm : {"norm1", "norm2"}) {
      out.push_back({p + norm + ".weight", {d}});
      out.push_back({p + norm + ".bias", {d}});
    }
    out.push_back({p + "ffn.fc1.weight", {f, d}});
    out.push_back({p + "ffn.fc1.bias", {f}});
    out.push_back({p + "ffn.fc2.weight", {d, f}});
    out.push_back({p + "ffn.fc2.bias", {d}});
    Io::tensors(m.attention, d / c.block.heads, p + "attn.", out);
  }
  return out;
}

/// Checks, before any memory is allocated for the model, that the file holds every tensor of
/// `m` with its shape as a real type, and no other tensor under the format's names (a
/// projection in a softmax file, head.weight when tied). Other names are ignored, so a file
/// may carry extra tensors (test inputs, say).
template <class Io>
void check_tensors(const safetensors_file& f, const model_description& m, const char* who) {
  const std::string where = f.path().string();
  const auto expected = expected_tensors<Io>(m);
  std::map<std::string_view, const expected_tensor*> by_name;
  for (const auto& e : expected) {
    by_name.emplace(e.name, &e);
    PERFORMER_PRECONDITION(f.contains(e.name), who, ": ", where, ": no tensor '", e.name,
                           "' (expected shape ", shape_text(e.shape), ")");
    const tensor_info& t = f.info(e.name);
    PERFORMER_PRECONDITION(t.shape == e.shape, who, ": ", where, ": tensor '", e.name,
                           "' has shape ", shape_text(t.shape), ", expected ",
                           shape_text(e.shape));
    PERFORMER_PRECONDITION(is_real_dtype(t.type), who, ": ", where, ": tensor '", e.name,
                           "' is ", dtype_name(t.type), "; model tensors are F32, F64 or BF16");
  }
  for (const tensor_info& t : f.tensors()) {
    const std::string_view n = t.name;
    const bool reserved = n.starts_with("tok_embed.") || n.starts_with("pos_embed.") ||
                          n.starts_with("layers.") || n.starts_with("norm.") ||
                          n.starts_with("head.");
    PERFORMER_PRECONDITION(!reserved || by_name.contains(n), who, ": ", where,
                           ": unexpected tensor '", t.name, "' for this config (",
                           m.attention.kind, " attention, ", m.config.layers, " layers",
                           m.config.tie_output ? ", tied head" : "",
                           m.config.max_positions > 0 ? "" : ", no learned positions", ")");
  }
}

/// Builds the model from a checked file: each layer's weights are read from the mapping into
/// new matrices and moved into the layer (a file opened with page_policy::discard_after_read
/// drops each block of pages once converted).
template <storable_attention A>
[[nodiscard]] transformer_model<A> build_model(const safetensors_file& f,
                                               const model_description& m, const char* who) {
  using Io = attention_io<A>;
  using T = typename A::scalar_type;
  PERFORMER_PRECONDITION(m.attention.kind == Io::kind, who, ": ", f.path().string(),
                         ": the file holds \"", m.attention.kind, "\" attention, which cannot "
                         "load as a \"", Io::kind, "\" mechanism (load_any_model chooses by the "
                         "file)");
  check_tensors<Io>(f, m, who);
  const index_t head_dim = m.config.block.d_model / m.config.block.heads;
  // no_init: the weights come from the file, so none is drawn first or held twice.
  transformer_model<A> model(
      m.config, [&](index_t l) { return Io::make(m.attention, head_dim, f, layer_prefix(l) + "attn."); },
      no_init);
  for (index_t l = 0; l < m.config.layers; ++l) {
    model.stack().layer(l).set_parameters(read_block_parameters<T>(f, layer_prefix(l)));
  }
  model.stack().set_final_norm(f.read<T>("norm.weight"), f.read<T>("norm.bias"));
  model_parameters<T> p;
  p.token_embedding = f.read<T>("tok_embed.weight");
  p.position_embedding = m.config.max_positions > 0 ? f.read<T>("pos_embed.weight")
                                                    : row_matrix<T>(0, m.config.block.d_model);
  if (!m.config.tie_output) p.w_out = f.read_transposed<T>("head.weight");
  p.b_out = f.read<T>("head.bias");
  model.set_parameters(std::move(p));
  return model;
}

}  // namespace detail

/**
 * @brief The description of a model (what save_model writes as its config).
 * @throws performer::invalid_argument "save_model: ..." if the layers' mechanisms differ in
 * their description (the format stores one), or as attention_io<A>::describe.
 */
template <storable_attention A>
[[nodiscard]] model_description describe_model(const transformer_model<A>& model) {
  model_description m{.config = model.config(),
                      .attention = attention_io<A>::describe(model.stack().layer(0).attention())};
  m.config.block = model.stack().layer(0).config();  // d_ff resolved (never 0)
  for (index_t l = 1; l < model.stack().layers(); ++l) {
    const attention_description d = attention_io<A>::describe(model.stack().layer(l).attention());
    PERFORMER_PRECONDITION(d.features == m.attention.features && d.rounds == m.attention.rounds &&
                               d.buckets == m.attention.buckets && d.chunk == m.attention.chunk &&
                               d.shared_qk == m.attention.shared_qk,
                           "save_model: layer ", l, "'s mechanism is configured unlike layer 0's "
                           "(features, rounds, buckets, chunk or shared_qk); the format stores "
                           "one configuration");
  }
  return m;
}

namespace detail {

/// save_model's writer, every tensor and metadata entry added, not yet written (a checkpoint
/// adds the optimiser's). `model` must outlive it. @throws performer::invalid_argument as
/// save_model, with `who`.
template <storable_attention A>
[[nodiscard]] safetensors_writer model_writer(const transformer_model<A>& model, dtype type,
                                              const std::map<std::string, std::string>& metadata,
                                              const char* who) {
  const model_description m = describe_model(model);
  safetensors_writer w(type);
  for (const auto& [key, value] : metadata) {
    PERFORMER_PRECONDITION(key != "format" && key != "format_version" && key != "config",
                           who, ": the metadata key \"", key,
                           "\" is the format's own; choose another name");
    w.set_metadata(key, value);
  }
  w.set_metadata("format", std::string(model_format_name));
  w.set_metadata("format_version", std::string(model_format_version));
  w.set_metadata("config", detail::config_json(m).dump());
  const auto& params = model.parameters();
  w.add("tok_embed.weight", params.token_embedding);
  if (m.config.max_positions > 0) w.add("pos_embed.weight", params.position_embedding);
  w.add("norm.weight", model.stack().final_norm_gain());
  w.add("norm.bias", model.stack().final_norm_bias());
  if (!m.config.tie_output) w.add_transposed("head.weight", params.w_out);
  w.add("head.bias", params.b_out);
  for (index_t l = 0; l < m.config.layers; ++l) {
    const std::string p = detail::layer_prefix(l);
    const auto& b = model.stack().layer(l).parameters();
    w.add_transposed(p + "attn.q_proj.weight", b.w_q);
    w.add_transposed(p + "attn.k_proj.weight", b.w_k);
    w.add_transposed(p + "attn.v_proj.weight", b.w_v);
    w.add_transposed(p + "attn.o_proj.weight", b.w_o);
    w.add(p + "attn.q_proj.bias", b.b_q);
    w.add(p + "attn.k_proj.bias", b.b_k);
    w.add(p + "attn.v_proj.bias", b.b_v);
    w.add(p + "attn.o_proj.bias", b.b_o);
    w.add(p + "norm1.weight", b.norm1_gain);
    w.add(p + "norm1.bias", b.norm1_bias);
    w.add(p + "norm2.weight", b.norm2_gain);
    w.add(p + "norm2.bias", b.norm2_bias);
    w.add_transposed(p + "ffn.fc1.weight", b.w_ff1);
    w.add(p + "ffn.fc1.bias", b.b_ff1);
    w.add_transposed(p + "ffn.fc2.weight", b.w_ff2);
    w.add(p + "ffn.fc2.bias", b.b_ff2);
    attention_io<A>::add(w, model.stack().layer(l).attention(), p + "attn.");
  }
  return w;
}

}  // namespace detail

/**
 * @brief Saves `model` to `path` as docs/model_format.md describes: configuration in the
 * metadata, every tensor (PyTorch names and [out, in] layouts) stored as `type`. F32 for a
 * float model (F64 for double), the defaults, reproduce its logits bit for bit when loaded;
 * BF16 rounds every weight to 8 significant bits. The tensors are written straight from the
 * model's matrices (transposed block by block), so saving needs O(1) extra memory beyond the
 * LSH rotations.
 * `metadata` adds the caller's own string entries to `__metadata__` (an `alphabet`, a
 * tokenizer's name, provenance); load_model ignores them and safetensors_file::metadata() reads
 * them back.
 * @throws performer::invalid_argument as describe_model, safetensors_writer (the file cannot be
 * written; a value beyond the range of `type`), if `type` is not F32, F64 or BF16, or if a
 * `metadata` key is one the format writes itself (format, format_version, config).
 */
template <storable_attention A>
void save_model(const transformer_model<A>& model, const std::filesystem::path& path,
                dtype type = default_dtype<typename A::scalar_type>,
                const std::map<std::string, std::string>& metadata = {}) {
  detail::model_writer(model, type, metadata, "save_model").write(path);
}

/**
 * @brief The configuration and attention description of a model file, without reading its
 * tensors. O(header).
 * @throws performer::invalid_argument as safetensors_file's constructor, or
 * "read_model_config: <path>: ..." if the metadata is not a version-1 performer model's or its
 * config is invalid (a missing key, a wrong JSON type, a value out of range, heads not
 * dividing d_model, an unknown attention kind).
 */
[[nodiscard]] inline model_description read_model_config(const std::filesystem::path& path) {
  const safetensors_file f(path);
  return detail::parse_description(f.metadata(), "read_model_config", f.path().string());
}

/**
 * @brief Loads a model saved by save_model (or written to docs/model_format.md by other tools)
 * as transformer_model<A>: A is softmax_attention<T> or tiled_softmax_attention<T> for a
 * "softmax" file, favor_attention<T> for "favor", lsh_attention<T> for "lsh"; T is float or
 * double, whatever the stored types (each tensor converts: F32/BF16 to double exactly, F64 to
 * float rounded).
 *
 * Memory: the file is mapped, never read into a buffer. Each tensor is converted from the
 * mapping straight into a new matrix of the model's, and the file pages it was read from are
 * dropped from the process's resident set block by block (they stay in the page cache); the
 * mapping is closed on return. The model is first built with seeded weights, which the file's
 * then replace one tensor group at a time, so a load peaks at the model's size plus its
 * largest replaced group (one layer, or the model's own embedding and head). Time
 * O(parameters).
 * @throws performer::invalid_argument "load_model: <path>: ..." if the file holds another
 * kind of attention, lacks a tensor of the config or has one of another shape or a non-real
 * type, or holds an unexpected tensor under the format's names; as read_model_config (with
 * "load_model"); as safetensors_file (a malformed file, a NaN or an infinity in a tensor,
 * a double beyond float's range); or as the model's setters.
 */
template <storable_attention A>
[[nodiscard]] transformer_model<A> load_model(const std::filesystem::path& path) {
  const safetensors_file f(path, page_policy::discard_after_read);
  const model_description m = detail::parse_description(f.metadata(), "load_model", f.path().string());
  return detail::build_model<A>(f, m, "load_model");
}

/**
 * @brief Loads a model whose mechanism the file chooses: softmax_attention<T>,
 * favor_attention<T> or lsh_attention<T>, as load_model would.
 * @throws performer::invalid_argument as load_model, with "load_any_model".
 */
template <real_scalar T>
[[nodiscard]] any_model<T> load_any_model(const std::filesystem::path& path) {
  constexpr const char* who = "load_any_model";
  const safetensors_file f(path, page_policy::discard_after_read);
  const model_description m = detail::parse_description(f.metadata(), who, f.path().string());
  if (m.attention.kind == "favor") return detail::build_model<favor_attention<T>>(f, m, who);
  if (m.attention.kind == "lsh") return detail::build_model<lsh_attention<T>>(f, m, who);
  return detail::build_model<softmax_attention<T>>(f, m, who);
}

}  // namespace performer::io
