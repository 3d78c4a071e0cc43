/// @file tests/fuzz/favor_reference.hpp
/// @brief performer_fuzz_favor's oracle: the FAVOR estimate recomputed in double from the
/// library's own features (public feature-map API), with a rounding bound derived from the
/// inputs, for favor_attention (any blocking, chunking and segments) and favor_decoder.
#pragma once

#include <type_traits>

#include "contract.hpp"

namespace fuzz {

enum class map_kind { positive, hyperbolic, trigonometric, relu, elu, favor_plus_plus };

/// The harness's error model is per map: a new map in the registry must get one here.
template <class T, class Map>
constexpr map_kind kind_of() {
  if constexpr (std::is_same_v<Map, performer::positive_features<T>>) {
    return map_kind::positive;
  } else if constexpr (std::is_same_v<Map, performer::hyperbolic_features<T>>) {
    return map_kind::hyperbolic;
  } else if constexpr (std::is_same_v<Map, performer::trigonometric_features<T>>) {
    return map_kind::trigonometric;
  } else if constexpr (std::is_same_v<Map, performer::relu_features<T>>) {
    return map_kind::relu;
  } else if constexpr (std::is_same_v<Map, performer::elu_features<T>>) {
    return map_kind::elu;
  } else if constexpr (std::is_same_v<Map, performer::favor_plus_plus_features<T>>) {
    return map_kind::favor_plus_plus;
  } else {
    static_assert(dependent_false<Map>, "a new feature map: give it an error model (favor_delta) "
                                        "and a feature count (run_favor)");
  }
}

/// The query mask forward uses with a data-dependent map: in self-attention the key mask also
/// marks the padded queries.
template <class T>
std::span<const std::uint8_t> query_mask_of(const attention_case<T>& c) {
  return c.q.rows() == c.k.rows() ? c.am().key_mask : std::span<const std::uint8_t>{};
}

/// Relative error of FAVOR's per-pair weights between two evaluation orders (blocking, chunks,
/// segments, token by token, this harness's reference): the exponents carry ~ d eps |exponent|.
template <class T, class Att>
double favor_delta(const Att& att, const attention_case<T>& c, bool adaptive_used) {
  constexpr map_kind kind = kind_of<T, typename Att::feature_map_type>();
  const double eps = eps_of<T>();
  const double d = static_cast<double>(std::max<index_t>(c.q.cols(), 1));
  const double raw = std::max(max_row_norm(c.q), max_row_norm(c.k));
  const double r = raw * std::pow(d, -0.25);
  const double w = max_row_norm(att.projection().matrix());
  double e = 0;
  if constexpr (kind == map_kind::favor_plus_plus) {
    double a = std::abs(att.feature_map().a());
    if (adaptive_used) {
      a = std::max(a, std::abs(Att::feature_map_type::optimal_a(c.q, c.k, c.am().key_mask,
                                                                  query_mask_of(c))));
    }
    const double b = std::sqrt(1.0 + 4.0 * a);
    e = 8.0 * (d + 8.0) * eps *
        (a * w * w + b * r * w + r * r / 2.0 + d / 4.0 * std::log1p(4.0 * a) + 1.0);
  } else if constexpr (kind == map_kind::relu) {
    e = 2.0 * (d + 2.0) * eps * (raw * w / 1e-3 + 1.0);
  } else if constexpr (kind == map_kind::elu) {
    e = 8.0 * eps * (1.0 + std::max(max_abs(c.q), max_abs(c.k)));
  } else {
    e = 8.0 * (d + 8.0) * eps * (r * w + r * r / 2.0 + 1.0);
  }
  return std::isfinite(e) ? std::expm1(2.0 * e) : e;
}

/// out_i = sum_j a_ij v_j / sum_j a_ij over the visible keys, a_ij = exp(log_k_j - c_i)
/// phi(q_i) . phi(k_j), c_i = max log_k_j over the visible keys (the library's stabiliser
/// convention, so den_i is the normaliser the library itself divides by, to rounding).
struct favor_reference {
  row_matrix<double> out;
  std::vector<double> den, abs_den;
  bool usable = true;
};

template <class T, class Att>
favor_reference favor_estimate(const Att& att, const attention_case<T>& c) {
  using map_type = typename Att::feature_map_type;
  favor_reference ref;
  map_type map = att.feature_map();
  if constexpr (requires { map.calibrated_for(c.q, c.k, c.am().key_mask, c.am().key_mask); }) {
    if (!c.h.causal()) map = map.calibrated_for(c.q, c.k, c.am().key_mask, query_mask_of(c));
  }
  const index_t m = att.feature_count();
  row_matrix<T> pq(c.q.rows(), m), pk(c.k.rows(), m);
  performer::vector<T> lq(c.q.rows()), lk(c.k.rows());
  const auto& w = att.projection().matrix();
  const outcome o = guarded("feature_map::apply (reference)",
                            {"features::apply", "favor_plus_plus_features"}, [&] {
                              map.apply(w, c.q, pq, lq);
                              map.apply(w, c.k, pk, lk);
                            });
  if (!o.ok) bug(cat("feature_map::apply rejected the inputs forward accepted: ", o.message));
  if (!all_finite(pq) || !all_finite(pk)) {
    ref.usable = false;
    return ref;
  }
  // The feature_map concept promises a finite log_scale unless the true one lies outside T's
  // range: only when the scaled squared norm |x|^2 / sqrt(d) itself overflows T (with a margin
  // for the rounding of the two paths).
  const auto beyond_range = [&](const row_matrix<T>& x, index_t i) {
    const double sn = x.row(i).template cast<double>().squaredNorm() /
                      std::sqrt(static_cast<double>(x.cols()));
    return sn > 0.25 * static_cast<double>(std::numeric_limits<T>::max());
  };
  const auto check_log = [&](const row_matrix<T>& x, const performer::vector<T>& l) {
    for (index_t i = 0; i < x.rows(); ++i) {
      if (!std::isfinite(l(i)) && !(std::isinf(l(i)) && beyond_range(x, i))) {
        bug(cat("feature_map::apply: log_scale ", l(i), " for finite row ", i,
                " whose scaled squared norm fits T"));
      }
    }
  };
  if (all_finite(c.q) && all_finite(c.k) && (!all_finite(lq) || !all_finite(lk))) {
    check_log(c.q, lq);
    check_log(c.k, lk);
    for (index_t j = 0; j < c.k.rows(); ++j) {
      if (!(lk(j) < std::numeric_limits<T>::infinity())) ref.usable = false;  // +inf or NaN
    }
    if (!ref.usable) return ref;
  }
  ref.out.setZero(c.q.rows(), c.v.cols());
  ref.den.assign(static_cast<std::size_t>(c.q.rows()), 0.0);
  ref.abs_den.assign(static_cast<std::size_t>(c.q.rows()), 0.0);
  for (index_t i = 0; i < c.q.rows(); ++i) {
    double shift = -std::numeric_limits<double>::infinity();
    for (index_t j = 0; j < c.k.rows(); ++j) {
      if (c.visible(i, j)) shift = std::max(shift, static_cast<double>(lk(j)));
    }
    if (shift == -std::numeric_limits<double>::infinity()) continue;
    // Sums in long double: a double sum of a_ij v_j can overflow on the way to a result that
    // fits (found by the fuzzer: the reference gave -inf where the library's -1.8e308 was right).
    using ld = long double;
    ld den = 0, abs_den = 0;
    Eigen::Matrix<ld, 1, Eigen::Dynamic> sum = Eigen::Matrix<ld, 1, Eigen::Dynamic>::Zero(c.v.cols());
    for (index_t j = 0; j < c.k.rows(); ++j) {
      if (!c.visible(i, j)) continue;
      const ld scale = std::exp(static_cast<ld>(lk(j)) - static_cast<ld>(shift));
      const ld a = scale * static_cast<ld>(pq.row(i).template cast<double>().dot(pk.row(j).template cast<double>()));
      den += a;
      // The library sums over features before keys, so a signed map's cancellation inside
      // phi(q) . phi(k) counts too (found by the fuzzer: trigonometric features in double, off
      // by twice the bound built from |phi(q) . phi(k)|).
      abs_den += scale * static_cast<ld>(pq.row(i).template cast<double>().cwiseAbs().dot(
                             pk.row(j).template cast<double>().cwiseAbs()));
      for (index_t col = 0; col < c.v.cols(); ++col) sum(col) += a * static_cast<ld>(c.v(j, col));
    }
    ref.den[static_cast<std::size_t>(i)] = static_cast<double>(den);
    ref.abs_den[static_cast<std::size_t>(i)] = static_cast<double>(abs_den);
    if (den != 0) ref.out.row(i) = (sum / den).template cast<double>();
  }
  return ref;
}

/// Tolerance of one FAVOR output entry against the reference, or a negative value when the row
/// cannot be compared. Two parts: relative rounding (delta for the weights, rel for the sums,
/// times the cancellation factor |a| / |sum a| of signed maps) times the values' range amax; and
/// underflow: each of the ~count products a_ij v_jc and phi entries may be off by up to `tiny`,
/// an absolute error of ~count * tiny / |den| in the result. tiny is T's smallest normal, not
/// its smallest subnormal: the maps' features come from Eigen's vectorised exp, which clamps its
/// argument (near -88.7 in float) and returns up to ~min() where the true value is subnormal or
/// 0, and whether an entry takes the vectorised or the scalar path depends on its row's
/// alignment (the library's block buffer or this reference's matrix). A row where that exceeds
/// 5% of amax is not compared (FAVOR keeps its normaliser unscaled, so it can be tiny).
template <class T>
double favor_tolerance(double n, double features, double d, double delta, double den,
                       double abs_den, double amax) {
  const double eps = eps_of<T>();
  const double tiny = static_cast<double>(std::numeric_limits<T>::min());
  if (abs_den == 0 || den == 0) return -1;
  const double rel = 8.0 * (n + features + d + 16.0) * eps;
  const double relative = (2.5 * delta + rel) * (abs_den / std::abs(den));
  const double count = n * features + n + features + 4.0;
  const double underflow = 4.0 * count * tiny / std::abs(den);
  if (!(relative <= 0.05) || !(underflow <= 0.05 * amax || amax == 0)) return -1;
  return relative * amax + underflow * (1.0 + amax) + (n + 4.0) * tiny;
}

/// Rows [first, out.rows()) of a result against the reference (rows the tolerance rules out are
/// skipped; PERFORMER_FUZZ_TRACE=1 lists them).
template <class T>
void check_favor(std::string_view what, const row_matrix<T>& out, const favor_reference& ref,
                 const attention_case<T>& c, index_t features, double delta, index_t first = 0) {
  if (!ref.usable || !(delta <= 0.05)) return;
  for (index_t i = first; i < out.rows(); ++i) {
    const double den = ref.den[static_cast<std::size_t>(i)];
    const double abs_den = ref.abs_den[static_cast<std::size_t>(i)];
    index_t visible = 0;
    for (index_t j = 0; j < c.k.rows(); ++j) visible += c.visible(i, j) ? 1 : 0;
    for (index_t col = 0; col < out.cols(); ++col) {
      double amax = 0;
      for (index_t j = 0; j < c.k.rows(); ++j) {
        if (c.visible(i, j)) amax = std::max(amax, std::abs(static_cast<double>(c.v(j, col))));
      }
      const double tol = favor_tolerance<T>(static_cast<double>(visible), static_cast<double>(features),
                                            static_cast<double>(c.q.cols()), delta, den, abs_den, amax);
      if (tol < 0) {
        if (tracing()) std::fprintf(stderr, "  (row %ld not compared)\n", static_cast<long>(i));
        break;
      }
      const double x = static_cast<double>(out(i, col));
      const double y = ref.out(i, col);
      if (!(std::abs(x - y) <= tol)) {
        bug(cat(what, ": out(", i, ", ", col, ") = ", x, " but the FAVOR estimate is ", y,
                " (tolerance ", tol, ", normaliser ", den, ", delta ", delta, ")"));
      }
    }
  }
}

}  // namespace fuzz
