// The exact mechanisms as the typed suites make them (compiled once for all test executables:
// instances/instances.hpp).
#pragma once

#include <gtest/gtest.h>

#include <performer/core/detail/parallel.hpp>
#include <performer/softmax/softmax_attention.hpp>
#include <performer/softmax/tiled_softmax_attention.hpp>
#include <performer/testing/extreme_reference.hpp>

#include "instances/instances.hpp"

namespace performer::test {

/// The materialized reference: its N x N weights are the only quadratic memory in the library.
template <class T>
struct softmax_maker {
  using attention_type = softmax_attention<T>;
  static constexpr bool quadratic_memory = true;
  static constexpr conformance::extreme_reference extreme_values = conformance::extreme_reference::softmax;
  static attention_type make(index_t /*head_dim*/) { return {}; }
};

/// Tiled exact attention with tiles of B_q x B_k (0: the defaults).
template <class T, index_t Bq = 0, index_t Bk = 0>
struct tiled_maker {
  using attention_type = tiled_softmax_attention<T>;
  static constexpr conformance::extreme_reference extreme_values = conformance::extreme_reference::softmax;
  // Tiles smaller than the suites' sequences cross tile boundaries; at N = 16,384 they would
  // take minutes.
  static constexpr bool large_sequences = Bq == 0;
  static attention_type make(index_t /*head_dim*/) {
    if constexpr (Bq == 0) {
      return {};
    } else {
      return attention_type(Bq, Bk);
    }
  }
  /// The workspace, field by field: per lane (one per thread) a tile (B_q x B_k), row_max,
  /// row_sum, rescale (B_q each) and keep (B_k). No N anywhere.
  static long long workspace_bytes(const attention_type& a, index_t /*n*/, index_t /*d_v*/,
                                   bool /*causal*/) {
    const index_t bq = a.query_block();
    const index_t bk = a.key_block();
    return detail::available_threads() * (bq * bk + 3 * bq + bk) * static_cast<long long>(sizeof(T));
  }
};

using softmax_makers =
    ::testing::Types<softmax_maker<float>, softmax_maker<double>, tiled_maker<float>,
                     tiled_maker<double>, tiled_maker<float, 4, 6>, tiled_maker<double, 4, 6>>;

/// The default tiles: the suites whose checks do not depend on the tile shape (determinism,
/// allocation, bad input) run on these; the conformance suite also runs the small tiles.
using softmax_core_makers = ::testing::Types<softmax_maker<float>, softmax_maker<double>,
                                             tiled_maker<float>, tiled_maker<double>>;

}  // namespace performer::test
