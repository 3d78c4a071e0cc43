/// @file tests/fuzz/contract.hpp
/// @brief The contract every fuzz target checks on every attention call, from README "Errors"
/// and the attention_mechanism concept:
/// - the only exception is performer::invalid_argument, with a message naming the function;
/// - documented bad input (shapes, empty or zero-width, mask length, causal with N_q != N_k,
///   non-finite values, aliasing, constructor options) is rejected, never silently accepted;
/// - valid input is rejected only for the documented overflow of the result (and never when
///   the input is moderate, |x| <= 8, for exact and LSH attention and FAVOR's positive maps);
/// - an accepted call writes a finite result into exactly the caller's output view (guard
///   cells around strided views stay untouched; the view is pre-filled with NaN, so every entry
///   must be written);
/// - a query gets an exact zero row exactly when the mask leaves it no key, for every
///   mechanism (LSH included: a query whose windows hold no key falls back to local attention);
///   for exact and LSH attention (non-negative weights) each output entry lies within
///   [min_j v_jc, max_j v_jc] over the visible keys, up to rounding;
/// - a workspace's history never changes a result (bitwise); performer::attend == forward
///   (bitwise).
/// The targets add their family's oracles (tiled == materialized softmax, LSH == softmax over
/// its windows, FAVOR == its estimate recomputed in double, decoder == causal pass).
/// Anything else prints "==performer-fuzz== CONTRACT VIOLATION" and traps.
#pragma once

#include <array>
#include <tuple>
#include <type_traits>

#include <performer/lsh/example_hash_family.hpp>
#include <performer/testing/oracle.hpp>
#include <performer/testing/registry.hpp>

#include "fuzzing.hpp"

namespace fuzz {

namespace registry = performer::registry;

inline constexpr std::array<std::string_view, 1> softmax_names = {"softmax_attention"};
inline constexpr std::array<std::string_view, 1> tiled_names = {"tiled_softmax_attention"};
inline constexpr std::array<std::string_view, 3> favor_names = {
    "favor_attention", "random_projection", "favor_plus_plus_features"};
inline constexpr std::array<std::string_view, 3> lsh_names = {"lsh_attention", "angular_hash",
                                                               "sign_projection_hash"};

/// What the mechanism promises beyond the common contract.
struct expectations {
  std::vector<std::string_view> names;
  bool convex = false;  ///< non-negative weights: rows inside the visible values' range
  bool must_succeed_moderate = false;
  double rel = 0;        ///< rounding tolerance of the range check, in units of eps
  index_t mech_dim = -1;  ///< head width the mechanism was built for (-1: any)
  bool shared_qk = false;
  std::string extra;  ///< a mechanism-specific documented reason to reject this call, or ""
};

template <class T>
double exact_rel(const attention_case<T>& c) {
  return 4.0 * static_cast<double>(c.k.rows() + c.q.cols() + 16);
}

/// The documented reason (README "Errors") a call must be rejected, or "" if it is valid.
template <class T>
std::string rejection(const attention_case<T>& c, index_t q_rows, index_t q_cols, index_t k_rows,
                      index_t k_cols, index_t v_rows, index_t v_cols, index_t out_rows,
                      index_t out_cols, bool overlap, const expectations& e) {
  if (q_rows == 0) return "empty query sequence";
  if (k_rows == 0) return "empty key sequence";
  if (q_cols == 0) return "zero head width";
  if (v_cols == 0) return "zero value width";
  if (k_cols != q_cols) return "k width != q width";
  if (v_rows != k_rows) return "v rows != k rows";
  if (out_rows != q_rows || out_cols != v_cols) return "out shape";
  if (c.mask.wrong_length) return "key_mask length";
  if (c.h.causal() && q_rows != k_rows) return "causal with N_q != N_k";
  if (overlap) return "out overlaps an input";
  if (!all_finite(c.q) || !all_finite(c.k) || !all_finite(c.v)) return "non-finite input";
  if (e.mech_dim >= 0 && q_cols != e.mech_dim) return "head width != the mechanism's";
  if (e.shared_qk && k_rows != q_rows) return "shared_qk with N_k != N_q";
  return e.extra;
}

template <class T>
std::string rejection(const attention_case<T>& c, const call_buffers<T>& b, const expectations& e) {
  return rejection(c, b.q->rows(), b.q->cols(), b.k->rows(), b.k->cols(), b.v->rows(),
                   b.v->cols(), b.out->rows(), b.out->cols(), b.overlap, e);
}

/// Finite; an exact zero row exactly where the mask leaves no key; inside the visible values'
/// range for convex mechanisms.
template <class T>
void check_output(std::string_view who, const row_matrix<T>& out, const attention_case<T>& c,
                  const expectations& e) {
  if (!all_finite(out)) bug(cat(who, ": accepted call returned a non-finite result"));
  const double rel = e.rel * eps_of<T>();
  const double floor = static_cast<double>(c.k.rows() + 4) *
                       static_cast<double>(std::numeric_limits<T>::denorm_min());
  for (index_t i = 0; i < out.rows(); ++i) {
    if (!c.sees_a_key(i)) {
      for (index_t col = 0; col < out.cols(); ++col) {
        if (out(i, col) != T(0)) {
          bug(cat(who, ": query ", i, " sees no key but out(", i, ", ", col, ") = ", out(i, col)));
        }
      }
      continue;
    }
    if (!e.convex) continue;
    for (index_t col = 0; col < out.cols(); ++col) {
      double lo = std::numeric_limits<double>::infinity();
      double hi = -lo;
      double amax = 0;
      for (index_t j = 0; j < c.k.rows(); ++j) {
        if (!c.visible(i, j)) continue;
        const double x = static_cast<double>(c.v(j, col));
        lo = std::min(lo, x);
        hi = std::max(hi, x);
        amax = std::max(amax, std::abs(x));
      }
      const double tol = rel * amax + floor;
      const double x = static_cast<double>(out(i, col));
      if (x < lo - tol || x > hi + tol) {
        bug(cat(who, ": out(", i, ", ", col, ") = ", x, " lies outside the visible values' range [",
                lo, ", ", hi, "] (tolerance ", tol, ")"));
      }
    }
  }
}

/// |a - b| within (2.5 delta + rel eps) max_j |v_jc| per column, for two computations of the
/// same attention whose weights differ by a relative `delta` at most (b may be a double
/// reference).
template <class T, class R>
void compare(std::string_view what, const row_matrix<T>& a, const R& b, const row_matrix<T>& v,
             double delta, double rel) {
  if (a.rows() != b.rows() || a.cols() != b.cols()) bug(cat(what, ": shapes differ"));
  const double floor = static_cast<double>(v.rows() + 4) *
                       static_cast<double>(std::numeric_limits<T>::denorm_min());
  for (index_t col = 0; col < a.cols(); ++col) {
    double amax = 0;
    for (index_t j = 0; j < v.rows(); ++j) amax = std::max(amax, std::abs(static_cast<double>(v(j, col))));
    const double tol = (2.5 * delta + rel * eps_of<T>()) * amax + floor;
    for (index_t i = 0; i < a.rows(); ++i) {
      const double x = static_cast<double>(a(i, col));
      const double y = static_cast<double>(b(i, col));
      if (!(std::abs(x - y) <= tol)) {
        bug(cat(what, ": (", i, ", ", col, ") differs: ", x, " vs ", y, " (tolerance ", tol,
                ", delta ", delta, ")"));
      }
    }
  }
}

/// Relative error bound of exact softmax weights: logits carry ~ d eps |q| |k| / sqrt(d).
template <class T>
double exact_delta(const row_matrix<T>& q, const row_matrix<T>& k) {
  const double d = static_cast<double>(std::max<index_t>(q.cols(), 1));
  const double logit = max_row_norm(q) * max_row_norm(k) / std::sqrt(d);
  return std::expm1(4.0 * (d + static_cast<double>(k.rows()) + 8.0) * eps_of<T>() * logit);
}

/// Calls that may leave the workspace in any state: smaller shapes, other values.
template <class T, class Mech>
void warm_up(std::string_view who, names_t names, const Mech& mech, const attention_case<T>& c,
             typename Mech::workspace_type& ws) {
  {
    const row_matrix<T> q2 = c.q * T(2), k2 = c.k * T(0.5), v2 = c.v * T(-3);
    row_matrix<T> out2(q2.rows(), v2.cols());
    guarded(who, names, [&] { mech.forward(q2, k2, v2, out2, c.am(), ws); });
  }
  {
    const index_t nq = c.q.rows() / 2;
    const index_t nk = c.k.rows() / 2;
    row_matrix<T> out2(nq, c.v.cols());
    guarded(who, names, [&] {
      mech.forward(c.q.topRows(nq), c.k.topRows(nk), c.v.topRows(std::min(nk, c.v.rows())), out2,
                   attention_mask{c.h.causal(), {}}, ws);
    });
  }
}

/// One forward call with every check; returns the result if the call was accepted.
template <class T, class Mech>
std::optional<row_matrix<T>> run_attention(std::string_view who, const Mech& mech,
                                           const attention_case<T>& c, const expectations& e) {
  call_buffers<T> b(c);
  typename Mech::workspace_type ws;
  if (c.h.history()) warm_up(who, e.names, mech, c, ws);
  const std::string reason = rejection(c, b, e);
  const outcome o =
      guarded(who, e.names, [&] { mech.forward(*b.q, *b.k, *b.v, *b.out, c.am(), ws); });
  if (c.h.history()) {  // the same call on a fresh workspace must give the same bits
    call_buffers<T> fresh(c);
    typename Mech::workspace_type ws2;
    const outcome o2 = guarded(who, e.names, [&] {
      mech.forward(*fresh.q, *fresh.k, *fresh.v, *fresh.out, c.am(), ws2);
    });
    if (o.ok != o2.ok) bug(cat(who, ": accepted with one workspace, rejected with another"));
    if (o.ok && !same_bits(*b.out, *fresh.out)) {
      bug(cat(who, ": the result depends on the workspace's history"));
    }
  }
  if (!o.ok) {
    if (reason.empty()) {
      if (o.message.find("overflow") == std::string::npos) {
        bug(cat(who, ": rejected valid input: ", o.message));
      }
      if (e.must_succeed_moderate && moderate(c.q) && moderate(c.k) && moderate(c.v)) {
        bug(cat(who, ": rejected moderate input (|x| <= 8) as overflowing: ", o.message));
      }
    }
    return std::nullopt;
  }
  if (!reason.empty()) bug(cat(who, ": accepted invalid input (", reason, ")"));
  b.check_guard(who);
  row_matrix<T> out = *b.out;
  check_output(who, out, c, e);
  return out;
}

/// performer::attend over a column-major q and Eigen expressions for k and v: the same
/// acceptance and the same bits as forward.
template <class T, class Mech>
void attend_with(const Mech& mech, const attention_case<T>& c, const expectations& e,
                 std::string_view who) {
  using col_matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;
  const col_matrix q_col = c.q;  // column-major: copied once into row-major by attend
  row_matrix<T> got;
  const outcome o = guarded(who, e.names, [&] {
    got = performer::attend(mech, q_col, c.k.topRows(c.k.rows()), (c.v.array() * T(1)).matrix(), c.am());
  });
  row_matrix<T> direct(c.q.rows(), c.v.cols());
  typename Mech::workspace_type ws;
  const outcome od = guarded(who, e.names, [&] { mech.forward(c.q, c.k, c.v, direct, c.am(), ws); });
  if (o.ok != od.ok) bug(cat(who, ": attend and forward disagree on accepting the input"));
  const std::string reason = rejection(c, c.q.rows(), c.q.cols(), c.k.rows(), c.k.cols(), c.v.rows(),
                                       c.v.cols(), c.q.rows(), c.v.cols(), false, e);
  if (!o.ok) {
    if (reason.empty() && o.message.find("overflow") == std::string::npos) {
      bug(cat(who, ": rejected valid input: ", o.message));
    }
    return;
  }
  if (!reason.empty()) bug(cat(who, ": accepted invalid input (", reason, ")"));
  if (got.rows() != c.q.rows() || got.cols() != c.v.cols()) bug(cat(who, ": result has the wrong shape"));
  if (!same_bits(got, direct)) bug(cat(who, ": attend differs from forward"));
  check_output(who, got, c, e);
}

// ---- The registry of mechanisms ---------------------------------------------------------------

template <class E>
inline constexpr bool dependent_false = false;

/// Calls f(Entry{}) for the registry entry number `pick` (modulo the number of entries).
template <class F>
void with_mechanism(std::size_t pick, F&& f) {
  pick %= std::tuple_size_v<registry::all>;
  registry::for_each_mechanism([&](auto entry) {
    if (pick-- == 0) f(entry);
  });
}

/// The same among the registry's entries of one family (f is instantiated for those only).
template <registry::family Family, class F>
void with_family_member(std::size_t pick, F&& f) {
  std::size_t count = 0;
  registry::for_each_mechanism([&](auto entry) { count += decltype(entry)::kind == Family ? 1 : 0; });
  if (count == 0) return;
  pick %= count;
  registry::for_each_mechanism([&](auto entry) {
    if constexpr (decltype(entry)::kind == Family) {
      if (pick-- == 0) f(entry);
    }
  });
}

/// Registry entry E's mechanism for head width d, with options from four bytes: tile sizes
/// for tiled, m features and a seed for FAVOR, buckets (0 = automatic), hashes, chunk and seed
/// for LSH (shared-QK as the entry says). Nothing if the constructor (rightly) rejected d or m.
template <class E, class T>
std::optional<typename E::template type<T>> make_mechanism(index_t d, index_t m,
                                                           const std::array<std::uint8_t, 4>& p) {
  std::optional<typename E::template type<T>> mech;
  if constexpr (std::is_same_v<E, registry::tiled>) {
    mech.emplace(1 + p[0] % 16, 1 + p[1] % 16);
  } else if constexpr (E::kind == registry::family::softmax) {
    mech.emplace(E::template make<T>(d, m, p[3]));
  } else if constexpr (E::kind == registry::family::favor) {
    const outcome made = guarded("favor_attention()", favor_names,
                                 [&] { mech.emplace(E::template make<T>(d, m, p[3])); });
    expect_acceptance("favor_attention()", made, d <= 0 || m <= 0);
  } else if constexpr (E::kind == registry::family::lsh) {
    performer::lsh_options o;
    o.buckets = (p[0] & 0x80U) != 0 ? 0 : 2 * (1 + p[0] % 8);
    o.hashes = 1 + p[1] % 3;
    o.chunk = 1 + p[2] % 16;
    o.shared_qk = E::shared_qk;
    o.seed = p[3];
    const outcome made = guarded("lsh_attention()", lsh_names, [&] { mech.emplace(d, o); });
    expect_acceptance("lsh_attention()", made, d <= 0);
  } else {
    static_assert(dependent_false<E>, "a new family in the registry: teach the fuzzers to build it");
  }
  return mech;
}

/// What registry entry E promises (see expectations), for a mechanism built for head width d.
template <class E, class T>
expectations expectations_for(const attention_case<T>& c, index_t d) {
  if constexpr (E::kind == registry::family::softmax) {
    const auto& names = std::is_same_v<E, registry::tiled> ? tiled_names : softmax_names;
    return {{names.begin(), names.end()}, true, true, exact_rel(c), -1, false, {}};
  } else if constexpr (E::kind == registry::family::favor) {
    // Every map but the trigonometric one (whose normaliser may vanish: documented) is
    // positive, so moderate input cannot be rejected.
    return {{favor_names.begin(), favor_names.end()}, false,
            !std::is_same_v<E, registry::favor_trigonometric>, 0, d, false, {}};
  } else {
    return {{lsh_names.begin(), lsh_names.end()}, true, true, exact_rel(c), d, E::shared_qk, {}};
  }
}

}  // namespace fuzz
