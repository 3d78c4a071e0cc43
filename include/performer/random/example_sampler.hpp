/// @file random/example_sampler.hpp
/// @brief A documented example model of the projection_sampler concept, to copy when writing
/// your own: antithetic Gaussian rows. Rows 2i and 2i + 1 are w and -w for a Gaussian w, so
/// every row is marginally N(0, I_d) (the positive-feature estimator stays unbiased) while the
/// pairs cancel the odd part of exp(w . x): with positive features it gives the hyperbolic
/// estimator's lower variance at m random rows (docs/algorithms.md §3.2, §4).
///
/// Use it as `favor_attention<float, positive_features<float>, antithetic_sampler>(d, m, seed)`.
#pragma once

#include <cstdint>

#include "../core/types.hpp"
#include "detail/generator.hpp"
#include "sampler.hpp"

namespace performer {

/**
 * @brief m x d rows in antithetic pairs (w_1, -w_1, w_2, -w_2, ...), each w iid N(0, I_d) from
 * the library's portable normal stream (an odd m ends with one unpaired row). Deterministic:
 * the same seed gives the same bits on every platform. O(m d) time.
 */
struct antithetic_sampler {
  // --- What the concept asks for: sample(m, d, seed) -> m x d matrix in double ---------------
  /// @throws performer::invalid_argument unless m and d are positive.
  [[nodiscard]] row_matrix<double> sample(index_t m, index_t d, std::uint64_t seed) const {
    detail::check_sample_shape("antithetic_sampler::sample", m, d);
    detail::xoshiro256ss rng(seed);  // never std::normal_distribution: its bits vary by library
    row_matrix<double> w(m, d);
    for (index_t i = 0; i < m; i += 2) {
      for (index_t j = 0; j < d; ++j) w(i, j) = detail::standard_normal(rng);
      if (i + 1 < m) w.row(i + 1) = -w.row(i);
    }
    return w;
  }
};

static_assert(projection_sampler<antithetic_sampler>);

}  // namespace performer
