/// @file favor/features/bf16_projection.hpp
/// @brief A feature map whose projection x W^T runs on bfloat16 operands (docs/algorithms.md
/// §10.2): the exponential map of any projected_feature_map, on the bfloat16 products.
#pragma once

#include <algorithm>
#include <cstring>
#include <utility>

#include "../../core/bfloat16.hpp"
#include "../../core/detail/bf16_product.hpp"
#include "../../core/types.hpp"
#include "../feature_map.hpp"
#include "positive_features.hpp"

namespace performer::detail::bf16 {

/// phi = x W^T on bfloat16 operands, w_t holding W^T packed: x's rows are rounded into the top
/// rows of `rows` (grown to fit; the feature map takes the norms from them) and packed into
/// `pairs`. O(N m d) in the product, O(N d) to round and pack.
inline void project_rows(const const_matrix_ref<float>& x, const packed_rhs& w_t,
                         row_matrix<float>& rows, aligned_buffer<pair>& pairs,
                         matrix_ref<float> phi, bf16_backend backend) {
  const index_t n = x.rows();
  const index_t d = x.cols();
  const index_t row_pairs = (d + 1) / 2;
  if (rows.rows() < n || rows.cols() != d) rows.resize(std::max(rows.rows(), n), d);
  pairs.resize(static_cast<std::size_t>(std::max<index_t>(1, rows.rows() * row_pairs)));
  auto rounded = rows.topRows(n);
  for (index_t i = 0; i < n; ++i) {
    const float* row = x.data() + i * x.outerStride();
    round_row(row, d, &rounded(i, 0));
    pack_row(row, d, pairs.data() + i * row_pairs);  // rounds as round_row did
  }
  product({pairs.data(), n, row_pairs, 1}, w_t, phi.data(), phi.outerStride(), backend,
          /*accumulate=*/false);
}

/// Map's features from phi = x W^T: to bfloat16's precision where Map offers it
/// (bf16_feature_map), else as from_projection gives them. O(N M).
template <class Map>
void features_from_projection(const Map& map, const const_matrix_ref<float>& x,
                              matrix_ref<float> phi, Eigen::Ref<vector<float>> log_scale) {
  if constexpr (bf16_feature_map<Map>) {
    map.from_projection_bf16(x, phi, log_scale);
  } else {
    map.from_projection(x, phi, log_scale);
  }
}

/// Packs W^T (d x m) from W (m x d), the right operand of project_rows. O(m d).
inline void pack_transposed(const const_matrix_ref<float>& w, packed_rhs& w_t) {
  w_t.assign(w.cols(), w.rows(), [&](index_t i, index_t j) { return w(j, i); });
}

}  // namespace performer::detail::bf16

namespace performer {

/**
 * @brief phi(x) = Map's features of x rounded to bfloat16, with the projection x W^T a bfloat16
 * product (W rounded too) summed in float: the O(N m d) part of FAVOR+ on AVX512-BF16 or AMX.
 * The features are Map's features of the rounded inputs and W (the norm is taken from the
 * rounded row), finished by from_projection_bf16 where Map has it (bf16_feature_map: its
 * exponentials within 1.9e-5 of exact ones), so the estimator stays positive and, to that
 * precision, unbiased for them.
 *
 * It plugs into favor_attention<float> like any feature map; favor_bf16_attention runs its
 * causal path on it. Each thread keeps its rounded rows and its packed copy of W^T between
 * calls (thread-local, grown only): W is packed again only when its values change (one
 * comparison of m d floats per call), so redraws and trained matrices are honoured.
 *
 * Time O(N m d) in bfloat16 plus O(N m) exponentials; O(m d) to compare (and, after a change,
 * pack) W. The bits depend on the backend, as favor_bf16_attention's do.
 *
 * @tparam Map a projected_feature_map<float> with one feature per projection (M = m).
 */
template <class Map = positive_features<float>>
  requires projected_feature_map<Map, float>
class bf16_projection {
 public:
  static constexpr bool uses_projection = true;

  /// @throws performer::invalid_argument if `backend` names instructions this CPU or OS does not
  /// run.
  explicit bf16_projection(Map map = {}, bf16_backend backend = bf16_backend::automatic)
      : map_(std::move(map)), backend_(bf16_resolve(backend)) {}

  [[nodiscard]] const Map& map() const noexcept { return map_; }
  /// The backend that runs (never `automatic`).
  [[nodiscard]] bf16_backend backend() const noexcept { return backend_; }

  /// @throws performer::invalid_argument if Map gives other than one feature per projection.
  [[nodiscard]] index_t feature_count(index_t m, index_t d) const {
    const index_t features = map_.feature_count(m, d);
    PERFORMER_PRECONDITION(features == m,
                           "bf16_projection: the feature map must give one "
                           "feature per projection (M = m), not ",
                           features);
    return features;
  }

  /// The feature_map contract (favor/feature_map.hpp), for float rows.
  /// @throws performer::invalid_argument on mismatched shapes (check_feature_args).
  void apply(const const_matrix_ref<float>& w, const const_matrix_ref<float>& x,
             matrix_ref<float> phi, Eigen::Ref<vector<float>> log_scale) const {
    detail::check_feature_args<float>("bf16_projection::apply", true, w.rows(), w, x, phi,
                                      log_scale);
    thread_local scratch s;
    s.pack(w);
    detail::bf16::project_rows(x, s.w_packed, s.rows, s.row_pairs, phi, backend_);
    detail::bf16::features_from_projection(map_, s.rows.topRows(x.rows()), phi, log_scale);
  }

 private:
  /// One thread's rounded rows and packed W^T (with the W it was packed from).
  struct scratch {
    row_matrix<float> rows;
    detail::bf16::aligned_buffer<detail::bf16::pair> row_pairs;
    row_matrix<float> w_seen;
    detail::bf16::packed_rhs w_packed;

    void pack(const const_matrix_ref<float>& w) {
      bool same = w_seen.rows() == w.rows() && w_seen.cols() == w.cols();
      // Row by row, bitwise: memcmp runs at memory speed, where an element loop over a strided
      // Ref did not vectorise and cost a tenth of the causal pass.
      const auto row_bytes = static_cast<std::size_t>(w.cols()) * sizeof(float);
      for (index_t i = 0; same && i < w.rows(); ++i) {
        same = std::memcmp(w_seen.row(i).data(), w.row(i).data(), row_bytes) == 0;
      }
      if (same) return;
      w_seen = w;
      detail::bf16::pack_transposed(w, w_packed);
    }
  };

  Map map_;
  bf16_backend backend_;
};

static_assert(feature_map<bf16_projection<>, float>);

}  // namespace performer
