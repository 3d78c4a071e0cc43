/// @file nn/head_decoder.hpp
/// @brief One head's streaming state for step-by-step causal decoding: FAVOR+'s recurrent state,
/// or a key/value cache for mechanisms whose queries are independent of each other.
#pragma once

#include <algorithm>

#include "../core/attention_mask.hpp"
#include "../core/concepts.hpp"
#include "../core/error.hpp"
#include "../core/types.hpp"
#include "../favor/favor_attention.hpp"
#include "../favor/favor_decoder.hpp"

namespace performer {

/**
 * @brief The state one head carries from token to token, so that step() gives the output of
 * the mechanism's causal forward for the newest token without revisiting the context.
 *
 * This primary template is a key/value cache: step() appends (k, v) and runs the mechanism's
 * forward for the one query over every cached key. That equals the causal row only when the
 * mechanism declares `query_independent` (a query's output depends on nothing but itself and
 * the keys it may see: exact attention, materialized or tiled). Other mechanisms, LSH attention
 * among them (a token's buckets and chunks depend on the whole sequence), have no incremental
 * path: constructing their decoder throws.
 *
 * Complexity: step() O(n (d + d_v)) at context n (the mechanism's cost for one query); memory
 * O(n (d + d_v)), growing by doubling.
 */
template <attention_mechanism A>
class head_decoder {
 public:
  using scalar_type = typename A::scalar_type;

  /**
   * @param a the mechanism every step() will be given. @param head_dim d. @param value_dim d_v.
   * @throws performer::invalid_argument if A is not query_independent, or value_dim is not
   * positive.
   */
  head_decoder(const A& /*a*/, index_t head_dim, index_t value_dim) {
    PERFORMER_PRECONDITION(
        is_query_independent<A>,
        "head_decoder: this mechanism has no step-by-step decoding: it keeps no recurrent state "
        "and does not declare query_independent (LSH attention is such a mechanism: a token's "
        "buckets depend on the whole sequence); run forward() with causal masking instead");
    PERFORMER_PRECONDITION(head_dim > 0 && value_dim > 0, "head_decoder: head_dim (", head_dim,
                           ") and value_dim (", value_dim, ") must be positive");
    keys_.resize(0, head_dim);
    values_.resize(0, value_dim);
  }

  /// Tokens seen so far.
  [[nodiscard]] index_t position() const noexcept { return n_; }

  /// Forgets the context (keeps the cache's memory).
  void reset() noexcept { n_ = 0; }

  /**
   * @brief Adds n tokens' keys and values to the context without outputs (e.g. a prompt whose
   * outputs are not needed), reserving room to double the context so the steps after it do
   * not reallocate at once.
   * @throws performer::invalid_argument on shape mismatch or non-finite values (nothing added).
   */
  void prime(const const_matrix_ref<scalar_type>& k, const const_matrix_ref<scalar_type>& v) {
    constexpr const char* who = "head_decoder::prime";
    PERFORMER_PRECONDITION(k.cols() == keys_.cols() && v.cols() == values_.cols() &&
                               k.rows() == v.rows(),
                           who, ": k is ", detail::shape(k), " and v is ", detail::shape(v),
                           ", expected n x ", keys_.cols(), " and n x ", values_.cols());
    require_finite(who, "k", k);
    require_finite(who, "v", v);
    reserve(n_ + k.rows());
    keys_.middleRows(n_, k.rows()) = k;
    values_.middleRows(n_, v.rows()) = v;
    n_ += k.rows();
  }

  /**
   * @brief Adds token (k, v) to the context, then writes q's output into out.
   * @param a the mechanism this decoder was made for (unchanged since).
   * @param q, k 1 x d; v, out 1 x d_v.
   * @throws performer::invalid_argument on shape mismatch or what the mechanism's forward
   * throws (non-finite values); the context then does not hold the token.
   */
  void step(const A& a, const const_matrix_ref<scalar_type>& q,
            const const_matrix_ref<scalar_type>& k,
            const const_matrix_ref<scalar_type>& v, matrix_ref<scalar_type> out) {
    PERFORMER_PRECONDITION(q.rows() == 1 && k.rows() == 1 && v.rows() == 1 && out.rows() == 1 &&
                               k.cols() == keys_.cols() && v.cols() == values_.cols(),
                           "head_decoder::step: q, k, v and out must be single rows with k of ",
                           keys_.cols(), " and v of ", values_.cols(), " entries (got ",
                           detail::shape(k), " and ", detail::shape(v), ")");
    reserve(n_ + 1);
    keys_.row(n_) = k;
    values_.row(n_) = v;
    a.forward(q, keys_.topRows(n_ + 1), values_.topRows(n_ + 1), out, attention_mask{}, ws_);
    ++n_;  // only once forward accepted the token
  }

 private:
  /// Room for `rows` tokens, growing to twice that: amortised O(d + d_v) per token.
  void reserve(index_t rows) {
    if (rows <= keys_.rows()) return;
    const index_t capacity = std::max<index_t>(16, 2 * rows);
    keys_.conservativeResize(capacity, Eigen::NoChange);
    values_.conservativeResize(capacity, Eigen::NoChange);
  }

  row_matrix<scalar_type> keys_, values_;
  index_t n_ = 0;
  typename A::workspace_type ws_;
};

/**
 * @brief FAVOR+'s recurrent state (favor_decoder): step() costs O(m d + M d_v) and the state
 * O(M d_v), whatever the context length.
 */
template <real_scalar T, class FeatureMap, projection_sampler Sampler, real_scalar Acc>
class head_decoder<favor_attention<T, FeatureMap, Sampler, Acc>> {
 public:
  using scalar_type = T;
  using attention_type = favor_attention<T, FeatureMap, Sampler, Acc>;

  /// @throws performer::invalid_argument if head_dim is not the projection's or value_dim is not
  /// positive.
  head_decoder(const attention_type& a, index_t head_dim, index_t value_dim)
      : decoder_(a, value_dim) {
    PERFORMER_PRECONDITION(head_dim == a.projection().dim(), "head_decoder: head_dim is ",
                           head_dim, " but the projection is for ", a.projection().dim());
  }

  [[nodiscard]] index_t position() const noexcept { return decoder_.position(); }
  void reset() { decoder_.reset(); }

  /// As favor_decoder::prime: keys and values folded into the state without outputs.
  void prime(const const_matrix_ref<T>& k, const const_matrix_ref<T>& v) { decoder_.prime(k, v); }

  /// As favor_decoder::step (the projection was copied from `a` at construction).
  void step(const attention_type& /*a*/, const const_matrix_ref<T>& q, const const_matrix_ref<T>& k,
            const const_matrix_ref<T>& v, matrix_ref<T> out) {
    PERFORMER_PRECONDITION(q.rows() == 1 && k.rows() == 1 && v.rows() == 1 && out.rows() == 1,
                           "head_decoder::step: q, k, v and out must be single rows");
    decoder_.step(q, k, v, out);
  }

 private:
  favor_decoder<T, FeatureMap, Sampler, Acc> decoder_;
};

}  // namespace performer
