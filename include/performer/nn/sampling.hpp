/// @file nn/sampling.hpp
/// @brief Choosing the next token from a language model's logits: greedy, or a seeded draw at a
/// temperature.
#pragma once

#include <cmath>
#include <cstdint>

#include "../core/error.hpp"
#include "../core/types.hpp"
#include "../random/detail/generator.hpp"

namespace performer {

/// How transformer_model::generate picks each token.
struct sampling_options {
  /// 0: greedy (the largest logit; the lowest id among ties). Otherwise a draw from
  /// softmax(logits / temperature): below 1 sharper, above 1 flatter.
  double temperature = 0.0;
  /// Seeds the draws: the same seed, model and prompt give the same tokens on every platform
  /// whose libm rounds exp as this one does (the draw compares a uniform against a running sum
  /// in double).
  std::uint64_t seed = 0;
};

namespace detail {

/// The token sampling_options picks from one row of logits; `rng` advances once per draw (not
/// at all when greedy). Complexity O(V).
template <class Row>
[[nodiscard]] index_t sample_token(const Row& logits, double temperature, xoshiro256ss& rng) {
  const index_t v = logits.cols();
  index_t best = 0;
  for (index_t j = 1; j < v; ++j) {
    if (logits(0, j) > logits(0, best)) best = j;
  }
  if (temperature == 0.0) return best;
  // Weights relative to the largest logit, in double: the largest is exp(0) = 1, so the sum is
  // at least 1 and never overflows.
  const double top = static_cast<double>(logits(0, best));
  double total = 0;
  for (index_t j = 0; j < v; ++j) {
    total += std::exp((static_cast<double>(logits(0, j)) - top) / temperature);
  }
  const double u = rng.uniform() * total;
  double running = 0;
  for (index_t j = 0; j < v; ++j) {
    running += std::exp((static_cast<double>(logits(0, j)) - top) / temperature);
    if (u < running) return j;
  }
  return best;  // u within rounding of the total
}

inline void check_sampling(const char* who, const sampling_options& options) {
  PERFORMER_PRECONDITION(std::isfinite(options.temperature) && options.temperature >= 0.0, who,
                         ": temperature must be finite and >= 0 (got ", options.temperature, ")");
}

}  // namespace detail

}  // namespace performer
