/// @file attention/favor_attention.hpp
/// @brief FAVOR+ random-feature attention (Choromanski et al., "Rethinking Attention with
/// Performers", ICLR 2021, sections 2.2-2.5): bidirectional and causal (chunked prefix-sum)
/// paths, templated on the scalar, the feature map, the projection sampler and the accumulator.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <utility>

#include "../attention_mask.hpp"
#include "../concepts.hpp"
#include "../detail/validate.hpp"
#include "../error.hpp"
#include "../features/feature_map.hpp"
#include "../features/positive_features.hpp"
#include "../features/projection.hpp"
#include "../types.hpp"

namespace performer {

namespace detail {

/// Returns `m` itself when its scalar is already Acc, else a cast copy held in `buffer`.
template <class Acc, class M>
decltype(auto) as_accumulator(const M& m, row_matrix<Acc>& buffer) {
  if constexpr (std::is_same_v<typename M::Scalar, Acc>) {
    static_cast<void>(buffer);
    return (m);
  } else {
    buffer = m.template cast<Acc>();
    return static_cast<const row_matrix<Acc>&>(buffer);
  }
}

/// exp(x - shift) with -inf (a padded key, or no key yet) mapped to exactly 0: Eigen's
/// vectorised exp clamps and would return a tiny positive number instead.
template <class Acc>
Acc shifted_exp(Acc x, Acc shift) {
  return x == -std::numeric_limits<Acc>::infinity() ? Acc(0) : std::exp(x - shift);
}

}  // namespace detail

/**
 * @brief FAVOR+ attention: softmax attention approximated with random features,
 * out = D^-1 phi(Q) (phi(K)^T V), in time and memory linear in N.
 *
 * - Bidirectional: the keys are swept once in row blocks, accumulating S = phi(K)^T V
 *   (M x d_v) and z = phi(K)^T 1 (M); then each block of queries gives
 *   out = (phi(Q) S) / (phi(Q) z). Padded keys are dropped after the feature map, so they
 *   leave both S and z.
 * - Causal: chunks of C tokens; within a chunk a masked C x C product, across chunks a
 *   carried prefix state (S, z), both as matrix products (ALGORITHMS.md section 2.4).
 * - Stabiliser: the feature map returns features with their per-row log scale split off. A
 *   per-query scale cancels; keys share a running maximum c of their log scales, and the
 *   carried state is rescaled by exp(c_old - c_new) when it rises, as online softmax does. In
 *   the causal path query i only ever uses the maximum over keys j <= i, so a future token
 *   cannot leak in through the stabiliser, whatever its norm.
 *
 * Complexity (M features, m = projection rows, B block rows, C chunk): time
 * O(N m d + N M d_v) bidirectional, plus O(N C (M + d_v)) causal; workspace
 * O((B + C) M + C^2 + M d_v), independent of N.
 *
 * The projection is fixed between redraws: forward() is const and thread-safe with one
 * workspace per thread. To redraw every k training steps, call `projection().on_call()` once
 * per step (see random_projection).
 *
 * @tparam T scalar of inputs and outputs (float, double).
 * @tparam FeatureMap a feature_map policy (positive_features by default: FAVOR+).
 * @tparam Sampler a projection_sampler policy (orthogonal_sampler by default).
 * @tparam Acc scalar of the sums and the prefix state (float data with double accumulation is
 * a supported pairing).
 */
template <real_scalar T, class FeatureMap = positive_features<T>,
          projection_sampler Sampler = orthogonal_sampler, real_scalar Acc = T>
  requires feature_map<FeatureMap, T>
class favor_attention {
 public:
  using scalar_type = T;
  using accumulator_type = Acc;
  using feature_map_type = FeatureMap;
  using sampler_type = Sampler;
  using projection_type = random_projection<T, Sampler>;
  static constexpr bool supports_causal = true;
  static constexpr bool key_permutation_invariant = true;

  /// Scratch memory; its size depends on M, d_v and the block sizes, not on N.
  struct workspace_type {
    row_matrix<T> phi_q, phi_k;
    vector<T> log_q, log_k;
    row_matrix<Acc> state, num, scores, cast_q, cast_k, cast_v;
    vector<Acc> norm, den, weights, prefix_max;
  };

  /**
   * @param head_dim d, the width of queries and keys.
   * @param features m, the number of random projections (M = map.feature_count(m, d)).
   * @param seed seeds the projection draw.
   * @param map the feature map. @param sampler how projections are drawn.
   * @param block rows per block in the bidirectional path (B).
   * @param chunk tokens per chunk in the causal path (C).
   * @throws performer::invalid_argument if head_dim, features, block or chunk is not positive.
   */
  explicit favor_attention(index head_dim, index features = 256, std::uint64_t seed = 0,
                           FeatureMap map = {}, Sampler sampler = {}, index block = 256,
                           index chunk = 64)
      : projection_(features, head_dim, seed, std::move(sampler)),
        map_(std::move(map)),
        block_(block),
        chunk_(chunk) {
    PERFORMER_PRECONDITION(block > 0 && chunk > 0, "favor_attention: block (", block,
                           ") and chunk (", chunk, ") must be positive");
  }

  [[nodiscard]] const projection_type& projection() const noexcept { return projection_; }
  /// Mutable access: redraw, set a trained matrix, or count calls for periodic redraws.
  [[nodiscard]] projection_type& projection() noexcept { return projection_; }
  [[nodiscard]] const FeatureMap& feature_map() const noexcept { return map_; }
  [[nodiscard]] FeatureMap& feature_map() noexcept { return map_; }
  /// M: columns of phi(x).
  [[nodiscard]] index feature_count() const {
    return map_.feature_count(projection_.features(), projection_.dim());
  }

  /**
   * @brief Computes attention for one head (contract of attention_mechanism).
   * @throws performer::invalid_argument on bad input (see check_attention_args), on a head
   * width other than the projection's, or if the result is not finite (the trigonometric map's
   * normaliser can vanish: that is its documented instability).
   */
  void forward(const const_matrix_ref<T>& q, const const_matrix_ref<T>& k,
               const const_matrix_ref<T>& v, matrix_ref<T> out, const attention_mask& mask,
               workspace_type& ws) const {
    constexpr const char* who = "favor_attention::forward";
    detail::check_attention_args<T>(who, q, k, v, out, mask);
    PERFORMER_PRECONDITION(q.cols() == projection_.dim(), who, ": q is ", detail::shape(q),
                           " but the projection is for head width ", projection_.dim());
    if (mask.causal) {
      causal(map_, q, k, v, out, mask, ws);
    } else if constexpr (requires { map_.calibrated_for(q, k, mask.key_mask); }) {
      // Data-dependent maps (FAVOR++) fit their parameter to these queries and unpadded keys.
      bidirectional(map_.calibrated_for(q, k, mask.key_mask), q, k, v, out, mask, ws);
    } else {
      bidirectional(map_, q, k, v, out, mask, ws);
    }
    detail::require_finite_result(who, out);
  }

 private:
  static constexpr Acc minus_inf = -std::numeric_limits<Acc>::infinity();

  /// phi of rows [r0, r0 + rows) of x into ws.phi_*/log_*; padded keys get log scale -inf.
  void features_of(const FeatureMap& map, const const_matrix_ref<T>& x, index r0, index rows,
                   row_matrix<T>& phi, vector<T>& log_scale, const attention_mask* keys) const {
    phi.resize(rows, feature_count());
    log_scale.resize(rows);
    map.apply(projection_.matrix(), x.middleRows(r0, rows), phi, log_scale);
    if (keys != nullptr && !keys->key_mask.empty()) {
      for (index j = 0; j < rows; ++j) {
        if (!keys->keeps(static_cast<std::size_t>(r0 + j))) {
          log_scale(j) = -std::numeric_limits<T>::infinity();
        }
      }
    }
  }

  /// Folds a block of key features into (S, z) at shift c, rescaling the state if c rises.
  void accumulate(row_matrix<T>& phi, const vector<T>& log_scale, const const_matrix_ref<T>& v,
                  Acc& c, Acc new_c, workspace_type& ws) const {
    if (new_c == minus_inf) return;  // every key so far is padding
    if (c != minus_inf && new_c > c) {
      const Acc factor = std::exp(c - new_c);
      ws.state *= factor;
      ws.norm *= factor;
    }
    c = std::max(c, new_c);
    ws.weights.resize(phi.rows());
    for (index j = 0; j < phi.rows(); ++j) {
      ws.weights(j) = detail::shifted_exp(static_cast<Acc>(log_scale(j)), c);
    }
    // The features are not needed after this, so they are weighted in place (in Acc).
    const auto weighted = [&]() -> const row_matrix<Acc>& {
      if constexpr (std::is_same_v<T, Acc>) {
        phi.array().colwise() *= ws.weights.array();
        return phi;
      } else {
        ws.cast_k = phi.template cast<Acc>();
        ws.cast_k.array().colwise() *= ws.weights.array();
        return ws.cast_k;
      }
    };
    const row_matrix<Acc>& phi_w = weighted();
    const auto& v_acc = detail::as_accumulator<Acc>(v, ws.cast_v);
    ws.state.noalias() += phi_w.transpose() * v_acc;
    ws.norm.noalias() += phi_w.colwise().sum().transpose();
  }

  /// out rows = num / den, or zeros where no key was visible (den = 0 exactly).
  static void normalise(const row_matrix<Acc>& num, const vector<Acc>& den,
                        matrix_ref<T> out_rows) {
    for (index r = 0; r < out_rows.rows(); ++r) {
      if (den(r) == Acc(0)) {
        out_rows.row(r).setZero();
      } else {
        out_rows.row(r) = (num.row(r) / den(r)).template cast<T>();
      }
    }
  }

  void bidirectional(const FeatureMap& map, const const_matrix_ref<T>& q,
                     const const_matrix_ref<T>& k, const const_matrix_ref<T>& v,
                     matrix_ref<T> out, const attention_mask& mask, workspace_type& ws) const {
    const index m = feature_count();
    ws.state.setZero(m, v.cols());
    ws.norm.setZero(m);
    Acc c = minus_inf;
    for (index k0 = 0; k0 < k.rows(); k0 += block_) {
      const index rows = std::min(block_, k.rows() - k0);
      features_of(map, k, k0, rows, ws.phi_k, ws.log_k, &mask);
      const Acc block_max = static_cast<Acc>(ws.log_k.maxCoeff());
      accumulate(ws.phi_k, ws.log_k, v.middleRows(k0, rows), c, block_max, ws);
    }
    for (index q0 = 0; q0 < q.rows(); q0 += block_) {
      const index rows = std::min(block_, q.rows() - q0);
      features_of(map, q, q0, rows, ws.phi_q, ws.log_q, nullptr);
      const auto& phi = detail::as_accumulator<Acc>(ws.phi_q, ws.cast_q);
      ws.num.noalias() = phi * ws.state;
      ws.den.noalias() = phi * ws.norm;
      normalise(ws.num, ws.den, out.middleRows(q0, rows));
    }
  }

  void causal(const FeatureMap& map, const const_matrix_ref<T>& q, const const_matrix_ref<T>& k,
              const const_matrix_ref<T>& v, matrix_ref<T> out, const attention_mask& mask,
              workspace_type& ws) const {
    const index m = feature_count();
    const index n = q.rows();
    ws.state.setZero(m, v.cols());
    ws.norm.setZero(m);
    Acc c = minus_inf;  // shift of the carried state: max log scale of all earlier keys
    for (index c0 = 0; c0 < n; c0 += chunk_) {
      const index rows = std::min(chunk_, n - c0);
      features_of(map, q, c0, rows, ws.phi_q, ws.log_q, nullptr);
      features_of(map, k, c0, rows, ws.phi_k, ws.log_k, &mask);
      const auto v_chunk = v.middleRows(c0, rows);
      const auto& phi_q = detail::as_accumulator<Acc>(ws.phi_q, ws.cast_q);
      const auto& v_acc = detail::as_accumulator<Acc>(v_chunk, ws.cast_v);

      // Query i's shift: the running maximum over keys j <= i only (never a future key).
      ws.prefix_max.resize(rows);
      Acc running = c;
      for (index i = 0; i < rows; ++i) {
        running = std::max(running, static_cast<Acc>(ws.log_k(i)));
        ws.prefix_max(i) = running;
      }

      // Carried prefix, rescaled from the state's shift c to each query's own shift.
      ws.num.noalias() = phi_q * ws.state;
      ws.den.noalias() = phi_q * ws.norm;
      for (index i = 0; i < rows; ++i) {
        const Acc factor = detail::shifted_exp(c, ws.prefix_max(i));
        ws.num.row(i) *= factor;
        ws.den(i) *= factor;
      }

      // Within the chunk: A_ij = phi(q_i).phi(k_j) exp(log_k_j - shift_i) for j <= i.
      {
        const auto& phi_k = detail::as_accumulator<Acc>(ws.phi_k, ws.cast_k);
        ws.scores.resize(rows, rows);
        ws.scores.noalias() = phi_q * phi_k.transpose();
      }
      // exp(log_k_j - shift_i) = exp(log_k_j - shift_j) when the running maximum did not rise
      // between j and i (the common case): one exponential per key instead of per pair.
      ws.weights.resize(rows);
      for (index j = 0; j < rows; ++j) {
        ws.weights(j) = detail::shifted_exp(static_cast<Acc>(ws.log_k(j)), ws.prefix_max(j));
      }
      for (index i = 0; i < rows; ++i) {
        for (index j = 0; j <= i; ++j) {
          ws.scores(i, j) *= ws.prefix_max(j) == ws.prefix_max(i)
                                 ? ws.weights(j)
                                 : detail::shifted_exp(static_cast<Acc>(ws.log_k(j)),
                                                       ws.prefix_max(i));
        }
        ws.scores.row(i).tail(rows - i - 1).setZero();
      }
      ws.num.noalias() += ws.scores * v_acc;
      ws.den.noalias() += ws.scores.rowwise().sum();
      normalise(ws.num, ws.den, out.middleRows(c0, rows));

      // Fold the chunk's keys into the carried state at the chunk's final shift.
      accumulate(ws.phi_k, ws.log_k, v_chunk, c, ws.prefix_max(rows - 1), ws);
    }
  }

  projection_type projection_;
  FeatureMap map_;
  index block_;
  index chunk_;
};

static_assert(attention_mechanism<favor_attention<float>>);
static_assert(attention_mechanism<favor_attention<double>>);
static_assert(attention_mechanism<favor_attention<float, positive_features<float>, orthogonal_sampler, double>>);

}  // namespace performer
