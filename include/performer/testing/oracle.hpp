/// @file testing/oracle.hpp
/// @brief Independent references for tests (no GoogleTest needed): textbook softmax attention
/// with scalar loops and long double accumulation, written without any of the library's code
/// paths, so that a test comparing a mechanism with it compares two independent computations.
#pragma once

#include <algorithm>
#include <cmath>
#include <complex>
#include <cstdint>
#include <limits>
#include <span>
#include <vector>

#include "../core/attention_mask.hpp"
#include "../core/types.hpp"

namespace performer::oracle {

/// How the reference forms its keys.
struct oracle_options {
  /// Reformer's shared-QK attention: key j is q_j / |q_j| (a zero row stays zero) and a query
  /// attends to itself only when it sees no other key (docs/algorithms.md §6.1).
  bool shared_qk = false;
};

/**
 * @brief Softmax attention over an explicit set of pairs: out_i = sum_j w_ij v_j over the keys
 * j with visible(i, j), w_ij = exp(s_ij - max) / sum exp(s_ij - max), s_ij = q_i . k_j / sqrt(d).
 * A query that sees no key gets a zero row. Logits and sums in long double, so that a float or
 * double mechanism's rounding is measured against something much more precise.
 * O(N_q N_k (d + d_v)).
 */
template <class MQ, class MK, class MV, class Visible>
row_matrix<double> softmax_over(const MQ& q, const MK& k, const MV& v, Visible&& visible,
                                const oracle_options& options = {}) {
  using ld = long double;
  const index_t n_q = q.rows();
  const index_t n_k = v.rows();
  const index_t d = q.cols();
  const ld scale = 1.0L / std::sqrt(static_cast<ld>(d));
  std::vector<ld> norm(static_cast<std::size_t>(options.shared_qk ? n_k : 0), 1.0L);
  for (std::size_t j = 0; j < norm.size(); ++j) {
    ld s = 0;
    for (index_t c = 0; c < d; ++c) {
      s += static_cast<ld>(q(static_cast<index_t>(j), c)) * static_cast<ld>(q(static_cast<index_t>(j), c));
    }
    norm[j] = s > 0 ? std::sqrt(s) : 1.0L;
  }
  const auto key = [&](index_t j, index_t c) -> ld {
    return options.shared_qk ? static_cast<ld>(q(j, c)) / norm[static_cast<std::size_t>(j)]
                             : static_cast<ld>(k(j, c));
  };
  row_matrix<double> out = row_matrix<double>::Zero(n_q, v.cols());
  std::vector<ld> s(static_cast<std::size_t>(n_k));
  std::vector<ld> acc(static_cast<std::size_t>(v.cols()));
  for (index_t i = 0; i < n_q; ++i) {
    std::vector<index_t> seen;
    for (index_t j = 0; j < n_k; ++j) {
      if (visible(i, j)) seen.push_back(j);
    }
    // Shared-QK: a token attends to itself only when it has no other key.
    if (options.shared_qk && seen.size() > 1) std::erase(seen, i);
    if (seen.empty()) continue;
    ld top = -std::numeric_limits<ld>::infinity();
    for (const index_t j : seen) {
      ld dot = 0;
      for (index_t c = 0; c < d; ++c) dot += static_cast<ld>(q(i, c)) * key(j, c);
      s[static_cast<std::size_t>(j)] = dot * scale;
      top = std::max(top, s[static_cast<std::size_t>(j)]);
    }
    ld total = 0;
    std::fill(acc.begin(), acc.end(), 0.0L);
    for (const index_t j : seen) {
      const ld w = std::exp(s[static_cast<std::size_t>(j)] - top);
      total += w;
      for (index_t c = 0; c < v.cols(); ++c) acc[static_cast<std::size_t>(c)] += w * static_cast<ld>(v(j, c));
    }
    for (index_t c = 0; c < v.cols(); ++c) {
      out(i, c) = static_cast<double>(acc[static_cast<std::size_t>(c)] / total);
    }
  }
  return out;
}

/**
 * @brief out_i = softmax attention of query i over the keys it may see under `mask` (the key
 * mask, and j <= i when causal); see softmax_over. With options.shared_qk the keys are the
 * normalised queries (`k` is not read).
 */
template <class MQ, class MK, class MV>
row_matrix<double> softmax_attention(const MQ& q, const MK& k, const MV& v,
                                     const attention_mask& mask = {},
                                     const oracle_options& options = {}) {
  return softmax_over(
      q, k, v,
      [&](index_t i, index_t j) {
        return (!mask.causal || j <= i) && mask.keeps(static_cast<std::size_t>(j));
      },
      options);
}

/// True when query i sees at least one key under `mask` (N_k keys).
[[nodiscard]] inline bool sees_a_key(const attention_mask& mask, index_t i, index_t n_k) {
  const index_t last = mask.causal ? std::min(i + 1, n_k) : n_k;
  for (index_t j = 0; j < last; ++j) {
    if (mask.keeps(static_cast<std::size_t>(j))) return true;
  }
  return false;
}

/**
 * @brief Row-wise LayerNorm, (x_i - mean_i) / sqrt(var_i + eps) * gain + bias (biased
 * variance), with long double sums. O(N d).
 */
template <class MX, class MG, class MB>
row_matrix<double> layer_norm(const MX& x, const MG& gain, const MB& bias, double eps) {
  using ld = long double;
  row_matrix<double> out(x.rows(), x.cols());
  for (index_t i = 0; i < x.rows(); ++i) {
    ld mean = 0;
    for (index_t c = 0; c < x.cols(); ++c) mean += static_cast<ld>(x(i, c));
    mean /= static_cast<ld>(x.cols());
    ld var = 0;
    for (index_t c = 0; c < x.cols(); ++c) {
      const ld dev = static_cast<ld>(x(i, c)) - mean;
      var += dev * dev;
    }
    var /= static_cast<ld>(x.cols());
    const ld inv_std = 1.0L / std::sqrt(var + static_cast<ld>(eps));
    for (index_t c = 0; c < x.cols(); ++c) {
      out(i, c) = static_cast<double>((static_cast<ld>(x(i, c)) - mean) * inv_std *
                                          static_cast<ld>(gain(c)) +
                                      static_cast<ld>(bias(c)));
    }
  }
  return out;
}

/**
 * @brief Rotary position embedding written as complex multiplication: in each head of width d,
 * the channel pair i (channels i and i + d/2, or 2i and 2i + 1 when `interleaved`) is the complex
 * number a + ib, multiplied by e^(i p theta_i), theta_i = base^(-2i/d), p = first_position + row.
 * Angles and products in long double. O(N H d).
 */
template <class MX>
row_matrix<double> rotary(const MX& x, index_t head_dim, double base, bool interleaved,
                          index_t first_position = 0) {
  using ld = long double;
  row_matrix<double> out(x.rows(), x.cols());
  const index_t half = head_dim / 2;
  for (index_t r = 0; r < x.rows(); ++r) {
    for (index_t h = 0; h < x.cols() / head_dim; ++h) {
      for (index_t i = 0; i < half; ++i) {
        const index_t a = h * head_dim + (interleaved ? 2 * i : i);
        const index_t b = h * head_dim + (interleaved ? 2 * i + 1 : i + half);
        const ld theta = std::pow(static_cast<ld>(base), -2.0L * static_cast<ld>(i) / static_cast<ld>(head_dim));
        const std::complex<ld> z(static_cast<ld>(x(r, a)), static_cast<ld>(x(r, b)));
        const std::complex<ld> w = z * std::polar(1.0L, static_cast<ld>(first_position + r) * theta);
        out(r, a) = static_cast<double>(w.real());
        out(r, b) = static_cast<double>(w.imag());
      }
    }
  }
  return out;
}

}  // namespace performer::oracle
