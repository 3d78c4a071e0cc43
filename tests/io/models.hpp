/// @file tests/io/models.hpp
/// @brief Small models of every storable mechanism for the io tests, with every parameter set
/// to seeded non-trivial values (non-zero biases, gains other than 1), so that a round trip
/// which lost or swapped any tensor shows in the logits.
#pragma once

#include <cstdint>
#include <vector>

#include <performer/favor/favor_attention.hpp>
#include <performer/lsh/lsh_attention.hpp>
#include <performer/nn/transformer_model.hpp>
#include <performer/softmax/softmax_attention.hpp>
#include <performer/softmax/tiled_softmax_attention.hpp>
#include <performer/testing/helpers.hpp>

namespace performer::test::io_support {

/// A model config exercising the options: `variant` 0 plain, 1 causal + rotary + tied +
/// post-LN + ReLU + interleaved pairs, 2 learned positions + untied.
[[nodiscard]] inline model_config small_model(int variant) {
  model_config c{.vocab = 13,
                 .layers = 2,
                 .block = {.d_model = 16, .heads = 2, .d_ff = 24},
                 .max_positions = 0,
                 .tie_output = false};
  if (variant == 1) {
    c.block.causal = true;
    c.block.rotary = true;
    c.block.rotary_base = 500.0;
    c.block.rotary_pairs = rotary_pairing::interleaved;
    c.block.norm = norm_placement::post;
    c.block.ffn_activation = activation::relu;
    c.block.layer_norm_eps = 1e-6;
    c.tie_output = true;
  } else if (variant == 2) {
    c.max_positions = 20;
    c.layers = 3;
  }
  return c;
}

/// Sets every parameter of the model from `seed`.
template <class A>
void randomise(transformer_model<A>& m, std::uint64_t seed) {
  using T = typename A::scalar_type;
  using conformance::random_matrix;
  std::uint64_t s = seed * 1000;
  const auto rnd = [&s](const auto& like, double scale) {
    return random_matrix<T>(like.rows(), like.cols(), ++s, scale);
  };
  for (index_t l = 0; l < m.stack().layers(); ++l) {
    auto p = m.stack().layer(l).parameters();
    for (auto* w : {&p.w_q, &p.w_k, &p.w_v, &p.w_o, &p.w_ff1, &p.w_ff2}) *w = rnd(*w, 0.4);
    for (auto* b : {&p.b_q, &p.b_k, &p.b_v, &p.b_o, &p.b_ff1, &p.b_ff2, &p.norm1_bias, &p.norm2_bias}) {
      *b = rnd(*b, 0.1);
    }
    p.norm1_gain = row_vector<T>::Ones(p.norm1_gain.size()) + rnd(p.norm1_gain, 0.2);
    p.norm2_gain = row_vector<T>::Ones(p.norm2_gain.size()) + rnd(p.norm2_gain, 0.2);
    m.stack().layer(l).set_parameters(p);
  }
  const index_t d = m.d_model();
  const row_vector<T> gain = row_vector<T>::Ones(d) + row_vector<T>(random_matrix<T>(1, d, ++s, 0.2));
  const row_vector<T> bias = random_matrix<T>(1, d, ++s, 0.1);
  m.stack().set_final_norm(gain, bias);
  auto p = m.parameters();
  p.token_embedding = rnd(p.token_embedding, 1.0);
  p.position_embedding = rnd(p.position_embedding, 0.5);
  p.w_out = rnd(p.w_out, 0.5);
  p.b_out = rnd(p.b_out, 0.1);
  m.set_parameters(p);
}

/// A model of each mechanism, randomised.
template <class T>
[[nodiscard]] transformer_model<softmax_attention<T>> softmax_model(int variant, std::uint64_t seed) {
  transformer_model<softmax_attention<T>> m(small_model(variant), softmax_attention<T>{}, seed);
  randomise(m, seed);
  return m;
}

template <class T>
[[nodiscard]] transformer_model<tiled_softmax_attention<T>> tiled_model(int variant,
                                                                        std::uint64_t seed) {
  // Default tiles: a loaded model has them (tile sizes are not stored), and the tiling sets the
  // order of the sums, hence the bits.
  transformer_model<tiled_softmax_attention<T>> m(small_model(variant),
                                                  tiled_softmax_attention<T>{}, seed);
  randomise(m, seed);
  return m;
}

template <class T>
[[nodiscard]] transformer_model<favor_attention<T>> favor_model(int variant, std::uint64_t seed) {
  transformer_model<favor_attention<T>> m(
      small_model(variant), [](index_t, std::uint64_t s) { return favor_attention<T>(8, 12, s); },
      seed);
  randomise(m, seed);
  return m;
}

/// LSH with a fixed bucket count (the format stores rotations for one), small chunks so that
/// the 9-token test sequence spans several.
template <class T>
[[nodiscard]] transformer_model<lsh_attention<T>> lsh_model(int variant, std::uint64_t seed,
                                                            bool shared_qk = true,
                                                            index_t buckets = 4) {
  transformer_model<lsh_attention<T>> m(
      small_model(variant),
      [=](index_t, std::uint64_t s) {
        return lsh_attention<T>(8, lsh_options{.buckets = buckets, .hashes = 3, .chunk = 2,
                                               .shared_qk = shared_qk, .seed = s});
      },
      seed);
  randomise(m, seed);
  return m;
}

inline const std::vector<std::int64_t> tokens{3, 0, 12, 7, 7, 1, 4, 9, 2};

}  // namespace performer::test::io_support
