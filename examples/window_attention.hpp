// A user-defined attention mechanism, written against performer's public API only: exact
// softmax attention restricted to a sliding window, each query seeing the keys within `radius`
// positions of its own (with causal masking, the keys from i - radius to i). It models
// performer::attention_mechanism, so it drops into performer::transformer_block like the
// library's own mechanisms, and the test suite runs performer's conformance suite on it.
//
// The concept promises a zero row only to a query that the mask leaves without any key. When
// padding empties a query's window while visible keys remain elsewhere, this mechanism widens
// the window to the nearest visible key (never a future one under causal masking), so that
// promise holds.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>

#include <performer/performer.hpp>

template <class T>
class window_attention {
 public:
  using scalar_type = T;
  static constexpr bool supports_causal = true;
  struct workspace_type {
    performer::row_vector<T> logits;
  };

  /// @param radius keys within this many positions of the query are attended (>= 0).
  /// @throws performer::invalid_argument if radius is negative.
  explicit window_attention(performer::index_t radius) : radius_(radius) {
    PERFORMER_PRECONDITION(radius >= 0, "window_attention: radius must be >= 0 (got ", radius, ")");
  }

  /// O(N radius (d + d_v)) time, O(radius) workspace. Throws as the concept requires.
  void forward(const performer::const_matrix_ref<T>& q, const performer::const_matrix_ref<T>& k,
               const performer::const_matrix_ref<T>& v, performer::matrix_ref<T> out,
               const performer::attention_mask& mask, workspace_type& ws) const {
    performer::check_attention_args<T>("window_attention::forward", q, k, v, out, mask);
    const T scale = T(1) / std::sqrt(static_cast<T>(q.cols()));
    const performer::index_t n_k = k.rows();
    for (performer::index_t i = 0; i < q.rows(); ++i) {
      // Keys [first, last): the window, cut at i + 1 under causal masking.
      const performer::index_t end = mask.causal ? std::min(i + 1, n_k) : n_k;
      performer::index_t first = std::clamp<performer::index_t>(i - radius_, 0, end);
      performer::index_t last = std::clamp<performer::index_t>(i + radius_ + 1, first, end);
      if (!visible_in(mask, first, last)) {
        // Padding emptied the window: take the nearest visible key (never a future one).
        const performer::index_t before = last_visible_before(mask, first);
        const performer::index_t after = first_visible_from(mask, last, end);
        if (before < 0 && after < 0) {  // the mask leaves this query no key at all
          out.row(i).setZero();
          continue;
        }
        first = (after < 0 || (before >= 0 && i - before <= after - i)) ? before : after;
        last = first + 1;
      }
      ws.logits.resize(last - first);
      ws.logits.noalias() = scale * (q.row(i) * k.middleRows(first, last - first).transpose());
      T top = -std::numeric_limits<T>::infinity();
      for (performer::index_t j = first; j < last; ++j) {
        if (mask.keeps(static_cast<std::size_t>(j))) top = std::max(top, ws.logits(j - first));
      }
      T total = 0;
      out.row(i).setZero();
      for (performer::index_t j = first; j < last; ++j) {
        if (!mask.keeps(static_cast<std::size_t>(j))) continue;
        const T w = std::exp(ws.logits(j - first) - top);
        total += w;
        out.row(i) += w * v.row(j);
      }
      out.row(i) /= total;
    }
    performer::require_finite_result("window_attention::forward", out);
  }

 private:
  static bool visible_in(const performer::attention_mask& mask, performer::index_t first,
                         performer::index_t last) {
    for (performer::index_t j = first; j < last; ++j) {
      if (mask.keeps(static_cast<std::size_t>(j))) return true;
    }
    return false;
  }
  static performer::index_t last_visible_before(const performer::attention_mask& mask,
                                               performer::index_t end) {
    for (performer::index_t j = end - 1; j >= 0; --j) {
      if (mask.keeps(static_cast<std::size_t>(j))) return j;
    }
    return -1;
  }
  static performer::index_t first_visible_from(const performer::attention_mask& mask,
                                             performer::index_t begin, performer::index_t n_k) {
    for (performer::index_t j = begin; j < n_k; ++j) {
      if (mask.keeps(static_cast<std::size_t>(j))) return j;
    }
    return -1;
  }

  performer::index_t radius_;
};

static_assert(performer::attention_mechanism<window_attention<float>>);
static_assert(performer::attention_mechanism<window_attention<double>>);
