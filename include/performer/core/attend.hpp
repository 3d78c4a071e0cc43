/// @file core/attend.hpp
/// @brief Convenience entry point: run any attention mechanism on Eigen expressions and get a
/// new matrix back.
#pragma once

#include <type_traits>

#include "attention_mask.hpp"
#include "concepts.hpp"
#include "types.hpp"

namespace performer {

/**
 * @brief out = attention(q, k, v) for one head, allocating the result and a workspace.
 *
 * Accepts any Eigen expressions with the mechanism's scalar; inputs that are not row-major are
 * copied once. Hot loops should call `a.forward` with their own output and workspace instead.
 * @throws whatever `a.forward` throws (performer::invalid_argument on bad input).
 */
template <attention_mechanism A, class DQ, class DK, class DV>
[[nodiscard]] row_matrix<typename A::scalar_type> attend(const A& a,
                                                         const Eigen::MatrixBase<DQ>& q,
                                                         const Eigen::MatrixBase<DK>& k,
                                                         const Eigen::MatrixBase<DV>& v,
                                                         const attention_mask& mask = {}) {
  using T = typename A::scalar_type;
  static_assert(std::is_same_v<typename DQ::Scalar, T> && std::is_same_v<typename DK::Scalar, T> &&
                    std::is_same_v<typename DV::Scalar, T>,
                "performer::attend: q, k and v must have the mechanism's scalar type");
  row_matrix<T> out(q.rows(), v.cols());
  typename A::workspace_type ws;
  a.forward(q, k, v, out, mask, ws);
  return out;
}

}  // namespace performer
