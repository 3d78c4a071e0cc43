/// @file softmax/softmax_attention.hpp
/// @brief Exact softmax attention, materialized: the reference every other mechanism is
/// measured against (Vaswani et al. 2017, section 3.2.1).
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>

#include "../core/attention_mask.hpp"
#include "../core/concepts.hpp"
#include "../core/validate.hpp"
#include "../core/types.hpp"

namespace performer {

namespace detail {

/// The N_q x N_k weights of softmax attention into `weights` (resized), row by row: the row
/// maximum subtracted before the exponential, masked keys zeroed, an all-zero row for a query
/// that sees no key.
/// @throws performer::invalid_argument if a visible row has no finite logit (overflow).
template <class T>
void softmax_weights(const char* who, const const_matrix_ref<T>& q, const const_matrix_ref<T>& k,
                     const attention_mask& mask, row_matrix<T>& weights) {
  const index_t n_q = q.rows();
  const index_t n_k = k.rows();
  const T scale = T(1) / std::sqrt(static_cast<T>(q.cols()));
  weights.resize(n_q, n_k);
  weights.noalias() = scale * (q * k.transpose());
  const index_t seeing = first_seeing_query(mask, n_q, n_k);
  for (index_t i = 0; i < n_q; ++i) {
    auto row = weights.row(i);
    if (i < seeing) {  // every key this query may see is padding
      row.setZero();
      continue;
    }
    const index_t visible = mask.causal ? i + 1 : n_k;
    T row_max = -std::numeric_limits<T>::infinity();
    for (index_t j = 0; j < visible; ++j) {
      if (mask.keeps(static_cast<std::size_t>(j))) row_max = std::max(row_max, row(j));
    }
    // Visible keys but no finite maximum: every logit overflowed to -inf or is NaN (std::max
    // skips NaN). A NaN beside a finite maximum reaches the caller's result check.
    PERFORMER_PRECONDITION(row_max > -std::numeric_limits<T>::infinity(), who,
                           overflow_text);
    row.tail(n_k - visible).setZero();
    // Masked entries are zeroed explicitly: Eigen's vectorised exp clamps and never returns 0.
    auto head = row.head(visible).array();
    head = (head - row_max).exp();
    if (!mask.key_mask.empty()) {
      for (index_t j = 0; j < visible; ++j) {
        if (!mask.keeps(static_cast<std::size_t>(j))) head(j) = T(0);
      }
    }
    head /= head.sum();
  }
}

}  // namespace detail

/**
 * @brief Exact softmax attention that materializes the N_q x N_k weight matrix.
 *
 * out = softmax(q k^T / sqrt(d)) v, row by row, with the row maximum subtracted before the
 * exponential (stable for logits of any finite size), masked keys removed from both the weighted
 * sum and the normaliser, and an all-zero row for a query that sees no key.
 *
 * Complexity: time O(N_q N_k (d + d_v)); workspace O(N_q N_k) (the weight matrix). It is the
 * plain reference; tiled_softmax_attention gives the same result in O(1) workspace in N.
 *
 * @tparam T scalar type (float, double).
 */
template <real_scalar T>
class softmax_attention {
 public:
  using scalar_type = T;
  static constexpr bool supports_causal = true;
  static constexpr bool key_permutation_invariant = true;
  static constexpr bool query_independent = true;

  /// Scratch memory: the N_q x N_k weight matrix.
  struct workspace_type {
    row_matrix<T> weights;
  };

  /**
   * @brief Computes attention for one head.
   * @param q N_q x d queries. @param k N_k x d keys. @param v N_k x d_v values.
   * @param out N_q x d_v result, sized by the caller, not overlapping q, k or v.
   * @param mask causal flag and key padding (see attention_mask).
   * @param ws scratch memory, reused across calls.
   * @throws performer::invalid_argument on bad shapes, empty or non-finite input, a mask of the
   * wrong length, causal with N_q != N_k, aliasing, or logits that overflow T.
   */
  void forward(const const_matrix_ref<T>& q, const const_matrix_ref<T>& k,
               const const_matrix_ref<T>& v, matrix_ref<T> out, const attention_mask& mask,
               workspace_type& ws) const;
};

static_assert(attention_mechanism<softmax_attention<float>>);
static_assert(attention_mechanism<softmax_attention<double>>);

template <real_scalar T>
void softmax_attention<T>::forward(const const_matrix_ref<T>& q, const const_matrix_ref<T>& k,
                                   const const_matrix_ref<T>& v, matrix_ref<T> out,
                                   const attention_mask& mask, workspace_type& ws) const {
  constexpr const char* who = "softmax_attention::forward";
  check_attention_args<T>(who, q, k, v, out, mask);
  detail::softmax_weights<T>(who, q, k, mask, ws.weights);
  out.noalias() = ws.weights * v;
  require_finite_result(who, out);
}

}  // namespace performer
