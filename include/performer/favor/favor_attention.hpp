/// @file favor/favor_attention.hpp
/// @brief FAVOR+ random-feature attention (Choromanski et al., "Rethinking Attention with
/// Performers", ICLR 2021, section 2 and appendix B.1): bidirectional and causal (chunked prefix-sum)
/// paths, templated on the scalar, the feature map, the projection sampler and the accumulator.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <span>
#include <type_traits>
#include <utility>
#include <vector>

#include "../core/attention_mask.hpp"
#include "../core/concepts.hpp"
#include "../core/detail/parallel.hpp"
#include "../core/validate.hpp"
#include "../core/error.hpp"
#include "../core/gradient.hpp"
#include "detail/accumulator.hpp"
#include "feature_map.hpp"
#include "features/positive_features.hpp"
#include "../random/projection.hpp"
#include "favor_options.hpp"
#include "state.hpp"
#include "../core/detail/online_softmax.hpp"
#include "../core/types.hpp"

namespace performer {


/**
 * @brief FAVOR+ attention: softmax attention approximated with random features,
 * out = D^-1 phi(Q) (phi(K)^T V), in time and memory linear in N.
 *
 * - Bidirectional: the keys are swept in row blocks, accumulating S = phi(K)^T V (M x d_v)
 *   and z = phi(K)^T 1 (M); then each block of queries gives out = (phi(Q) S) / (phi(Q) z).
 *   Padded keys are dropped after the feature map, so they leave both S and z.
 * - Causal: chunks of C tokens; within a chunk a masked C x C product, across chunks a
 *   carried prefix state (S, z), both as matrix products (docs/algorithms.md §2.4).
 * - Stabiliser: the feature map returns features with their per-row log scale split off. A
 *   per-query scale cancels; keys share a running maximum c of their log scales, and the
 *   carried state is rescaled by exp(c_old - c_new) when it rises, as online softmax does. In
 *   the causal path query i only ever uses the maximum over keys j <= i, so a future token
 *   cannot leak in through the stabiliser, whatever its norm.
 * - Threads: a long sequence is cut into favor_options::segments segments at boundaries that
 *   depend on N only. Bidirectional: the segments' key states are summed in a fixed order.
 *   Causal: a first pass computes the key state of every segment but the last, a prefix sum
 *   gives each segment its starting state, and the segments then run their causal passes in
 *   parallel. Query blocks are independent. So the result is the same, bit for bit, on any
 *   number of threads.
 *
 * Complexity (M features, m = projection rows, B block rows, C chunk): time
 * O(N m d + N M d_v) bidirectional, plus O(N C (M + d_v)) causal; workspace
 * O(threads ((B + C) M + C^2) + segments M d_v), independent of N.
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

  /// Key-value state (favor/state.hpp), shared with favor_decoder.
  using state_type = favor_state<Acc>;

  /// One thread's scratch: B or C rows of features, never N.
  struct lane_type {
    row_matrix<T> phi_q, phi_k;
    vector<T> log_q, log_k;
    row_matrix<Acc> num, scores, cast_q, cast_k, cast_v;
    vector<Acc> den, weights, prefix_max;
  };

  /// Scratch memory; its size depends on M, d_v, the blocks and the thread count, not on N.
  struct workspace_type {
    std::vector<lane_type> lanes;
    std::vector<state_type> states;
  };

  /**
   * @param head_dim d, the width of queries and keys.
   * @param features m, the number of random projections (M = map.feature_count(m, d)).
   * @param seed seeds the projection draw.
   * @param map the feature map. @param sampler how projections are drawn.
   * @param options blocking and parallel layout.
   * @throws performer::invalid_argument if head_dim, features or an option is not positive.
   */
  explicit favor_attention(index_t head_dim, index_t features = 256, std::uint64_t seed = 0,
                           FeatureMap map = {}, Sampler sampler = {}, favor_options options = {})
      : projection_(features, head_dim, seed, std::move(sampler)),
        map_(std::move(map)),
        options_(options) {
    PERFORMER_PRECONDITION(options.block > 0 && options.chunk > 0 && options.segments > 0 &&
                               options.min_segment > 0 && options.backward_chunk > 0,
                           "favor_attention: block (", options.block, "), chunk (",
                           options.chunk, "), segments (", options.segments,
                           "), min_segment (", options.min_segment, ") and backward_chunk (",
                           options.backward_chunk, ") must be positive");
  }

  [[nodiscard]] const projection_type& projection() const noexcept { return projection_; }
  /// Mutable access: redraw, set a trained matrix, or count calls for periodic redraws.
  [[nodiscard]] projection_type& projection() noexcept { return projection_; }
  [[nodiscard]] const FeatureMap& feature_map() const noexcept { return map_; }
  [[nodiscard]] FeatureMap& feature_map() noexcept { return map_; }
  [[nodiscard]] const favor_options& options() const noexcept { return options_; }
  /// M: columns of phi(x).
  [[nodiscard]] index_t feature_count() const {
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
    check_attention_args<T>(who, q, k, v, out, mask);
    PERFORMER_PRECONDITION(q.cols() == projection_.dim(), who, ": q is ", detail::shape(q),
                           " but the projection is for head width ", projection_.dim());
    if (mask.causal) {
      causal(map_, q, k, v, out, mask, ws);
    } else {
      bidirectional(map_for(q, k, mask), q, k, v, out, mask, ws);
    }
    PERFORMER_PRECONDITION(all_finite(out), who,
                           ": the result overflowed the scalar type or its normaliser vanished; "
                           "the inputs are finite, but their logits are too large for it or the "
                           "features of every key a query sees are 0 or cancel (scale q and k "
                           "down or use double)");
  }

  /**
   * @brief The feature map a forward call with these arguments uses: the stored one, except
   * that a data-dependent map (FAVOR++) is fitted to the visible tokens of a bidirectional call.
   * O((N_q + N_k) d) for FAVOR++, O(1) otherwise.
   */
  [[nodiscard]] FeatureMap map_for(const const_matrix_ref<T>& q, const const_matrix_ref<T>& k,
                                   const attention_mask& mask) const {
    if constexpr (requires { map_.calibrated_for(q, k, mask.key_mask, mask.key_mask); }) {
      if (!mask.causal) {
        // In self-attention (N_q = N_k) row i of q and of k is one token, so the key mask also
        // marks the padded queries; padding then cannot move the parameter or the real tokens'
        // outputs.
        const auto query_mask =
            q.rows() == k.rows() ? mask.key_mask : std::span<const std::uint8_t>{};
        return map_.calibrated_for(q, k, mask.key_mask, query_mask);
      }
    }
    return map_;
  }

 private:
  // The backward (favor/favor_gradient.hpp) maps features and folds key states with the
  // helpers below, so that it recomputes exactly what the forward computed.
  friend struct attention_gradient<favor_attention>;

  static constexpr Acc minus_inf = -std::numeric_limits<Acc>::infinity();

  /// Segments a sequence of n tokens is split into (a function of n and the options only).
  [[nodiscard]] index_t segments_for(index_t n) const {
    return std::clamp<index_t>(n / options_.min_segment, 1, options_.segments);
  }

  /// Start of segment s of `count` over [0, n).
  static index_t segment_start(index_t n, index_t count, index_t s) { return n * s / count; }

  void prepare(workspace_type& ws, index_t lanes, index_t states, index_t value_dim) const {
    const index_t m = feature_count();
    const index_t rows = options_.block;
    if (ws.lanes.size() < static_cast<std::size_t>(lanes)) ws.lanes.resize(lanes);
    for (auto& lane : ws.lanes) {
      lane.phi_q.resize(rows, m);
      lane.phi_k.resize(rows, m);
      lane.log_q.resize(rows);
      lane.log_k.resize(rows);
      lane.num.resize(rows, value_dim);
      lane.den.resize(rows);
      lane.weights.resize(rows);
      lane.prefix_max.resize(rows);
      lane.scores.resize(std::min(rows, options_.chunk), std::min(rows, options_.chunk));
    }
    if (ws.states.size() < static_cast<std::size_t>(states)) ws.states.resize(states);
  }

  /// phi of rows [r0, r0 + rows) of x into the top rows of phi / log_scale; padded keys get
  /// log scale -inf.
  void features_of(const FeatureMap& map, const const_matrix_ref<T>& x, index_t r0, index_t rows,
                   row_matrix<T>& phi, vector<T>& log_scale, const attention_mask* keys) const {
    map.apply(projection_.matrix(), x.middleRows(r0, rows), phi.topRows(rows),
              log_scale.head(rows));
    if (keys != nullptr && !keys->key_mask.empty()) {
      for (index_t j = 0; j < rows; ++j) {
        if (!keys->keeps(static_cast<std::size_t>(r0 + j))) {
          log_scale(j) = -std::numeric_limits<T>::infinity();
        }
      }
    }
  }

  /// Folds key features phi (rows x M, with their log scales) into st at shift
  /// max(st.shift, new_c). Weights the features in place (they are not needed afterwards).
  template <class Phi, class LogScale>
  void accumulate(Phi phi, const LogScale& log_scale, const const_matrix_ref<T>& v,
                  state_type& st, Acc new_c, lane_type& lane) const {
    if (new_c == minus_inf) return;  // every key so far is padding
    st.raise(new_c);
    const index_t rows = phi.rows();
    auto weights = lane.weights.head(rows);
    for (index_t j = 0; j < rows; ++j) {
      weights(j) = detail::shifted_exp(static_cast<Acc>(log_scale(j)), st.shift);
    }
    const auto fold = [&](auto phi_w) {
      phi_w.array().colwise() *= weights.array();
      st.fold(phi_w, detail::as_accumulator<Acc>(v, lane.cast_v));
    };
    if constexpr (std::is_same_v<T, Acc>) {
      fold(phi);
    } else {
      fold(detail::cast_into<Acc>(phi, lane.cast_k));
    }
  }

  /// Key state of rows [begin, end) into st, from zero.
  void key_state(const FeatureMap& map, const const_matrix_ref<T>& k,
                 const const_matrix_ref<T>& v, const attention_mask& mask, index_t begin,
                 index_t end, state_type& st, lane_type& lane) const {
    st.reset(feature_count(), v.cols());
    for (index_t k0 = begin; k0 < end; k0 += options_.block) {
      const index_t rows = std::min(options_.block, end - k0);
      features_of(map, k, k0, rows, lane.phi_k, lane.log_k, &mask);
      const Acc block_max = static_cast<Acc>(lane.log_k.head(rows).maxCoeff());
      accumulate(lane.phi_k.topRows(rows), lane.log_k, v.middleRows(k0, rows), st, block_max,
                 lane);
    }
  }

  /// out rows (queries row0, row0 + 1, ...) = num / den. den = 0 exactly means a zero row for
  /// a query that sees no key (row0 + r < seeing), and for one that does, that every visible
  /// weight underflowed or the map's estimates cancelled: that row is set to NaN, which the
  /// result check reports (throwing here, inside a parallel region, would terminate).
  template <class Num, class Den>
  static void normalise(const Num& num, const Den& den, matrix_ref<T> out_rows, index_t row0,
                        index_t seeing) {
    for (index_t r = 0; r < out_rows.rows(); ++r) {
      if (den(r) == Acc(0)) {
        out_rows.row(r).setConstant(row0 + r < seeing ? T(0)
                                                      : std::numeric_limits<T>::quiet_NaN());
      } else {
        out_rows.row(r) = (num.row(r) / den(r)).template cast<T>();
      }
    }
  }

  void bidirectional(const FeatureMap& map, const const_matrix_ref<T>& q,
                     const const_matrix_ref<T>& k, const const_matrix_ref<T>& v,
                     matrix_ref<T> out, const attention_mask& mask, workspace_type& ws) const {
    const index_t segments = segments_for(k.rows());
    const index_t query_blocks = (q.rows() + options_.block - 1) / options_.block;
    prepare(ws, std::max(detail::lanes_for(segments), detail::lanes_for(query_blocks)), segments,
            v.cols());
    detail::parallel_for(segments, [&](index_t s, index_t lane) {
      key_state(map, k, v, mask, segment_start(k.rows(), segments, s),
                segment_start(k.rows(), segments, s + 1), ws.states[s], ws.lanes[lane]);
    });
    state_type& total = ws.states[0];
    for (index_t s = 1; s < segments; ++s) total.add(ws.states[s]);
    const index_t seeing = detail::first_seeing_query(mask, q.rows(), k.rows());

    detail::parallel_for(query_blocks, [&](index_t b, index_t lane_index) {
      lane_type& lane = ws.lanes[lane_index];
      const index_t q0 = b * options_.block;
      const index_t rows = std::min(options_.block, q.rows() - q0);
      features_of(map, q, q0, rows, lane.phi_q, lane.log_q, nullptr);
      const auto phi_q = lane.phi_q.topRows(rows);
      const auto& phi = detail::as_accumulator<Acc>(phi_q, lane.cast_q);
      auto num = lane.num.topRows(rows);
      auto den = lane.den.head(rows);
      num.noalias() = phi * total.sum;
      den.noalias() = phi * total.norm;
      normalise(num, den, out.middleRows(q0, rows), q0, seeing);
    });
  }

  void causal(const FeatureMap& map, const const_matrix_ref<T>& q, const const_matrix_ref<T>& k,
              const const_matrix_ref<T>& v, matrix_ref<T> out, const attention_mask& mask,
              workspace_type& ws) const {
    const index_t n = q.rows();
    const index_t segments = segments_for(n);
    // Pass 1: key states of the two halves of every segment but the last (so that two
    // threads share the work even at two segments). States [0, segments) are the segments'
    // starting states, [segments, segments + pieces) the halves'.
    const index_t pieces = 2 * (segments - 1);
    prepare(ws, std::max(detail::lanes_for(pieces), detail::lanes_for(segments)),
            segments + pieces, v.cols());
    detail::parallel_for(pieces, [&](index_t p, index_t lane) {
      const index_t begin = segment_start(n, segments, p / 2);
      const index_t end = segment_start(n, segments, p / 2 + 1);
      const index_t middle = begin + (end - begin) / 2;
      key_state(map, k, v, mask, p % 2 == 0 ? begin : middle, p % 2 == 0 ? middle : end,
                ws.states[segments + p], ws.lanes[lane]);
    });
    ws.states[0].reset(feature_count(), v.cols());
    for (index_t s = 1; s < segments; ++s) {
      ws.states[s] = ws.states[s - 1];
      ws.states[s].add(ws.states[segments + 2 * (s - 1)]);
      ws.states[s].add(ws.states[segments + 2 * (s - 1) + 1]);
    }
    // Pass 2: every segment's causal pass from its starting state.
    const index_t seeing = detail::first_seeing_query(mask, q.rows(), k.rows());
    detail::parallel_for(segments, [&](index_t s, index_t lane) {
      causal_range(map, q, k, v, out, mask, seeing, segment_start(n, segments, s),
                   segment_start(n, segments, s + 1), ws.states[s], ws.lanes[lane]);
    });
  }

  /// The chunked causal pass over tokens [begin, end), carrying st (the keys before `begin`);
  /// `seeing` is the first query that sees a key. Features are mapped B rows at a time (one
  /// larger product amortises packing the projection), then consumed C rows at a time.
  void causal_range(const FeatureMap& map, const const_matrix_ref<T>& q,
                    const const_matrix_ref<T>& k, const const_matrix_ref<T>& v,
                    matrix_ref<T> out, const attention_mask& mask, index_t seeing, index_t begin,
                    index_t end, state_type& st, lane_type& lane) const {
    for (index_t b0 = begin; b0 < end; b0 += options_.block) {
      const index_t block_rows = std::min(options_.block, end - b0);
      features_of(map, q, b0, block_rows, lane.phi_q, lane.log_q, nullptr);
      features_of(map, k, b0, block_rows, lane.phi_k, lane.log_k, &mask);
      for (index_t c = 0; c < block_rows; c += options_.chunk) {
        causal_chunk(b0 + c, c, std::min(options_.chunk, block_rows - c), v, out, seeing, st,
                     lane);
      }
    }
  }

  /// One chunk: tokens [t0, t0 + rows), whose features are rows [r0, r0 + rows) of the lane's
  /// feature buffers.
  void causal_chunk(index_t t0, index_t r0, index_t rows, const const_matrix_ref<T>& v,
                    matrix_ref<T> out, index_t seeing, state_type& st, lane_type& lane) const {
    const auto v_chunk = v.middleRows(t0, rows);
    const auto phi_q_rows = lane.phi_q.middleRows(r0, rows);
    const auto& phi_q = detail::as_accumulator<Acc>(phi_q_rows, lane.cast_q);
    const auto& v_acc = detail::as_accumulator<Acc>(v_chunk, lane.cast_v);
    const auto log_k = lane.log_k.segment(r0, rows);
    auto num = lane.num.topRows(rows);
    auto den = lane.den.head(rows);
    auto prefix_max = lane.prefix_max.head(rows);
    auto weights = lane.weights.head(rows);
    auto scores = lane.scores.topLeftCorner(rows, rows);

    // Query i's shift: the running maximum over keys j <= i only (never a future key).
    Acc running = st.shift;
    for (index_t i = 0; i < rows; ++i) {
      running = std::max(running, static_cast<Acc>(log_k(i)));
      prefix_max(i) = running;
    }

    // Carried prefix, rescaled from the state's shift to each query's own shift.
    num.noalias() = phi_q * st.sum;
    den.noalias() = phi_q * st.norm;
    for (index_t i = 0; i < rows; ++i) {
      const Acc factor = detail::shifted_exp(st.shift, prefix_max(i));
      num.row(i) *= factor;
      den(i) *= factor;
    }

    // Within the chunk: A_ij = phi(q_i).phi(k_j) exp(log_k_j - shift_i) for j <= i.
    {
      const auto phi_k_rows = lane.phi_k.middleRows(r0, rows);
      const auto& phi_k = detail::as_accumulator<Acc>(phi_k_rows, lane.cast_k);
      scores.noalias() = phi_q * phi_k.transpose();
    }
    // exp(log_k_j - shift_i) = exp(log_k_j - shift_j) when the running maximum did not rise
    // between j and i (the common case): one exponential per key instead of per pair.
    for (index_t j = 0; j < rows; ++j) {
      weights(j) = detail::shifted_exp(static_cast<Acc>(log_k(j)), prefix_max(j));
    }
    for (index_t i = 0; i < rows; ++i) {
      for (index_t j = 0; j <= i; ++j) {
        scores(i, j) *= prefix_max(j) == prefix_max(i)
                            ? weights(j)
                            : detail::shifted_exp(static_cast<Acc>(log_k(j)), prefix_max(i));
      }
      scores.row(i).tail(rows - i - 1).setZero();
    }
    num.noalias() += scores * v_acc;
    den.noalias() += scores.rowwise().sum();
    normalise(num, den, out.middleRows(t0, rows), t0, seeing);

    // Fold the chunk's keys into the carried state at the chunk's final shift.
    accumulate(lane.phi_k.middleRows(r0, rows), log_k, v_chunk, st, prefix_max(rows - 1), lane);
  }

  projection_type projection_;
  FeatureMap map_;
  favor_options options_;
};

static_assert(attention_mechanism<favor_attention<float>>);
static_assert(attention_mechanism<favor_attention<double>>);
static_assert(attention_mechanism<favor_attention<float, positive_features<float>, orthogonal_sampler, double>>);

}  // namespace performer
