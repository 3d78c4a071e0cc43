/// @file testing/detail/extreme_favor.hpp
/// @brief The extreme-values suite's FAVOR reference: the estimate recomputed in long double
/// from a mechanism's own features, and the bound on a float or double run's distance from it.
///
/// FAVOR is compared float against double with the same projection matrix (the double mechanism
/// is given the float one's matrix, cast), not against exact softmax: its approximation error is
/// not the point here, its arithmetic is. The output is out_i = num_i / den_i with
/// num_i = sum_j c_ij v_j, den_i = sum_j c_ij, c_ij = exp(ls_j - shift_i) phi(q_i).phi(k_j), ls_j
/// the key's log scale and shift_i the largest ls_j query i sees. The reference evaluates this in
/// long double from the double mechanism's own features. A run in X differs from it by
///   (a) its features: measured exactly, by evaluating X's map on the same rows in the same row
///       blocks as the mechanism does (hence the same products, bit for bit), giving c~_ij. The
///       same perturbation enters num and den, so it moves out_i by at most
///       sum_j |c~_ij - c_ij| |v_j - out_i| / den_i. favor_attention maps every row once (B-row
///       blocks from 0; the bidirectional keys from each segment's start); where a mechanism
///       maps a row in more than one blocking, the largest deviation over them is used;
///   (b) its arithmetic, independently in num and den: each term passes through at most
///       N + 2M + 48 roundings (the key sum, the feature sum, the causal chunk products, the
///       merges and corrections of the causal blocks, the weighting), 2 u per exponential of
///       the stabiliser (its weight and every rescale after it: of a key-block or segment state,
///       of the causal path's block state at each later chunk of its block and of the prefix at
///       each later block, the merge of the two and the correction to the query's shift; every
///       token in the decoder), u (shift_i - ls_j) for the rounding of the exponents' arguments
///       (the rises of the running maximum add up to at most that): R_ij = (those) u |c|_ij,
///       with |c|_ij the same sum over |products|;
///   (c) roundings in the subnormal range, at most tiny / 2 each, absolute: A_i = tiny ((2N +
///       40) sum_f |phi_f(q_i)| + M + 8) in num and in den (the key sums' roundings are
///       multiplied by the query's features, the feature sum adds M, and the causal
///       correction's factor on the query's chunk sums, over at most C <= N keys, adds N).
/// So |out~_i - out_i| <= (sum_j |c~ - c| |v_j - out_i| + sum_j R_ij (|v_j| + |out_i|)
/// + A_i (1 + |out_i|)) / (|den_i| - sum_j (|c~ - c| + R_ij) - A_i), plus the final division.
/// A row is well-conditioned in X when every term is finite, the subtracted perturbation is at
/// most |den_i| / 2 (X knows its normaliser to within a factor 2), and no partial sum can overflow
/// X (the key sums sum_j |phi(k_j)| |v_j|, num and den). Where a row is not well-conditioned
/// (features or normalisers outside X's range) only the contract applies: refuse with the
/// overflow message, or return a finite row (inside the hull for the non-negative maps).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <span>
#include <type_traits>
#include <utility>
#include <vector>

#include "../../core/types.hpp"
#include "extreme_contract.hpp"

namespace performer::conformance::extreme {

/// Row blocks (first row, rows) that together cover a sequence once.
using row_blocks = std::vector<std::pair<index_t, index_t>>;

inline void append_blocks(row_blocks& blocks, index_t begin, index_t end, index_t block) {
  for (index_t r0 = begin; r0 < end; r0 += block)
    blocks.emplace_back(r0, std::min(block, end - r0));
}

/// The row blockings in which favor_attention maps queries and keys (favor_attention.hpp,
/// favor/detail/causal_pass.hpp and favor_options): B-row blocks from 0, except the
/// bidirectional keys, mapped from the start of each segment (of a length that depends on N
/// only). The causal path's blocks start from an empty state and take the keys before them
/// from a prefix over the blocks, so its arithmetic depends on the blocks, not on the waves
/// they run in.
struct favor_blockings {
  std::vector<row_blocks> queries, keys;
  index_t segments = 1;  ///< bidirectional key segments
  index_t chunks = 0;    ///< causal: chunks per block (C-row chunks of a B-row block)
};

template <class A>
favor_blockings blockings_of(const A& a, index_t n, bool causal) {
  const auto& o = a.options();
  favor_blockings b;
  row_blocks plain;
  append_blocks(plain, 0, n, o.block);
  b.queries.push_back(plain);
  if (causal) {
    const index_t chunk = std::min(o.chunk, o.block);
    b.chunks = (o.block + chunk - 1) / chunk;
    b.keys.push_back(plain);
    return b;
  }
  b.segments = std::clamp<index_t>(n / o.min_segment, 1, o.segments);
  const auto start = [&](index_t s) { return n * s / b.segments; };
  row_blocks by_segment;
  for (index_t s = 0; s < b.segments; ++s)
    append_blocks(by_segment, start(s), start(s + 1), o.block);
  b.keys.push_back(by_segment);
  return b;
}

/// Exponentials of the stabiliser a batch term passes through: its weight; one rescale per
/// key block folded after it (bidirectional key blocks, or the causal prefix's blocks), per
/// segment state merged, per later chunk of its causal block; the causal merge and the
/// correction to the query's shift (or the carried state's factor).
template <class A>
double batch_exponentials(const A& /*a*/, const favor_blockings& b) {
  std::size_t blocks = 0;
  for (const auto& k : b.keys) blocks = std::max(blocks, k.size());
  return static_cast<double>(blocks) + static_cast<double>(b.chunks) +
         static_cast<double>(b.segments) + 4;
}

/// phi and log scales of the rows of x as `map` gives them in the given blocks.
struct mapped_rows {
  ld_matrix phi;
  ld_vector log_scale;
};

template <class Map, class W, class T>
mapped_rows map_rows(const Map& map, const W& w, const row_matrix<T>& x, const row_blocks& blocks,
                     index_t m) {
  mapped_rows r{ld_matrix(x.rows(), m), ld_vector(x.rows())};
  index_t widest = 0;
  for (const auto& [r0, rows] : blocks) widest = std::max(widest, rows);
  row_matrix<T> phi_t(widest, m);
  vector<T> log_t(widest);
  for (const auto& [r0, rows] : blocks) {
    map.apply(w, x.middleRows(r0, rows), phi_t.topRows(rows), log_t.head(rows));
    r.phi.middleRows(r0, rows) = phi_t.topRows(rows).template cast<ld>();
    r.log_scale.segment(r0, rows) = log_t.head(rows).template cast<ld>();
  }
  return r;
}

/// c_ij and the quantities its rounding depends on, for the pairs query i sees.
struct favor_terms {
  ld_matrix c;       // exp(ls_j - shift_i) phi(q_i).phi(k_j)
  ld_matrix c_abs;   // exp(ls_j - shift_i) sum_f |phi_f(q_i) phi_f(k_j)|
  ld_matrix rise;    // shift_i - ls_j (0 for a key whose weight is 0)
  ld_vector q_mass;  // sum_f |phi_f(q_i)|
  ld k_mass = 0;     // sum_j max_f |phi_f(k_j)|: bounds the key sums' entries over |v|
};

template <class T>
favor_terms terms_of(const mapped_rows& fq, const mapped_rows& fk, bool causal) {
  ld_matrix dot;
  ld_matrix abs_dot;  // sum_f |phi_f(q_i) phi_f(k_j)|
  const bool signed_features = (fq.phi.array() < 0).any() || (fk.phi.array() < 0).any();
  if constexpr (std::is_same_v<T, float>) {
    // Float features multiply exactly in double, whose sums add a relative M 1e-16: nothing next
    // to float's bounds, and a double product is many times faster than a long double one.
    const row_matrix<double> pq = fq.phi.template cast<double>();
    const row_matrix<double> pk = fk.phi.template cast<double>();
    dot = (pq * pk.transpose()).template cast<ld>();
    abs_dot = signed_features
                  ? ld_matrix((pq.cwiseAbs() * pk.cwiseAbs().transpose()).template cast<ld>())
                  : dot;
  } else {
    dot = fq.phi * fk.phi.transpose();
    abs_dot = signed_features ? ld_matrix(fq.phi.cwiseAbs() * fk.phi.cwiseAbs().transpose()) : dot;
  }
  const index_t n_q = fq.phi.rows();
  const index_t n_k = fk.phi.rows();
  favor_terms t{ld_matrix::Zero(n_q, n_k), ld_matrix::Zero(n_q, n_k), ld_matrix::Zero(n_q, n_k),
                fq.phi.cwiseAbs().rowwise().sum(), fk.phi.cwiseAbs().rowwise().maxCoeff().sum()};
  const ld nan = std::numeric_limits<ld>::quiet_NaN();
  for (index_t i = 0; i < n_q; ++i) {
    const index_t vis = causal ? i + 1 : n_k;
    ld shift = -ld_inf;
    for (index_t j = 0; j < vis; ++j) {
      shift =
          std::isnan(fk.log_scale(j)) || std::isnan(shift) ? nan : std::max(shift, fk.log_scale(j));
    }
    for (index_t j = 0; j < vis; ++j) {
      // A key whose log scale is -inf has weight 0 exactly (as detail::shifted_exp gives).
      const ld weight = fk.log_scale(j) == -ld_inf ? 0.0L : exp_of(fk.log_scale(j) - shift);
      const bool zero = weight == 0 && std::isfinite(abs_dot(i, j));
      t.c(i, j) = zero ? 0.0L : weight * dot(i, j);
      t.c_abs(i, j) = zero ? 0.0L : weight * abs_dot(i, j);
      t.rise(i, j) = weight == 0 ? 0.0L : shift - fk.log_scale(j);
    }
  }
  return t;
}

/// The map a call uses: fitted to (q, k) on the bidirectional path of an adaptive map (FAVOR++),
/// else the stored one.
template <class A, class T>
typename A::feature_map_type map_for_call(const A& a, const row_matrix<T>& q,
                                          const row_matrix<T>& k, bool causal) {
  if constexpr (requires {
                  a.feature_map().calibrated_for(q, k, std::span<const std::uint8_t>{});
                }) {
    if (!causal) return a.feature_map().calibrated_for(q, k, {});
  }
  return a.feature_map();
}

/// The terms of a favor_attention call on (q, k), once per combination of the blockings in
/// which it maps queries and keys (given, or the batch path's).
template <class A>
std::vector<favor_terms> mechanism_terms(const A& a, const row_matrix<typename A::scalar_type>& q,
                                         const row_matrix<typename A::scalar_type>& k, bool causal,
                                         const favor_blockings& b) {
  using T = typename A::scalar_type;
  const auto map = map_for_call(a, q, k, causal);
  const auto& w = a.projection().matrix();
  const index_t m = a.feature_count();
  std::vector<favor_terms> all;
  for (const row_blocks& bq : b.queries) {
    const mapped_rows fq = map_rows(map, w, q, bq, m);
    for (const row_blocks& bk : b.keys)
      all.push_back(terms_of<T>(fq, map_rows(map, w, k, bk, m), causal));
  }
  return all;
}

/// The decoder maps one token at a time (1 x d), with the stored map.
inline favor_blockings decoder_blockings(index_t n) {
  row_blocks one_by_one;
  append_blocks(one_by_one, 0, n, 1);
  return {{one_by_one}, {one_by_one}, 1};
}

/// The decoder rescales its state whenever a key raises the running maximum: up to every token.
inline double decoder_exponentials(index_t n) { return static_cast<double>(n) + 4; }

/// The larger of a and b, NaN when either is: a NaN term must leave its row unconditioned.
inline ld worst(ld a, ld b) {
  return std::isnan(a) || std::isnan(b) ? std::numeric_limits<ld>::quiet_NaN() : std::max(a, b);
}

/// Expectations for FAVOR in X against the reference built from the double terms `td`; `tx`
/// are X's own terms, once per blocking (the largest deviation counts); `width` is M;
/// `exponentials` the stabiliser's exps per term (see above). Sets well[i] when row i is
/// well-conditioned in X.
template <class X>
row_expectations favor_expectations(const std::vector<favor_terms>& tx, const favor_terms& td,
                                    const problem& p, bool causal, index_t width,
                                    double exponentials, bool non_negative,
                                    std::vector<bool>& well) {
  const index_t n = p.q.rows();
  const ld u = unit_roundoff<X>();
  const ld tiny_x = tiny<X>();
  const ld roundings = static_cast<ld>(n + 2 * width + 48) + 2 * static_cast<ld>(exponentials);
  const ld range = static_cast<ld>(std::numeric_limits<X>::max()) / 8;
  const ld_matrix v = p.v.cast<ld>();
  const ld vmax = p.v.cwiseAbs().maxCoeff();
  const favor_terms& t0 = tx.front();
  ld k_mass = 0;
  for (const favor_terms& t : tx) k_mass = worst(k_mass, t.k_mass);
  row_expectations e{ld_matrix::Constant(n, p.v.cols(), std::numeric_limits<ld>::quiet_NaN()),
                     Eigen::VectorXd::Constant(n, inf), Eigen::VectorXd::Constant(n, inf)};
  well.assign(static_cast<std::size_t>(n), false);
  for (index_t i = 0; i < n; ++i) {
    const index_t vis = causal ? i + 1 : p.k.rows();
    const ld den = td.c.row(i).head(vis).sum();
    const ld den_x = t0.c.row(i).head(vis).sum();
    ld q_mass = 0;
    for (const favor_terms& t : tx) q_mass = worst(q_mass, t.q_mass(i));
    const ld absolute = tiny_x * ((2 * n + 40) * q_mass + width + 8);
    // Hull slack: a ratio of sums of non-negative terms stays in the hull up to the sums'
    // rounding (relative) and the subnormal roundings (absolute, over X's own normaliser).
    const ld slack = 2 * roundings * u * vmax + 2 * absolute * (1 + vmax) / den_x;
    if (non_negative && den_x > 0 && std::isfinite(slack)) e.slack(i) = static_cast<double>(slack);
    if (!std::isfinite(den) || den == 0) continue;
    e.ref.row(i) = (td.c.row(i).head(vis) * v.topRows(vis)) / den;
    const ld out_max = e.ref.row(i).cwiseAbs().maxCoeff();
    ld perturbation = absolute;
    ld error = absolute * (1 + out_max);
    ld magnitude = 0;  // sum_j |c|_ij (1 + |v_j|): bounds num's and den's partial sums
    for (index_t j = 0; j < vis; ++j) {
      ld measured = 0;
      ld c_abs = 0;
      ld rise = 0;
      for (const favor_terms& t : tx) {
        measured = worst(measured, std::abs(t.c(i, j) - td.c(i, j)));
        c_abs = worst(c_abs, t.c_abs(i, j));
        rise = worst(rise, t.rise(i, j));
      }
      const ld rounding = (roundings + rise) * u * c_abs;
      perturbation += measured + rounding;
      error += measured * (v.row(j) - e.ref.row(i)).cwiseAbs().maxCoeff() +
               rounding * (v.row(j).cwiseAbs().maxCoeff() + out_max);
      magnitude += c_abs * (1 + v.row(j).cwiseAbs().maxCoeff());
    }
    const bool fits = magnitude < range && k_mass * (1 + vmax) < range;
    if (!fits || !std::isfinite(error) || !(perturbation <= std::abs(den) / 2)) continue;
    well[static_cast<std::size_t>(i)] = true;
    e.tol(i) =
        static_cast<double>(error / (std::abs(den) - perturbation) + 4 * u * out_max + tiny_x);
  }
  return e;
}

inline bool all_of(const std::vector<bool>& flags) {
  return std::all_of(flags.begin(), flags.end(), [](bool b) { return b; });
}

}  // namespace performer::conformance::extreme
