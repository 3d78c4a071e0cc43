/// @file features/projection.hpp
/// @brief Random projection matrices for random-feature attention: the sampler policies (iid
/// Gaussian, orthogonal) and random_projection, which holds the current draw, redraws it and
/// accepts a user-supplied matrix (Performer section 2.4; ALGORITHMS.md section 4).
#pragma once

#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstdint>
#include <utility>

#include "../concepts.hpp"
#include "../detail/random.hpp"
#include "../detail/validate.hpp"
#include "../error.hpp"
#include "../types.hpp"

namespace performer {

/// A projection sampler draws an m x d matrix in double from a seed, deterministically.
template <class S>
concept projection_sampler = requires(const S& s, index m, index d, std::uint64_t seed) {
  { s.sample(m, d, seed) } -> std::same_as<row_matrix<double>>;
};

/**
 * @brief iid N(0, 1) entries (Performer's unstructured features). O(m d) time.
 * Deterministic: the same seed gives the same bits on any platform (detail::standard_normal).
 */
struct gaussian_sampler {
  [[nodiscard]] row_matrix<double> sample(index m, index d, std::uint64_t seed) const {
    detail::xoshiro256ss rng(seed);
    row_matrix<double> w(m, d);
    for (index i = 0; i < m; ++i) {
      for (index j = 0; j < d; ++j) w(i, j) = detail::standard_normal(rng);
    }
    return w;
  }
};

/// Row norms of orthogonal random features.
enum class row_norms {
  chi,   ///< each row rescaled to the norm of a fresh Gaussian d-vector: rows are marginally
         ///< N(0, I_d), so the softmax-kernel estimate stays unbiased (the default)
  fixed  ///< every row has norm sqrt(d): lower variance but a biased estimate of the softmax
         ///< kernel (ALGORITHMS.md section 4 measured -16% at x = y = e_0)
};

/**
 * @brief Orthogonal random features (ORF): floor(m/d) independent d x d blocks with orthonormal
 * rows, plus the first (m mod d) rows of one more, stacked; then rows rescaled per `norms`.
 *
 * Each block is the Q factor of a Gaussian matrix with R's diagonal positive, which makes it
 * Haar-distributed (without that sign convention, Householder QR biases the kernel estimate:
 * ALGORITHMS.md section 4). The QR is Gram-Schmidt on rows, repeated twice for orthogonality to
 * rounding, in double with explicit fma in fixed order, so the draw is bit-identical on every
 * compiler, SIMD width and thread count. Time O(m d^2).
 */
struct orthogonal_sampler {
  row_norms norms = row_norms::chi;

  [[nodiscard]] row_matrix<double> sample(index m, index d, std::uint64_t seed) const {
    detail::xoshiro256ss rng(seed);
    row_matrix<double> w(m, d);
    row_matrix<double> block(d, d);
    for (index b0 = 0; b0 < m; b0 += d) {
      for (index i = 0; i < d; ++i) {
        for (index j = 0; j < d; ++j) block(i, j) = detail::standard_normal(rng);
      }
      orthonormalise_rows(block);
      const index rows = std::min(d, m - b0);
      w.middleRows(b0, rows) = block.topRows(rows);
    }
    for (index i = 0; i < m; ++i) {
      double norm = std::sqrt(static_cast<double>(d));
      if (norms == row_norms::chi) {
        double sq = 0;
        for (index j = 0; j < d; ++j) {
          const double g = detail::standard_normal(rng);
          sq = std::fma(g, g, sq);
        }
        norm = std::sqrt(sq);
      }
      for (index j = 0; j < d; ++j) w(i, j) *= norm;
    }
    return w;
  }

 private:
  static double dot(const row_matrix<double>& a, index i, index j) {
    double s = 0;
    for (index c = 0; c < a.cols(); ++c) s = std::fma(a(i, c), a(j, c), s);
    return s;
  }

  /// Modified Gram-Schmidt, twice ("twice is enough", Giraud et al. 2005), on the rows.
  static void orthonormalise_rows(row_matrix<double>& a) {
    for (index i = 0; i < a.rows(); ++i) {
      for (int pass = 0; pass < 2; ++pass) {
        for (index j = 0; j < i; ++j) {
          const double r = dot(a, i, j);
          for (index c = 0; c < a.cols(); ++c) a(i, c) = std::fma(-r, a(j, c), a(i, c));
        }
      }
      const double norm = std::sqrt(dot(a, i, i));
      // A Gaussian row in the span of the previous ones has probability zero.
      PERFORMER_ASSERT(norm > 0);
      for (index c = 0; c < a.cols(); ++c) a(i, c) /= norm;
    }
  }
};

static_assert(projection_sampler<gaussian_sampler>);
static_assert(projection_sampler<orthogonal_sampler>);

/**
 * @brief The current m x d projection of a random-feature mechanism: drawn from a seed by a
 * sampler, redrawn on request (or every k calls of on_call()), or set by the user.
 *
 * Memory O(m d); a draw costs the sampler's time (O(m d^2) for orthogonal features).
 * @tparam T scalar of the stored matrix (the draw is made in double, then converted).
 */
template <real_scalar T, projection_sampler Sampler = orthogonal_sampler>
class random_projection {
 public:
  /**
   * @param features m > 0. @param dim d > 0. @param seed the first draw's seed.
   * @throws performer::invalid_argument if m or d is not positive.
   */
  random_projection(index features, index dim, std::uint64_t seed = 0, Sampler sampler = {})
      : m_(features), d_(dim), seed_(seed), sampler_(std::move(sampler)) {
    PERFORMER_PRECONDITION(features > 0, "random_projection: the number of features must be "
                                         "positive (got ", features, ")");
    PERFORMER_PRECONDITION(dim > 0, "random_projection: the input width must be positive (got ",
                           dim, ")");
    draw();
  }

  [[nodiscard]] const row_matrix<T>& matrix() const noexcept { return w_; }
  [[nodiscard]] index features() const noexcept { return m_; }
  [[nodiscard]] index dim() const noexcept { return d_; }
  /// Seed of the current draw (meaningless after set_matrix).
  [[nodiscard]] std::uint64_t seed() const noexcept { return seed_; }
  [[nodiscard]] const Sampler& sampler() const noexcept { return sampler_; }

  /// Draws a fresh matrix from a new seed derived deterministically from the current one.
  void redraw() { redraw(detail::derive_seed(seed_, 1)); }

  /// Draws a fresh matrix from `seed`.
  void redraw(std::uint64_t seed) {
    seed_ = seed;
    draw();
  }

  /// Redraw every k calls of on_call() (k = 0, the default: never).
  void set_redraw_interval(std::uint64_t k) noexcept {
    interval_ = k;
    calls_ = 0;
  }

  /**
   * @brief Counts one call (e.g. one training step); redraws when the count reaches the
   * interval. Returns true when it redrew. Not thread-safe: call it between forward passes.
   */
  bool on_call() {
    if (interval_ == 0 || ++calls_ < interval_) return false;
    calls_ = 0;
    redraw();
    return true;
  }

  /**
   * @brief Uses a given matrix (e.g. one exported from a trained model) instead of a draw.
   * @throws performer::invalid_argument if w is not m x d or holds a non-finite value.
   */
  template <class Derived>
  void set_matrix(const Eigen::MatrixBase<Derived>& w) {
    PERFORMER_PRECONDITION(w.rows() == m_ && w.cols() == d_, "random_projection::set_matrix: w is ",
                           w.rows(), "x", w.cols(), ", expected ", m_, "x", d_);
    PERFORMER_PRECONDITION(detail::all_finite(w), "random_projection::set_matrix: w (", w.rows(), "x",
                           w.cols(), ") contains a NaN or an infinity");
    w_ = w.template cast<T>();
  }

 private:
  void draw() { w_ = sampler_.sample(m_, d_, seed_).template cast<T>(); }

  index m_;
  index d_;
  std::uint64_t seed_;
  Sampler sampler_;
  row_matrix<T> w_;
  std::uint64_t interval_ = 0;
  std::uint64_t calls_ = 0;
};

}  // namespace performer
