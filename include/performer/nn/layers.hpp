/// @file nn/layers.hpp
/// @brief The layers a Transformer block is built from, apart from attention: LayerNorm, the
/// feed-forward non-linearities and seeded Xavier initialisation.
#pragma once

#include <cmath>

#include "../core/types.hpp"
#include "../random/detail/generator.hpp"

namespace performer {

/// Where LayerNorm sits: before each sublayer (pre-LN, the default: stable without warm-up) or
/// after each residual sum (post-LN, the original Transformer).
enum class norm_placement { pre, post };

/// Non-linearity of the feed-forward sublayer.
enum class activation { gelu, relu };

namespace detail {

/// A LayerNorm row's statistics: out = (row / s - mean) * inv_std * gain + bias.
template <class T>
struct norm_statistics {
  T s, mean, inv_std;
};

/// The statistics of one row (LayerNorm's forward and backward both use them, so that both
/// take the same path). A finite row whose sum or squared deviations overflow T (entries beyond
/// ~1e19 in float) is divided by its largest magnitude s first: LayerNorm is unchanged by that
/// except that eps becomes eps / s^2, so every finite row gives a finite result. The common path
/// has s = 1.
template <class T, class Row>
norm_statistics<T> row_statistics(const Row& row, T eps) {
  const T inv_d = T(1) / static_cast<T>(row.size());
  T s = T(1);
  T mean = row.sum() * inv_d;
  T var = (row - mean).square().sum() * inv_d;
  if (!std::isfinite(var)) {
    s = row.abs().maxCoeff();
    mean = (row / s).sum() * inv_d;
    var = (row / s - mean).square().sum() * inv_d;
  }
  // 0 only for a constant row whose eps / s^2 underflowed: its deviations are all 0.
  const T denom = var + eps / (s * s);
  return {s, mean, denom > T(0) ? T(1) / std::sqrt(denom) : T(0)};
}

/// Row-wise LayerNorm: out_i = (x_i - mean_i) / sqrt(var_i + eps) * gain + bias (see
/// row_statistics for rows whose moments overflow).
template <class T, class In, class Out>
void layer_norm(const In& x, const row_vector<T>& gain, const row_vector<T>& bias, T eps,
                Out&& out) {
  for (index_t i = 0; i < x.rows(); ++i) {
    const auto row = x.row(i).array();
    const norm_statistics<T> st = row_statistics<T>(row, eps);
    out.row(i) = ((row / st.s - st.mean) * st.inv_std * gain.array() + bias.array()).matrix();
  }
}

template <class T, class M>
void apply_activation(activation act, M&& m) {
  if (act == activation::relu) {
    m = m.cwiseMax(T(0));
  } else {  // exact GELU, x Phi(x)
    const T inv_sqrt2 = T(1) / std::sqrt(T(2));
    m = m.unaryExpr([inv_sqrt2](T x) { return T(0.5) * x * (T(1) + std::erf(x * inv_sqrt2)); });
  }
}

template <class T>
void fill_uniform(row_matrix<T>& w, index_t rows, index_t cols, xoshiro256ss& rng) {
  // Xavier/Glorot uniform: keeps activations' variance across layers at initialisation.
  const double bound = std::sqrt(6.0 / static_cast<double>(rows + cols));
  w.resize(rows, cols);
  for (index_t i = 0; i < rows; ++i) {
    for (index_t j = 0; j < cols; ++j) w(i, j) = static_cast<T>((2.0 * rng.uniform() - 1.0) * bound);
  }
}

}  // namespace detail

}  // namespace performer
