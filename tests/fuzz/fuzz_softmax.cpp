/// @file tests/fuzz/fuzz_softmax.cpp
/// @brief performer_fuzz_softmax: exact attention and performer::attend.
///
/// Entry byte (header [0], modulo 3):
///   0 softmax_attention::forward
///   1 tiled_softmax_attention::forward, fuzzed tiles (p[0], p[1]: 0, negative or 1..48) or
///     the default constructor (p[2] bit 0)
///   2 performer::attend over a column-major q and Eigen expressions, with the registry's
///     softmax-family mechanism p[0] (softmax or tiled) built from p[1..4] (make_mechanism).
///     attend only sizes the output and forwards, the same code for every mechanism; the other
///     families' mechanisms are fuzzed in their own targets, and instantiating all of them here
///     took this unit from 14 s to 36 s of CI's compile time (clang++ ASan, -O0)
/// Beyond the common contract (contract.hpp): softmax and tiled against the independent long
/// double reference (performer::oracle), tiled against the materialized softmax_attention,
/// attend == forward bit for bit.
#include "contract.hpp"

namespace fuzz {

/// out against the long double reference, when the logits are small enough for a bound.
template <class T>
void check_against_oracle(std::string_view what, const row_matrix<T>& out, const attention_case<T>& c) {
  const double delta = exact_delta(c.q, c.k);
  if (!(delta <= 0.05)) return;  // (NaN when a norm overflows double)
  compare(what, out, performer::oracle::softmax_attention(c.q, c.k, c.v, c.am()), c.v, delta,
          2 * exact_rel(c));
}

template <class T>
void softmax_entry(byte_reader& r, const header& h) {
  const attention_case<T> c = read_case<T>(r, h);
  const performer::softmax_attention<T> mech;
  const auto out = run_attention("softmax_attention::forward", mech, c,
                                 expectations_for<registry::softmax>(c, -1));
  if (out) check_against_oracle("softmax_attention vs the reference", *out, c);
}

template <class T>
void tiled_entry(byte_reader& r, const header& h) {
  const index_t qb = small(h.p[0], 48, 8);
  const index_t kb = small(h.p[1], 48, 8);
  const bool defaults = (h.p[2] & 1U) != 0;
  std::optional<performer::tiled_softmax_attention<T>> mech;
  const outcome made = guarded("tiled_softmax_attention()", tiled_names, [&] {
    if (defaults) {
      mech.emplace();
    } else {
      mech.emplace(qb, kb);
    }
  });
  expect_acceptance("tiled_softmax_attention()", made, !defaults && (qb <= 0 || kb <= 0));
  if (!made.ok) return;
  const attention_case<T> c = read_case<T>(r, h);
  const auto out = run_attention("tiled_softmax_attention::forward", *mech, c,
                                 expectations_for<registry::tiled>(c, -1));
  if (!out) return;
  check_against_oracle("tiled_softmax_attention vs the reference", *out, c);
  const double delta = exact_delta(c.q, c.k);
  if (!(delta <= 0.05)) return;
  // Tiling changes only the order of the sums: the materialized softmax agrees to rounding.
  const performer::softmax_attention<T> ref;
  row_matrix<T> materialized(c.q.rows(), c.v.cols());
  typename performer::softmax_attention<T>::workspace_type ws;
  const outcome o = guarded("softmax_attention::forward (reference)", softmax_names,
                            [&] { ref.forward(c.q, c.k, c.v, materialized, c.am(), ws); });
  if (o.ok) {
    compare("tiled_softmax_attention vs softmax_attention", *out, materialized, c.v, delta,
            2 * exact_rel(c));
  }
}

template <class T>
void attend_entry(byte_reader& r, const header& h) {
  header h2 = h;
  const mode md = h.shape_mode();  // attend sizes the output itself: only input defects apply
  if (md != mode::k_width && md != mode::v_rows) h2.shape = 0;
  const attention_case<T> c = read_case<T>(r, h2);
  with_family_member<registry::family::softmax>(h.p[0], [&](auto entry) {
    using E = decltype(entry);
    const auto mech = make_mechanism<E, T>(h.d, h.m, {h.p[1], h.p[2], h.p[3], h.p[4]});
    if (!mech) return;
    attend_with(*mech, c, expectations_for<E>(c, h.d), cat("attend(", E::name, ")"));
  });
}

template <class T>
void run(byte_reader& r, const header& h) {
  switch (h.entry % 3U) {
    case 0: softmax_entry<T>(r, h); break;
    case 1: tiled_entry<T>(r, h); break;
    default: attend_entry<T>(r, h); break;
  }
}

}  // namespace fuzz

PERFORMER_FUZZ_TARGET(fuzz::run)
