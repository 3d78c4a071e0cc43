/// @file testing/helpers.hpp
/// @brief Small helpers for tests and benchmarks of attention mechanisms (no GoogleTest needed):
/// seeded random inputs, a one-shot run, and a scale-aware difference.
#pragma once

#include <cstdint>
#include <cstring>

#include "../core/attention_mask.hpp"
#include "../random/detail/generator.hpp"
#include "../core/types.hpp"

namespace performer::conformance {

/// Uniform [-scale, scale) entries from a fixed seed.
template <class T>
row_matrix<T> random_matrix(index_t rows, index_t cols, std::uint64_t seed, double scale = 1.0) {
  detail::xoshiro256ss rng(seed);
  row_matrix<T> m(rows, cols);
  for (index_t i = 0; i < rows; ++i) {
    for (index_t j = 0; j < cols; ++j) m(i, j) = static_cast<T>((2 * rng.uniform() - 1) * scale);
  }
  return m;
}

/// Runs the mechanism with a fresh workspace.
template <class A>
row_matrix<typename A::scalar_type> run(const A& a,
                                        const const_matrix_ref<typename A::scalar_type>& q,
                                        const const_matrix_ref<typename A::scalar_type>& k,
                                        const const_matrix_ref<typename A::scalar_type>& v,
                                        const attention_mask& mask = {}) {
  row_matrix<typename A::scalar_type> out(q.rows(), v.cols());
  typename A::workspace_type ws;
  a.forward(q, k, v, out, mask, ws);
  return out;
}

/// max |a - b| / (1 + max |b|): relative to the output's own scale.
template <class MA, class MB>
double relative_difference(const MA& a, const MB& b) {
  const double scale = 1.0 + static_cast<double>(b.cwiseAbs().maxCoeff());
  return static_cast<double>((a - b).cwiseAbs().maxCoeff()) / scale;
}

/// True when a and b hold the same bits (so -0 and +0 are told apart, and two NaNs with the same
/// payload are equal, which == would call different).
template <class A, class B>
[[nodiscard]] bool same_bits(const A& a, const B& b) {
  if (a.rows() != b.rows() || a.cols() != b.cols()) return false;
  for (index_t i = 0; i < a.rows(); ++i) {
    for (index_t j = 0; j < a.cols(); ++j) {
      const auto x = a(i, j);
      const auto y = b(i, j);
      if (std::memcmp(&x, &y, sizeof x) != 0) return false;
    }
  }
  return true;
}

}  // namespace performer::conformance
