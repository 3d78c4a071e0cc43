/// @file core/validate.hpp
/// @brief Argument checks shared by every attention entry point, so that each mechanism reports
/// bad input with the same wording. The public ones are for your own mechanisms too.
#pragma once

#include <cstddef>
#include <string_view>

#include "attention_mask.hpp"
#include "detail/parallel.hpp"
#include "error.hpp"
#include "types.hpp"

namespace performer::detail {

/// True when the memory of two matrix views overlaps (an output aliasing an input).
template <class A, class B>
[[nodiscard]] bool overlaps(const A& a, const B& b) noexcept {
  if (a.size() == 0 || b.size() == 0) return false;
  const auto* a_begin = reinterpret_cast<const char*>(a.data());
  const auto* b_begin = reinterpret_cast<const char*>(b.data());
  const auto* a_last = reinterpret_cast<const char*>(&a.coeff(a.rows() - 1, a.cols() - 1));
  const auto* b_last = reinterpret_cast<const char*>(&b.coeff(b.rows() - 1, b.cols() - 1));
  return a_begin <= b_last && b_begin <= a_last;
}

template <class M>
[[nodiscard]] std::string shape(const M& m) {
  return message(m.rows(), "x", m.cols());
}

/// Why a result check fails: the inputs were finite (checked on entry), so the logits (or a
/// random-feature estimate of their exponentials) left the scalar type's range.
inline constexpr std::string_view overflow_text =
    ": the result overflowed the scalar type; the inputs are finite but their logits are too "
    "large for it (scale q and k down or use double)";

/**
 * The first query that sees at least one key. "No visible key" (the documented zero row) is
 * decided from the mask alone, never from the logits: logits that all overflow to -inf must be
 * reported, not mistaken for padding. Without causal masking every query sees the same keys, so
 * the answer is 0 or n_q; with it, query i sees keys 0..i, so it is the first kept key. O(N_k).
 */
[[nodiscard]] inline index_t first_seeing_query(const attention_mask& mask, index_t n_q,
                                                index_t n_k) {
  index_t j = 0;
  while (j < n_k && !mask.keeps(static_cast<std::size_t>(j))) ++j;
  if (j == n_k) return n_q;
  return mask.causal ? j : 0;
}

}  // namespace performer::detail

namespace performer {

/// True when every entry is finite. x * 0 is 0 for finite x and NaN for an infinity or a NaN,
/// so one vectorised sum decides; Eigen's allFinite() is about 20 times slower (measured), which
/// showed up as 15% of a FAVOR+ pass. (-ffinite-math-only voids this check, as it voids any.)
/// Large matrices in memory (not expressions) are checked in row ranges on several threads
/// (detail::reduce_row_ranges).
template <class M>
[[nodiscard]] bool all_finite(const Eigen::DenseBase<M>& m) {
  using scalar = typename M::Scalar;
  const auto finite = [](const auto& x) { return (x.array() * scalar(0)).sum() == scalar(0); };
  if constexpr (requires { m.derived().data(); }) {
    return detail::reduce_row_ranges(
        m.rows(), m.size(), true,
        [&](index_t r0, index_t r1) { return finite(m.derived().middleRows(r0, r1 - r0)); },
        [](bool a, bool b) { return a && b; });
  } else {
    return finite(m.derived());
  }
}

/// Throws performer::invalid_argument unless every entry of `m` is finite.
template <class M>
void require_finite(std::string_view who, std::string_view name, const M& m) {
  PERFORMER_PRECONDITION(all_finite(m), who, ": ", name, " (", detail::shape(m),
                         ") contains a NaN or an infinity");
}

/**
 * Checks the arguments of attention_mechanism::forward: non-empty sequences, non-zero widths,
 * matching shapes, mask length, causal self-attention, finite inputs, out not aliasing an
 * input. Cost O((N_q + N_k)(d + d_v)), negligible beside any attention. Out is a writable
 * view for a forward, and the forward's result (read-only) for a backward.
 * @throws performer::invalid_argument naming `who`, the argument and the shapes.
 */
template <class T, class Out>
void check_attention_args(std::string_view who, const const_matrix_ref<T>& q,
                          const const_matrix_ref<T>& k, const const_matrix_ref<T>& v,
                          const Out& out, const attention_mask& mask) {
  PERFORMER_PRECONDITION(q.rows() > 0, who, ": empty query sequence (q is ", detail::shape(q), ")");
  PERFORMER_PRECONDITION(k.rows() > 0, who, ": empty key sequence (k is ", detail::shape(k), ")");
  PERFORMER_PRECONDITION(q.cols() > 0, who, ": zero head width (q is ", detail::shape(q), ")");
  PERFORMER_PRECONDITION(v.cols() > 0, who, ": zero value width (v is ", detail::shape(v), ")");
  PERFORMER_PRECONDITION(k.cols() == q.cols(), who, ": k is ", detail::shape(k), " but q is ",
                         detail::shape(q), "; queries and keys need the same width");
  PERFORMER_PRECONDITION(v.rows() == k.rows(), who, ": v is ", detail::shape(v), " but k is ",
                         detail::shape(k), "; keys and values need the same number of rows");
  PERFORMER_PRECONDITION(out.rows() == q.rows() && out.cols() == v.cols(), who, ": out is ",
                         detail::shape(out), ", expected ", q.rows(), "x", v.cols());
  PERFORMER_PRECONDITION(
      mask.key_mask.empty() || mask.key_mask.size() == static_cast<std::size_t>(k.rows()), who,
      ": key_mask has ", mask.key_mask.size(), " entries, expected ", k.rows(),
      " (one per key) or none");
  PERFORMER_PRECONDITION(!mask.causal || q.rows() == k.rows(), who,
                         ": causal masking needs as many queries as keys (q is ", detail::shape(q),
                         ", k is ", detail::shape(k), ")");
  PERFORMER_PRECONDITION(
      !detail::overlaps(out, q) && !detail::overlaps(out, k) && !detail::overlaps(out, v), who,
      ": out overlaps an input; pass a separate output buffer");
  require_finite(who, "q", q);
  require_finite(who, "k", k);
  require_finite(who, "v", v);
}

namespace detail {

/// A parameter setter's check: throws performer::invalid_argument unless `m` is rows x cols
/// ("<who>: <name> is 8x9, expected 8x8") and finite.
template <class M>
void require_parameter(std::string_view who, std::string_view name, const M& m, index_t rows,
                       index_t cols) {
  PERFORMER_PRECONDITION(m.rows() == rows && m.cols() == cols, who, ": ", name, " is ", m.rows(),
                         "x", m.cols(), ", expected ", rows, "x", cols);
  require_finite(who, name, m);
}

}  // namespace detail

/// Throws performer::invalid_argument if a result is not finite. Cheap insurance that no NaN
/// ever leaves the library.
template <class M>
void require_finite_result(std::string_view who, const M& out) {
  PERFORMER_PRECONDITION(all_finite(out), who, detail::overflow_text);
}

}  // namespace performer
