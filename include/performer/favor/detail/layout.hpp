/// @file favor/detail/layout.hpp
/// @brief What the float and bfloat16 FAVOR+ passes share outside their products: where a
/// bidirectional pass cuts the keys into segments, how padded keys leave the sums, and how a
/// row's numerator and denominator become its output.
#pragma once

#include <algorithm>
#include <limits>
#include <type_traits>

#include "../../core/attention_mask.hpp"
#include "../../core/types.hpp"

namespace performer::detail {

/**
 * @brief The segments a bidirectional pass sums its key states over, in parallel: at most
 * `most`, each of at least `min_segment` keys (one for a shorter sequence), cut at n s / count.
 * A function of n and the options only, never of the thread count, so the states' sum is the
 * same bits on any number of threads.
 */
struct key_segments {
  index_t n;
  index_t count;

  key_segments(index_t keys, index_t most, index_t min_segment)
      : n(keys), count(std::clamp<index_t>(keys / min_segment, 1, most)) {}

  /// First key of segment s (s = count gives n).
  [[nodiscard]] index_t start(index_t s) const { return n * s / count; }
};

/// Gives the padded keys among rows [r0, r0 + log_scale.size()) log scale -inf: their weight
/// exp(-inf - shift) is then exactly 0, so they leave both the state and z.
template <class LogScale>
void drop_padded_keys(const attention_mask& mask, index_t r0, LogScale&& log_scale) {
  if (mask.key_mask.empty()) return;
  using scalar = typename std::decay_t<LogScale>::Scalar;
  for (index_t j = 0; j < log_scale.size(); ++j) {
    if (!mask.keeps(static_cast<std::size_t>(r0 + j))) {
      log_scale(j) = -std::numeric_limits<scalar>::infinity();
    }
  }
}

/**
 * @brief out rows (queries row0, row0 + 1, ...) = num / den. den = 0 exactly means a zero row
 * for a query that sees no key (row0 + r < seeing), and for one that does, that every visible
 * weight underflowed or the map's estimates cancelled: that row is set to NaN, which the
 * caller's result check reports (throwing here, inside a parallel region, would terminate).
 */
template <class Num, class Den, class Out>
void normalise_rows(const Num& num, const Den& den, Out&& out_rows, index_t row0, index_t seeing) {
  using T = typename std::decay_t<Out>::Scalar;
  using Acc = typename Den::Scalar;
  for (index_t r = 0; r < out_rows.rows(); ++r) {
    if (den(r) == Acc(0)) {
      out_rows.row(r).setConstant(row0 + r < seeing ? T(0) : std::numeric_limits<T>::quiet_NaN());
    } else {
      out_rows.row(r) = (num.row(r) / den(r)).template cast<T>();
    }
  }
}

}  // namespace performer::detail
