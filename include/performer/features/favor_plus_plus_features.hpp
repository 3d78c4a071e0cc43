/// @file features/favor_plus_plus_features.hpp
/// @brief FAVOR++ positive features: generalized exponential random features with the
/// variance-minimising parameter (Likhosherstov et al. 2022, "Chefs' Random Tables";
/// ALGORITHMS.md 3.6).
#pragma once

#include <cmath>
#include <cstdint>
#include <span>

#include "../detail/validate.hpp"
#include "../error.hpp"
#include "../types.hpp"
#include "feature_map.hpp"

namespace performer {

/**
 * @brief phi(x) = D / sqrt(m) exp(A |w_i|^2 + B w_i . x~ - |x~|^2 / 2), B = sqrt(1 - 4A),
 * D = (1 - 4A)^(d/4): unbiased and positive for every A < 1/8 (finite variance); A = 0 is
 * FAVOR+. The optimal A* (<= 0) depends on the mean of |q~_i + k~_j|^2 over all pairs.
 *
 * - Adaptive (the default): favor_attention's bidirectional path calls calibrated_for(q, k)
 *   on every call and uses A* for those queries and keys (O(N d) extra).
 * - Causal and recurrent paths cannot look at future tokens, so they use the stored A: 0
 *   (FAVOR+) until set_a() or calibrate() (e.g. on a prefix) sets it.
 *
 * M = m. Time O(N m d); apply() allocates one m-vector (the projection's row norms).
 */
template <real_scalar T>
class favor_plus_plus_features {
 public:
  static constexpr bool uses_projection = true;

  favor_plus_plus_features() noexcept = default;
  explicit favor_plus_plus_features(bool adaptive) noexcept : adaptive_(adaptive) {}

  [[nodiscard]] index feature_count(index m, index /*d*/) const { return m; }
  [[nodiscard]] double a() const noexcept { return a_; }
  [[nodiscard]] bool adaptive() const noexcept { return adaptive_; }

  /// Fixes A. @throws performer::invalid_argument unless A is finite and A < 1/8.
  void set_a(double a) {
    PERFORMER_PRECONDITION(std::isfinite(a) && a < 0.125,
                           "favor_plus_plus_features::set_a: A must be finite and below 1/8 "
                           "(got ", a, ")");
    a_ = a;
  }

  /// A* for these queries and keys (ALGORITHMS.md 3.6): with rho = mean|q~ + k~|^2 / d,
  /// A* = (1 - 2 rho - sqrt((2 rho + 1)^2 + 8 rho)) / 16. O(N d).
  /// Padded keys (key_mask[j] == 0) are left out of the statistic.
  [[nodiscard]] static double optimal_a(const const_matrix_ref<T>& q, const const_matrix_ref<T>& k,
                                        std::span<const std::uint8_t> key_mask = {}) {
    PERFORMER_PRECONDITION(q.rows() > 0 && k.rows() > 0 && q.cols() == k.cols(),
                           "favor_plus_plus_features::optimal_a: q is ", q.rows(), "x", q.cols(),
                           " and k is ", k.rows(), "x", k.cols());
    PERFORMER_PRECONDITION(key_mask.empty() ||
                               key_mask.size() == static_cast<std::size_t>(k.rows()),
                           "favor_plus_plus_features::optimal_a: key_mask has ", key_mask.size(),
                           " entries, expected ", k.rows(), " or none");
    // A NaN here would become A = NaN, which set_a() rejects, and fail every later call.
    detail::require_finite("favor_plus_plus_features::optimal_a", "q", q);
    detail::require_finite("favor_plus_plus_features::optimal_a", "k", k);
    const double d = static_cast<double>(q.cols());
    const double s2 = 1.0 / std::sqrt(d);  // squared input scale d^(-1/2)
    const double mean_q2 = q.template cast<double>().rowwise().squaredNorm().mean() * s2;
    const vector<double> q_mean = q.template cast<double>().colwise().mean().transpose();
    vector<double> k_mean = vector<double>::Zero(k.cols());
    double k2 = 0;
    index kept = 0;
    for (index j = 0; j < k.rows(); ++j) {
      if (!key_mask.empty() && key_mask[static_cast<std::size_t>(j)] == 0) continue;
      k_mean += k.row(j).transpose().template cast<double>();
      k2 += k.row(j).template cast<double>().squaredNorm();
      ++kept;
    }
    if (kept == 0) return 0.0;  // nothing to fit: FAVOR+
    k_mean /= static_cast<double>(kept);
    const double mean_k2 = k2 / static_cast<double>(kept) * s2;
    const double cross = q_mean.dot(k_mean) * s2;
    const double rho = (mean_q2 + mean_k2 + 2.0 * cross) / d;
    return (1.0 - 2.0 * rho - std::sqrt((2.0 * rho + 1.0) * (2.0 * rho + 1.0) + 8.0 * rho)) / 16.0;
  }

  /// Sets A = A* for these queries and keys (e.g. a prefix, before causal or recurrent use).
  void calibrate(const const_matrix_ref<T>& q, const const_matrix_ref<T>& k) { a_ = optimal_a(q, k); }

  /// A copy calibrated to (q, k) when adaptive, else this map unchanged.
  [[nodiscard]] favor_plus_plus_features calibrated_for(const const_matrix_ref<T>& q,
                                                        const const_matrix_ref<T>& k,
                                                        std::span<const std::uint8_t> key_mask = {}) const {
    favor_plus_plus_features copy = *this;
    if (adaptive_) copy.a_ = optimal_a(q, k, key_mask);
    return copy;
  }

  void apply(const const_matrix_ref<T>& w, const const_matrix_ref<T>& x, matrix_ref<T> phi,
             Eigen::Ref<vector<T>> log_scale) const {
    detail::check_feature_args<T>("favor_plus_plus_features::apply", true, w.rows(), w, x, phi,
                                  log_scale);
    const index m = w.rows();
    const double d = static_cast<double>(x.cols());
    const T scale = detail::softmax_input_scale<T>(x.cols());
    const T b = static_cast<T>(std::sqrt(1.0 - 4.0 * a_));
    const T log_d = static_cast<T>(d / 4.0 * std::log(1.0 - 4.0 * a_));
    const T inv_sqrt_m = T(1) / std::sqrt(static_cast<T>(m));
    const row_vector<T> offset = (static_cast<T>(a_) * w.rowwise().squaredNorm()).transpose();
    phi.noalias() = x * w.transpose();  // scaled apart: no temporary for one-row x
    phi *= (b * scale);
    phi.rowwise() += offset;
    for (index i = 0; i < x.rows(); ++i) {
      const T top = phi.row(i).maxCoeff();
      phi.row(i) = (phi.row(i).array() - top).exp() * inv_sqrt_m;
      log_scale(i) = top + log_d - (x.row(i) * scale).squaredNorm() / T(2);
    }
  }

 private:
  double a_ = 0.0;
  bool adaptive_ = true;
};

static_assert(feature_map<favor_plus_plus_features<float>, float>);

}  // namespace performer
