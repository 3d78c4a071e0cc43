/// @file favor/features/favor_plus_plus_features.hpp
/// @brief FAVOR++ positive features: generalized exponential random features with the
/// variance-minimising parameter (Likhosherstov et al. 2022, "Chefs' Random Tables";
/// docs/algorithms.md §3.6).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>

#include "../../core/validate.hpp"
#include "../../core/error.hpp"
#include "../../core/types.hpp"
#include "../feature_map.hpp"

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
 * M = m. Time O(N m d); apply() and the calibration allocate nothing.
 */
template <real_scalar T>
class favor_plus_plus_features {
 public:
  static constexpr bool uses_projection = true;

  favor_plus_plus_features() noexcept = default;
  explicit favor_plus_plus_features(bool adaptive) noexcept : adaptive_(adaptive) {}

  [[nodiscard]] index_t feature_count(index_t m, index_t /*d*/) const { return m; }
  [[nodiscard]] double a() const noexcept { return a_; }
  [[nodiscard]] bool adaptive() const noexcept { return adaptive_; }

  /// Fixes A. @throws performer::invalid_argument unless A is finite and A < 1/8.
  void set_a(double a) {
    PERFORMER_PRECONDITION(std::isfinite(a) && a < 0.125,
                           "favor_plus_plus_features::set_a: A must be finite and below 1/8 "
                           "(got ", a, ")");
    a_ = a;
  }

  /**
   * @brief A* for these queries and keys (docs/algorithms.md §3.6): with
   * rho = mean over visible pairs of |q~_i + k~_j|^2 / d,
   * A* = (1 - 2 rho - sqrt((2 rho + 1)^2 + 8 rho)) / 16 (<= 0), limited to
   * A >= min_adaptive_a = -1/8 (reached at rho = 1/3). O((N_q + N_k) d).
   *
   * The limit keeps the features within T's range: the offsets A |w_i|^2 spread a row's
   * features by |A| times the spread of the projection's squared row norms, and a query and a
   * key whose largest features fall on different rows then have an estimate that underflows
   * to 0 (the fuzzer found A = -4.6 doing that in float on inputs below 8). Beyond rho = 1/3
   * the FAVOR+ per-pair variance exceeds e^(d/3); the limit gives up little there.
   *
   * Only visible tokens enter the statistic: keys with key_mask[j] == 0 and queries with
   * query_mask[i] == 0 are left out, so padding cannot move A and, through it, the outputs of
   * the real tokens. With nothing visible on either side it returns 0 (plain FAVOR+).
   * @param key_mask empty (every key visible) or one entry per key, nonzero = keep.
   * @param query_mask empty (every query visible) or one entry per query, nonzero = keep.
   * @throws performer::invalid_argument on empty or mismatched shapes, a mask of the wrong
   * length, or a non-finite entry in a visible row.
   */
  /// The most negative A the adaptive estimate uses (see optimal_a).
  static constexpr double min_adaptive_a = -0.125;

  [[nodiscard]] static double optimal_a(const const_matrix_ref<T>& q, const const_matrix_ref<T>& k,
                                        std::span<const std::uint8_t> key_mask = {},
                                        std::span<const std::uint8_t> query_mask = {}) {
    constexpr const char* who = "favor_plus_plus_features::optimal_a";
    PERFORMER_PRECONDITION(q.rows() > 0 && k.rows() > 0 && q.cols() == k.cols() && q.cols() > 0,
                           who, ": q is ", q.rows(), "x", q.cols(), " and k is ", k.rows(), "x",
                           k.cols());
    PERFORMER_PRECONDITION(key_mask.empty() ||
                               key_mask.size() == static_cast<std::size_t>(k.rows()),
                           who, ": key_mask has ", key_mask.size(), " entries, expected ", k.rows(),
                           " or none");
    PERFORMER_PRECONDITION(query_mask.empty() ||
                               query_mask.size() == static_cast<std::size_t>(q.rows()),
                           who, ": query_mask has ", query_mask.size(), " entries, expected ",
                           q.rows(), " or none");
    // The moments of the rows divided by their largest entry, so that no sum overflows whatever
    // the (finite) inputs; only rho itself may, to +inf, which gives the lower limit.
    const double top = std::max(visible_max_abs(who, "q", q, query_mask),
                                visible_max_abs(who, "k", k, key_mask));
    const moments mq = visible_moments(q, query_mask, top);
    const moments mk = visible_moments(k, key_mask, top);
    if (mq.count == 0 || mk.count == 0 || top == 0.0) return 0.0;  // nothing to fit: FAVOR+
    // mean |q~ + k~|^2 over pairs = mean|q~|^2 + mean|k~|^2 + 2 mean(q~) . mean(k~), since the
    // pairs are every (visible query, visible key) combination.
    auto sums = scratch_row<double>(2 * q.cols());
    visible_column_sums(q, query_mask, top, sums.head(q.cols()));
    visible_column_sums(k, key_mask, top, sums.tail(q.cols()));
    const double cross = sums.head(q.cols()).dot(sums.tail(q.cols())) /
                         (static_cast<double>(mq.count) * static_cast<double>(mk.count));
    const double d = static_cast<double>(q.cols());
    const double s2 = 1.0 / std::sqrt(d);  // squared input scale d^(-1/2)
    // >= 0 in exact arithmetic; rounding could make it slightly negative.
    const double scaled = std::max(0.0, mq.mean_square + mk.mean_square + 2.0 * cross);
    const double rho = scaled * top * top * s2 / d;
    const double a = (1.0 - 2.0 * rho - std::sqrt((2.0 * rho + 1.0) * (2.0 * rho + 1.0) + 8.0 * rho)) / 16.0;
    return a > min_adaptive_a ? a : min_adaptive_a;  // also for rho = +inf (a = NaN or -inf)
  }

  /**
   * @brief Sets A = A* for these queries and keys, visible rows only (e.g. a prefix, before
   * causal or recurrent use). Masks as in optimal_a. @throws as optimal_a.
   */
  void calibrate(const const_matrix_ref<T>& q, const const_matrix_ref<T>& k,
                 std::span<const std::uint8_t> key_mask = {},
                 std::span<const std::uint8_t> query_mask = {}) {
    a_ = optimal_a(q, k, key_mask, query_mask);
  }

  /// A copy calibrated to the visible rows of (q, k) when adaptive, else this map unchanged.
  [[nodiscard]] favor_plus_plus_features calibrated_for(
      const const_matrix_ref<T>& q, const const_matrix_ref<T>& k,
      std::span<const std::uint8_t> key_mask = {},
      std::span<const std::uint8_t> query_mask = {}) const {
    favor_plus_plus_features copy = *this;
    if (adaptive_) copy.a_ = optimal_a(q, k, key_mask, query_mask);
    return copy;
  }

  void apply(const const_matrix_ref<T>& w, const const_matrix_ref<T>& x, matrix_ref<T> phi,
             Eigen::Ref<vector<T>> log_scale) const {
    detail::check_feature_args<T>("favor_plus_plus_features::apply", true, w.rows(), w, x, phi,
                                  log_scale);
    const index_t m = w.rows();
    const double d = static_cast<double>(x.cols());
    const T scale = detail::softmax_input_scale<T>(x.cols());
    const T b = static_cast<T>(std::sqrt(1.0 - 4.0 * a_));
    const T log_d = static_cast<T>(d / 4.0 * std::log(1.0 - 4.0 * a_));
    const T inv_sqrt_m = T(1) / std::sqrt(static_cast<T>(m));
    phi.noalias() = x * w.transpose();  // scaled apart: no temporary for one-row x
    phi *= (b * scale);
    if (a_ != 0.0) {  // the offsets A |w_j|^2, added row by row
      auto offset = scratch_row<T>(m);
      offset = (static_cast<T>(a_) * w.rowwise().squaredNorm()).transpose();
      phi.rowwise() += offset;
    }
    for (index_t i = 0; i < x.rows(); ++i) {
      const T top = phi.row(i).maxCoeff();
      phi.row(i) = (phi.row(i).array() - top).exp() * inv_sqrt_m;
      log_scale(i) = top + log_d - (x.row(i) * scale).squaredNorm() / T(2);
    }
  }

  /// With A held fixed: dx = B s (dphi .* phi) W - s^2 dlog_scale x (positive_features' form,
  /// the projection scaled by B = sqrt(1 - 4A)).
  void backward(const const_matrix_ref<T>& w, const const_matrix_ref<T>& x,
                const const_matrix_ref<T>& phi, const const_vector_ref<T>& log_scale,
                matrix_ref<T> dphi, const const_vector_ref<T>& dlog_scale,
                matrix_ref<T> dx) const {
    detail::check_feature_backward_args<T>("favor_plus_plus_features::backward", true, w.rows(),
                                           w, x, phi, log_scale, dphi, dlog_scale, dx);
    const T b = static_cast<T>(std::sqrt(1.0 - 4.0 * a_));
    detail::exponential_features_backward<T>(detail::softmax_input_scale<T>(x.cols()), w, x,
                                             phi, dphi, dlog_scale, dx, b);
  }

 private:
  /// Count and mean squared norm of the visible rows of x divided by `top`, in double.
  struct moments {
    index_t count = 0;
    double mean_square = 0;
  };

  /// The largest |entry| of x's visible rows; checks that they are finite (padded rows may hold
  /// anything: a NaN there must not become A = NaN).
  static double visible_max_abs(const char* who, const char* name, const const_matrix_ref<T>& x,
                                std::span<const std::uint8_t> mask) {
    double top = 0;
    for (index_t i = 0; i < x.rows(); ++i) {
      if (!mask.empty() && mask[static_cast<std::size_t>(i)] == 0) continue;
      PERFORMER_PRECONDITION(all_finite(x.row(i)), who, ": ", name, " row ", i,
                             " contains a NaN or an infinity");
      top = std::max(top, static_cast<double>(x.row(i).cwiseAbs().maxCoeff()));
    }
    return top;
  }

  static moments visible_moments(const const_matrix_ref<T>& x, std::span<const std::uint8_t> mask,
                                 double top) {
    moments mo;
    for (index_t i = 0; i < x.rows(); ++i) {
      if (!mask.empty() && mask[static_cast<std::size_t>(i)] == 0) continue;
      if (top > 0) mo.mean_square += (x.row(i).template cast<double>() / top).squaredNorm();
      ++mo.count;
    }
    if (mo.count > 0) mo.mean_square /= static_cast<double>(mo.count);
    return mo;
  }

  /// The sums of x's visible rows divided by `top`, in double, into `sums` (x.cols() entries).
  template <class Out>
  static void visible_column_sums(const const_matrix_ref<T>& x, std::span<const std::uint8_t> mask,
                                  double top, Out&& sums) {
    sums.setZero();
    for (index_t i = 0; i < x.rows(); ++i) {
      if (mask.empty() || mask[static_cast<std::size_t>(i)] != 0) {
        sums += x.row(i).template cast<double>() / top;
      }
    }
  }

  /// A row of n scalars, one per thread, reused across calls: apply() and optimal_a() run on
  /// every forward pass (and from several threads at once), and must neither allocate once warm
  /// nor share a buffer. It grows to the largest n a thread has asked for.
  template <class S>
  static auto scratch_row(index_t n) {
    thread_local row_vector<S> buffer;
    if (buffer.size() < n) buffer.resize(n);
    return buffer.head(n);
  }

  double a_ = 0.0;
  bool adaptive_ = true;
};

static_assert(differentiable_feature_map<favor_plus_plus_features<float>, float>);

}  // namespace performer
