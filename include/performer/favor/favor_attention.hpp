/// @file favor/favor_attention.hpp
/// @brief FAVOR+ random-feature attention (Choromanski et al., "Rethinking Attention with
/// Performers", ICLR 2021, section 2 and appendix B.1): bidirectional and causal (chunked
/// prefix-sum) paths, templated on the scalar, the feature map, the projection sampler and the
/// accumulator.
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
#include "../core/detail/fp32_product.hpp"
#include "../core/detail/online_softmax.hpp"
#include "../core/detail/parallel.hpp"
#include "../core/error.hpp"
#include "../core/gradient.hpp"
#include "../core/types.hpp"
#include "../core/validate.hpp"
#include "../random/projection.hpp"
#include "detail/accumulator.hpp"
#include "detail/causal_pass.hpp"
#include "detail/layout.hpp"
#include "favor_options.hpp"
#include "feature_map.hpp"
#include "features/positive_features.hpp"
#include "state.hpp"

namespace performer {

/**
 * @brief FAVOR+ attention: softmax attention approximated with random features,
 * out = D^-1 phi(Q) (phi(K)^T V), in time and memory linear in N.
 *
 * - Bidirectional: the keys are swept in row blocks, accumulating S = phi(K)^T V (M x d_v)
 *   and z = phi(K)^T 1 (M); then each block of queries gives out = (phi(Q) S) / (phi(Q) z).
 *   Padded keys are dropped after the feature map, so they leave both S and z.
 * - Causal: chunks of C tokens; within a chunk a masked C x C product, across chunks a
 *   carried prefix state (S, z), both as matrix products (docs/algorithms.md §2.4). Blocks of
 *   B tokens start from an empty state; a prefix over the blocks' key states gives each block
 *   the keys before it, merged with the block's own earlier chunks before the one carried
 *   product, so no key is mapped or folded twice (favor/detail/causal_pass.hpp).
 * - Stabiliser: the feature map returns features with their per-row log scale split off. A
 *   per-query scale cancels; keys share a running maximum c of their log scales, and the
 *   carried state is rescaled by exp(c_old - c_new) when it rises, as online softmax does. In
 *   the causal path query i only ever uses the maximum over keys j <= i (its block's, then
 *   raised by the keys before the block), so a future token cannot leak in through the
 *   stabiliser, whatever its norm.
 * - Threads: bidirectional, a long sequence is cut into favor_options::segments segments at
 *   boundaries that depend on N only, and their key states are summed in a fixed order. Causal,
 *   the blocks run in waves of favor_options::wave_blocks, in parallel except the prefix, which
 *   adds the blocks' states in block order; on one thread they run in order. Either way every
 *   value is computed by the same operations, and query blocks are independent, so the result
 *   is the same, bit for bit, on any number of threads (and any wave width).
 * - Products: with float data and sums, performer's own kernel where the CPU runs AVX-512F
 *   (favor_options::products; docs/algorithms.md §11), which reads the operands where they lie
 *   and skips the blocks above a chunk's diagonal; Eigen's otherwise. The two sum in other
 *   orders, so their last bits differ.
 *
 * Complexity (M features, m = projection rows, B block rows, C chunk, W wave blocks, by
 * default the thread count): time
 * O(N m d + N M d_v) bidirectional, plus O(N C (M + d_v)) causal; workspace, independent of N,
 * O(threads B M + segments M d_v) bidirectional, O(threads (B M + C^2 + M d_v) +
 * W (B (M + d_v) + (B / C) M d_v)) causal (one block instead of W on one thread); the own
 * kernel adds B (d_v + 1) per thread and M (d_v + 1) bidirectional, B M per thread causal.
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
    row_matrix<T> phi_q, phi_k;  ///< phi_q: bidirectional only (a causal wave keeps its own)
    vector<T> log_q, log_k;
    row_matrix<Acc> num, scores, cast_q, cast_k, cast_v;
    row_matrix<Acc> num_den;  ///< bidirectional with own_products(): [num den], B x (d_v + 1)
    row_matrix<T> phi_k_t;    ///< causal with own_products(): the block's key features, M x B
    vector<Acc> den, weights;
    state_type merged;  ///< causal: the state a chunk's queries are multiplied by
  };

  /// Scratch memory; its size depends on M, d_v, the blocks and the thread count, not on N.
  struct workspace_type {
    std::vector<lane_type> lanes;
    std::vector<state_type> states;
    std::vector<detail::causal_block<T, Acc>> blocks;  ///< one per block of a causal wave
    row_matrix<Acc> state;  ///< bidirectional with own_products(): [S z], M x (d_v + 1)
  };

  /**
   * @param head_dim d, the width of queries and keys.
   * @param features m, the number of random projections (M = map.feature_count(m, d)).
   * @param seed seeds the projection draw.
   * @param map the feature map. @param sampler how projections are drawn.
   * @param options blocking and parallel layout.
   * @throws performer::invalid_argument if head_dim, features or an option is not positive
   * (wave_blocks: negative).
   */
  explicit favor_attention(index_t head_dim, index_t features = 256, std::uint64_t seed = 0,
                           FeatureMap map = {}, Sampler sampler = {}, favor_options options = {})
      : projection_(features, head_dim, seed, std::move(sampler)),
        map_(std::move(map)),
        options_(options) {
    PERFORMER_PRECONDITION(
        options.block > 0 && options.chunk > 0 && options.segments > 0 && options.min_segment > 0 &&
            options.backward_chunk > 0 && options.parallel_block_work > 0 &&
            options.wave_blocks >= 0,
        "favor_attention: block (", options.block, "), chunk (", options.chunk, "), segments (",
        options.segments, "), min_segment (", options.min_segment, "), backward_chunk (",
        options.backward_chunk, ") and parallel_block_work (", options.parallel_block_work,
        ") must be positive, wave_blocks (", options.wave_blocks, ") at least 0");
    own_products_ = std::is_same_v<T, float> && std::is_same_v<Acc, float> &&
                    options.products == favor_products::automatic && detail::avx512f_available();
  }

  [[nodiscard]] const projection_type& projection() const noexcept { return projection_; }
  /// Mutable access: redraw, set a trained matrix, or count calls for periodic redraws.
  [[nodiscard]] projection_type& projection() noexcept { return projection_; }
  [[nodiscard]] const FeatureMap& feature_map() const noexcept { return map_; }
  [[nodiscard]] FeatureMap& feature_map() noexcept { return map_; }
  [[nodiscard]] const favor_options& options() const noexcept { return options_; }
  /// Whether performer's own float kernels run the products (favor_options::products): float
  /// sums, `automatic` and a CPU that runs AVX-512F.
  [[nodiscard]] bool own_products() const noexcept { return own_products_; }
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
    run(q, k, v, out, mask, ws, nullptr, 1);
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
  // helpers below, so that its features and states are exactly the forward's (its own
  // products, such as the normalisers it recomputes, are Eigen's and may differ in the last
  // bits from a forward on performer's kernels).
  friend struct attention_gradient<favor_attention>;
  // The causal path (favor/detail/causal_pass.hpp) uses the same helpers.
  template <class, class>
  friend struct detail::causal_pass;

  static constexpr Acc minus_inf = -std::numeric_limits<Acc>::infinity();

  /// forward, keeping key states for the backward in `kept` when it is not null (favor/
  /// favor_gradient.hpp): bidirectional, the state of every key; causal, the state of the
  /// keys before every `stride`-th block (ceil(blocks / stride) states).
  void run(const const_matrix_ref<T>& q, const const_matrix_ref<T>& k, const const_matrix_ref<T>& v,
           matrix_ref<T> out, const attention_mask& mask, workspace_type& ws,
           std::vector<state_type>* kept, index_t stride) const;

  /// Lanes and states for a call; the causal path keeps query features per block, not per
  /// lane (query_features = false).
  void prepare(workspace_type& ws, index_t lanes, index_t states, index_t value_dim,
               bool query_features = true) const {
    const index_t m = feature_count();
    const index_t rows = options_.block;
    if (ws.lanes.size() < static_cast<std::size_t>(lanes)) ws.lanes.resize(lanes);
    for (auto& lane : ws.lanes) {
      if (query_features) lane.phi_q.resize(rows, m);
      lane.phi_k.resize(rows, m);
      lane.log_q.resize(rows);
      lane.log_k.resize(rows);
      lane.num.resize(rows, value_dim);
      lane.den.resize(rows);
      lane.weights.resize(rows);
      lane.scores.resize(std::min(rows, options_.chunk), std::min(rows, options_.chunk));
    }
    if (ws.states.size() < static_cast<std::size_t>(states)) ws.states.resize(states);
  }

  /// phi of rows [r0, r0 + rows) of x into the top rows of phi / log_scale; padded keys get
  /// log scale -inf.
  void features_of(const FeatureMap& map, const const_matrix_ref<T>& x, index_t r0, index_t rows,
                   row_matrix<T>& phi, vector<T>& log_scale, const attention_mask* keys) const {
    const auto x_rows = x.middleRows(r0, rows);
    if constexpr (projected_feature_map<FeatureMap, T> && std::is_same_v<T, float>) {
      if (own_products_ && phi.cols() == projection_.features()) {
        const row_matrix<T>& w_t = projection_.transposed();
        detail::fp32::product({x_rows.data(), rows, x_rows.outerStride(), 1},
                              {w_t.data(), w_t.rows(), w_t.cols(), w_t.cols()}, phi.data(),
                              phi.cols(), /*accumulate=*/false);
        map.from_projection(x_rows, phi.topRows(rows), log_scale.head(rows));
        if (keys != nullptr) detail::drop_padded_keys(*keys, r0, log_scale.head(rows));
        return;
      }
    }
    map.apply(projection_.matrix(), x_rows, phi.topRows(rows), log_scale.head(rows));
    if (keys != nullptr) detail::drop_padded_keys(*keys, r0, log_scale.head(rows));
  }

  /// Folds key features phi (rows x M, with their log scales) into st at shift
  /// max(st.shift, new_c). Weights the features in place (they are not needed afterwards).
  template <class Phi, class LogScale>
  void accumulate(Phi phi, const LogScale& log_scale, const const_matrix_ref<T>& v, state_type& st,
                  Acc new_c, lane_type& lane) const {
    if (new_c == minus_inf) return;  // every key so far is padding
    st.raise(new_c);
    const index_t rows = phi.rows();
    auto weights = lane.weights.head(rows);
    for (index_t j = 0; j < rows; ++j) {
      weights(j) = detail::shifted_exp(static_cast<Acc>(log_scale(j)), st.shift);
    }
    const auto fold = [&](auto phi_w) {
      phi_w.array().colwise() *= weights.array();
      if constexpr (std::is_same_v<T, float> && std::is_same_v<Acc, float>) {
        if (own_products_) {
          // S += phi_w^T v: the features' transpose read in place (row_step 1).
          detail::fp32::product({phi_w.data(), phi_w.cols(), 1, phi_w.outerStride()},
                                {v.data(), v.rows(), v.cols(), v.outerStride()}, st.sum.data(),
                                st.sum.cols());
          st.norm.noalias() += phi_w.colwise().sum().transpose();
          return;
        }
      }
      st.fold(phi_w, detail::as_accumulator<Acc>(v, lane.cast_v));
    };
    if constexpr (std::is_same_v<T, Acc>) {
      fold(phi);
    } else {
      fold(detail::cast_into<Acc>(phi, lane.cast_k));
    }
  }

  /// Key state of rows [begin, end) into st, from zero.
  void key_state(const FeatureMap& map, const const_matrix_ref<T>& k, const const_matrix_ref<T>& v,
                 const attention_mask& mask, index_t begin, index_t end, state_type& st,
                 lane_type& lane) const {
    st.reset(feature_count(), v.cols());
    for (index_t k0 = begin; k0 < end; k0 += options_.block) {
      const index_t rows = std::min(options_.block, end - k0);
      features_of(map, k, k0, rows, lane.phi_k, lane.log_k, &mask);
      const Acc block_max = static_cast<Acc>(lane.log_k.head(rows).maxCoeff());
      accumulate(lane.phi_k.topRows(rows), lane.log_k, v.middleRows(k0, rows), st, block_max, lane);
    }
  }

  void bidirectional(const FeatureMap& map, const const_matrix_ref<T>& q,
                     const const_matrix_ref<T>& k, const const_matrix_ref<T>& v, matrix_ref<T> out,
                     const attention_mask& mask, workspace_type& ws,
                     std::vector<state_type>* kept) const {
    const detail::key_segments segments(k.rows(), options_.segments, options_.min_segment);
    const index_t query_blocks = (q.rows() + options_.block - 1) / options_.block;
    prepare(ws, std::max(detail::lanes_for(segments.count), detail::lanes_for(query_blocks)),
            segments.count, v.cols());
    detail::parallel_for(segments.count, [&](index_t s, index_t lane) {
      key_state(map, k, v, mask, segments.start(s), segments.start(s + 1), ws.states[s],
                ws.lanes[lane]);
    });
    state_type& total = ws.states[0];
    for (index_t s = 1; s < segments.count; ++s) total.add(ws.states[s]);
    if (kept != nullptr) kept->assign(1, total);
    if (own_products_) {
      ws.state.resize(total.sum.rows(), total.sum.cols() + 1);
      ws.state << total.sum, total.norm;
      for (auto& lane : ws.lanes) lane.num_den.resize(options_.block, v.cols() + 1);
    }
    const index_t seeing = detail::first_seeing_query(mask, q.rows(), k.rows());

    detail::parallel_for(query_blocks, [&](index_t b, index_t lane_index) {
      lane_type& lane = ws.lanes[lane_index];
      const index_t q0 = b * options_.block;
      const index_t rows = std::min(options_.block, q.rows() - q0);
      features_of(map, q, q0, rows, lane.phi_q, lane.log_q, nullptr);
      const auto phi_q = lane.phi_q.topRows(rows);
      if constexpr (std::is_same_v<T, float> && std::is_same_v<Acc, float>) {
        if (own_products_) {
          // [num den] = phi(Q) [S z]: den from the same product as num.
          auto num_den = lane.num_den.topRows(rows);
          detail::fp32::product(
              {phi_q.data(), rows, phi_q.cols(), 1},
              {ws.state.data(), ws.state.rows(), ws.state.cols(), ws.state.cols()}, num_den.data(),
              num_den.cols(), /*accumulate=*/false);
          detail::normalise_rows(num_den.leftCols(v.cols()), num_den.col(v.cols()),
                                 out.middleRows(q0, rows), q0, seeing);
          return;
        }
      }
      const auto& phi = detail::as_accumulator<Acc>(phi_q, lane.cast_q);
      auto num = lane.num.topRows(rows);
      auto den = lane.den.head(rows);
      num.noalias() = phi * total.sum;
      den.noalias() = phi * total.norm;
      detail::normalise_rows(num, den, out.middleRows(q0, rows), q0, seeing);
    });
  }

  projection_type projection_;
  FeatureMap map_;
  favor_options options_;
  bool own_products_ = false;
};

static_assert(attention_mechanism<favor_attention<float>>);
static_assert(attention_mechanism<favor_attention<double>>);
static_assert(attention_mechanism<
              favor_attention<float, positive_features<float>, orthogonal_sampler, double>>);

template <real_scalar T, class FeatureMap, projection_sampler Sampler, real_scalar Acc>
  requires feature_map<FeatureMap, T>
void favor_attention<T, FeatureMap, Sampler, Acc>::run(
    const const_matrix_ref<T>& q, const const_matrix_ref<T>& k, const const_matrix_ref<T>& v,
    matrix_ref<T> out, const attention_mask& mask, workspace_type& ws,
    std::vector<state_type>* kept, index_t stride) const {
  constexpr const char* who = "favor_attention::forward";
  check_attention_args<T>(who, q, k, v, out, mask);
  PERFORMER_PRECONDITION(q.cols() == projection_.dim(), who, ": q is ", detail::shape(q),
                         " but the projection is for head width ", projection_.dim());
  if (mask.causal) {
    detail::causal_pass<favor_attention>{*this, map_, q, k, v, out, mask, ws, kept, stride}.run();
  } else {
    bidirectional(map_for(q, k, mask), q, k, v, out, mask, ws, kept);
  }
  PERFORMER_PRECONDITION(all_finite(out), who,
                         ": the result overflowed the scalar type or its normaliser vanished; "
                         "the inputs are finite, but their logits are too large for it or the "
                         "features of every key a query sees are 0 or cancel (scale q and k "
                         "down or use double)");
}

}  // namespace performer
