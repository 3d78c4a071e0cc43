// FAVOR as the typed suites make it (every feature map, blockings that cut the suites' short
// sequences into ragged blocks, chunks and segments). The class templates they use are compiled
// once for all test executables (instances/instances.hpp).
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include <performer/core/detail/parallel.hpp>
#include <performer/favor/favor_attention.hpp>
#include <performer/favor/favor_decoder.hpp>
#include <performer/favor/features/elu_features.hpp>
#include <performer/favor/features/favor_plus_plus_features.hpp>
#include <performer/favor/features/hyperbolic_features.hpp>
#include <performer/favor/features/positive_features.hpp>
#include <performer/favor/features/relu_features.hpp>
#include <performer/favor/features/trigonometric_features.hpp>
#include <performer/testing/extreme_reference.hpp>
#include <performer/testing/helpers.hpp>

#include "instances/instances.hpp"

namespace performer::test {
template <class T>
using favor_mixed = favor_attention<T, positive_features<T>, orthogonal_sampler, double>;
template <class T>
using favor_hyperbolic = favor_attention<T, hyperbolic_features<T>>;
template <class T>
using favor_trigonometric = favor_attention<T, trigonometric_features<T>>;
template <class T>
using favor_relu = favor_attention<T, relu_features<T>, gaussian_sampler>;
template <class T>
using favor_elu = favor_attention<T, elu_features<T>>;
template <class T>
using favor_pp = favor_attention<T, favor_plus_plus_features<T>>;
}  // namespace performer::test

namespace performer::test {

/// One FAVOR configuration for the suites. Segments > 1 with min_segment 4 splits the suites'
/// short sequences as long ones would be.
template <class A, index_t Features = 64, index_t Block = 256, index_t Chunk = 64, index_t Segments = 2>
struct favor_maker {
  using attention_type = A;
  using T = typename A::scalar_type;
  using Acc = typename A::accumulator_type;
  static constexpr conformance::extreme_reference extreme_values = conformance::extreme_reference::favor;
  // Features and the projection are fixed by the seed, so every invariance the suites check is
  // exact up to rounding; the sums run over more terms than exact attention's, hence 1e-4.
  static constexpr double tolerance = std::is_same_v<T, float> ? 1e-4 : 1e-11;
  // Tiny blocks make N = 16,384 slow; the default blocking is what users run.
  static constexpr bool large_sequences = Block >= 64;
  // elu + 1 defines its own kernel (the linear transformer's), not the softmax one: it still
  // follows q.k, but more weakly than exact attention does.
  static constexpr double min_logit_response =
      std::is_same_v<typename A::feature_map_type, elu_features<T>> ? 0.05 : 0.25;
  // FAVOR++ fits A to the visible queries: with N_q = N_k the key mask marks padded queries, so
  // self-attention with padding and cross-attention against the kept keys see different queries.
  static constexpr bool cross_padding_equivalence =
      !std::is_same_v<typename A::feature_map_type, favor_plus_plus_features<T>>;

  static A make(index_t head_dim) {
    return A(head_dim, Features, /*seed=*/7, {}, {},
             {.block = Block, .chunk = Chunk, .segments = Segments, .min_segment = 4});
  }

  /// The key with the largest log scale any key can have (docs/algorithms.md §2.6): x~ equal
  /// to the longest row of W, i.e. x = w_max d^(1/4), whose log scale is |w_max|^2 / 2. A
  /// stabiliser that let a query see a later key's scale would change earlier outputs here.
  static row_vector<T> future_key(const A& a, index_t d, index_t j) {
    if constexpr (!A::feature_map_type::uses_projection) {
      return conformance::random_matrix<T>(1, d, 100 + static_cast<std::uint64_t>(j), 50.0);
    } else {
      const auto& w = a.projection().matrix();
      index_t longest = 0;
      w.rowwise().squaredNorm().maxCoeff(&longest);
      return w.row(longest) * static_cast<T>(std::pow(static_cast<double>(d), 0.25));
    }
  }

  /// The workspace, field by field (favor_attention::lane_type and state_type): per lane (one
  /// per thread) phi_q, phi_k (B x M) and log_q, log_k (B) in T; num (B x d_v), den, weights,
  /// prefix_max (B), scores (C x C) in Acc, and with Acc != T the cast copies cast_q, cast_k
  /// (B x M) and cast_v (B x d_v); per state S (M x d_v) and z (M) in Acc, one state per segment
  /// when bidirectional, segments + 2 (segments - 1) when causal. No N anywhere.
  static long long workspace_bytes(const A& a, index_t n, index_t d_v, bool causal) {
    const auto& o = a.options();
    const long long t = sizeof(T);
    const long long acc = sizeof(Acc);
    const long long b = o.block;
    const long long m = a.feature_count();
    const long long c = std::min(o.block, o.chunk);
    long long lane = (2 * b * m + 2 * b) * t + (b * d_v + 3 * b + c * c) * acc;
    if constexpr (!std::is_same_v<T, Acc>) lane += (2 * b * m + b * d_v) * acc;
    const long long segments = std::clamp<index_t>(n / o.min_segment, 1, o.segments);
    const long long states = causal ? segments + 2 * (segments - 1) : segments;
    return detail::available_threads() * lane + states * (m * d_v + m) * acc;
  }
};

using favor_makers = ::testing::Types<
    favor_maker<favor_attention<float>>, favor_maker<favor_attention<double>>,
    // Blocks and chunks smaller than the suites' sequences: boundaries and ragged ends.
    favor_maker<favor_attention<float>, 32, 7, 5>, favor_maker<favor_attention<double>, 32, 7, 5, 3>,
    favor_maker<favor_attention<double>, 32, 7, 5, 1>, favor_maker<favor_mixed<float>, 64, 9, 4>,
    favor_maker<favor_mixed<float>>, favor_maker<favor_hyperbolic<float>, 32, 8, 3>,
    favor_maker<favor_hyperbolic<float>>, favor_maker<favor_relu<double>, 32, 8, 3>,
    favor_maker<favor_elu<double>, 16, 8, 3>, favor_maker<favor_pp<double>, 32, 8, 3>,
    favor_maker<favor_pp<float>>>;

/// One maker per distinct attention type (scalar, map, sampler, accumulator): the suites whose
/// checks do not depend on the blocking (determinism, allocation, bad input) run on these; the
/// conformance suite runs on every blocking above. The first keeps 2 segments at the suites'
/// lengths, so the parallel segment paths run; the double one is cut into 3.
using favor_core_makers = ::testing::Types<
    favor_maker<favor_attention<float>>, favor_maker<favor_attention<double>, 32, 7, 5, 3>,
    favor_maker<favor_mixed<float>>, favor_maker<favor_hyperbolic<float>>,
    favor_maker<favor_relu<double>, 32, 8, 3>, favor_maker<favor_elu<double>, 16, 8, 3>,
    favor_maker<favor_pp<double>, 32, 8, 3>, favor_maker<favor_pp<float>>>;

}  // namespace performer::test
