/// @file testing/detail/extreme_softmax.hpp
/// @brief The extreme-values suite's softmax-type reference (exact attention, LSH over known
/// windows): softmax attention in long double over explicit logits, and the bounds on how far a
/// float or double mechanism may lie from it, derived from the rounding analysis.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../../core/types.hpp"
#include "extreme_contract.hpp"

namespace performer::conformance::extreme {

/// Softmax attention in long double over explicit logits. `magnitude(i, j)` bounds the size of
/// the terms that make up logit (i, j), so that (d + 16) u magnitude bounds its rounding in T
/// (a dot product of length d has error <= d u sum |q_c k_c| in any summation order; the scaling,
/// LSH's key normalisation and its self-penalty subtraction add a few u more). Query i mixes the
/// keys [first(i), last(i)): the causal prefix, or an LSH chunk window.
struct softmax_reference {
  ld_matrix logits, magnitude, out;
  std::vector<index_t> first, last;
  ld max_abs_dot = 0;         // max_ij sum_c |q_ic k_jc|, unscaled: does q.k fit in T?
  bool self_penalty = false;  // LSH shared-QK: logit (i, i) carries the 1e5 penalty

  [[nodiscard]] index_t begin(index_t i) const { return first[static_cast<std::size_t>(i)]; }
  [[nodiscard]] index_t visible(index_t i) const {
    return last[static_cast<std::size_t>(i)] - first[static_cast<std::size_t>(i)];
  }
};

inline constexpr ld lsh_self_penalty = 1e5L;  // lsh_attention's documented finite self-mask

/// The keys query i of n mixes: all (or j <= i when causal); with chunk > 0, the LSH window of
/// a sequence whose tokens all share one bucket: the query's chunk floor(i / c) and the one
/// before (docs/algorithms.md §6.3), cut at i when causal.
inline std::pair<index_t, index_t> key_range(index_t i, index_t n, bool causal, index_t chunk) {
  index_t lo = 0;
  index_t hi = n;
  if (chunk > 0) {
    const index_t c = i / chunk;
    lo = std::max<index_t>(0, (c - 1) * chunk);
    hi = std::min<index_t>(n, (c + 1) * chunk);
  }
  if (causal) hi = std::min(hi, i + 1);
  return {lo, hi};
}

/// keys: k itself, or (shared_qk) q_j / |q_j| with logit (i, i) l replaced by -|l| - 1e5.
inline softmax_reference make_softmax_reference(const problem& p, bool causal, bool shared_qk,
                                                index_t chunk = 0) {
  const index_t n_q = p.q.rows();
  const ld_matrix q = p.q.cast<ld>();
  ld_matrix k = shared_qk ? q : ld_matrix(p.k.cast<ld>());
  if (shared_qk) {
    for (index_t j = 0; j < k.rows(); ++j) {
      const ld norm = std::sqrt(k.row(j).squaredNorm());
      if (norm > 0) k.row(j) /= norm;
    }
  }
  const index_t n_k = k.rows();
  const ld scale = 1.0L / std::sqrt(static_cast<ld>(q.cols()));
  softmax_reference r;
  r.self_penalty = shared_qk;
  r.logits = ld_matrix::Constant(n_q, n_k, -ld_inf);
  r.magnitude = ld_matrix::Zero(n_q, n_k);
  r.out = ld_matrix::Zero(n_q, p.v.cols());
  const ld_matrix v = p.v.cast<ld>();
  for (index_t i = 0; i < n_q; ++i) {
    const auto [lo, hi] = key_range(i, n_k, causal, chunk);
    r.first.push_back(lo);
    r.last.push_back(hi);
    for (index_t j = lo; j < hi; ++j) {
      ld dot = 0;
      ld abs_dot = 0;
      for (index_t c = 0; c < q.cols(); ++c) {
        dot += q(i, c) * k(j, c);
        abs_dot += std::abs(q(i, c) * k(j, c));
      }
      r.max_abs_dot = std::max(r.max_abs_dot, abs_dot);
      r.logits(i, j) = dot * scale;
      r.magnitude(i, j) = abs_dot * scale;
      if (shared_qk && i == j) {
        r.logits(i, j) = -std::abs(r.logits(i, j)) - lsh_self_penalty;
        r.magnitude(i, j) += lsh_self_penalty;
      }
    }
    const ld top = r.logits.row(i).segment(lo, hi - lo).maxCoeff();
    ld total = 0;
    for (index_t j = lo; j < hi; ++j) {
      const ld w = exp_of(r.logits(i, j) - top);
      total += w;
      r.out.row(i) += w * v.row(j);
    }
    r.out.row(i) /= total;
  }
  return r;
}

/// Per-entry bound on the rounding of logit (i, j) in T, including the stabilising shift:
/// (d + 16) u magnitude for the logit itself, u |s_max - s_ij| for the shifted exponent's
/// argument, as much again for the online softmax's rescales (each rescale argument rounds by
/// u (m_new - m_old), and the rises after key j was folded add up to at most s_max - s_ij),
/// 8 u for exp itself, and (d + 2) tiny for products that fall into the subnormal range.
template <class T>
ld logit_error(const softmax_reference& r, index_t i, index_t j, ld top, index_t d) {
  const ld u = unit_roundoff<T>();
  const ld dd = static_cast<ld>(d);
  return (dd + 16) * u * r.magnitude(i, j) + 2 * u * (top - r.logits(i, j)) + 8 * u +
         (dd + 2) * tiny<T>();
}

/// Bound on |out_T(i) - out_ref(i)| for T arithmetic on the reference's problem.
///
/// If each logit is perturbed by at most D_j, each weight w_j = exp(s_j - lse) changes by a
/// factor within exp(+-(D_j + L)), L = log sum_j w_j exp(D_j) bounding the change of the
/// log-sum-exp. Hence |out' - out| <= sum_j w_j expm1(D_j + L) |v_j - out| (bound 1, tight when
/// the weights are spread). When one logit clears the others, the mass off the top key is at
/// most sum_{j != top} exp(s_j - s_top + D_j + D_top) in T and sum_{j != top} w_j exactly, so
/// |out' - out| <= (both masses) max_j |v_j - v_top| (bound 2, tight for one-hot rows, e.g.
/// logits of 1e60 carry absolute errors of 1e45 but gaps of 1e59). Plus the weighted sum's own
/// rounding: (4 N + 32) u max |v| (N-term sums, exp, the division; LSH merges two rounds) and
/// (4 N + 32) tiny for subnormal values.
template <class T>
double softmax_tolerance(const softmax_reference& r, const problem& p, index_t i) {
  const index_t lo = r.begin(i);
  const index_t vis = r.visible(i);
  const index_t d = p.q.cols();
  const auto s = r.logits.row(i).segment(lo, vis);
  index_t top_at = 0;
  const ld top = s.maxCoeff(&top_at);
  const ld_matrix v = p.v.middleRows(lo, vis).cast<ld>();
  // Weights, and exp(D_j), each computed once (two long double exps per key).
  std::vector<ld> w(static_cast<std::size_t>(vis));
  std::vector<ld> grow(static_cast<std::size_t>(vis));
  ld sum_w = 0;
  for (index_t j = 0; j < vis; ++j) {
    w[static_cast<std::size_t>(j)] = exp_of(s(j) - top);
    sum_w += w[static_cast<std::size_t>(j)];
    grow[static_cast<std::size_t>(j)] = exp_of(logit_error<T>(r, i, lo + j, top, d));
  }
  ld lse_shift = 0;  // sum_j w_j exp(D_j) (keys of weight 0 add nothing, even if D_j is huge)
  for (index_t j = 0; j < vis; ++j) {
    w[static_cast<std::size_t>(j)] /= sum_w;
    if (w[static_cast<std::size_t>(j)] > 0)
      lse_shift += w[static_cast<std::size_t>(j)] * grow[static_cast<std::size_t>(j)];
  }
  ld bound1 = 0;
  ld mass_t = 0;
  ld mass_exact = 0;
  ld spread_top = 0;
  for (index_t j = 0; j < vis; ++j) {
    const auto at = static_cast<std::size_t>(j);
    // expm1(D_j + L) = exp(D_j) sum_k w_k exp(D_k) - 1
    if (w[at] > 0)
      bound1 +=
          w[at] * (grow[at] * lse_shift - 1) * (v.row(j) - r.out.row(i)).cwiseAbs().maxCoeff();
    if (j != top_at) {
      // exp(s_j - s_top + D_j + D_top), from the factors when they are finite (logits of 1e60
      // carry errors D of 1e45, whose exp overflows, next to gaps of 1e59).
      const ld d_pair = grow[at] * grow[static_cast<std::size_t>(top_at)];
      mass_t += w[at] > 0 && std::isfinite(d_pair)
                    ? w[at] * sum_w * d_pair
                    : exp_of(s(j) - top + logit_error<T>(r, i, lo + j, top, d) +
                             logit_error<T>(r, i, lo + top_at, top, d));
      mass_exact += w[at];
    }
    spread_top = std::max(spread_top, (v.row(j) - v.row(top_at)).cwiseAbs().maxCoeff());
  }
  if (!(bound1 < ld_inf)) bound1 = ld_inf;  // also NaN
  ld bound2 = (mass_t + mass_exact) * spread_top;
  if (!(bound2 < ld_inf)) bound2 = ld_inf;
  const double n = static_cast<double>(vis);
  const double vmax = p.v.middleRows(lo, vis).cwiseAbs().maxCoeff();
  return static_cast<double>(std::min(bound1, bound2)) + (4 * n + 32) * unit_roundoff<T>() * vmax +
         (4 * n + 32) * tiny<T>();
}

/// The hull slack of softmax-type weights over n keys: the weighted sum's own rounding (the
/// weights are non-negative and sum to 1).
template <class T>
double softmax_slack(double n, double vmax) {
  return (4 * n + 32) * unit_roundoff<T>() * vmax + (4 * n + 32) * tiny<T>();
}

/// Expectations for softmax-type attention in T: the reference, the bound above, and a hull
/// slack of the weighted sum's own rounding.
template <class T>
row_expectations softmax_expectations(const softmax_reference& r, const problem& p) {
  row_expectations e{r.out, Eigen::VectorXd(r.out.rows()), Eigen::VectorXd(r.out.rows())};
  for (index_t i = 0; i < r.out.rows(); ++i) {
    e.tol(i) = softmax_tolerance<T>(r, p, i);
    e.slack(i) = softmax_slack<T>(static_cast<double>(r.visible(i)), p.v.cwiseAbs().maxCoeff());
  }
  return e;
}

/// q.k and the value sums fit in T (no partial sum can overflow): the call must return.
template <class T>
bool softmax_fits(const softmax_reference& r, const problem& p) {
  const ld limit = static_cast<ld>(std::numeric_limits<T>::max()) / 4;
  return r.max_abs_dot < limit &&
         static_cast<ld>(p.v.cwiseAbs().maxCoeff()) * static_cast<ld>(p.v.rows()) < limit &&
         static_cast<ld>(p.q.cwiseAbs().maxCoeff()) < limit;
}

/// Bound on |out_T(i) - softmax over W|, for ANY window W of the keys query i sees (LSH's
/// windows depend on the hashes; float and double are compared where their buckets agree).
/// `r` must hold every key query i sees (no chunk). Bound 1: every weight in W moves by a
/// factor within exp(+-2 D), D the largest logit error over the non-self keys (the self key's
/// weight is below exp(-60) of any other's when its penalised logit is 60 below every other
/// logit), so the output moves by at most expm1(2 D) / 2 times the values' spread. Bound 2:
/// when every two logits differ by more than 2 D_max, W has a clear top key and the mass off it
/// is at most (|W| - 1) exp(2 D_max - G_min) in T and (|W| - 1) exp(-G_min) exactly. Plus the
/// weighted sum's rounding.
template <class T>
double window_tolerance(const softmax_reference& r, const problem& p, index_t i) {
  const index_t vis = r.visible(i);
  const index_t d = p.q.cols();
  const auto s = r.logits.row(i).head(vis);
  const index_t self = r.self_penalty ? i : -1;
  const ld_matrix v = p.v.topRows(vis).cast<ld>();
  ld spread = 0;
  for (index_t c = 0; c < v.cols(); ++c)
    spread = std::max(spread, v.col(c).maxCoeff() - v.col(c).minCoeff());
  ld bound1 = 0;  // the window may hold the query's own key only: its value, exactly
  if (vis > (self >= 0 ? 1 : 0)) {
    ld top_other = -ld_inf;
    ld bottom_other = ld_inf;
    for (index_t j = 0; j < vis; ++j) {
      if (j == self) continue;
      top_other = std::max(top_other, s(j));
      bottom_other = std::min(bottom_other, s(j));
    }
    ld delta = 0;
    for (index_t j = 0; j < vis; ++j) {
      if (j != self) delta = std::max(delta, logit_error<T>(r, i, j, top_other, d));
    }
    const ld self_weight = self >= 0 ? exp_of(s(self) - bottom_other) : 0.0L;
    bound1 = self_weight > exp_of(-60)
                 ? ld_inf
                 : expm1_of(2 * delta) / 2 * spread + 2 * self_weight * spread;
  }
  ld bound2 = 0;
  if (vis > 1) {
    std::vector<ld> sorted(s.data(), s.data() + vis);
    std::sort(sorted.begin(), sorted.end());
    ld gap = ld_inf;
    for (std::size_t j = 1; j < sorted.size(); ++j) gap = std::min(gap, sorted[j] - sorted[j - 1]);
    ld delta_max = 0;
    for (index_t j = 0; j < vis; ++j)
      delta_max = std::max(delta_max, logit_error<T>(r, i, j, s.maxCoeff(), d));
    bound2 = static_cast<ld>(vis - 1) * (exp_of(2 * delta_max - gap) + exp_of(-gap)) * spread;
  }
  const double n = static_cast<double>(vis);
  return static_cast<double>(std::min(bound1, bound2)) +
         (4 * n + 32) * unit_roundoff<T>() * p.v.topRows(vis).cwiseAbs().maxCoeff() +
         (4 * n + 32) * tiny<T>();
}

}  // namespace performer::conformance::extreme
