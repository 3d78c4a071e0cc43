/// @file favor/detail/accumulator.hpp
/// @brief Casting FAVOR+'s features and values to the accumulator type (favor_attention's Acc)
/// into reusable buffers, or passing them through when the types agree.
#pragma once

#include <algorithm>
#include <type_traits>

#include "../../core/types.hpp"

namespace performer::detail {

/// A cast copy of `m` in the top rows of `buffer`. The buffer only ever grows: a ragged last
/// chunk must not shrink it, or the next call's full chunk would allocate again.
template <class Acc, class M>
auto cast_into(const M& m, row_matrix<Acc>& buffer) {
  if (buffer.rows() < m.rows() || buffer.cols() != m.cols()) {
    buffer.resize(std::max(buffer.rows(), m.rows()), m.cols());
  }
  auto rows = buffer.topRows(m.rows());
  rows = m.template cast<Acc>();
  return rows;
}

/// Returns `m` itself when its scalar is already Acc, else a cast copy held in `buffer`.
template <class Acc, class M>
decltype(auto) as_accumulator(const M& m, row_matrix<Acc>& buffer) {
  if constexpr (std::is_same_v<typename M::Scalar, Acc>) {
    static_cast<void>(buffer);
    return (m);
  } else {
    return cast_into<Acc>(m, buffer);
  }
}

}  // namespace performer::detail
