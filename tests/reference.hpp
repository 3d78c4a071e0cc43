// Independent reference for the tests: textbook softmax attention with scalar loops in double
// (long double accumulation), written without any of the library's code paths.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include <performer/types.hpp>

namespace performer::test {

template <class M>
row_matrix<double> to_double(const M& m) {
  return m.template cast<double>();
}

/// out_i = sum_j w_ij v_j with w_ij = exp(s_ij - max) / sum, s_ij = q_i.k_j / sqrt(d),
/// over the keys j that query i may see. A query that sees no key gets zeros.
inline row_matrix<double> naive_attention(const row_matrix<double>& q, const row_matrix<double>& k,
                                          const row_matrix<double>& v, bool causal = false,
                                          const std::vector<std::uint8_t>& keep = {}) {
  const index n_q = q.rows();
  const index n_k = k.rows();
  const double scale = 1.0 / std::sqrt(static_cast<double>(q.cols()));
  row_matrix<double> out = row_matrix<double>::Zero(n_q, v.cols());
  for (index i = 0; i < n_q; ++i) {
    std::vector<double> s(static_cast<std::size_t>(n_k));
    double mx = -INFINITY;
    for (index j = 0; j < n_k; ++j) {
      const bool visible = (!causal || j <= i) && (keep.empty() || keep[static_cast<std::size_t>(j)] != 0);
      if (!visible) {
        s[static_cast<std::size_t>(j)] = -INFINITY;
        continue;
      }
      long double dot = 0;
      for (index c = 0; c < q.cols(); ++c) dot += static_cast<long double>(q(i, c)) * k(j, c);
      s[static_cast<std::size_t>(j)] = static_cast<double>(dot) * scale;
      mx = std::max(mx, s[static_cast<std::size_t>(j)]);
    }
    if (mx == -INFINITY) continue;
    long double total = 0;
    std::vector<long double> acc(static_cast<std::size_t>(v.cols()), 0.0L);
    for (index j = 0; j < n_k; ++j) {
      if (s[static_cast<std::size_t>(j)] == -INFINITY) continue;
      const long double w = std::exp(static_cast<long double>(s[static_cast<std::size_t>(j)] - mx));
      total += w;
      for (index c = 0; c < v.cols(); ++c) acc[static_cast<std::size_t>(c)] += w * v(j, c);
    }
    for (index c = 0; c < v.cols(); ++c) out(i, c) = static_cast<double>(acc[static_cast<std::size_t>(c)] / total);
  }
  return out;
}

}  // namespace performer::test
