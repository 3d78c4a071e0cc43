/// @file tests/fuzz/fuzz_attention.cpp
/// @brief libFuzzer harness for every public attention entry point of performer.
///
/// Bytes become an entry point, shapes (0..40 rows and widths, including 0 and 1), options,
/// masks (none, full, random, fully padded, wrong length, arbitrary byte values), memory layouts
/// (strided views, outputs overlapping inputs) and values (a smooth range times a per-matrix
/// scale from 1e-300 to 1e38, plus specials: NaN, +-inf, denormals, +-0, 1e+-30, max, lowest).
///
/// The contract checked on every call, from README "Errors" and the attention_mechanism concept:
/// - the only exception is performer::invalid_argument, with a message naming the function;
/// - documented bad input (shapes, empty or zero-width, mask length, causal with N_q != N_k,
///   non-finite values, aliasing, constructor options) is rejected, never silently accepted;
/// - valid input is rejected only for the documented overflow of the result (and never when the
///   input is moderate, |x| <= 8, for the exact and LSH mechanisms and positive feature maps);
/// - an accepted call writes a finite result into exactly the caller's output view (guard cells
///   around strided views stay untouched; the view is pre-filled with NaN, so every entry must
///   be written);
/// - a query that sees no key gets an exact zero row; for exact and LSH attention (non-negative
///   weights) each output entry lies within [min_j v_jc, max_j v_jc] over the visible keys, up
///   to rounding;
/// - oracles, exact up to a rounding bound derived from the inputs: tiled == materialized
///   softmax; LSH with zero rotations and one chunk == softmax; FAVOR (every map, any blocking,
///   chunking and segments) == the FAVOR estimate recomputed in double from the library's own
///   features; favor_decoder step by step == the causal estimate; performer::attend == forward
///   (bitwise); a workspace's history never changes a result (bitwise); favor_decoder::reset
///   replays bitwise.
/// Anything else prints "performer-fuzz: CONTRACT VIOLATION" and traps.
///
/// Input layout (tests/fuzz/make_corpus.py writes it): 24 header bytes
///   [0] entry  [1] flags  [2] N_q  [3] N_k  [4] d  [5] d_v  [6] m (sizes: see size_of)  [7] shape mode
///   [8..19] twelve entry parameters  [20..23] value scales of q/x, k, v, and weights
/// then the mask bytes, then one byte per matrix entry; once the input runs out, structural
/// bytes read 0 and matrix entries come from a smooth pseudo-random filler seeded by the input.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <initializer_list>
#include <limits>
#include <optional>
#include <span>
#include <sstream>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include <performer/performer.hpp>

// LSH attention is fuzzed when its header is available (define PERFORMER_FUZZ_LSH=0 to leave it
// out, e.g. while the header is being rewritten).
#ifndef PERFORMER_FUZZ_LSH
#if __has_include(<performer/attention/lsh_attention.hpp>)
#define PERFORMER_FUZZ_LSH 1
#else
#define PERFORMER_FUZZ_LSH 0
#endif
#endif
#if PERFORMER_FUZZ_LSH
#include <performer/attention/lsh_attention.hpp>
#endif

namespace fuzz {

using performer::attention_mask;
using performer::const_matrix_ref;
using performer::index;
using performer::matrix_ref;
using performer::row_matrix;

// ---- Reporting --------------------------------------------------------------------------------

template <class... Parts>
std::string cat(const Parts&... parts) {
  std::ostringstream os;
  os.precision(17);
  (os << ... << parts);
  return os.str();
}

[[noreturn]] void bug(const std::string& what) {
  std::fprintf(stderr, "\n==performer-fuzz== CONTRACT VIOLATION: %s\n", what.c_str());
  std::fflush(stderr);
  __builtin_trap();
}

/// PERFORMER_FUZZ_TRACE=1 in the environment prints every guarded call's outcome (to see what
/// an input exercises: `PERFORMER_FUZZ_TRACE=1 ./performer_fuzz_attention input`).
bool tracing() {
  static const bool on = std::getenv("PERFORMER_FUZZ_TRACE") != nullptr;
  return on;
}

/// What a guarded call did: returned, or threw performer::invalid_argument with `message`.
struct outcome {
  bool ok = true;
  std::string message;
};

/// Runs f; performer::invalid_argument (with a message naming one of `names`) is a valid
/// outcome, any other exception is a bug.
template <class F>
outcome guarded(std::string_view who, std::initializer_list<std::string_view> names, F&& f) {
  try {
    f();
    if (tracing()) std::fprintf(stderr, "  %.*s: ok\n", static_cast<int>(who.size()), who.data());
    return {};
  } catch (const performer::invalid_argument& e) {
    std::string message = e.what();
    if (tracing()) {
      std::fprintf(stderr, "  %.*s: rejected: %s\n", static_cast<int>(who.size()), who.data(),
                   message.c_str());
    }
    if (message.empty()) bug(cat(who, ": invalid_argument with an empty message"));
    const bool named = std::any_of(names.begin(), names.end(), [&](std::string_view n) {
      return message.find(n) != std::string::npos;
    });
    if (!named) bug(cat(who, ": the message does not name the function: \"", message, "\""));
    return {false, std::move(message)};
  } catch (const std::exception& e) {
    bug(cat(who, ": undocumented exception (not performer::invalid_argument): ", e.what()));
  } catch (...) {
    bug(cat(who, ": undocumented non-std exception"));
  }
}

/// A constructor or setter: rejects exactly when `invalid` says it should.
void expect_acceptance(std::string_view who, const outcome& o, bool invalid) {
  if (o.ok && invalid) bug(cat(who, ": accepted an invalid argument"));
  if (!o.ok && !invalid) bug(cat(who, ": rejected a valid argument: ", o.message));
}

// ---- Decoding bytes ---------------------------------------------------------------------------

class byte_reader {
 public:
  byte_reader(const std::uint8_t* data, std::size_t size) : data_(data), size_(size) {
    std::uint64_t h = 0xcbf29ce484222325ULL;  // FNV-1a of the whole input seeds the filler
    for (std::size_t i = 0; i < size; ++i) h = (h ^ data[i]) * 0x100000001b3ULL;
    state_ = h | 1U;
  }
  /// Shapes, options, mask bits: 0 once the input is exhausted.
  std::uint8_t structural() { return pos_ < size_ ? data_[pos_++] : 0; }
  /// Matrix entries: the input's bytes, then smooth filler (never a special value).
  std::uint8_t value() { return pos_ < size_ ? data_[pos_++] : smooth(); }

 private:
  std::uint8_t smooth() {  // xorshift64*
    state_ ^= state_ >> 12U;
    state_ ^= state_ << 25U;
    state_ ^= state_ >> 27U;
    return static_cast<std::uint8_t>(((state_ * 0x2545F4914F6CDD1DULL) >> 32U) % 224U);
  }
  const std::uint8_t* data_;
  std::size_t size_;
  std::size_t pos_ = 0;
  std::uint64_t state_;
};

template <class T>
T to_scalar(double x) {
  using L = std::numeric_limits<T>;
  if (std::isnan(x)) return L::quiet_NaN();
  if (x > static_cast<double>(L::max())) return L::infinity();
  if (x < static_cast<double>(L::lowest())) return -L::infinity();
  return static_cast<T>(x);
}

double scale_of(std::uint8_t b) {
  static constexpr double table[16] = {1,     1,    1,     1,    1e-30, 1e30,  1e-20, 1e20,
                                       1e-8,  1e8,  100,   0.01, 1e-38, 1e38,  1e-42, 1e-300};
  return table[b % 16U];
}

/// Bytes 0..223: (b - 112) / 16 * scale, a smooth range in [-7, 7) * scale. 224..255: specials.
template <class T>
T decode(std::uint8_t b, double scale) {
  using L = std::numeric_limits<T>;
  if (b < 224) return to_scalar<T>((static_cast<double>(b) - 112.0) / 16.0 * scale);
  switch (b - 224) {
    case 0: return T(0);
    case 1: return -T(0);
    case 2: return L::quiet_NaN();
    case 3: return L::infinity();
    case 4: return -L::infinity();
    case 5: return L::denorm_min();
    case 6: return -L::denorm_min();
    case 7: return L::min();
    case 8: return -L::min();
    case 9: return to_scalar<T>(1e-30);
    case 10: return to_scalar<T>(-1e-30);
    case 11: return to_scalar<T>(1e30);
    case 12: return to_scalar<T>(-1e30);
    case 13: return L::max();
    case 14: return L::lowest();
    case 15: return to_scalar<T>(1e-300);
    case 16: return to_scalar<T>(1e300);
    case 17: return to_scalar<T>(1e-40);
    case 18: return T(100);
    case 19: return T(-100);
    case 20: return T(1e5);
    case 21: return T(-1e5);
    case 22: return L::epsilon();
    case 23: return to_scalar<T>(88.8);   // exp overflows float
    case 24: return to_scalar<T>(709.8);  // exp overflows double
    case 25: return to_scalar<T>(1e20);
    case 26: return to_scalar<T>(-1e20);
    case 27: return to_scalar<T>(1e10);
    case 28: return to_scalar<T>(-1e10);
    case 29: return L::signaling_NaN();
    case 30: return -L::quiet_NaN();
    default: return to_scalar<T>(scale);
  }
}

template <class T>
row_matrix<T> read_matrix(byte_reader& r, index rows, index cols, double scale) {
  row_matrix<T> m(rows, cols);
  for (index i = 0; i < rows; ++i) {
    for (index j = 0; j < cols; ++j) m(i, j) = decode<T>(r.value(), scale);
  }
  return m;
}

/// Shape modes: valid, or one deliberate defect (or layout) per call.
enum class mode { valid, k_width, v_rows, out_rows, out_cols, alias_q, alias_v, head_dim };

enum entry : int {
  e_softmax,
  e_tiled,
  e_favor_positive,
  e_favor_hyperbolic,
  e_favor_trigonometric,
  e_favor_relu,
  e_favor_elu,
  e_favor_plus_plus,
  e_decoder,
  e_attend,
  e_block,
  e_lsh,
  entry_count
};

struct header {
  int entry = 0;
  std::uint8_t flags = 0;
  index n_q = 0, n_k = 0, d = 0, d_v = 0, m = 0;
  std::uint8_t shape = 0;
  std::uint8_t p[12] = {};
  double scale[4] = {};

  [[nodiscard]] bool is_double() const { return (flags & 1U) != 0; }
  [[nodiscard]] bool causal() const { return (flags & 2U) != 0; }
  [[nodiscard]] int mask_mode() const { return (flags >> 2U) & 7U; }
  [[nodiscard]] bool history() const { return (flags & 0x20U) != 0; }
  [[nodiscard]] bool strided() const { return (flags & 0x40U) != 0; }
  [[nodiscard]] mode shape_mode() const {
    return shape < 200 ? mode::valid : static_cast<mode>(1 + (shape - 200) % 7);
  }
};

/// A size 0..40 from a byte, skewed small for speed: bytes 0..191 give b % 17, 192..255 b % 41.
index size_of(std::uint8_t b) { return b < 192 ? b % 17 : b % 41; }

header read_header(byte_reader& r) {
  header h;
  h.entry = r.structural() % entry_count;
  h.flags = r.structural();
  h.n_q = size_of(r.structural());
  h.n_k = size_of(r.structural());
  h.d = size_of(r.structural());
  h.d_v = size_of(r.structural());
  h.m = size_of(r.structural());
  h.shape = r.structural();
  for (auto& p : h.p) p = r.structural();
  for (auto& s : h.scale) s = scale_of(r.structural());
  return h;
}

/// A signed small integer from a byte: 1 + b % range mostly; with the top bit set,
/// (b & 0x7f) - offset, which reaches 0 and negative values.
index small(std::uint8_t b, index range, index offset) {
  return (b & 0x80U) != 0 ? static_cast<index>(b & 0x7fU) - offset : 1 + static_cast<index>(b) % range;
}

struct mask_data {
  std::vector<std::uint8_t> bytes;
  bool wrong_length = false;
  [[nodiscard]] bool keeps(index j) const {
    return bytes.empty() || bytes[static_cast<std::size_t>(j)] != 0;
  }
};

/// Modes: none, all kept, random bits, all padded, one too many, one too few, alternating
/// (key 0 padded), raw bytes.
mask_data read_mask(byte_reader& r, int mask_mode, index n) {
  mask_data m;
  const auto bits = [&](index len) {
    m.bytes.resize(static_cast<std::size_t>(len));
    std::uint8_t byte = 0;
    for (index j = 0; j < len; ++j) {
      if (j % 8 == 0) byte = r.structural();
      m.bytes[static_cast<std::size_t>(j)] = (byte >> (j % 8)) & 1U;
    }
  };
  switch (mask_mode) {
    case 0: break;
    case 1: m.bytes.assign(static_cast<std::size_t>(n), 1); break;
    case 2: bits(n); break;
    case 3: m.bytes.assign(static_cast<std::size_t>(n), 0); break;
    case 4: bits(n + 1); break;
    case 5: bits(n > 0 ? n - 1 : 2); break;
    case 6:
      for (index j = 0; j < n; ++j) m.bytes.push_back(static_cast<std::uint8_t>(j % 2));
      break;
    default:
      for (index j = 0; j < n; ++j) m.bytes.push_back(r.structural());
      break;
  }
  m.wrong_length = !m.bytes.empty() && m.bytes.size() != static_cast<std::size_t>(n);
  return m;
}

// ---- Matrix helpers (independent of the library's own checks) ---------------------------------

template <class M>
bool all_finite(const M& m) {
  for (index i = 0; i < m.rows(); ++i) {
    for (index j = 0; j < m.cols(); ++j) {
      if (!std::isfinite(m(i, j))) return false;
    }
  }
  return true;
}

template <class M>
double max_abs(const M& m) {
  double a = 0;
  for (index i = 0; i < m.rows(); ++i) {
    for (index j = 0; j < m.cols(); ++j) a = std::max(a, std::abs(static_cast<double>(m(i, j))));
  }
  return a;
}

template <class M>
double max_row_norm(const M& m) {
  double a = 0;
  for (index i = 0; i < m.rows(); ++i) {
    double s = 0;
    for (index j = 0; j < m.cols(); ++j) s += static_cast<double>(m(i, j)) * static_cast<double>(m(i, j));
    a = std::max(a, std::sqrt(s));
  }
  return a;
}

template <class A, class B>
bool bitwise_equal(const A& a, const B& b) {
  if (a.rows() != b.rows() || a.cols() != b.cols()) return false;
  for (index i = 0; i < a.rows(); ++i) {
    for (index j = 0; j < a.cols(); ++j) {
      const auto x = a(i, j);
      const auto y = b(i, j);
      if (std::memcmp(&x, &y, sizeof x) != 0) return false;
    }
  }
  return true;
}

template <class T>
constexpr double eps_of() {
  return static_cast<double>(std::numeric_limits<T>::epsilon());
}

/// Moderate input: finite and |x| <= 8, where no documented overflow can happen.
template <class M>
bool moderate(const M& m) {
  return all_finite(m) && max_abs(m) <= 8.0;
}

// ---- One attention call -----------------------------------------------------------------------

template <class T>
struct attention_case {
  header h;
  mask_data mask;
  row_matrix<T> q, k, v;  // exactly what the call sees
  [[nodiscard]] attention_mask am() const {
    return {h.causal(), std::span<const std::uint8_t>(mask.bytes)};
  }
  [[nodiscard]] bool visible(index i, index j) const {
    return mask.keeps(j) && (!h.causal() || j <= i);
  }
};

template <class T>
attention_case<T> read_case(byte_reader& r, const header& h) {
  attention_case<T> c;
  c.h = h;
  const mode md = h.shape_mode();
  c.mask = read_mask(r, h.mask_mode(), h.n_k);
  c.q = read_matrix<T>(r, h.n_q, h.d, h.scale[0]);
  c.k = read_matrix<T>(r, h.n_k, h.d + (md == mode::k_width ? 1 : 0), h.scale[1]);
  c.v = read_matrix<T>(r, h.n_k + (md == mode::v_rows ? 1 : 0), h.d_v, h.scale[2]);
  return c;
}

/// The buffers of one call: inputs (plain or strided views), the output view (pre-filled with
/// NaN, surrounded by guard cells when strided) or an output overlapping an input.
template <class T>
struct call_buffers {
  static constexpr T guard = T(-7777.25);
  row_matrix<T> q_store, k_store, v_store, out_store, shared;
  std::optional<const_matrix_ref<T>> q, k, v;
  std::optional<matrix_ref<T>> out;
  index out_r0 = 0, out_c0 = 0;
  bool overlap = false, guarded_out = false;

  explicit call_buffers(const attention_case<T>& c) {
    const mode md = c.h.shape_mode();
    const bool strided = c.h.strided();
    const auto place = [&](row_matrix<T>& store, const row_matrix<T>& m,
                           std::optional<const_matrix_ref<T>>& ref) {
      if (strided && m.rows() > 0) {  // (a block of an empty matrix would offset a null pointer)
        store.setConstant(m.rows(), m.cols() + 2, guard);
        store.middleCols(1, m.cols()) = m;
        ref.emplace(store.middleCols(1, m.cols()));
      } else {
        store = m;
        ref.emplace(store);
      }
    };
    const index n_q = c.q.rows();
    const index d_v = c.v.cols();
    if (md == mode::alias_q) {
      shared.setConstant(n_q, std::max(c.q.cols(), d_v), guard);
      shared.leftCols(c.q.cols()) = c.q;
      q.emplace(shared.leftCols(c.q.cols()));
      out.emplace(shared.leftCols(d_v));
      overlap = n_q > 0 && c.q.cols() > 0 && d_v > 0;
    } else {
      place(q_store, c.q, q);
    }
    place(k_store, c.k, k);
    if (md == mode::alias_v) {
      shared.setConstant(std::max(n_q, c.v.rows()), d_v, guard);
      shared.topRows(c.v.rows()) = c.v;
      v.emplace(shared.topRows(c.v.rows()));
      out.emplace(shared.topRows(n_q));
      overlap = n_q > 0 && c.v.rows() > 0 && d_v > 0;
    } else {
      place(v_store, c.v, v);
    }
    if (!out) {
      const index rows = n_q + (md == mode::out_rows ? 1 : 0);
      const index cols = d_v + (md == mode::out_cols ? 1 : 0);
      guarded_out = true;
      if (strided) {
        out_r0 = 1;
        out_c0 = 1;
        out_store.setConstant(rows + 2, cols + 2, guard);
      } else {
        out_store.resize(rows, cols);
      }
      out_store.block(out_r0, out_c0, rows, cols).setConstant(std::numeric_limits<T>::quiet_NaN());
      out.emplace(out_store.block(out_r0, out_c0, rows, cols));
    }
  }
  call_buffers(const call_buffers&) = delete;
  call_buffers& operator=(const call_buffers&) = delete;

  /// Cells around a strided output view must be untouched.
  void check_guard(std::string_view who) const {
    if (!guarded_out) return;
    for (index i = 0; i < out_store.rows(); ++i) {
      for (index j = 0; j < out_store.cols(); ++j) {
        const bool inside = i >= out_r0 && i < out_r0 + out->rows() && j >= out_c0 &&
                            j < out_c0 + out->cols();
        if (!inside && !bitwise_equal(out_store.block(i, j, 1, 1),
                                      row_matrix<T>::Constant(1, 1, guard))) {
          bug(cat(who, ": wrote outside the output view at (", i - out_r0, ", ", j - out_c0, ")"));
        }
      }
    }
  }
};

/// What the mechanism promises beyond the common contract.
struct expectations {
  std::initializer_list<std::string_view> names;
  bool convex = false;             ///< non-negative weights: rows inside the visible values' range
  bool zero_rows_allowed = false;  ///< LSH: a query's windows may hold no visible key
  bool must_succeed_moderate = false;
  double rel = 0;                  ///< rounding tolerance of the range check, in units of eps
  index mech_dim = -1;             ///< head width the mechanism was built for (-1: any)
  bool shared_qk = false;
};

/// The documented reason (README "Errors") a call must be rejected, or "" if it is valid.
template <class T>
std::string rejection(const attention_case<T>& c, index q_rows, index q_cols, index k_rows,
                      index k_cols, index v_rows, index v_cols, index out_rows, index out_cols,
                      bool overlap, const expectations& e) {
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
  return {};
}

template <class T>
std::string rejection(const attention_case<T>& c, const call_buffers<T>& b, const expectations& e) {
  return rejection(c, b.q->rows(), b.q->cols(), b.k->rows(), b.k->cols(), b.v->rows(),
                   b.v->cols(), b.out->rows(), b.out->cols(), b.overlap, e);
}

/// Finite; exact zero rows where nothing is visible; inside the visible values' range.
template <class T>
void check_output(std::string_view who, const row_matrix<T>& out, const attention_case<T>& c,
                  const expectations& e) {
  if (!all_finite(out)) bug(cat(who, ": accepted call returned a non-finite result"));
  const double rel = e.rel * eps_of<T>();
  const double floor = static_cast<double>(c.k.rows() + 4) *
                       static_cast<double>(std::numeric_limits<T>::denorm_min());
  for (index i = 0; i < out.rows(); ++i) {
    bool any = false;
    for (index j = 0; j < c.k.rows() && !any; ++j) any = c.visible(i, j);
    if (!any) {
      for (index col = 0; col < out.cols(); ++col) {
        if (out(i, col) != T(0)) {
          bug(cat(who, ": query ", i, " sees no key but out(", i, ", ", col, ") = ", out(i, col)));
        }
      }
      continue;
    }
    if (!e.convex) continue;
    if (e.zero_rows_allowed && out.row(i).isZero(0)) continue;
    for (index col = 0; col < out.cols(); ++col) {
      double lo = std::numeric_limits<double>::infinity();
      double hi = -lo;
      double amax = 0;
      for (index j = 0; j < c.k.rows(); ++j) {
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
/// same attention whose weights differ by a relative `delta` at most.
template <class T>
void compare(std::string_view what, const row_matrix<T>& a, const row_matrix<T>& b,
             const row_matrix<T>& v, double delta, double rel) {
  if (a.rows() != b.rows() || a.cols() != b.cols()) bug(cat(what, ": shapes differ"));
  const double floor = static_cast<double>(v.rows() + 4) *
                       static_cast<double>(std::numeric_limits<T>::denorm_min());
  for (index col = 0; col < a.cols(); ++col) {
    double amax = 0;
    for (index j = 0; j < v.rows(); ++j) amax = std::max(amax, std::abs(static_cast<double>(v(j, col))));
    const double tol = (2.5 * delta + rel * eps_of<T>()) * amax + floor;
    for (index i = 0; i < a.rows(); ++i) {
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
  const double d = static_cast<double>(std::max<index>(q.cols(), 1));
  const double logit = max_row_norm(q) * max_row_norm(k) / std::sqrt(d);
  return std::expm1(4.0 * (d + static_cast<double>(k.rows()) + 8.0) * eps_of<T>() * logit);
}

/// Calls that may leave the workspace in any state: smaller shapes, other values.
template <class T, class Mech>
void warm_up(std::string_view who, std::initializer_list<std::string_view> names, const Mech& mech,
             const attention_case<T>& c, typename Mech::workspace_type& ws) {
  {
    const row_matrix<T> q2 = c.q * T(2), k2 = c.k * T(0.5), v2 = c.v * T(-3);
    row_matrix<T> out2(q2.rows(), v2.cols());
    guarded(who, names, [&] { mech.forward(q2, k2, v2, out2, c.am(), ws); });
  }
  {
    const index nq = c.q.rows() / 2;
    const index nk = c.k.rows() / 2;
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
    if (o.ok && !bitwise_equal(*b.out, *fresh.out)) {
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

// ---- Exact attention --------------------------------------------------------------------------

template <class T>
double exact_rel(const attention_case<T>& c) {
  return 4.0 * static_cast<double>(c.k.rows() + c.q.cols() + 16);
}

template <class T>
std::optional<row_matrix<T>> softmax_reference(const attention_case<T>& c) {
  const performer::softmax_attention<T> ref;
  row_matrix<T> out(c.q.rows(), c.v.cols());
  typename performer::softmax_attention<T>::workspace_type ws;
  const outcome o = guarded("softmax_attention::forward (reference)", {"softmax_attention"},
                            [&] { ref.forward(c.q, c.k, c.v, out, c.am(), ws); });
  if (!o.ok) return std::nullopt;
  return out;
}

template <class T>
void softmax_entry(byte_reader& r, const header& h) {
  const attention_case<T> c = read_case<T>(r, h);
  const performer::softmax_attention<T> mech;
  expectations e{{"softmax_attention"}, true, false, true, exact_rel(c)};
  run_attention("softmax_attention::forward", mech, c, e);
}

template <class T>
void tiled_entry(byte_reader& r, const header& h) {
  const index qb = small(h.p[0], 48, 8);
  const index kb = small(h.p[1], 48, 8);
  const bool defaults = (h.p[2] & 1U) != 0;
  std::optional<performer::tiled_softmax_attention<T>> mech;
  const outcome made = guarded("tiled_softmax_attention()", {"tiled_softmax_attention"}, [&] {
    if (defaults) {
      mech.emplace();
    } else {
      mech.emplace(qb, kb);
    }
  });
  expect_acceptance("tiled_softmax_attention()", made, !defaults && (qb <= 0 || kb <= 0));
  if (!made.ok) return;
  const attention_case<T> c = read_case<T>(r, h);
  expectations e{{"tiled_softmax_attention"}, true, false, true, exact_rel(c)};
  const auto out = run_attention("tiled_softmax_attention::forward", *mech, c, e);
  if (!out) return;
  const double delta = exact_delta(c.q, c.k);
  if (!(delta <= 0.05)) return;  // (NaN when a norm overflows double)
  if (const auto ref = softmax_reference(c)) {
    compare("tiled_softmax_attention vs softmax_attention", *out, *ref, c.v, delta, 2 * exact_rel(c));
  }
}

// ---- FAVOR ------------------------------------------------------------------------------------

enum class map_kind { positive, hyperbolic, trigonometric, relu, elu, favor_plus_plus };

/// Relative error of FAVOR's per-pair weights between two evaluation orders (blocking, chunks,
/// segments, token by token, this harness's reference): the exponents carry ~ d eps |exponent|.
template <class T, class Att>
double favor_delta(map_kind kind, const Att& att, const row_matrix<T>& q, const row_matrix<T>& k,
                   bool adaptive_used) {
  const double eps = eps_of<T>();
  const double d = static_cast<double>(std::max<index>(q.cols(), 1));
  const double raw = std::max(max_row_norm(q), max_row_norm(k));
  const double r = raw * std::pow(d, -0.25);
  const double w = max_row_norm(att.projection().matrix());
  double e = 0;
  switch (kind) {
    case map_kind::positive:
    case map_kind::hyperbolic:
    case map_kind::trigonometric:
      e = 8.0 * (d + 8.0) * eps * (r * w + r * r / 2.0 + 1.0);
      break;
    case map_kind::favor_plus_plus: {
      double a = 0;
      if constexpr (requires { att.feature_map().a(); }) {
        a = std::abs(att.feature_map().a());
        if (adaptive_used) {
          a = std::max(a, std::abs(std::decay_t<decltype(att.feature_map())>::optimal_a(q, k)));
        }
      }
      const double b = std::sqrt(1.0 + 4.0 * a);
      e = 8.0 * (d + 8.0) * eps *
          (a * w * w + b * r * w + r * r / 2.0 + d / 4.0 * std::log1p(4.0 * a) + 1.0);
      break;
    }
    case map_kind::relu:
      e = 2.0 * (d + 2.0) * eps * (raw * w / 1e-3 + 1.0);
      break;
    case map_kind::elu:
      e = 8.0 * eps * (1.0 + std::max(max_abs(q), max_abs(k)));
      break;
  }
  return std::isfinite(e) ? std::expm1(2.0 * e) : e;
}

constexpr std::initializer_list<std::string_view> favor_names = {
    "favor_attention", "random_projection", "favor_plus_plus_features"};

/// The FAVOR estimate recomputed in double from the library's own features (public feature-map
/// API): out_i = sum_j a_ij v_j / sum_j a_ij over the visible keys, a_ij = exp(log_k_j - c_i)
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
  if constexpr (requires { map.calibrated_for(c.q, c.k, std::span<const std::uint8_t>{}); }) {
    if (!c.h.causal()) map = map.calibrated_for(c.q, c.k, c.am().key_mask);
  }
  const index m = att.feature_count();
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
  const auto beyond_range = [&](const row_matrix<T>& x, index i) {
    const double sn = x.row(i).template cast<double>().squaredNorm() /
                      std::sqrt(static_cast<double>(x.cols()));
    return sn > 0.25 * static_cast<double>(std::numeric_limits<T>::max());
  };
  const auto check_log = [&](const row_matrix<T>& x, const performer::vector<T>& l) {
    for (index i = 0; i < x.rows(); ++i) {
      if (!std::isfinite(l(i)) && !(std::isinf(l(i)) && beyond_range(x, i))) {
        bug(cat("feature_map::apply: log_scale ", l(i), " for finite row ", i,
                " whose scaled squared norm fits T"));
      }
    }
  };
  const bool inputs_finite = all_finite(c.q) && all_finite(c.k);
  if (inputs_finite && (!all_finite(lq) || !all_finite(lk))) {
    check_log(c.q, lq);
    check_log(c.k, lk);
    for (index j = 0; j < c.k.rows(); ++j) {
      if (!(lk(j) < std::numeric_limits<T>::infinity())) ref.usable = false;  // +inf or NaN
    }
    if (!ref.usable) return ref;
  }
  ref.out.setZero(c.q.rows(), c.v.cols());
  ref.den.assign(static_cast<std::size_t>(c.q.rows()), 0.0);
  ref.abs_den.assign(static_cast<std::size_t>(c.q.rows()), 0.0);
  for (index i = 0; i < c.q.rows(); ++i) {
    double shift = -std::numeric_limits<double>::infinity();
    for (index j = 0; j < c.k.rows(); ++j) {
      if (c.visible(i, j)) shift = std::max(shift, static_cast<double>(lk(j)));
    }
    if (shift == -std::numeric_limits<double>::infinity()) continue;
    double den = 0, abs_den = 0;
    for (index j = 0; j < c.k.rows(); ++j) {
      if (!c.visible(i, j)) continue;
      const double a = std::exp(static_cast<double>(lk(j)) - shift) *
                       pq.row(i).template cast<double>().dot(pk.row(j).template cast<double>());
      den += a;
      abs_den += std::abs(a);
      ref.out.row(i) += a * c.v.row(j).template cast<double>();
    }
    ref.den[static_cast<std::size_t>(i)] = den;
    ref.abs_den[static_cast<std::size_t>(i)] = abs_den;
    if (den != 0) ref.out.row(i) /= den;
  }
  return ref;
}

/// Tolerance of one FAVOR output entry against the reference, or a negative value when the row
/// cannot be compared. Two parts: relative rounding (delta for the weights, rel for the sums,
/// times the cancellation factor |a| / |sum a| of signed maps) times the values' range amax; and
/// subnormal rounding: each of the ~count products a_ij v_jc (and phi entries) may lose up to
/// T's smallest subnormal, an absolute error of ~count * tiny / |den| in the result. A row where
/// that exceeds 5% of amax is not compared (FAVOR keeps its normaliser unscaled, so it can be
/// tiny).
template <class T>
double favor_tolerance(double n, double features, double d, double delta, double den,
                       double abs_den, double amax) {
  const double eps = eps_of<T>();
  const double tiny = static_cast<double>(std::numeric_limits<T>::denorm_min());
  if (abs_den == 0 || den == 0) return -1;
  const double rel = 8.0 * (n + features + d + 16.0) * eps;
  const double relative = (2.5 * delta + rel) * (abs_den / std::abs(den));
  const double count = n * features + n + features + 4.0;
  const double underflow = 4.0 * count * tiny / std::abs(den);
  if (!(relative <= 0.05) || !(underflow <= 0.05 * amax || amax == 0)) return -1;
  return relative * amax + underflow * (1.0 + amax) + (n + 4.0) * tiny;
}

/// Library result against the reference, row by row. Rows whose normaliser is so small that
/// T's subnormal rounding alone could move the result by 5% of the values' range are skipped
/// (FAVOR keeps the normaliser unscaled, so it can underflow; see the README of tests/fuzz).
template <class T>
void check_favor(std::string_view what, const row_matrix<T>& out, const favor_reference& ref,
                 const attention_case<T>& c, index features, double delta) {
  if (!ref.usable || !(delta <= 0.05)) return;
  for (index i = 0; i < out.rows(); ++i) {
    const double den = ref.den[static_cast<std::size_t>(i)];
    const double abs_den = ref.abs_den[static_cast<std::size_t>(i)];
    index visible = 0;
    for (index j = 0; j < c.k.rows(); ++j) visible += c.visible(i, j) ? 1 : 0;
    for (index col = 0; col < out.cols(); ++col) {
      double amax = 0;
      for (index j = 0; j < c.k.rows(); ++j) {
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

/// Token-by-token decoding against the causal FAVOR estimate.
template <class T, class Att>
void run_decoder(byte_reader& r, const header& h, const Att& att, map_kind kind, index head_dim) {
  using decoder_type = performer::favor_decoder<T, typename Att::feature_map_type,
                                                typename Att::sampler_type,
                                                typename Att::accumulator_type>;
  const std::initializer_list<std::string_view> names = {"favor_decoder"};
  const mode md = h.shape_mode();
  const index n = h.n_q;
  const index d_v = h.d_v;
  std::optional<decoder_type> dec;
  const outcome made = guarded("favor_decoder()", names, [&] { dec.emplace(att, d_v); });
  expect_acceptance("favor_decoder()", made, d_v <= 0);
  if (!made.ok) return;

  attention_case<T> c;
  c.h = h;
  c.h.flags |= 2U;  // causal, no key mask
  c.q = read_matrix<T>(r, n, h.d, h.scale[0]);
  c.k = read_matrix<T>(r, n, h.d + (md == mode::k_width ? 1 : 0), h.scale[1]);
  c.v = read_matrix<T>(r, n + (md == mode::v_rows ? 1 : 0), d_v, h.scale[2]);
  const index out_w = d_v + (md == mode::out_cols ? 1 : 0);
  const index primed = h.p[9] % (n + 1);

  struct run_result {
    row_matrix<T> out;
    index folded = 0;
    bool all_ok = true;               // no rejection of invalid input (the reference applies)
    std::vector<index> overflowed;    // valid steps rejected as overflowing (token folded)
  };
  const auto run = [&](decoder_type& de) {
    run_result res;
    res.out.setConstant(n, out_w, std::numeric_limits<T>::quiet_NaN());
    {
      const auto pk = c.k.topRows(primed);
      const auto pv = c.v.topRows(std::min(c.v.rows(), primed + (md == mode::v_rows ? 1 : 0)));
      const bool invalid = pk.cols() != head_dim || pv.cols() != d_v || pk.rows() != pv.rows() ||
                           !all_finite(pk) || !all_finite(pv);
      const index before = de.position();
      const outcome o = guarded("favor_decoder::prime", names, [&] { de.prime(pk, pv); });
      // A key whose features overflow T is rejected (documented), after the keys before it
      // were folded: position() tells how many.
      const bool overflow = !o.ok && !invalid && o.message.find("overflow") != std::string::npos;
      if (!overflow) expect_acceptance("favor_decoder::prime", o, invalid);
      if (o.ok) {
        res.folded += primed;
      } else {
        res.all_ok = false;
        if (overflow) {
          if (de.position() < before || de.position() >= before + primed) {
            bug(cat("favor_decoder::prime: position ", de.position(), " after rejecting one of ",
                    primed, " keys from position ", before));
          }
          res.folded += de.position() - before;
        }
      }
    }
    for (index t = primed; t < n; ++t) {
      const bool invalid = c.q.cols() != head_dim || c.k.cols() != head_dim || out_w != d_v ||
                           !all_finite(c.q.row(t)) || !all_finite(c.k.row(t)) ||
                           !all_finite(c.v.row(t));
      const index before_step = de.position();
      const outcome o = guarded("favor_decoder::step", names, [&] {
        de.step(c.q.row(t), c.k.row(t), c.v.row(t), res.out.row(t));
      });
      if (o.ok && invalid) bug("favor_decoder::step: accepted invalid input");
      if (!o.ok) {
        if (invalid) {
          res.all_ok = false;
        } else {
          if (o.message.find("overflow") == std::string::npos) {
            bug(cat("favor_decoder::step: rejected valid input: ", o.message));
          }
          // Documented: features of q or k that overflow leave the state as it was; an output
          // that overflows leaves the token folded.
          const index advanced = de.position() - before_step;
          if (advanced != 0 && advanced != 1) bug("favor_decoder::step: position moved by more than 1");
          res.overflowed.push_back(t);
          res.folded += advanced;
        }
        continue;
      }
      ++res.folded;
      if (!all_finite(res.out.row(t))) bug("favor_decoder::step: accepted call returned a non-finite result");
    }
    if (de.position() != res.folded) {
      bug(cat("favor_decoder::position: ", de.position(), " after folding ", res.folded, " tokens"));
    }
    return res;
  };

  const run_result first = run(*dec);
  if ((h.p[10] & 1U) != 0) {  // reset() forgets everything: a replay gives the same bits
    dec->reset();
    if (dec->position() != 0) bug("favor_decoder::reset: position() is not 0");
    const run_result again = run(*dec);
    if (!bitwise_equal(first.out, again.out)) bug("favor_decoder: replay after reset() differs");
  }
  // Every emitted row against the causal estimate (the outputs of forward with causal = true).
  if (!first.all_ok || md != mode::valid || n == primed) return;
  // What forward accepts, step must not reject, where the features are bounded by the
  // stabiliser (|phi| <= 1, weights <= 1, so the state stays within n max|v|). relu and elu
  // features are unbounded: the decoder's state sum_j phi(k_j) v_j^T may then overflow where
  // the batch pass, multiplying phi(q) . phi(k) first, does not; both outcomes are documented.
  // Also, the decoder rescales its state when the running maximum of the keys' log scales rises,
  // where the batch pass rescales after its products: when the log scales spread by more than
  // the exponent range of T, old state entries underflow to 0 in the decoder only, and a query
  // resting on them gets a vanishing normaliser (reported) where the batch does not.
  bool wide_spread = false;
  {
    row_matrix<T> phi(n, att.feature_count());
    performer::vector<T> log_k(n);
    att.feature_map().apply(att.projection().matrix(), c.k, phi, log_k);
    const double spread = static_cast<double>(log_k.maxCoeff()) - static_cast<double>(log_k.minCoeff());
    wide_spread = !(spread < 0.5 * -std::log(static_cast<double>(std::numeric_limits<T>::min())));
  }
  const bool bounded = kind != map_kind::relu && kind != map_kind::elu;
  if (!first.overflowed.empty() && bounded && !wide_spread) {
    row_matrix<T> batch(n, d_v);
    typename Att::workspace_type ws;
    const outcome ob = guarded("favor_attention::forward (decoder reference)", favor_names, [&] {
      att.forward(c.q, c.k, c.v, batch, attention_mask{true, {}}, ws);
    });
    if (ob.ok && max_abs(c.v) <= static_cast<double>(std::numeric_limits<T>::max()) * 1e-6) {
      bug(cat("favor_decoder::step ", first.overflowed.front(),
              " rejected as overflowing, but the causal favor_attention::forward accepts the same "
              "tokens"));
    }
    return;
  }
  if (!first.overflowed.empty()) return;
  const favor_reference ref = favor_estimate(att, c);
  if (!ref.usable) return;
  const double delta = favor_delta(kind, att, c.q, c.k, false);
  if (!(delta <= 0.05)) return;
  const double mf = static_cast<double>(att.feature_count());
  for (index t = primed; t < n; ++t) {
    const double den = ref.den[static_cast<std::size_t>(t)];
    const double abs_den = ref.abs_den[static_cast<std::size_t>(t)];
    for (index col = 0; col < d_v; ++col) {
      double amax = 0;
      for (index j = 0; j <= t; ++j) amax = std::max(amax, std::abs(static_cast<double>(c.v(j, col))));
      const double tol = favor_tolerance<T>(static_cast<double>(t + 1), mf, static_cast<double>(c.q.cols()),
                                            delta, den, abs_den, amax);
      if (tol < 0) break;
      const double x = static_cast<double>(first.out(t, col));
      const double y = ref.out(t, col);
      if (!(std::abs(x - y) <= tol)) {
        bug(cat("favor_decoder::step: out(", t, ", ", col, ") = ", x,
                " but the causal FAVOR estimate is ", y, " (tolerance ", tol, ", normaliser ", den, ")"));
      }
    }
  }
}

template <class T, class Map, class Sampler, class Acc = T>
void run_favor(byte_reader& r, const header& h, map_kind kind, Map map, Sampler sampler,
               bool decoder) {
  using attention_type = performer::favor_attention<T, Map, Sampler, Acc>;
  performer::favor_options opt;
  opt.block = small(h.p[2], 48, 4);
  opt.chunk = small(h.p[3], 48, 4);
  opt.segments = small(h.p[4], 4, 2);
  opt.min_segment = small(h.p[5], 24, 2);
  const std::uint64_t seed = h.p[6];
  const mode md = h.shape_mode();
  const index head_dim = h.d + (md == mode::head_dim ? 1 : 0);
  const std::uint8_t f = h.p[8];
  bool adaptive = false;

  if constexpr (std::is_same_v<Map, performer::favor_plus_plus_features<T>>) {
    adaptive = (h.p[7] & 1U) != 0;
    map = Map(adaptive);
    if ((h.p[7] & 2U) != 0) {
      static constexpr double as[8] = {0.0, -0.1, -1.0, 0.1, 0.125, 0.2,
                                       std::numeric_limits<double>::quiet_NaN(), -1e10};
      const double a = as[h.p[7] >> 5U];
      const outcome o = guarded("favor_plus_plus_features::set_a", favor_names, [&] { map.set_a(a); });
      expect_acceptance("favor_plus_plus_features::set_a", o, !(std::isfinite(a) && a < 0.125));
    }
  }

  std::optional<attention_type> att;
  const outcome made = guarded("favor_attention()", favor_names, [&] {
    att.emplace(head_dim, h.m, seed, map, sampler, opt);
  });
  expect_acceptance("favor_attention()", made,
                    h.m <= 0 || head_dim <= 0 || opt.block <= 0 || opt.chunk <= 0 ||
                        opt.segments <= 0 || opt.min_segment <= 0);
  if (!made.ok) return;
  const index expected_features = kind == map_kind::elu ? head_dim
                                  : (kind == map_kind::hyperbolic || kind == map_kind::trigonometric)
                                      ? 2 * h.m
                                      : h.m;
  if (att->feature_count() != expected_features) {
    bug(cat("favor_attention::feature_count: ", att->feature_count(), ", expected ", expected_features));
  }

  if ((f & 4U) != 0) att->projection().redraw();
  if ((f & 8U) != 0) {
    att->projection().set_redraw_interval(1);
    if (!att->projection().on_call()) bug("random_projection::on_call: no redraw at interval 1");
  }

  if (decoder) {
    run_decoder<T>(r, h, *att, kind, head_dim);
    return;
  }

  const attention_case<T> c = read_case<T>(r, h);
  bool moderate_w = true;
  if ((f & 1U) != 0) {  // a user-supplied projection matrix
    const index rows = h.m + ((f & 2U) != 0 ? 1 : 0);
    const row_matrix<T> w = read_matrix<T>(r, rows, head_dim, h.scale[3]);
    const outcome o = guarded("random_projection::set_matrix", favor_names,
                              [&] { att->projection().set_matrix(w); });
    expect_acceptance("random_projection::set_matrix", o, rows != h.m || !all_finite(w));
    if (o.ok) moderate_w = max_abs(w) <= 8.0;
  }
  if constexpr (std::is_same_v<Map, performer::favor_plus_plus_features<T>>) {
    if ((f & 16U) != 0 && c.q.rows() > 0 && c.k.rows() > 0 && c.q.cols() == c.k.cols()) {
      const outcome o = guarded("favor_plus_plus_features::calibrate", {"favor_plus_plus_features"},
                                [&] { att->feature_map().calibrate(c.q, c.k); });
      expect_acceptance("favor_plus_plus_features::calibrate", o,
                        !all_finite(c.q) || !all_finite(c.k));
    }
  }

  // The zero-row rule and the common contract here; the values against the reference below.
  expectations e{favor_names, false, false, kind != map_kind::trigonometric && moderate_w, 0,
                 head_dim};
  const auto out = run_attention("favor_attention::forward", *att, c, e);
  if (!out) return;
  const double delta = favor_delta(kind, *att, c.q, c.k, adaptive && !c.h.causal());
  const favor_reference ref = favor_estimate(*att, c);
  check_favor(cat("favor_attention::forward (block/chunk/segments/min_segment ", opt.block, "/",
                  opt.chunk, "/", opt.segments, "/", opt.min_segment, ")"),
              *out, ref, c, att->feature_count(), delta);

  // Another blocking, chunking and segmentation changes only the order of the sums.
  if ((h.p[10] & 2U) == 0) return;
  performer::favor_options other;
  other.block = 1 + static_cast<index>(h.p[11] % 40);
  other.chunk = 1 + static_cast<index>((h.p[11] >> 2U) % 9);
  other.segments = 1 + (h.p[11] & 1U);
  other.min_segment = 1 + (h.p[11] >> 4U);
  attention_type att2(head_dim, h.m, seed, att->feature_map(), sampler, other);
  att2.projection().set_matrix(att->projection().matrix());
  row_matrix<T> out2(c.q.rows(), c.v.cols());
  typename attention_type::workspace_type ws;
  const outcome o2 = guarded("favor_attention::forward (other layout)", favor_names,
                             [&] { att2.forward(c.q, c.k, c.v, out2, c.am(), ws); });
  if (!o2.ok) return;
  check_favor(cat("favor_attention::forward (block/chunk/segments/min_segment ", other.block, "/",
                  other.chunk, "/", other.segments, "/", other.min_segment, ")"),
              out2, ref, c, att->feature_count(), delta);
}

template <class T, class Map>
void favor_dispatch(byte_reader& r, const header& h, map_kind kind, Map map, bool decoder) {
  switch (h.p[0] % 4U) {
    case 0:
      run_favor<T, Map>(r, h, kind, map, performer::orthogonal_sampler{}, decoder);
      break;
    case 1:
      run_favor<T, Map>(r, h, kind, map,
                        performer::orthogonal_sampler{performer::row_norms::fixed}, decoder);
      break;
    case 2:
      run_favor<T, Map>(r, h, kind, map, performer::gaussian_sampler{}, decoder);
      break;
    default:
      // float data with double accumulation (the supported mixed pairing), else orthogonal.
      if constexpr (std::is_same_v<T, float>) {
        run_favor<T, Map, performer::orthogonal_sampler, double>(
            r, h, kind, map, performer::orthogonal_sampler{}, decoder);
      } else {
        run_favor<T, Map>(r, h, kind, map, performer::orthogonal_sampler{}, decoder);
      }
      break;
  }
}

template <class T>
void favor_entry(byte_reader& r, const header& h, map_kind kind, bool decoder) {
  switch (kind) {
    case map_kind::positive:
      favor_dispatch<T>(r, h, kind, performer::positive_features<T>{}, decoder);
      break;
    case map_kind::hyperbolic:
      favor_dispatch<T>(r, h, kind, performer::hyperbolic_features<T>{}, decoder);
      break;
    case map_kind::trigonometric:
      favor_dispatch<T>(r, h, kind, performer::trigonometric_features<T>{}, decoder);
      break;
    case map_kind::relu:
      favor_dispatch<T>(r, h, kind, performer::relu_features<T>{}, decoder);
      break;
    case map_kind::elu:
      favor_dispatch<T>(r, h, kind, performer::elu_features<T>{}, decoder);
      break;
    case map_kind::favor_plus_plus:
      favor_dispatch<T>(r, h, kind, performer::favor_plus_plus_features<T>{}, decoder);
      break;
  }
}

// ---- LSH --------------------------------------------------------------------------------------

#if PERFORMER_FUZZ_LSH
template <class T>
std::optional<performer::lsh_attention<T>> make_lsh(index head_dim, performer::lsh_options o) {
  std::optional<performer::lsh_attention<T>> mech;
  const outcome made = guarded("lsh_attention()", {"lsh_attention"}, [&] { mech.emplace(head_dim, o); });
  expect_acceptance("lsh_attention()", made,
                    head_dim <= 0 || o.buckets < 2 || o.buckets % 2 != 0 || o.hashes < 1 ||
                        o.chunk < 1);
  return mech;
}

template <class T>
void lsh_entry(byte_reader& r, const header& h) {
  performer::lsh_options o;
  o.buckets = (h.p[0] & 0x80U) != 0 ? static_cast<index>(h.p[0] & 0x7fU) - 8 : 2 * (1 + h.p[0] % 32);
  o.hashes = h.p[1] % 6;
  o.chunk = small(h.p[2], 48, 4);
  o.shared_qk = (h.p[3] & 1U) != 0;
  const bool oracle = (h.p[3] & 2U) != 0;
  const bool set_rotations = (h.p[3] & 4U) != 0;
  const bool bad_rotation = (h.p[3] & 8U) != 0;
  o.seed = h.p[4] | (static_cast<std::uint64_t>(h.p[5]) << 8U);
  if (oracle) {
    o.shared_qk = false;
    o.chunk = std::max<index>(o.chunk, h.n_k + 1);
  }
  const index head_dim = h.d + (h.shape_mode() == mode::head_dim ? 1 : 0);
  auto mech = make_lsh<T>(head_dim, o);
  if (!mech) return;
  const index half = o.buckets / 2;
  const attention_case<T> c = read_case<T>(r, h);

  for (index round = 0; round < o.hashes && (oracle || set_rotations); ++round) {
    const row_matrix<T> rot = oracle ? row_matrix<T>(row_matrix<T>::Zero(head_dim, half))
                                     : read_matrix<T>(r, head_dim, half + (bad_rotation ? 1 : 0), h.scale[3]);
    const outcome so = guarded("lsh_attention::set_rotation", {"lsh_attention"},
                               [&] { mech->set_rotation(round, rot); });
    expect_acceptance("lsh_attention::set_rotation", so,
                      rot.cols() != half || !all_finite(rot));
    if (so.ok && !bitwise_equal(mech->rotation(round), rot)) bug("lsh_attention::rotation differs");
  }

  // The hashing API: buckets in range, bucket_of agrees bit for bit with buckets.
  {
    const index round = h.p[6] % (o.hashes + 1);
    std::vector<index> all;
    const outcome bo = guarded("lsh_attention::buckets", {"lsh_attention"},
                               [&] { all = mech->buckets(c.q, round); });
    expect_acceptance("lsh_attention::buckets", bo,
                      round >= o.hashes || c.q.cols() != head_dim || !all_finite(c.q));
    if (bo.ok) {
      if (static_cast<index>(all.size()) != c.q.rows()) bug("lsh_attention::buckets: wrong size");
      for (const index b : all) {
        if (b < 0 || b >= o.buckets) bug(cat("lsh_attention::buckets: bucket ", b, " out of range"));
        if (oracle && b != 0) bug("lsh_attention::buckets: zero rotation but bucket != 0");
      }
      for (index i = 0; i < std::min<index>(c.q.rows(), 3); ++i) {
        index one = -1;
        guarded("lsh_attention::bucket_of", {"lsh_attention"},
                [&] { one = mech->bucket_of(c.q.row(i), round); });
        if (one != all[static_cast<std::size_t>(i)]) {
          bug(cat("lsh_attention::bucket_of(row ", i, ") = ", one, " but buckets() says ",
                  all[static_cast<std::size_t>(i)]));
        }
      }
    }
  }

  expectations e{{"lsh_attention"}, true, true, true, exact_rel(c), head_dim, o.shared_qk};
  const auto out = run_attention("lsh_attention::forward", *mech, c, e);
  if (!out || !oracle) return;
  // All keys in one bucket and one chunk: LSH is exact softmax attention.
  const double delta = exact_delta(c.q, c.k);
  if (!(delta <= 0.05)) return;  // (NaN when a norm overflows double)
  if (const auto ref = softmax_reference(c)) {
    compare("lsh_attention (zero rotations, one chunk) vs softmax_attention", *out, *ref, c.v,
            delta, 4 * exact_rel(c) + 8.0 * static_cast<double>(o.hashes));
  }
}
#endif

// ---- attend -----------------------------------------------------------------------------------

template <class T, class Mech>
void attend_with(const Mech& mech, const attention_case<T>& c, expectations e, std::string_view who) {
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
  if (!bitwise_equal(got, direct)) bug(cat(who, ": attend differs from forward"));
  check_output(who, got, c, e);
}

template <class T>
void attend_entry(byte_reader& r, const header& h) {
  header h2 = h;
  const mode md = h.shape_mode();  // attend sizes the output itself: only input defects apply
  if (md != mode::k_width && md != mode::v_rows) h2.shape = 0;
  const attention_case<T> c = read_case<T>(r, h2);
  switch (h.p[0] % 4U) {
    case 0:
      attend_with(performer::softmax_attention<T>{}, c,
                  {{"softmax_attention"}, true, false, true, exact_rel(c)}, "attend(softmax_attention)");
      break;
    case 1: {
      const performer::tiled_softmax_attention<T> mech(1 + h.p[1] % 16, 1 + h.p[2] % 16);
      attend_with(mech, c, {{"tiled_softmax_attention"}, true, false, true, exact_rel(c)},
                  "attend(tiled_softmax_attention)");
      break;
    }
    case 2: {
      if (h.d == 0 || h.m == 0) return;
      const performer::favor_attention<T> mech(h.d, h.m, h.p[3]);
      attend_with(mech, c,
                  {favor_names, false, false, true, 0, h.d},
                  "attend(favor_attention)");
      break;
    }
    default: {
#if PERFORMER_FUZZ_LSH
      if (h.d == 0) return;
      performer::lsh_options o;
      o.buckets = 2 * (1 + h.p[1] % 8);
      o.hashes = 1 + h.p[2] % 3;
      o.chunk = 1 + h.p[3] % 16;
      o.shared_qk = (h.p[4] & 1U) != 0;
      const performer::lsh_attention<T> mech(h.d, o);
      attend_with(mech, c, {{"lsh_attention"}, true, true, true, exact_rel(c), h.d, o.shared_qk},
                  "attend(lsh_attention)");
#endif
      break;
    }
  }
}

// ---- transformer_block / transformer_stack ----------------------------------------------------

constexpr std::initializer_list<std::string_view> block_names = {
    "transformer_block", "transformer_stack", "softmax_attention", "tiled_softmax_attention",
    "favor_attention", "lsh_attention"};

template <class T, class Mech>
void run_block(byte_reader& r, const header& h, const performer::block_config& cfg, bool cfg_invalid,
               const Mech& mech, bool mech_dim_mismatch) {
  using block_type = performer::transformer_block<Mech>;
  using stack_type = performer::transformer_stack<Mech>;
  const std::uint8_t f = h.p[2];
  const bool use_stack = (f & 0x20U) != 0;
  const index layers = h.p[9] % 4;
  std::optional<block_type> block;
  std::optional<stack_type> stack;
  const outcome made = guarded(use_stack ? "transformer_stack()" : "transformer_block()", block_names, [&] {
    if (use_stack) {
      stack.emplace(cfg, layers, mech, h.p[10]);
    } else {
      block.emplace(cfg, mech, h.p[10]);
    }
  });
  expect_acceptance(use_stack ? "transformer_stack()" : "transformer_block()", made,
                    cfg_invalid || (use_stack && layers <= 0));
  if (!made.ok) return;
  block_type& target = use_stack ? stack->layer(stack->layers() - 1) : *block;
  const index d = cfg.d_model;
  const index ff = target.config().d_ff;
  if (ff != (cfg.d_ff == 0 ? 4 * d : cfg.d_ff)) bug("transformer_block::config: d_ff not resolved");

  const mode md = h.shape_mode();
  const index n = h.n_q;
  const mask_data mask = read_mask(r, h.mask_mode(), n);
  const row_matrix<T> x = read_matrix<T>(r, n, d + (md == mode::k_width ? 1 : 0), h.scale[0]);

  bool default_parameters = true;
  if ((f & 8U) != 0) {  // user parameters, possibly huge, possibly of the wrong shape
    typename block_type::parameters_type p;
    const double s = h.scale[3];
    const bool wrong = (f & 16U) != 0;
    p.w_q = read_matrix<T>(r, d, d, s);
    p.w_k = read_matrix<T>(r, d, d, s);
    p.w_v = read_matrix<T>(r, d, d, s);
    p.w_o = read_matrix<T>(r, d, d, s);
    p.b_q = read_matrix<T>(r, 1, d, s);
    p.b_k = read_matrix<T>(r, 1, d, s);
    p.b_v = read_matrix<T>(r, 1, d, s);
    p.b_o = read_matrix<T>(r, 1, d, s);
    p.norm1_gain = read_matrix<T>(r, 1, d, s);
    p.norm1_bias = read_matrix<T>(r, 1, d, s);
    p.norm2_gain = read_matrix<T>(r, 1, d, s);
    p.norm2_bias = read_matrix<T>(r, 1, d, s);
    p.w_ff1 = read_matrix<T>(r, d, ff + (wrong ? 1 : 0), s);
    p.b_ff1 = read_matrix<T>(r, 1, ff, s);
    p.w_ff2 = read_matrix<T>(r, ff, d, s);
    p.b_ff2 = read_matrix<T>(r, 1, d, s);
    const bool finite = all_finite(p.w_q) && all_finite(p.w_k) && all_finite(p.w_v) &&
                        all_finite(p.w_o) && all_finite(p.b_q) && all_finite(p.b_k) &&
                        all_finite(p.b_v) && all_finite(p.b_o) && all_finite(p.norm1_gain) &&
                        all_finite(p.norm1_bias) && all_finite(p.norm2_gain) &&
                        all_finite(p.norm2_bias) && all_finite(p.w_ff1) && all_finite(p.b_ff1) &&
                        all_finite(p.w_ff2) && all_finite(p.b_ff2);
    const outcome o = guarded("transformer_block::set_parameters", block_names,
                              [&] { target.set_parameters(std::move(p)); });
    expect_acceptance("transformer_block::set_parameters", o, wrong || !finite);
    default_parameters = !o.ok;
  }

  const bool convenience = (f & 0x40U) != 0;
  const bool alias = !convenience && (md == mode::alias_q || md == mode::alias_v);
  row_matrix<T> x_store = x, y_store;
  index y_r0 = 0, y_c0 = 0;
  const index y_rows = n + (!convenience && md == mode::out_rows ? 1 : 0);
  const index y_cols = d + (!convenience && md == mode::out_cols ? 1 : 0);
  if (!alias) {
    if (h.strided()) {
      y_r0 = 1;
      y_c0 = 1;
      y_store.setConstant(y_rows + 2, y_cols + 2, call_buffers<T>::guard);
    } else {
      y_store.resize(y_rows, y_cols);
    }
    y_store.block(y_r0, y_c0, y_rows, y_cols).setConstant(std::numeric_limits<T>::quiet_NaN());
  }
  std::string reason;
  if (n == 0) reason = "empty sequence";
  else if (x.cols() != d) reason = "x width != d_model";
  else if (y_rows != n || y_cols != d) reason = "y shape";
  else if (mask.wrong_length) reason = "key_mask length";
  else if (alias && x.size() > 0) reason = "y overlaps x";
  else if (!all_finite(x)) reason = "non-finite x";
  else if (mech_dim_mismatch) reason = "head width != the mechanism's";

  row_matrix<T> y;
  const std::span<const std::uint8_t> km(mask.bytes);
  const char* who = use_stack ? "transformer_stack::forward" : "transformer_block::forward";
  const outcome o = guarded(who, block_names, [&] {
    if (convenience) {
      y = use_stack ? stack->forward(x_store, km) : block->forward(x_store, km);
    } else if (use_stack) {
      typename stack_type::workspace_type ws;
      stack->forward(x_store, alias ? matrix_ref<T>(x_store) : matrix_ref<T>(y_store.block(y_r0, y_c0, y_rows, y_cols)), km, ws);
    } else {
      typename block_type::workspace_type ws;
      block->forward(x_store, alias ? matrix_ref<T>(x_store) : matrix_ref<T>(y_store.block(y_r0, y_c0, y_rows, y_cols)), km, ws);
    }
  });
  if (!o.ok) {
    // With default (Xavier) parameters and moderate input nothing can overflow.
    if (reason.empty() && default_parameters && moderate(x) && cfg.layer_norm_eps >= 1e-12) {
      bug(cat(who, ": rejected moderate input with default parameters: ", o.message));
    }
    return;
  }
  if (!reason.empty()) {
    bug(cat(who, ": accepted invalid input (", reason, ")"));
  }
  if (!reason.empty()) return;
  if (!convenience) {
    y = alias ? x_store : row_matrix<T>(y_store.block(y_r0, y_c0, y_rows, y_cols));
    for (index i = 0; i < y_store.rows(); ++i) {
      for (index j = 0; j < y_store.cols(); ++j) {
        const bool inside = i >= y_r0 && i < y_r0 + y_rows && j >= y_c0 && j < y_c0 + y_cols;
        if (!inside && y_store(i, j) != call_buffers<T>::guard) bug(cat(who, ": wrote outside y"));
      }
    }
  }
  if (y.rows() != n || y.cols() != d) bug(cat(who, ": result has the wrong shape"));
  if (!all_finite(y)) {
    bug(cat(who, ": accepted call returned a non-finite result"));
  }
}

template <class T>
void block_entry(byte_reader& r, const header& h) {
  const std::uint8_t f = h.p[2];
  const index heads = h.p[0] % 9;
  performer::block_config cfg;
  cfg.heads = heads;
  cfg.d_model = (f & 1U) != 0 ? heads * (h.p[1] % 11) : h.p[1] % 41;
  cfg.d_ff = (h.p[3] & 0x80U) != 0 ? static_cast<index>(h.p[3] & 0x7fU) - 8 : h.p[3] % 64;
  cfg.causal = h.causal();
  cfg.norm = (f & 2U) != 0 ? performer::norm_placement::post : performer::norm_placement::pre;
  cfg.ffn_activation = (f & 4U) != 0 ? performer::activation::relu : performer::activation::gelu;
  static constexpr double eps_table[8] = {1e-5, 1e-6, 1e-12, 1.0, 0.0, -1e-5,
                                          std::numeric_limits<double>::quiet_NaN(),
                                          std::numeric_limits<double>::infinity()};
  cfg.layer_norm_eps = eps_table[h.p[4] % 8];
  const bool cfg_invalid = cfg.d_model <= 0 || cfg.heads <= 0 || cfg.d_model % cfg.heads != 0 ||
                           cfg.d_ff < 0 || !(std::isfinite(cfg.layer_norm_eps) && cfg.layer_norm_eps > 0);
  const index dh = heads > 0 ? cfg.d_model / heads : 0;
  const bool dim_mode = h.shape_mode() == mode::head_dim;
  const index mech_dim = dh + (dim_mode ? 1 : 0);
  switch (h.p[5] % 4U) {
    case 0:
      run_block<T>(r, h, cfg, cfg_invalid, performer::softmax_attention<T>{}, false);
      break;
    case 1:
      run_block<T>(r, h, cfg, cfg_invalid,
                   performer::tiled_softmax_attention<T>(1 + h.p[6] % 16, 1 + h.p[7] % 16), false);
      break;
    case 2: {
      const index m = h.m;
      std::optional<performer::favor_attention<T>> mech;
      const outcome made = guarded("favor_attention()", favor_names, [&] { mech.emplace(mech_dim, m, h.p[6]); });
      expect_acceptance("favor_attention()", made, mech_dim <= 0 || m <= 0);
      if (made.ok) run_block<T>(r, h, cfg, cfg_invalid, *mech, dim_mode);
      break;
    }
    default: {
#if PERFORMER_FUZZ_LSH
      performer::lsh_options o;
      o.buckets = 2 * (1 + h.p[8] % 8);
      o.hashes = 1 + h.p[6] % 3;
      o.chunk = 1 + h.p[7] % 16;
      o.shared_qk = (f & 0x80U) != 0;
      auto mech = make_lsh<T>(mech_dim, o);
      if (mech) run_block<T>(r, h, cfg, cfg_invalid, *mech, dim_mode);
#endif
      break;
    }
  }
}

// ---- Dispatch ---------------------------------------------------------------------------------

template <class T>
void run(byte_reader& r, const header& h) {
  switch (h.entry) {
    case e_softmax: softmax_entry<T>(r, h); break;
    case e_tiled: tiled_entry<T>(r, h); break;
    case e_favor_positive: favor_entry<T>(r, h, map_kind::positive, false); break;
    case e_favor_hyperbolic: favor_entry<T>(r, h, map_kind::hyperbolic, false); break;
    case e_favor_trigonometric: favor_entry<T>(r, h, map_kind::trigonometric, false); break;
    case e_favor_relu: favor_entry<T>(r, h, map_kind::relu, false); break;
    case e_favor_elu: favor_entry<T>(r, h, map_kind::elu, false); break;
    case e_favor_plus_plus: favor_entry<T>(r, h, map_kind::favor_plus_plus, false); break;
    case e_decoder:
      favor_entry<T>(r, h, static_cast<map_kind>(h.p[1] % 6U), true);
      break;
    case e_attend: attend_entry<T>(r, h); break;
    case e_block: block_entry<T>(r, h); break;
    case e_lsh:
#if PERFORMER_FUZZ_LSH
      lsh_entry<T>(r, h);
#endif
      break;
    default: break;
  }
}

}  // namespace fuzz

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  fuzz::byte_reader r(data, size);
  const fuzz::header h = fuzz::read_header(r);
  if (h.is_double()) {
    fuzz::run<double>(r, h);
  } else {
    fuzz::run<float>(r, h);
  }
  return 0;
}
