/// @file favor/favor_bf16_attention.hpp
/// @brief FAVOR+ with bfloat16 operands and float sums: the three products of the bidirectional
/// path (projection, key state, output) on AMX-BF16, AVX512-BF16 or portable C++, chosen at run
/// time (docs/algorithms.md §10).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "../core/attention_mask.hpp"
#include "../core/bfloat16.hpp"
#include "../core/concepts.hpp"
#include "../core/detail/bf16_product.hpp"
#include "../core/detail/online_softmax.hpp"
#include "../core/detail/parallel.hpp"
#include "../core/error.hpp"
#include "../core/types.hpp"
#include "../core/validate.hpp"
#include "../random/projection.hpp"
#include "detail/bf16_state_products.hpp"
#include "detail/causal_pass.hpp"
#include "detail/layout.hpp"
#include "favor_attention.hpp"
#include "favor_options.hpp"
#include "feature_map.hpp"
#include "features/bf16_projection.hpp"
#include "features/positive_features.hpp"
#include "state.hpp"

namespace performer {

/// Blocking, parallel layout and backend of favor_bf16_attention.
struct favor_bf16_options {
  /// Tokens mapped per block (B). Larger blocks feed the AMX tiles longer products; the lane's
  /// scratch grows as B (d + 2 M + d_v) floats.
  index_t block = 512;
  /// Most segments the keys are split into, their states summed in a fixed order (as
  /// favor_options::segments), and fewest tokens per segment (favor_options::min_segment says
  /// why 4,096).
  index_t segments = 2;
  index_t min_segment = 4096;
  /// Which instructions run the products. `automatic` takes AMX, else AVX512-BF16, else the
  /// portable code; the result's bits depend on which (AMX sums in an order of its own).
  bf16_backend backend = bf16_backend::automatic;
  /// The causal path's layout: it is favor_attention's causal pass on bf16_projection features
  /// (favor_options; its bidirectional fields are not used). favor_attention checks it.
  favor_options causal = {};
};

/**
 * @brief FAVOR+ attention whose products read bfloat16 and sum in float: the queries, keys and
 * values are rounded to bfloat16, and the projection x W^T, the key state S = phi(K)^T V and the
 * output phi(Q) [S z] take bfloat16 operands (key features weighted and rounded; bidirectional,
 * the state rounded once per call, causal, once per chunk); every sum, the normaliser z and the
 * stabiliser stay in float.
 *
 * The features of a row are FAVOR+ features of the row as rounded (its norm is taken from the
 * rounded values too), their exponentials to bfloat16's precision where the map offers it
 * (bf16_feature_map: within 1.9e-5, bf16::exp_row), so the estimator stays positive and, to
 * that precision, unbiased for the rounded inputs. den = phi(q) . z comes out of the same
 * product as the numerator, so each output is a convex combination of the rounded values up to
 * the rounding of [S z]. The values are scaled by a power of two into [1/2, 1) first (exact),
 * so neither bfloat16's largest value nor its missing subnormals cut them. Rounding adds a
 * relative error of at most 2^-8 per operand, far below the random features' error at m = 256
 * (tests/favor/favor_bf16_attention_test.cpp, docs/algorithms.md §10).
 *
 * Causal: favor_attention<float>'s causal pass (chunks, carried state, waves) on features from
 * bf16_projection, with the fold of each chunk's keys, the carried product phi(Q_c) [S z] and
 * the chunk's scores phi(Q_c) phi(K_c)^T in bfloat16 (bf16::state_products); only the chunk's
 * A V_c, O(N C d_v), stays float (docs/algorithms.md §10.2).
 *
 * Results are the same bits on any thread count, for one backend; AMX's bits differ from the
 * portable and AVX512-BF16 ones, which agree.
 *
 * Complexity (M = m features): time O(N m d + N M d_v), of which the products run in bfloat16;
 * workspace independent of N: O(threads B (d + M + d_v) + segments M d_v + M (d + d_v));
 * causal as favor_attention's with options.causal. Besides the workspace, each thread keeps its
 * packed operands of the key fold and the carried product (bf16::state_products, O(B (M +
 * d_v) + M d_v), thread-local, grown only).
 *
 * @tparam FeatureMap a projected_feature_map (FAVOR+'s positive_features<float> by default).
 * @tparam Sampler how projections are drawn.
 */
template <class FeatureMap = positive_features<float>,
          projection_sampler Sampler = orthogonal_sampler>
  requires projected_feature_map<FeatureMap, float>
class favor_bf16_attention {
 public:
  using scalar_type = float;
  using feature_map_type = FeatureMap;
  using projection_type = random_projection<float, Sampler>;
  using state_type = favor_state<float>;
  /// What runs a causal call: float FAVOR+ whose projections are bfloat16 products.
  using causal_type = favor_attention<float, bf16_projection<FeatureMap>, Sampler>;
  static constexpr bool supports_causal = true;
  static constexpr bool key_permutation_invariant = true;

  /// One thread's scratch: B rows, never N.
  struct lane_type {
    row_matrix<float> rows;   ///< the block's inputs rounded to bfloat16 (B x d)
    row_matrix<float> phi;    ///< projection, then features (B x M)
    vector<float> log_scale;  ///< B
    row_matrix<float> num;    ///< [num den], B x (d_v + 1)
    detail::bf16::aligned_buffer<detail::bf16::pair> row_pairs, feature_pairs;
  };

  struct workspace_type {
    std::vector<lane_type> lanes;
    std::vector<state_type> states;
    detail::bf16::packed_rhs projection;  ///< W^T (d x m), packed per call
    detail::bf16::packed_rhs state;       ///< [S z] (M x (d_v + 1)), packed once per call
    typename causal_type::workspace_type causal;
  };

  /**
   * @param head_dim d. @param features m. @param seed seeds the projection draw.
   * @throws performer::invalid_argument if head_dim, features or an option is not positive
   * (options.causal as favor_attention's), if the map gives other than one feature per projection
   * (M = m, bf16_projection's message), or if options.backend names instructions this CPU or OS
   * does not run.
   */
  explicit favor_bf16_attention(index_t head_dim, index_t features = 256, std::uint64_t seed = 0,
                                FeatureMap map = {}, Sampler sampler = {},
                                favor_bf16_options options = {})
      : options_(options),
        causal_(head_dim, features, seed,
                bf16_projection<FeatureMap>(std::move(map), options.backend), std::move(sampler),
                options.causal) {
    PERFORMER_PRECONDITION(options.block > 0 && options.segments > 0 && options.min_segment > 0,
                           "favor_bf16_attention: block (", options.block, "), segments (",
                           options.segments, ") and min_segment (", options.min_segment,
                           ") must be positive");
    options_.backend = causal_.feature_map().backend();
    (void)causal_.feature_count();  // throws unless M = m
  }

  [[nodiscard]] const projection_type& projection() const noexcept { return causal_.projection(); }
  [[nodiscard]] projection_type& projection() noexcept { return causal_.projection(); }
  [[nodiscard]] const FeatureMap& feature_map() const noexcept {
    return causal_.feature_map().map();
  }
  /// The options, with `backend` resolved to the one that runs.
  [[nodiscard]] const favor_bf16_options& options() const noexcept { return options_; }
  [[nodiscard]] index_t feature_count() const { return projection().features(); }

  /**
   * @brief Attention for one head (contract of attention_mechanism).
   * @throws performer::invalid_argument on bad input (see check_attention_args), a head width
   * other than the projection's, or a result that is not finite (inputs whose logits overflow
   * float).
   */
  void forward(const const_matrix_ref<float>& q, const const_matrix_ref<float>& k,
               const const_matrix_ref<float>& v, matrix_ref<float> out, const attention_mask& mask,
               workspace_type& ws) const {
    constexpr const char* who = "favor_bf16_attention::forward";
    check_attention_args<float>(who, q, k, v, out, mask);
    PERFORMER_PRECONDITION(q.cols() == projection().dim(), who, ": q is ", detail::shape(q),
                           " but the projection is for head width ", projection().dim());
    if (mask.causal) {
      // favor_attention's causal pass itself, past its forward()'s checks (done above), with
      // its fold and carried product in bfloat16.
      using pass = detail::causal_pass<causal_type, detail::bf16::state_products>;
      pass{causal_,
           causal_.feature_map(),
           q,
           k,
           v,
           out,
           mask,
           ws.causal,
           nullptr,
           1,
           detail::bf16::state_products{options_.backend, detail::bf16::value_scaling(v)}}
          .run();
    } else {
      run(q, k, v, out, mask, ws);
    }
    PERFORMER_PRECONDITION(all_finite(out), who, detail::overflow_text);
  }

 private:
  /// forward() after its checks.
  void run(const const_matrix_ref<float>& q, const const_matrix_ref<float>& k,
           const const_matrix_ref<float>& v, matrix_ref<float> out, const attention_mask& mask,
           workspace_type& ws) const;

  /// Sizes the lane for `rows` rows and maps rows [r0, r0 + rows) of x: the rows rounded to
  /// bfloat16, their projection on the packed W^T, then the feature map's exponentials.
  void features_of(const const_matrix_ref<float>& x, index_t r0, index_t rows, lane_type& lane,
                   const detail::bf16::packed_rhs& w) const;

  /// The state of keys [begin, end), from zero: per block, the features of the keys, then the
  /// fold that the causal path uses too (bf16::state_products::fold).
  void key_state(const const_matrix_ref<float>& k, const const_matrix_ref<float>& v,
                 const detail::bf16::state_products& products, const attention_mask& mask,
                 index_t begin, index_t end, state_type& st, lane_type& lane,
                 const detail::bf16::packed_rhs& w) const;

  favor_bf16_options options_;
  /// Holds the projection and the map for both paths.
  causal_type causal_;
};

static_assert(attention_mechanism<favor_bf16_attention<>>);

template <class FeatureMap, projection_sampler Sampler>
  requires projected_feature_map<FeatureMap, float>
void favor_bf16_attention<FeatureMap, Sampler>::run(const const_matrix_ref<float>& q,
                                                    const const_matrix_ref<float>& k,
                                                    const const_matrix_ref<float>& v,
                                                    matrix_ref<float> out,
                                                    const attention_mask& mask,
                                                    workspace_type& ws) const {
  const detail::key_segments segments(k.rows(), options_.segments, options_.min_segment);
  const index_t query_blocks = (q.rows() + options_.block - 1) / options_.block;
  const index_t lanes =
      std::max(detail::lanes_for(segments.count), detail::lanes_for(query_blocks));
  if (ws.lanes.size() < static_cast<std::size_t>(lanes)) ws.lanes.resize(lanes);
  for (auto& lane : ws.lanes) {
    if (lane.num.rows() != options_.block || lane.num.cols() != v.cols() + 1) {
      lane.num.resize(options_.block, v.cols() + 1);
    }
  }
  if (ws.states.size() < static_cast<std::size_t>(segments.count)) {
    ws.states.resize(segments.count);
  }
  const detail::bf16::state_products products{options_.backend, detail::bf16::value_scaling(v)};
  const int v_exponent = products.scaling.exponent;
  detail::bf16::pack_transposed(projection().matrix(), ws.projection);

  detail::parallel_for(segments.count, [&](index_t s, index_t lane) {
    key_state(k, v, products, mask, segments.start(s), segments.start(s + 1), ws.states[s],
              ws.lanes[lane], ws.projection);
  });
  state_type& total = ws.states[0];
  for (index_t s = 1; s < segments.count; ++s) total.add(ws.states[s]);
  // [S z]: den comes out of the same product as num, from the same rounded (and, below
  // bfloat16's normal range, flushed) features and state, so num = 0 never meets den != 0.
  const index_t d_v = v.cols();
  detail::bf16::pack_state(total, ws.state);
  // Scaled back by 2^e after normalising, so a num that 2^e would carry past float's largest
  // (den > 1) does not overflow. The causal pass cannot wait: its carried num joins the chunk's
  // own float sums, which are in the values' units (state_products::carried).
  const double unscale = std::ldexp(1.0, v_exponent);
  const index_t seeing = detail::first_seeing_query(mask, q.rows(), k.rows());

  detail::parallel_for(query_blocks, [&](index_t b, index_t lane_index) {
    lane_type& lane = ws.lanes[lane_index];
    const index_t q0 = b * options_.block;
    const index_t rows = std::min(options_.block, q.rows() - q0);
    features_of(q, q0, rows, lane, ws.projection);
    // Rows of phi(Q) as pairs along the features.
    const index_t row_pairs = (feature_count() + 1) / 2;
    lane.feature_pairs.resize(static_cast<std::size_t>(rows * row_pairs));
    for (index_t i = 0; i < rows; ++i) {
      detail::bf16::pack_row(&lane.phi(i, 0), lane.phi.cols(),
                             lane.feature_pairs.data() + i * row_pairs);
    }
    auto num = lane.num.topRows(rows);
    detail::bf16::product({lane.feature_pairs.data(), rows, row_pairs, 1}, ws.state, num.data(),
                          num.cols(), options_.backend, /*accumulate=*/false);
    auto out_rows = out.middleRows(q0, rows);
    detail::normalise_rows(num.leftCols(d_v), num.col(d_v), out_rows, q0, seeing);
    // 2^e is a float unless the values reach 2^127 (exact either way, to the result's own
    // rounding at the edges of float's range). Zero and NaN rows stay what they are.
    if (std::abs(v_exponent) >= 127) {
      out_rows = (out_rows.template cast<double>() * unscale).template cast<float>();
    } else if (v_exponent != 0) {
      out_rows *= static_cast<float>(unscale);
    }
  });
}

template <class FeatureMap, projection_sampler Sampler>
  requires projected_feature_map<FeatureMap, float>
void favor_bf16_attention<FeatureMap, Sampler>::features_of(
    const const_matrix_ref<float>& x, index_t r0, index_t rows, lane_type& lane,
    const detail::bf16::packed_rhs& w) const {
  const index_t m = feature_count();
  if (lane.phi.rows() < options_.block || lane.phi.cols() != m) {
    lane.phi.resize(options_.block, m);
    lane.log_scale.resize(options_.block);
  }
  auto phi = lane.phi.topRows(rows);
  detail::bf16::project_rows(x.middleRows(r0, rows), w, lane.rows, lane.row_pairs, phi,
                             options_.backend);
  detail::bf16::features_from_projection(feature_map(), lane.rows.topRows(rows), phi,
                                         lane.log_scale.head(rows));
}

template <class FeatureMap, projection_sampler Sampler>
  requires projected_feature_map<FeatureMap, float>
void favor_bf16_attention<FeatureMap, Sampler>::key_state(
    const const_matrix_ref<float>& k, const const_matrix_ref<float>& v,
    const detail::bf16::state_products& products, const attention_mask& mask, index_t begin,
    index_t end, state_type& st, lane_type& lane, const detail::bf16::packed_rhs& w) const {
  st.reset(feature_count(), v.cols());
  for (index_t k0 = begin; k0 < end; k0 += options_.block) {
    const index_t rows = std::min(options_.block, end - k0);
    features_of(k, k0, rows, lane, w);
    detail::drop_padded_keys(mask, k0, lane.log_scale.head(rows));
    const float block_max = lane.log_scale.head(rows).maxCoeff();
    products.fold(lane.phi.topRows(rows), lane.log_scale.head(rows), v.middleRows(k0, rows), st,
                  block_max);
  }
}

}  // namespace performer
