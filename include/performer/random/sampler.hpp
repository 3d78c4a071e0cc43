/// @file random/sampler.hpp
/// @brief Projection samplers: the policy that draws the m x d random matrix of random-feature
/// attention (and LSH's rotations), deterministically from a seed: iid Gaussian and orthogonal
/// (Performer section 2.4; docs/algorithms.md §4). random/example_sampler.hpp is a documented
/// example model of the concept.
#pragma once

#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstdint>

#include "../core/error.hpp"
#include "../core/types.hpp"
#include "detail/generator.hpp"

namespace performer {

/// A projection sampler draws an m x d matrix in double from a seed, deterministically (the
/// library's samplers throw performer::invalid_argument unless m and d are positive).
template <class S>
concept projection_sampler = requires(const S& s, index_t m, index_t d, std::uint64_t seed) {
  { s.sample(m, d, seed) } -> std::same_as<row_matrix<double>>;
};

namespace detail {

/// Both samplers need m > 0 rows of width d > 0 (orthogonal blocks of width 0 would never end).
inline void check_sample_shape(const char* who, index_t m, index_t d) {
  PERFORMER_PRECONDITION(m > 0 && d > 0, who, ": m (", m, ") and d (", d, ") must be positive");
}

}  // namespace detail

/**
 * @brief iid N(0, 1) entries (Performer's unstructured features). O(m d) time.
 * Deterministic: the same seed gives the same bits on any platform (detail::standard_normal).
 */
struct gaussian_sampler {
  [[nodiscard]] row_matrix<double> sample(index_t m, index_t d, std::uint64_t seed) const {
    detail::check_sample_shape("gaussian_sampler::sample", m, d);
    detail::xoshiro256ss rng(seed);
    row_matrix<double> w(m, d);
    for (index_t i = 0; i < m; ++i) {
      for (index_t j = 0; j < d; ++j) w(i, j) = detail::standard_normal(rng);
    }
    return w;
  }
};

/// Row norms of orthogonal random features.
enum class row_norms {
  chi,   ///< each row rescaled to the norm of a fresh Gaussian d-vector: rows are marginally
         ///< N(0, I_d), so the softmax-kernel estimate stays unbiased (the default)
  fixed  ///< every row has norm sqrt(d): lower variance but a biased estimate of the softmax
         ///< kernel (docs/algorithms.md §4 measured -16% at x = y = e_0)
};

/**
 * @brief Orthogonal random features (ORF): floor(m/d) independent d x d blocks with orthonormal
 * rows, plus the first (m mod d) rows of one more, stacked; then rows rescaled per `norms`.
 *
 * Each block is the Q factor of a Gaussian matrix with R's diagonal positive, which makes it
 * Haar-distributed (without that sign convention, Householder QR biases the kernel estimate:
 * docs/algorithms.md §4). The QR is Gram-Schmidt on rows, repeated twice for orthogonality to
 * rounding, in double with explicit fma in fixed order, so the draw is bit-identical on every
 * compiler, SIMD width and thread count. Time O(m d^2).
 */
struct orthogonal_sampler {
  row_norms norms = row_norms::chi;

  [[nodiscard]] row_matrix<double> sample(index_t m, index_t d, std::uint64_t seed) const {
    detail::check_sample_shape("orthogonal_sampler::sample", m, d);
    detail::xoshiro256ss rng(seed);
    row_matrix<double> w(m, d);
    row_matrix<double> block(d, d);
    for (index_t b0 = 0; b0 < m; b0 += d) {
      for (index_t i = 0; i < d; ++i) {
        for (index_t j = 0; j < d; ++j) block(i, j) = detail::standard_normal(rng);
      }
      orthonormalise_rows(block);
      const index_t rows = std::min(d, m - b0);
      w.middleRows(b0, rows) = block.topRows(rows);
    }
    for (index_t i = 0; i < m; ++i) {
      double norm = std::sqrt(static_cast<double>(d));
      if (norms == row_norms::chi) {
        double sq = 0;
        for (index_t j = 0; j < d; ++j) {
          const double g = detail::standard_normal(rng);
          sq = std::fma(g, g, sq);
        }
        norm = std::sqrt(sq);
      }
      for (index_t j = 0; j < d; ++j) w(i, j) *= norm;
    }
    return w;
  }

 private:
  static double dot(const row_matrix<double>& a, index_t i, index_t j) {
    double s = 0;
    for (index_t c = 0; c < a.cols(); ++c) s = std::fma(a(i, c), a(j, c), s);
    return s;
  }

  /// Modified Gram-Schmidt, twice ("twice is enough", Giraud et al. 2005), on the rows.
  static void orthonormalise_rows(row_matrix<double>& a) {
    for (index_t i = 0; i < a.rows(); ++i) {
      for (int pass = 0; pass < 2; ++pass) {
        for (index_t j = 0; j < i; ++j) {
          const double r = dot(a, i, j);
          for (index_t c = 0; c < a.cols(); ++c) a(i, c) = std::fma(-r, a(j, c), a(i, c));
        }
      }
      const double norm = std::sqrt(dot(a, i, i));
      // A Gaussian row in the span of the previous ones has probability zero.
      PERFORMER_ASSERT(norm > 0);
      for (index_t c = 0; c < a.cols(); ++c) a(i, c) /= norm;
    }
  }
};

static_assert(projection_sampler<gaussian_sampler>);
static_assert(projection_sampler<orthogonal_sampler>);

}  // namespace performer
