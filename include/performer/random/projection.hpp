/// @file random/projection.hpp
/// @brief random_projection: the current random matrix of a random-feature mechanism, drawn by a
/// projection sampler, redrawn on request and replaceable by a user matrix (Performer section
/// 2.4; docs/algorithms.md §4).
#pragma once

#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstdint>
#include <utility>

#include "../core/concepts.hpp"
#include "detail/generator.hpp"
#include "sampler.hpp"
#include "../core/validate.hpp"
#include "../core/error.hpp"
#include "../core/types.hpp"

namespace performer {

/**
 * @brief The current m x d projection of a random-feature mechanism: drawn from a seed by a
 * sampler, redrawn on request (or every k calls of on_call()), or set by the user.
 *
 * Memory O(m d) (W and its transpose); a draw costs the sampler's time (O(m d^2) for
 * orthogonal features).
 * @tparam T scalar of the stored matrix (the draw is made in double, then converted).
 */
template <real_scalar T, projection_sampler Sampler = orthogonal_sampler>
class random_projection {
 public:
  /**
   * @param features m > 0. @param dim d > 0. @param seed the first draw's seed.
   * @throws performer::invalid_argument if m or d is not positive.
   */
  random_projection(index_t features, index_t dim, std::uint64_t seed = 0, Sampler sampler = {})
      : m_(features), d_(dim), seed_(seed), sampler_(std::move(sampler)) {
    PERFORMER_PRECONDITION(features > 0, "random_projection: the number of features must be "
                                         "positive (got ", features, ")");
    PERFORMER_PRECONDITION(dim > 0, "random_projection: the input width must be positive (got ",
                           dim, ")");
    draw();
  }

  [[nodiscard]] const row_matrix<T>& matrix() const noexcept { return w_; }
  /// W^T (d x m, row-major): the right operand of x W^T as performer's float kernels read it
  /// (core/detail/fp32_product.hpp), kept beside W so that no call transposes it.
  [[nodiscard]] const row_matrix<T>& transposed() const noexcept { return w_t_; }
  [[nodiscard]] index_t features() const noexcept { return m_; }
  [[nodiscard]] index_t dim() const noexcept { return d_; }
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
   * @throws performer::invalid_argument if w is not m x d, holds a non-finite value, or holds
   * a value beyond T's range (a double matrix stored as float).
   */
  template <class Derived>
  void set_matrix(const Eigen::MatrixBase<Derived>& w) {
    PERFORMER_PRECONDITION(w.rows() == m_ && w.cols() == d_, "random_projection::set_matrix: w is ",
                           w.rows(), "x", w.cols(), ", expected ", m_, "x", d_);
    PERFORMER_PRECONDITION(all_finite(w), "random_projection::set_matrix: w (", w.rows(), "x",
                           w.cols(), ") contains a NaN or an infinity");
    // Checked again after rounding to T: a double beyond float's range would become infinite.
    row_matrix<T> rounded = w.template cast<T>();
    PERFORMER_PRECONDITION(all_finite(rounded), "random_projection::set_matrix: w (", w.rows(),
                           "x", w.cols(), ") has entries beyond the range of the scalar type");
    w_ = std::move(rounded);
    w_t_ = w_.transpose();
  }

 private:
  void draw() {
    w_ = sampler_.sample(m_, d_, seed_).template cast<T>();
    w_t_ = w_.transpose();
  }

  index_t m_;
  index_t d_;
  std::uint64_t seed_;
  Sampler sampler_;
  row_matrix<T> w_, w_t_;
  std::uint64_t interval_ = 0;
  std::uint64_t calls_ = 0;
};

}  // namespace performer
