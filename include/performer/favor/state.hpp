/// @file favor/state.hpp
/// @brief The key-value state of random-feature attention and its algebra (reset, rescale,
/// merge, fold), shared by favor_attention's paths and favor_decoder (docs/algorithms.md §2.2,
/// §2.5, §2.6).
#pragma once

#include <cmath>
#include <limits>

#include "../core/concepts.hpp"
#include "../core/detail/online_softmax.hpp"
#include "../core/types.hpp"

namespace performer {

/**
 * @brief S = sum_j w_j phi(k_j) v_j^T (M x d_v) and z = sum_j w_j phi(k_j) (M), the weights
 * w_j = exp(log_scale_j - shift) taken relative to a running maximum `shift` of the keys' log
 * scales (the stabiliser: docs/algorithms.md §2.6). An empty state has shift = -inf.
 *
 * Memory O(M d_v); fold O(rows M d_v); add and raise O(M d_v).
 * @tparam Acc scalar of the sums.
 */
template <real_scalar Acc>
struct favor_state {
  row_matrix<Acc> sum;
  vector<Acc> norm;
  Acc shift = -std::numeric_limits<Acc>::infinity();

  /// The empty state for M features and values of width d_v.
  void reset(index_t features, index_t value_dim) {
    sum.setZero(features, value_dim);
    norm.setZero(features);
    shift = -std::numeric_limits<Acc>::infinity();
  }

  /// Rescales the sums so that they are relative to max(shift, c).
  void raise(Acc c) {
    const Acc factor = detail::raise_running_max(shift, c);
    if (factor != Acc(1)) {
      sum *= factor;
      norm *= factor;
    }
  }

  /// this += other, both relative to their own shifts.
  void add(const favor_state& other) {
    if (other.shift == -std::numeric_limits<Acc>::infinity()) return;  // nothing but padding
    raise(other.shift);
    const Acc factor = std::exp(other.shift - shift);
    sum.noalias() += factor * other.sum;
    norm.noalias() += factor * other.norm;
  }

  /// Adds keys whose features are already multiplied by their weights relative to `shift`
  /// (rows x M) with their values (rows x d_v).
  template <class WeightedPhi, class Values>
  void fold(const WeightedPhi& weighted_phi, const Values& v) {
    sum.noalias() += weighted_phi.transpose() * v;
    norm.noalias() += weighted_phi.colwise().sum().transpose();
  }
};

}  // namespace performer
