// FAVOR as the typed suites make it (every feature map, blockings that cut the suites' short
// sequences into ragged blocks, chunks, segments and waves). The class templates they use are
// compiled once for all test executables (instances/instances.hpp).
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
/// short sequences as long ones would be (bidirectional); waves of 3 blocks, run on several
/// threads whatever the work, cut the small-block configurations' causal passes into several
/// waves, the last ragged, and a wave unevenly over 2 threads.
template <class A, index_t Features = 64, index_t Block = 256, index_t Chunk = 64,
          index_t Segments = 2>
struct favor_maker {
  using attention_type = A;
  using T = typename A::scalar_type;
  using Acc = typename A::accumulator_type;
  static constexpr conformance::extreme_reference extreme_values =
      conformance::extreme_reference::favor;
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
             {.block = Block,
              .chunk = Chunk,
              .segments = Segments,
              .min_segment = 4,
              .wave_blocks = 3,
              .parallel_block_work = 1});
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

  /// The workspace, field by field (favor_attention::lane_type, state_type and
  /// detail::causal_block): per lane (one per thread) phi_k (B x M) and log_q, log_k (B) in T,
  /// num (B x d_v), den, weights (B), scores (C x C) in Acc, and with Acc != T the cast copies
  /// cast_q, cast_k (B x M) and cast_v (B x d_v). Bidirectional: phi_q (B x M, T) per lane and
  /// one state, S (M x d_v) and z (M) in Acc, per segment. Causal: the lane's merged state, two
  /// states (the keys before a block, a spare), and per block of a wave phi_q (B x M, T), num
  /// (B x d_v), den and local_max (B) and one state per chunk of the block (in order, on one
  /// lane, one block and one state: within the bound). No N anywhere.
  static long long workspace_bytes(const A& a, index_t n, index_t d_v, bool causal) {
    const auto& o = a.options();
    const long long t = sizeof(T);
    const long long acc = sizeof(Acc);
    const long long b = o.block;
    const long long m = a.feature_count();
    const long long c = std::min(o.block, o.chunk);
    const long long state = (m * d_v + m) * acc;
    long long lane = (b * m + 2 * b) * t + (b * d_v + 2 * b + c * c) * acc;
    if constexpr (!std::is_same_v<T, Acc>) lane += (2 * b * m + b * d_v) * acc;
    if (!causal) {
      const long long segments = std::clamp<index_t>(n / o.min_segment, 1, o.segments);
      return detail::available_threads() * (lane + b * m * t) + segments * state;
    }
    const long long wave = o.wave_blocks > 0 ? o.wave_blocks : detail::available_threads();
    const long long width = std::min<long long>(wave, (n + b - 1) / b);
    const long long block = b * m * t + (b * d_v + 2 * b) * acc + (b + c - 1) / c * state;
    return detail::available_threads() * (lane + state) + 2 * state + width * block;
  }
};

using favor_makers = ::testing::Types<
    favor_maker<favor_attention<float>>, favor_maker<favor_attention<double>>,
    // Blocks and chunks smaller than the suites' sequences: boundaries and ragged ends.
    favor_maker<favor_attention<float>, 32, 7, 5>,
    favor_maker<favor_attention<double>, 32, 7, 5, 3>,
    favor_maker<favor_attention<double>, 32, 7, 5, 1>, favor_maker<favor_mixed<float>, 64, 9, 4>,
    favor_maker<favor_mixed<float>>, favor_maker<favor_hyperbolic<float>, 32, 8, 3>,
    favor_maker<favor_hyperbolic<float>>, favor_maker<favor_relu<double>, 32, 8, 3>,
    favor_maker<favor_elu<double>, 16, 8, 3>, favor_maker<favor_pp<double>, 32, 8, 3>,
    favor_maker<favor_pp<float>>>;

/// One maker per distinct attention type (scalar, map, sampler, accumulator): the suites whose
/// checks do not depend on the blocking (determinism, allocation, bad input) run on these; the
/// conformance suite runs on every blocking above. The first keeps 2 segments at the suites'
/// lengths, so the parallel segment paths run; the double one is cut into 3 segments, and its
/// causal pass into waves of 3 blocks of 7 tokens.
using favor_core_makers = ::testing::Types<
    favor_maker<favor_attention<float>>, favor_maker<favor_attention<double>, 32, 7, 5, 3>,
    favor_maker<favor_mixed<float>>, favor_maker<favor_hyperbolic<float>>,
    favor_maker<favor_relu<double>, 32, 8, 3>, favor_maker<favor_elu<double>, 16, 8, 3>,
    favor_maker<favor_pp<double>, 32, 8, 3>, favor_maker<favor_pp<float>>>;

}  // namespace performer::test
