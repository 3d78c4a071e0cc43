/// @file favor/detail/bf16_state_products.hpp
/// @brief The causal pass's fold, carried product and chunk scores on bfloat16 operands with
/// float sums (favor_bf16_attention's causal path, docs/algorithms.md §10.2), and the
/// power-of-two scaling that brings the values into bfloat16's range first.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>

#include "../../core/bfloat16.hpp"
#include "../../core/detail/bf16_product.hpp"
#include "../../core/detail/online_softmax.hpp"
#include "../../core/detail/parallel.hpp"
#include "../../core/types.hpp"
#include "../state.hpp"

namespace performer::detail::bf16 {

/// v scaled by 2^-e, e = ilogb(max|v|) + 1, has its largest entry in [1/2, 1): exact, and values
/// that would round past bfloat16's largest or fall below its smallest normal (VDPBF16PS and
/// AMX read subnormals as zero) keep their size relative to the others. 2^±e go as two factors
/// each, as 2^148 is not a float.
struct value_scaling {
  int exponent = 0;
  std::array<float, 2> down{1.0f, 1.0f};  ///< their product is 2^-e
  std::array<float, 2> up{1.0f, 1.0f};    ///< their product is 2^e

  explicit value_scaling(const const_matrix_ref<float>& v) {
    const float v_max = reduce_row_ranges(
        v.rows(), v.size(), 0.0f,
        [&](index_t r0, index_t r1) { return v.middleRows(r0, r1 - r0).cwiseAbs().maxCoeff(); },
        [](float a, float b) { return std::max(a, b); });
    exponent = v_max > 0.0f ? std::ilogb(v_max) + 1 : 0;
    down = {std::ldexp(1.0f, -exponent / 2), std::ldexp(1.0f, -exponent + exponent / 2)};
    up = {std::ldexp(1.0f, exponent / 2), std::ldexp(1.0f, exponent - exponent / 2)};
  }
};

/// [S z] (M x (d_v + 1), z in the last column) rounded and packed as pairs of features, the
/// right operand of phi(Q) [S z]: den comes out of the same product as num. O(M d_v).
inline void pack_state(const favor_state<float>& st, packed_rhs& out) {
  const index_t m = st.sum.rows();
  const index_t d_v = st.sum.cols();
  out.reset(m, d_v + 1);
  for (index_t p = 0; p < (m + 1) / 2; ++p) {
    const bool odd = 2 * p + 1 < m;
    pack_two_rows(&st.sum(2 * p, 0), 1.0f, odd ? &st.sum(2 * p + 1, 0) : nullptr, 1.0f, d_v,
                  out.row(p), nullptr);
    out.row(p)[d_v] = pack(st.norm(2 * p), odd ? st.norm(2 * p + 1) : 0.0f);
  }
}

/**
 * @brief The two O(N M d_v) products of favor_attention's causal pass (detail::causal_pass), and
 * the chunk's scores, on bfloat16 operands: the fold S += phi_w(K_c)^T V_c of a chunk's keys,
 * its weighted features rounded as pairs of keys and z summed from the same rounded values
 * (favor_bf16_attention's bidirectional key state folds its blocks with it too); the carried
 * product phi(Q_c) [S z], with [S z] rounded and packed per chunk; and the scores
 * phi(Q_c) phi(K_c)^T of the chunk's masked C x C product, O(N C M). The state holds the values
 * scaled by 2^-e (value_scaling); the carried numerators come back scaled by 2^e. Only the
 * chunk's A V_c, O(N C d_v), stays float.
 *
 * Each thread keeps its packed operands (thread-local, grown only). Per chunk of C tokens:
 * O(C M (d_v + C)) in the products, O(M (d_v + C)) to round and pack [S z] and phi(K_c).
 */
struct state_products {
  bf16_backend backend;
  value_scaling scaling;

  template <class Phi, class LogScale>
  void fold(const Phi& phi, const LogScale& log_scale, const const_matrix_ref<float>& v,
            favor_state<float>& st, float new_c) const {
    if (new_c == -std::numeric_limits<float>::infinity()) return;  // every key is padding
    st.raise(new_c);
    const index_t rows = phi.rows();
    const index_t m = phi.cols();
    const index_t d_v = v.cols();
    const index_t key_pairs = (rows + 1) / 2;
    thread_local scratch s;
    s.pairs.resize(static_cast<std::size_t>(key_pairs * m));
    for (index_t p = 0; p < key_pairs; ++p) {
      const bool odd = 2 * p + 1 < rows;
      pack_two_rows(&phi(2 * p, 0), shifted_exp(log_scale(2 * p), st.shift),
                    odd ? &phi(2 * p + 1, 0) : nullptr,
                    odd ? shifted_exp(log_scale(2 * p + 1), st.shift) : 0.0f, m,
                    s.pairs.data() + p * m, st.norm.data());
    }
    if (s.values.rows() < rows || s.values.cols() != d_v) s.values.resize(rows, d_v);
    auto values = s.values.topRows(rows);
    values = (v * scaling.down[0]) * scaling.down[1];
    s.rhs.reset(rows, d_v);
    for (index_t p = 0; p < key_pairs; ++p) {
      pack_two_rows(&values(2 * p, 0), 1.0f, 2 * p + 1 < rows ? &values(2 * p + 1, 0) : nullptr,
                    1.0f, d_v, s.rhs.row(p), nullptr);
    }
    product({s.pairs.data(), m, 1, m}, s.rhs, st.sum.data(), d_v, backend);
  }

  template <class PhiQ, class Num, class Den>
  void carried(const PhiQ& phi_q, const favor_state<float>& carried, Num& num, Den& den) const {
    const index_t rows = phi_q.rows();
    const index_t m = carried.sum.rows();
    const index_t d_v = carried.sum.cols();
    thread_local scratch s;
    pack_state(carried, s.rhs);
    const index_t row_pairs = (m + 1) / 2;
    s.pairs.resize(static_cast<std::size_t>(rows * row_pairs));
    for (index_t i = 0; i < rows; ++i) pack_row(&phi_q(i, 0), m, s.pairs.data() + i * row_pairs);
    if (s.values.rows() < rows || s.values.cols() != d_v + 1) s.values.resize(rows, d_v + 1);
    product({s.pairs.data(), rows, row_pairs, 1}, s.rhs, s.values.data(), d_v + 1, backend,
            /*accumulate=*/false);
    num = (s.values.topLeftCorner(rows, d_v) * scaling.up[0]) * scaling.up[1];
    den = s.values.col(d_v).head(rows);
  }

  /// The chunk's scores phi(Q_c) phi(K_c)^T (rows x keys, into a row-major block), both features
  /// rounded: the weights exp(log_k_j - shift_i) and the values join them afterwards in float.
  template <class PhiQ, class PhiK, class Scores>
  void scores(const PhiQ& phi_q, const PhiK& phi_k, Scores& out) const {
    const index_t rows = phi_q.rows();
    const index_t keys = phi_k.rows();
    const index_t m = phi_q.cols();
    const index_t row_pairs = (m + 1) / 2;
    thread_local scratch s;
    thread_local aligned_buffer<pair> key_rows;
    s.pairs.resize(static_cast<std::size_t>(rows * row_pairs));
    for (index_t i = 0; i < rows; ++i) pack_row(&phi_q(i, 0), m, s.pairs.data() + i * row_pairs);
    key_rows.resize(static_cast<std::size_t>(keys * row_pairs));
    for (index_t j = 0; j < keys; ++j) pack_row(&phi_k(j, 0), m, key_rows.data() + j * row_pairs);
    // The right operand is the keys' rows transposed: row p of pairs holds pair p of every key.
    s.rhs.reset(m, keys);
    transpose_pairs(key_rows.data(), row_pairs, row_pairs, keys, s.rhs.row(0), s.rhs.stride);
    product({s.pairs.data(), rows, row_pairs, 1}, s.rhs, out.data(), out.outerStride(), backend,
            /*accumulate=*/false);
  }

 private:
  /// One thread's operands: a left operand of pairs, a packed right one, a float block.
  struct scratch {
    aligned_buffer<pair> pairs;
    packed_rhs rhs;
    row_matrix<float> values;
  };
};

}  // namespace performer::detail::bf16
