/// @file favor/favor_decoder.hpp
/// @brief Recurrent FAVOR+ decoding: one token at a time in O(M (d + d_v)) time and memory,
/// whatever the context length (Katharopoulos et al. 2020, section 3.4; docs/algorithms.md §2.5).
#pragma once

#include <cmath>
#include <limits>

#include "../core/error.hpp"
#include "../core/types.hpp"
#include "favor_attention.hpp"
#include "state.hpp"

namespace performer {

/**
 * @brief The causal FAVOR+ state (S = sum phi(k_j) v_j^T, z = sum phi(k_j)) carried from token
 * to token, with the same stabiliser as the batch path: a running maximum of the keys' log
 * scales, the state rescaled when it rises. Gives the outputs of
 * favor_attention::forward with attention_mask{.causal = true}, token by token.
 *
 * It copies the projection and the feature map of the attention it is made from, so a later
 * redraw of that attention does not change a stream in progress (the projection must stay fixed
 * for a whole sequence).
 *
 * Complexity: step() O(m d + M d_v) time; state O(M d_v); nothing grows with the context.
 */
template <real_scalar T, class FeatureMap = positive_features<T>,
          projection_sampler Sampler = orthogonal_sampler, real_scalar Acc = T>
class favor_decoder {
 public:
  using attention_type = favor_attention<T, FeatureMap, Sampler, Acc>;

  /**
   * @param attention the mechanism whose causal path this reproduces.
   * @param value_dim d_v, the width of the values.
   * @throws performer::invalid_argument if value_dim is not positive.
   */
  favor_decoder(const attention_type& attention, index_t value_dim)
      : w_(attention.projection().matrix()),
        map_(attention.feature_map()),
        m_(attention.feature_count()),
        phi_(1, m_),
        phi_q_(1, m_),
        log_(1),
        phi_acc_(m_),
        out_acc_(checked_value_dim(value_dim)) {
    state_.reset(m_, value_dim);
  }

  /// Forgets the context.
  void reset() {
    state_.reset(m_, state_.sum.cols());
    position_ = 0;
  }

  /// Tokens seen so far.
  [[nodiscard]] index_t position() const noexcept { return position_; }

  /**
   * @brief Folds a prefix of keys and values into the state without producing outputs
   * (e.g. a prompt whose outputs are not needed). Same as calling step() on each token.
   * @throws performer::invalid_argument on shape mismatch or non-finite values (the state is
   * unchanged), or when a key's features overflow T (the tokens before it stay folded).
   */
  void prime(const const_matrix_ref<T>& k, const const_matrix_ref<T>& v) {
    constexpr const char* who = "favor_decoder::prime";
    PERFORMER_PRECONDITION(k.cols() == w_.cols() && v.cols() == state_.sum.cols() &&
                               k.rows() == v.rows(),
                           who, ": k is ", detail::shape(k), " and v is ", detail::shape(v),
                           ", expected n x ", w_.cols(), " and n x ", state_.sum.cols());
    require_finite(who, "k", k);
    require_finite(who, "v", v);
    for (index_t t = 0; t < k.rows(); ++t) fold(who, k.row(t), v.row(t));
  }

  /**
   * @brief Adds token (k, v) to the context, then writes query q's output into out.
   * @param q, k 1 x d; v, out 1 x d_v.
   * @throws performer::invalid_argument on shape mismatch or non-finite values, and when q's
   * or k's features overflow T; in these cases the state is unchanged. Also when the output
   * overflows (every weight in the context underflowed): the token has then been added.
   */
  void step(const Eigen::Ref<const row_vector<T>>& q, const Eigen::Ref<const row_vector<T>>& k,
            const Eigen::Ref<const row_vector<T>>& v, Eigen::Ref<row_vector<T>> out) {
    constexpr const char* who = "favor_decoder::step";
    const index_t d = w_.cols();
    PERFORMER_PRECONDITION(q.cols() == d && k.cols() == d, who, ": q has ", q.cols(),
                           " and k has ", k.cols(), " entries, expected ", d);
    PERFORMER_PRECONDITION(v.cols() == state_.sum.cols() && out.cols() == state_.sum.cols(), who,
                           ": v has ", v.cols(), " and out has ", out.cols(),
                           " entries, expected ", state_.sum.cols());
    require_finite(who, "q", q);
    require_finite(who, "k", k);
    require_finite(who, "v", v);
    // The query is mapped first, so that a query whose features overflow leaves the state as
    // it was. Its own scale cancels between numerator and denominator.
    map_.apply(w_, Eigen::Map<const row_matrix<T>>(q.data(), 1, d), phi_q_, log_);
    PERFORMER_PRECONDITION(all_finite(phi_q_), who, detail::overflow_text);
    fold(who, k, v);
    phi_acc_ = phi_q_.row(0).template cast<Acc>();
    // The context holds at least this token, so den = 0 means every weight underflowed (or the
    // map's estimates cancelled): NaN, reported below, never the zero row of "no key".
    const Acc den = phi_acc_.dot(state_.norm);
    out_acc_.noalias() = phi_acc_ * state_.sum;
    out = (out_acc_ / den).template cast<T>();
    PERFORMER_PRECONDITION(all_finite(out), who, detail::overflow_text);
  }

 private:
  static constexpr Acc minus_inf = -std::numeric_limits<Acc>::infinity();

  /// Checked before the members are sized (a negative size would reach Eigen).
  static index_t checked_value_dim(index_t value_dim) {
    PERFORMER_PRECONDITION(value_dim > 0, "favor_decoder: value_dim must be positive (got ",
                           value_dim, ")");
    return value_dim;
  }

  /// Adds one key and value to the state. Checks before it changes anything.
  template <class K, class V>
  void fold(const char* who, const K& k, const V& v) {
    map_.apply(w_, Eigen::Map<const row_matrix<T>>(k.data(), 1, w_.cols()), phi_, log_);
    const Acc log_k = static_cast<Acc>(log_(0));
    if (log_k == minus_inf) {  // a weight below T's range is 0, as in the batch path
      ++position_;
      return;
    }
    PERFORMER_PRECONDITION(log_k < -minus_inf && all_finite(phi_), who,
                           detail::overflow_text);
    state_.raise(log_k);
    phi_acc_ = phi_.row(0).template cast<Acc>() * std::exp(log_k - state_.shift);
    state_.fold(phi_acc_, v.template cast<Acc>());
    ++position_;
  }

  row_matrix<T> w_;
  FeatureMap map_;
  index_t m_;
  favor_state<Acc> state_;
  row_matrix<T> phi_, phi_q_;
  vector<T> log_;
  row_vector<Acc> phi_acc_, out_acc_;  // preallocated: step() allocates nothing
  index_t position_ = 0;
};

}  // namespace performer
