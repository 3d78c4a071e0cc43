/// @file io/attention_io.hpp
/// @brief How each mechanism is described in, saved to and rebuilt from a model file:
/// exact softmax (also tiled), FAVOR+ (its projection stored) and Reformer LSH (its rotations
/// stored). Specialise attention_io for a mechanism of your own to make it storable.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "../core/concepts.hpp"
#include "../core/error.hpp"
#include "../core/types.hpp"
#include "../favor/favor_attention.hpp"
#include "../lsh/lsh_attention.hpp"
#include "../softmax/softmax_attention.hpp"
#include "../softmax/tiled_softmax_attention.hpp"
#include "model_description.hpp"
#include "safetensors.hpp"
#include "safetensors_writer.hpp"

namespace performer::io {

/// A tensor a model file must hold: its name and shape.
struct expected_tensor {
  std::string name;
  std::vector<std::int64_t> shape;
};

/**
 * @brief Storage of one mechanism type. A specialisation provides `kind` (the config's
 * attention.kind), `describe(a)` (the description of a mechanism), `tensors(desc, head_dim,
 * prefix)` (the tensors a layer's mechanism adds, e.g. "layers.0.attn.projection"),
 * `add(writer, a, prefix)` and `make(desc, head_dim, file, prefix)`. Not defined for other
 * mechanisms: save_model and load_model then do not compile. Each function costs O(size of the
 * mechanism's stored tensors): nothing for exact attention, m d for FAVOR+, h d b/2 for LSH
 * (whose describe() also redraws the rotations once above 32 buckets, to tell drawn from set).
 */
template <class Attention>
struct attention_io;

/// A mechanism with an attention_io specialisation.
template <class A>
concept storable_attention = attention_mechanism<A> && requires {
  { attention_io<A>::kind } -> std::convertible_to<std::string_view>;
};

/// Exact attention has no parameters of its own; tiled_softmax_attention is the same maths and
/// shares the kind (its tile sizes are not stored: a loaded one has the default tiles).
template <class Attention>
struct exact_attention_io {
  static constexpr std::string_view kind = "softmax";
  static attention_description describe(const Attention&) {
    attention_description d;
    d.kind = "softmax";
    return d;
  }
  static void tensors(const attention_description&, index_t, const std::string&,
                      std::vector<expected_tensor>&) {}
  static void add(safetensors_writer&, const Attention&, const std::string&) {}
  static Attention make(const attention_description&, index_t, const safetensors_file&,
                        const std::string&) {
    return Attention{};
  }
};

template <real_scalar T>
struct attention_io<softmax_attention<T>> : exact_attention_io<softmax_attention<T>> {};
template <real_scalar T>
struct attention_io<tiled_softmax_attention<T>> : exact_attention_io<tiled_softmax_attention<T>> {};

/// FAVOR+ with positive features: the layer's projection ([m, d], rows the directions w) is
/// stored, so the loaded model computes exactly the saved one's features. favor_options are
/// not stored (a loaded model has the defaults).
template <real_scalar T>
struct attention_io<favor_attention<T>> {
  static constexpr std::string_view kind = "favor";
  static attention_description describe(const favor_attention<T>& a) {
    attention_description d;
    d.kind = "favor";
    d.features = a.projection().features();
    d.feature_map = "positive";
    return d;
  }
  static void tensors(const attention_description& d, index_t head_dim, const std::string& prefix,
                      std::vector<expected_tensor>& out) {
    out.push_back({prefix + "projection", {d.features, head_dim}});
  }
  static void add(safetensors_writer& w, const favor_attention<T>& a, const std::string& prefix) {
    w.add(prefix + "projection", a.projection().matrix());
  }
  static favor_attention<T> make(const attention_description& d, index_t head_dim,
                                 const safetensors_file& f, const std::string& prefix) {
    favor_attention<T> a(head_dim, d.features);
    a.projection().set_matrix(f.read<T>(prefix + "projection"));
    return a;
  }
};

/// Reformer LSH with angular_hash: round r's rotation (d x b/2) is stored for the fixed bucket
/// count b, as one [h, d, b/2] tensor.
template <real_scalar T>
struct attention_io<lsh_attention<T>> {
  static constexpr std::string_view kind = "lsh";

  /// @throws performer::invalid_argument "save_model: ..." if the bucket count is not fixed in
  /// [2, 128], or is above 32 with drawn rotations (hashed as two factorised rotations, which
  /// the format cannot store: set the rotations with set_rotation first).
  static attention_description describe(const lsh_attention<T>& a) {
    const index_t b = a.options().buckets;
    PERFORMER_PRECONDITION(b >= 2 && b <= angular_hash<T>::max_single_factor, "save_model: LSH "
                           "rotations are stored for a fixed bucket count: set lsh_options::buckets "
                           "to an even count in [2, 128] (got ", b, ")");
    const auto& h = a.hash_family();
    if (b > angular_hash<T>::max_drawn_single) {
      // Drawn rotations (no user rotation in any round) are factorised above 32 buckets; a
      // round equal to its seeded draw is taken for a drawn one.
      const angular_hash<T> drawn(h.dim(), h.rounds(), h.seed());
      bool all_drawn = true;
      for (index_t r = 0; r < h.rounds(); ++r) {
        all_drawn = all_drawn && h.rotation(r, b) == drawn.rotation(r, b);
      }
      PERFORMER_PRECONDITION(!all_drawn, "save_model: with ", b, " buckets, drawn LSH rotations "
                             "are hashed as two factorised rotations, which the format cannot "
                             "store; use at most 32 buckets or set the rotations (set_rotation)");
    }
    attention_description d;
    d.kind = "lsh";
    d.rounds = h.rounds();
    d.buckets = b;
    d.chunk = a.options().chunk;
    d.shared_qk = a.options().shared_qk;
    return d;
  }
  static void tensors(const attention_description& d, index_t head_dim, const std::string& prefix,
                      std::vector<expected_tensor>& out) {
    out.push_back({prefix + "rotations", {d.rounds, head_dim, d.buckets / 2}});
  }
  static void add(safetensors_writer& w, const lsh_attention<T>& a, const std::string& prefix) {
    const auto& h = a.hash_family();
    const index_t b = a.options().buckets;
    const index_t d = h.dim();
    row_matrix<T> stacked(h.rounds(), d * (b / 2));
    for (index_t r = 0; r < h.rounds(); ++r) {
      const row_matrix<T> rotation = h.rotation(r, b);
      stacked.row(r) = Eigen::Map<const row_vector<T>>(rotation.data(), rotation.size());
    }
    w.add(prefix + "rotations", std::move(stacked), {h.rounds(), d, b / 2});
  }
  static lsh_attention<T> make(const attention_description& d, index_t head_dim,
                               const safetensors_file& f, const std::string& prefix) {
    lsh_attention<T> a(head_dim, lsh_options{.buckets = d.buckets, .hashes = d.rounds,
                                             .chunk = d.chunk, .shared_qk = d.shared_qk});
    const auto rotations = f.read_stack<T>(prefix + "rotations");
    for (index_t r = 0; r < d.rounds; ++r) {
      a.hash_family().set_rotation(r, rotations[static_cast<std::size_t>(r)]);
    }
    return a;
  }
};

}  // namespace performer::io
