/// @file nn/detail/cross_attention.hpp
/// @brief transformer_block's cross-attention sublayer and the memory's projections, and one
/// mechanism call per head (which self-attention uses too).
#pragma once

#include "../../core/attention_mask.hpp"
#include "../../core/types.hpp"
#include "../block_config.hpp"
#include "../layers.hpp"

namespace performer::detail {

/// Cross-attention's keys and values: memory W_ck + b_ck and memory W_cv + b_cv (M x d_model).
template <class T>
void project_memory(const block_parameters<T>& p, const const_matrix_ref<T>& memory,
                    row_matrix<T>& k, row_matrix<T>& v) {
  k.resize(memory.rows(), p.w_ck.cols());
  v.resize(memory.rows(), p.w_cv.cols());
  k.noalias() = memory * p.w_ck;
  k.rowwise() += p.b_ck;
  v.noalias() = memory * p.w_cv;
  v.rowwise() += p.b_cv;
}

/// context's head h = a(q's head h, k's, v's) for each of `heads` column slices, one after another.
template <class A, class Q, class K, class V, class C>
void attend_heads(const A& a, index_t heads, const Q& q, const K& k, const V& v, C& context,
                  const attention_mask& mask, typename A::workspace_type& ws) {
  const index_t dh = q.cols() / heads;
  for (index_t h = 0; h < heads; ++h) {
    a.forward(q.middleCols(h * dh, dh), k.middleCols(h * dh, dh), v.middleCols(h * dh, dh),
              context.middleCols(h * dh, dh), mask, ws);
  }
}

/// Cross-attention's sublayer on y (N x d_model), in place: pre-LN y += MHA_c(LN3(y)), post-LN
/// y = LN3(y + MHA_c(y)). `attend()` fills context from the cross queries in q; normed, q and
/// context are N x d_model scratch.
template <class T, class Attend>
void cross_sublayer(const block_parameters<T>& p, bool pre, T eps, matrix_ref<T> y,
                    row_matrix<T>& normed, row_matrix<T>& q, row_matrix<T>& context,
                    Attend&& attend) {
  if (pre) layer_norm(y, p.norm3_gain, p.norm3_bias, eps, normed);
  q.noalias() = (pre ? const_matrix_ref<T>(normed) : const_matrix_ref<T>(y)) * p.w_cq;
  q.rowwise() += p.b_cq;
  attend();
  y.noalias() += context * p.w_co;
  y.rowwise() += p.b_co;
  if (!pre) {
    layer_norm(y, p.norm3_gain, p.norm3_bias, eps, normed);
    y = normed;
  }
}

}  // namespace performer::detail
