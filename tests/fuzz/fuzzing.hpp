/// @file tests/fuzz/fuzzing.hpp
/// @brief What performer's fuzz targets share: reporting, and the decoder that turns bytes into
/// a header, shapes, masks, values and memory layouts (the model is fmt's test/fuzzing/).
///
/// Input layout, the same for every target (tests/fuzz/make_corpus.py writes it): 24 header
/// bytes
///   [0] entry (what the target calls; each target documents its meaning)  [1] flags
///   [2] N_q  [3] N_k  [4] d  [5] d_v  [6] m (sizes: see size_of)  [7] shape mode
///   [8..19] twelve entry parameters p[0..11]  [20..23] value scales of q/x, k, v, and weights
/// then the mask bytes, then one byte per matrix entry (decode); once the input runs out,
/// structural bytes read 0 and matrix entries come from a smooth pseudo-random filler seeded by
/// the input. Flags: bit 0 double, 1 causal, 2..4 mask mode (read_mask), 5 workspace history,
/// 6 strided views.
#pragma once

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
#include <utility>
#include <vector>

#include <performer/performer.hpp>
#include <performer/testing/helpers.hpp>

namespace fuzz {

using performer::attention_mask;
using performer::const_matrix_ref;
using performer::index_t;
using performer::matrix_ref;
using performer::row_matrix;
/// The function names a rejection's message may carry.
using names_t = std::span<const std::string_view>;

// ---- Reporting --------------------------------------------------------------------------------

template <class... Parts>
std::string cat(const Parts&... parts) {
  std::ostringstream os;
  os.precision(17);
  (os << ... << parts);
  return os.str();
}

[[noreturn]] inline void bug(const std::string& what) {
  std::fprintf(stderr, "\n==performer-fuzz== CONTRACT VIOLATION: %s\n", what.c_str());
  std::fflush(stderr);
  __builtin_trap();
}

/// PERFORMER_FUZZ_TRACE=1 in the environment prints every guarded call's outcome.
inline bool tracing() {
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
outcome guarded(std::string_view who, names_t names, F&& f) {
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

template <class F>
outcome guarded(std::string_view who, std::initializer_list<std::string_view> names, F&& f) {
  return guarded(who, names_t(names.begin(), names.size()), std::forward<F>(f));
}

/// A constructor or setter: rejects exactly when `invalid` says it should.
inline void expect_acceptance(std::string_view who, const outcome& o, bool invalid) {
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

inline double scale_of(std::uint8_t b) {
  static constexpr double table[16] = {1,    1,   1,   1,    1e-30, 1e30, 1e-20, 1e20,
                                       1e-8, 1e8, 100, 0.01, 1e-38, 1e38, 1e-42, 1e-300};
  return table[b % 16U];
}

/// Bytes 0..223: (b - 112) / 16 * scale, a smooth range in [-7, 7) * scale. 224..255: specials
/// (NaN, +-inf, denormals, +-0, +-1e30, max, lowest, 88.8 and 709.8 where exp overflows, ...).
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
row_matrix<T> read_matrix(byte_reader& r, index_t rows, index_t cols, double scale) {
  row_matrix<T> m(rows, cols);
  for (index_t i = 0; i < rows; ++i) {
    for (index_t j = 0; j < cols; ++j) m(i, j) = decode<T>(r.value(), scale);
  }
  return m;
}

/// Shape modes: valid, or one deliberate defect (or layout) per call.
enum class mode { valid, k_width, v_rows, out_rows, out_cols, alias_q, alias_v, head_dim };

struct header {
  std::uint8_t entry = 0;
  std::uint8_t flags = 0;
  index_t n_q = 0, n_k = 0, d = 0, d_v = 0, m = 0;
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
inline index_t size_of(std::uint8_t b) { return b < 192 ? b % 17 : b % 41; }

inline header read_header(byte_reader& r) {
  header h;
  h.entry = r.structural();
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
inline index_t small(std::uint8_t b, index_t range, index_t offset) {
  return (b & 0x80U) != 0 ? static_cast<index_t>(b & 0x7fU) - offset : 1 + static_cast<index_t>(b) % range;
}

struct mask_data {
  std::vector<std::uint8_t> bytes;
  bool wrong_length = false;
  [[nodiscard]] bool keeps(index_t j) const {
    return bytes.empty() || bytes[static_cast<std::size_t>(j)] != 0;
  }
};

/// Modes: none, all kept, random bits, all padded, one too many, one too few, alternating
/// (key 0 padded), raw bytes.
inline mask_data read_mask(byte_reader& r, int mask_mode, index_t n) {
  mask_data m;
  const auto bits = [&](index_t len) {
    m.bytes.resize(static_cast<std::size_t>(len));
    std::uint8_t byte = 0;
    for (index_t j = 0; j < len; ++j) {
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
      for (index_t j = 0; j < n; ++j) m.bytes.push_back(static_cast<std::uint8_t>(j % 2));
      break;
    default:
      for (index_t j = 0; j < n; ++j) m.bytes.push_back(r.structural());
      break;
  }
  m.wrong_length = !m.bytes.empty() && m.bytes.size() != static_cast<std::size_t>(n);
  return m;
}

// ---- Matrix helpers (independent of the library's own checks) ---------------------------------

template <class M>
bool all_finite(const M& m) {
  for (index_t i = 0; i < m.rows(); ++i) {
    for (index_t j = 0; j < m.cols(); ++j) {
      if (!std::isfinite(m(i, j))) return false;
    }
  }
  return true;
}

template <class M>
double max_abs(const M& m) {
  double a = 0;
  for (index_t i = 0; i < m.rows(); ++i) {
    for (index_t j = 0; j < m.cols(); ++j) a = std::max(a, std::abs(static_cast<double>(m(i, j))));
  }
  return a;
}

template <class M>
double max_row_norm(const M& m) {
  double a = 0;
  for (index_t i = 0; i < m.rows(); ++i) {
    double s = 0;
    for (index_t j = 0; j < m.cols(); ++j) s += static_cast<double>(m(i, j)) * static_cast<double>(m(i, j));
    a = std::max(a, std::sqrt(s));
  }
  return a;
}

using performer::conformance::same_bits;

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
  [[nodiscard]] bool visible(index_t i, index_t j) const {
    return mask.keeps(j) && (!h.causal() || j <= i);
  }
  [[nodiscard]] bool sees_a_key(index_t i) const {
    for (index_t j = 0; j < k.rows(); ++j) {
      if (visible(i, j)) return true;
    }
    return false;
  }
};

/// The mask, then q (N_q x d), k (N_k x d, one column more in k_width mode) and v (N_k x d_v,
/// one row more in v_rows mode).
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
  index_t out_r0 = 0, out_c0 = 0;
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
    const index_t n_q = c.q.rows();
    const index_t d_v = c.v.cols();
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
      const index_t rows = n_q + (md == mode::out_rows ? 1 : 0);
      const index_t cols = d_v + (md == mode::out_cols ? 1 : 0);
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
    for (index_t i = 0; i < out_store.rows(); ++i) {
      for (index_t j = 0; j < out_store.cols(); ++j) {
        const bool inside = i >= out_r0 && i < out_r0 + out->rows() && j >= out_c0 &&
                            j < out_c0 + out->cols();
        if (!inside && !same_bits(out_store.block(i, j, 1, 1),
                                      row_matrix<T>::Constant(1, 1, guard))) {
          bug(cat(who, ": wrote outside the output view at (", i - out_r0, ", ", j - out_c0, ")"));
        }
      }
    }
  }
};

}  // namespace fuzz

/// Defines LLVMFuzzerTestOneInput for a target whose entry is `fuzz::run<T>(reader, header)`.
#define PERFORMER_FUZZ_TARGET(run)                                                    \
  extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) { \
    fuzz::byte_reader r(data, size);                                                  \
    const fuzz::header h = fuzz::read_header(r);                                      \
    if (h.is_double()) {                                                              \
      run<double>(r, h);                                                              \
    } else {                                                                          \
      run<float>(r, h);                                                               \
    }                                                                                 \
    return 0;                                                                         \
  }
