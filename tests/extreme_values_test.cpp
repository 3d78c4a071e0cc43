// Extreme values (issue 7): query/key row norms 1, 10 and 100, whole inputs scaled by 1e-30 and
// 1e30, and subnormal inputs (1e-40 in float), for every attention mechanism and the Transformer
// block and stack, in float and double.
//
// The contract checked everywhere:
// - a call either returns finite outputs or throws performer::invalid_argument whose message
//   mentions the overflow (README "Errors": "finite inputs whose logits overflow the scalar type");
// - it may throw only when the problem is not representable in the scalar type (defined per
//   mechanism below); where it is, it must return;
// - a finite output must be right: never the "no visible key" zero row for a query that sees
//   keys (values are drawn in [1, 3) times a scale, so a zero row is outside the values' hull
//   and never a correct answer), inside the hull of the visible values for every mechanism whose
//   weights are non-negative, and equal to a double or long double reference within a bound
//   derived from the rounding analysis wherever the result is well-conditioned.
//
// Notation: u is the unit roundoff of the scalar type (2^-24 ~ 6e-8 for float, 2^-53 ~ 1.1e-16
// for double), "tiny" its smallest subnormal (2^-149 ~ 1.4e-45 for float): a rounding in the
// subnormal range adds at most tiny/2 in absolute terms, whatever the operands.
//
// Every problem is built in double and rounded once to the scalar type under test; the double
// run and the long double references then use those rounded numbers, so float and double solve
// exactly the same problem and only their arithmetic differs.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <optional>
#include <span>
#include <sstream>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <performer/attention/favor_attention.hpp>
#include <performer/attention/favor_decoder.hpp>
#include <performer/attention/lsh_attention.hpp>
#include <performer/features/elu_features.hpp>
#include <performer/features/favor_plus_plus_features.hpp>
#include <performer/features/hyperbolic_features.hpp>
#include <performer/features/positive_features.hpp>
#include <performer/features/relu_features.hpp>
#include <performer/features/trigonometric_features.hpp>
#include <performer/performer.hpp>
#include <performer/testing/helpers.hpp>

namespace {

using performer::attention_mask;
using performer::index;
using performer::row_matrix;
using performer::conformance::random_matrix;
using performer::conformance::run;

using ld = long double;
using ld_matrix = Eigen::Matrix<ld, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using ld_vector = Eigen::Matrix<ld, Eigen::Dynamic, 1>;

constexpr double inf = std::numeric_limits<double>::infinity();
constexpr ld ld_inf = std::numeric_limits<ld>::infinity();

template <class T>
constexpr double unit_roundoff() {
  return static_cast<double>(std::numeric_limits<T>::epsilon()) / 2;
}
template <class T>
constexpr double tiny() {
  return static_cast<double>(std::numeric_limits<T>::denorm_min());
}
template <class T>
constexpr const char* type_name() {
  return std::is_same_v<T, float> ? "float" : "double";
}

// Sizes: small enough that the whole file runs in well under a second, since the references
// cost N^2 (d + M) long double operations per problem.
constexpr index n_tokens = 32;
constexpr index head_dim = 16;
constexpr index value_dim = 4;

// ---- Inputs ------------------------------------------------------------------------------------

/// q and k are uniform in [-1, 1)^d, optionally with every row rescaled to `row_norm`; v is
/// uniform in [1, 3); then each is multiplied by its scale.
struct input_case {
  const char* name;
  double row_norm;  // 0: keep the uniform rows
  double q_scale, k_scale, v_scale;
};

// Row norms 1, 10, 100 with d = 16 give logits q.k / sqrt(d) up to 0.25, 25 and 2500. Scaled
// cases: 1e-30 makes q.k ~1e-60, which underflows float to 0 (and is ~0 in double): uniform
// attention. 1e30 makes q.k ~1e60: beyond float (max ~3.4e38), representable in double.
// "q x 1e30" alone keeps q.k ~1e30 (representable in float, logits ~1e29: one-hot), and
// "q x 1e-30, k x 1e30" keeps q.k of order 1 with both operands extreme. 1e-40 is subnormal in
// float (smallest normal ~1.2e-38).
const std::vector<input_case>& input_cases() {
  static const std::vector<input_case> cases = {
      {"row norms 1", 1, 1, 1, 1},
      {"row norms 10", 10, 1, 1, 1},
      {"row norms 100", 100, 1, 1, 1},
      {"q, k x 1e-30", 0, 1e-30, 1e-30, 1},
      {"q, k x 1e30", 0, 1e30, 1e30, 1},
      {"q x 1e30", 0, 1e30, 1, 1},
      {"q x 1e-30, k x 1e30", 0, 1e-30, 1e30, 1},
      {"v x 1e30", 0, 1, 1, 1e30},
      {"v x 1e-30", 0, 1, 1, 1e-30},
      {"q, k, v x 1e30", 0, 1e30, 1e30, 1e30},
      {"q, k, v x 1e-30", 0, 1e-30, 1e-30, 1e-30},
      {"q, k subnormal (1e-40)", 0, 1e-40, 1e-40, 1},
      {"v subnormal (1e-40)", 0, 1, 1, 1e-40},
      {"row norms 100, v x 1e30", 100, 1, 1, 1e30},
  };
  return cases;
}

/// One problem, already rounded to the scalar type it is built for (stored in double).
struct problem {
  row_matrix<double> q, k, v;
};

template <class T>
problem make_problem(const input_case& c, std::uint64_t seed, index n = n_tokens, index d = head_dim,
                     index dv = value_dim) {
  row_matrix<double> q = random_matrix<double>(n, d, seed);
  row_matrix<double> k = random_matrix<double>(n, d, seed + 1);
  row_matrix<double> v = (random_matrix<double>(n, dv, seed + 2).array() + 2.0).matrix();
  if (c.row_norm > 0) {
    for (index i = 0; i < n; ++i) {
      q.row(i) *= c.row_norm / q.row(i).norm();
      k.row(i) *= c.row_norm / k.row(i).norm();
    }
  }
  q *= c.q_scale;
  k *= c.k_scale;
  v *= c.v_scale;
  return {q.cast<T>().template cast<double>(), k.cast<T>().template cast<double>(),
          v.cast<T>().template cast<double>()};
}

// ---- Outcomes and the shared contract -----------------------------------------------------------

/// Either the output or the message of the invalid_argument thrown. Any other exception escapes
/// and fails the test.
template <class T>
struct outcome {
  std::optional<row_matrix<T>> out;
  std::string error;
};

template <class F>
auto attempt(F&& f) -> outcome<typename decltype(f())::Scalar> {
  try {
    return {f(), {}};
  } catch (const performer::invalid_argument& e) {
    return {std::nullopt, e.what()};
  }
}

/// The documented refusal: the message must say that something overflowed. (An underflowing
/// normaliser is the same failure, the exponent range of T exceeded, so "underflow" is accepted
/// too.)
bool mentions_overflow(const std::string& message) {
  return message.find("overflow") != std::string::npos ||
         message.find("underflow") != std::string::npos;
}

/// Collects violations of one labelled run and reports the first few in one failure.
class violations {
 public:
  explicit violations(std::string label) : label_(std::move(label)) {}
  template <class... Parts>
  void add(const Parts&... parts) {
    if (count_ < 4) {
      first_ << "\n    ";
      (first_ << ... << parts);
    }
    ++count_;
  }
  [[nodiscard]] int count() const { return count_; }
  [[nodiscard]] const std::string& label() const { return label_; }
  void report() {
    if (count_ > 0) ADD_FAILURE() << label_ << ": " << count_ << " violation(s)" << first_.str();
    count_ = 0;
    first_.str("");
  }

 private:
  std::string label_;
  int count_ = 0;
  std::ostringstream first_;
};

/// What each output row must satisfy. `tol(i)` is the bound on max_c |out_ic - ref_ic| (inf when
/// the row is not well-conditioned in T); `slack(i)` how far outside the visible values' hull a
/// row may lie (inf: no hull check, e.g. trigonometric features, whose weights can be negative).
struct row_expectations {
  ld_matrix ref;
  Eigen::VectorXd tol, slack;
};

/// PERFORMER_EXTREME_VERBOSE=1 prints, per labelled run, whether it returned or threw, how many
/// rows were compared against the reference and the largest error as a fraction of its bound.
bool verbose() {
  static const bool on = std::getenv("PERFORMER_EXTREME_VERBOSE") != nullptr;
  return on;
}

/// Checks every row of an output against the contract and the expectations. Query i sees keys
/// j <= i when causal, else all keys.
template <class T>
void check_rows(violations& bad, const row_matrix<T>& out_t, const problem& p, bool causal,
                const row_expectations& e) {
  const row_matrix<double> out = out_t.template cast<double>();
  int compared = 0;
  double worst = 0;
  for (index i = 0; i < out.rows(); ++i) {
    if (!out.row(i).allFinite()) {
      bad.add("row ", i, " is not finite: ", out.row(i));
      continue;
    }
    const index visible = causal ? i + 1 : p.k.rows();
    if (out.row(i).isZero(0)) {
      bad.add("row ", i, " is the 'no visible key' zero row, but the query sees ", visible,
              " keys (values in [1, 3) x scale)");
      continue;
    }
    if (std::isfinite(e.slack(i))) {
      for (index c = 0; c < out.cols(); ++c) {
        const double lo = p.v.col(c).head(visible).minCoeff();
        const double hi = p.v.col(c).head(visible).maxCoeff();
        if (out(i, c) < lo - e.slack(i) || out(i, c) > hi + e.slack(i)) {
          bad.add("row ", i, " col ", c, " = ", out(i, c), " is outside the visible values' hull [",
                  lo, ", ", hi, "] (slack ", e.slack(i), ")");
          break;
        }
      }
    }
    if (std::isfinite(e.tol(i))) {
      double err = 0;
      for (index c = 0; c < out.cols(); ++c) {
        err = std::max(err, static_cast<double>(std::abs(static_cast<ld>(out(i, c)) - e.ref(i, c))));
      }
      ++compared;
      worst = std::max(worst, err / e.tol(i));
      if (!(err <= e.tol(i))) {
        bad.add("row ", i, ": |out - ref| = ", err, " > tolerance ", e.tol(i), " (out ",
                out(i, 0), ", ref ", static_cast<double>(e.ref(i, 0)), ")");
      }
    }
  }
  if (verbose()) {
    std::printf("  %-70s returned; %2d/%2d rows compared, worst error/bound %.3g\n",
                bad.label().c_str(), compared, static_cast<int>(out.rows()), worst);
  }
}

/// The shared contract of one call: a refusal must be allowed (`may_refuse`) and name the
/// overflow; a result must satisfy check_rows.
template <class T>
void check_outcome(violations& bad, const outcome<T>& o, const problem& p, bool causal,
                   bool may_refuse, const row_expectations& e) {
  if (!o.out) {
    if (verbose()) std::printf("  %-70s threw: %.60s\n", bad.label().c_str(), o.error.c_str());
    if (!may_refuse) bad.add("threw on an input whose result is representable: ", o.error);
    if (!mentions_overflow(o.error)) bad.add("threw without naming the overflow: ", o.error);
    return;
  }
  check_rows(bad, *o.out, p, causal, e);
}

// ---- Softmax-type reference (exact attention, LSH) ----------------------------------------------

/// Softmax attention in long double over explicit logits. `magnitude(i, j)` bounds the size of
/// the terms that make up logit (i, j), so that (d + 16) u magnitude bounds its rounding in T
/// (a dot product of length d has error <= d u sum |q_c k_c| in any summation order; the scaling,
/// LSH's key normalisation and its self-penalty subtraction add a few u more).
struct softmax_reference {
  ld_matrix logits, magnitude, out;
  bool causal = false;
  ld max_abs_dot = 0;  // max_ij sum_c |q_ic k_jc|, unscaled: does q.k fit in T?
  bool self_penalty = false;  // LSH shared-QK: logit (i, i) carries the 1e5 penalty

  [[nodiscard]] index visible(index i) const { return causal ? i + 1 : logits.cols(); }
};

constexpr ld lsh_self_penalty = 1e5L;  // lsh_attention's documented finite self-mask

/// exp and expm1 without libm's slow error path for results beyond long double's range (the
/// references take exponentials of differences of logits of 1e60).
ld exp_of(ld x) { return x < -12000 ? 0.0L : x > 12000 ? ld_inf : std::exp(x); }
ld expm1_of(ld x) { return x > 12000 ? ld_inf : std::expm1(x); }

/// keys: k itself, or (shared_qk) q_j / |q_j| with logit (i, i) l replaced by -|l| - 1e5.
softmax_reference make_softmax_reference(const problem& p, bool causal, bool shared_qk) {
  const index n_q = p.q.rows();
  const ld_matrix q = p.q.cast<ld>();
  ld_matrix k = shared_qk ? q : ld_matrix(p.k.cast<ld>());
  if (shared_qk) {
    for (index j = 0; j < k.rows(); ++j) {
      const ld norm = std::sqrt(k.row(j).squaredNorm());
      if (norm > 0) k.row(j) /= norm;
    }
  }
  const index n_k = k.rows();
  const ld scale = 1.0L / std::sqrt(static_cast<ld>(q.cols()));
  softmax_reference r;
  r.causal = causal;
  r.self_penalty = shared_qk;
  r.logits = ld_matrix::Constant(n_q, n_k, -ld_inf);
  r.magnitude = ld_matrix::Zero(n_q, n_k);
  r.out = ld_matrix::Zero(n_q, p.v.cols());
  const ld_matrix v = p.v.cast<ld>();
  for (index i = 0; i < n_q; ++i) {
    const index vis = r.visible(i);
    for (index j = 0; j < vis; ++j) {
      ld dot = 0;
      ld abs_dot = 0;
      for (index c = 0; c < q.cols(); ++c) {
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
    const ld top = r.logits.row(i).head(vis).maxCoeff();
    ld total = 0;
    for (index j = 0; j < vis; ++j) {
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
ld logit_error(const softmax_reference& r, index i, index j, ld top) {
  const ld u = unit_roundoff<T>();
  const ld d = static_cast<ld>(head_dim);
  return (d + 16) * u * r.magnitude(i, j) + 2 * u * (top - r.logits(i, j)) + 8 * u + (d + 2) * tiny<T>();
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
double softmax_tolerance(const softmax_reference& r, const problem& p, index i) {
  const index vis = r.visible(i);
  const auto s = r.logits.row(i).head(vis);
  index top_j = 0;
  const ld top = s.maxCoeff(&top_j);
  const ld_matrix v = p.v.topRows(vis).cast<ld>();
  // Weights, and exp(D_j), each computed once (two long double exps per key).
  std::vector<ld> w(static_cast<std::size_t>(vis));
  std::vector<ld> grow(static_cast<std::size_t>(vis));
  ld sum_w = 0;
  for (index j = 0; j < vis; ++j) {
    w[static_cast<std::size_t>(j)] = exp_of(s(j) - top);
    sum_w += w[static_cast<std::size_t>(j)];
    grow[static_cast<std::size_t>(j)] = exp_of(logit_error<T>(r, i, j, top));
  }
  ld lse_shift = 0;  // sum_j w_j exp(D_j) (keys of weight 0 add nothing, even if D_j is huge)
  for (index j = 0; j < vis; ++j) {
    w[static_cast<std::size_t>(j)] /= sum_w;
    if (w[static_cast<std::size_t>(j)] > 0) lse_shift += w[static_cast<std::size_t>(j)] * grow[static_cast<std::size_t>(j)];
  }
  ld bound1 = 0;
  ld mass_t = 0;
  ld mass_exact = 0;
  ld spread_top = 0;
  for (index j = 0; j < vis; ++j) {
    const auto at = static_cast<std::size_t>(j);
    // expm1(D_j + L) = exp(D_j) sum_k w_k exp(D_k) - 1
    if (w[at] > 0) bound1 += w[at] * (grow[at] * lse_shift - 1) * (v.row(j) - r.out.row(i)).cwiseAbs().maxCoeff();
    if (j != top_j) {
      // exp(s_j - s_top + D_j + D_top), from the factors when they are finite (logits of 1e60
      // carry errors D of 1e45, whose exp overflows, next to gaps of 1e59).
      const ld d_pair = grow[at] * grow[static_cast<std::size_t>(top_j)];
      mass_t += w[at] > 0 && std::isfinite(d_pair)
                    ? w[at] * sum_w * d_pair
                    : exp_of(s(j) - top + logit_error<T>(r, i, j, top) + logit_error<T>(r, i, top_j, top));
      mass_exact += w[at];
    }
    spread_top = std::max(spread_top, (v.row(j) - v.row(top_j)).cwiseAbs().maxCoeff());
  }
  if (!(bound1 < ld_inf)) bound1 = ld_inf;  // also NaN
  ld bound2 = (mass_t + mass_exact) * spread_top;
  if (!(bound2 < ld_inf)) bound2 = ld_inf;
  const double n = static_cast<double>(vis);
  const double vmax = p.v.topRows(vis).cwiseAbs().maxCoeff();
  return static_cast<double>(std::min(bound1, bound2)) + (4 * n + 32) * unit_roundoff<T>() * vmax +
         (4 * n + 32) * tiny<T>();
}

/// Expectations for softmax-type attention in T: the reference, the bound above, and a hull
/// slack of the weighted sum's own rounding (the weights are non-negative and sum to 1).
template <class T>
row_expectations softmax_expectations(const softmax_reference& r, const problem& p) {
  row_expectations e{r.out, Eigen::VectorXd(r.out.rows()), Eigen::VectorXd(r.out.rows())};
  for (index i = 0; i < r.out.rows(); ++i) {
    e.tol(i) = softmax_tolerance<T>(r, p, i);
    const double n = static_cast<double>(r.visible(i));
    e.slack(i) = (4 * n + 32) * unit_roundoff<T>() * p.v.cwiseAbs().maxCoeff() + (4 * n + 32) * tiny<T>();
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

template <class T>
std::string label_of(const char* mechanism, const input_case& c, bool causal) {
  std::ostringstream os;
  os << mechanism << "<" << type_name<T>() << ">, " << c.name << (causal ? ", causal" : ", bidirectional");
  return os.str();
}

// ---- Exact attention ---------------------------------------------------------------------------

/// The reference and expectations of one exact-attention problem, computed once per scalar type
/// and shared by every mechanism that solves it.
template <class T>
struct exact_case_data {
  problem p;
  bool fits;
  row_expectations expect;
};

template <class T>
const exact_case_data<T>& exact_data(std::size_t case_index, bool causal) {
  static std::vector<std::optional<exact_case_data<T>>> cache(2 * input_cases().size());
  auto& slot = cache[2 * case_index + (causal ? 1 : 0)];
  if (!slot) {
    problem p = make_problem<T>(input_cases()[case_index], 11);
    const softmax_reference ref = make_softmax_reference(p, causal, false);
    const bool fits = softmax_fits<T>(ref, p);
    row_expectations e = softmax_expectations<T>(ref, p);
    slot = exact_case_data<T>{std::move(p), fits, std::move(e)};
  }
  return *slot;
}

template <class T, class A>
void check_exact(const A& mechanism, const char* name) {
  for (std::size_t c = 0; c < input_cases().size(); ++c) {
    for (const bool causal : {false, true}) {
      const exact_case_data<T>& data = exact_data<T>(c, causal);
      const row_matrix<T> q = data.p.q.template cast<T>();
      const row_matrix<T> k = data.p.k.template cast<T>();
      const row_matrix<T> v = data.p.v.template cast<T>();
      violations bad(label_of<T>(name, input_cases()[c], causal));
      const auto o = attempt([&] { return run(mechanism, q, k, v, attention_mask{causal, {}}); });
      // May refuse only when q.k or the value sums do not fit in T.
      check_outcome(bad, o, data.p, causal, !data.fits, data.expect);
      bad.report();
    }
  }
}

TEST(ExtremeValuesExact, SoftmaxMatchesLongDoubleReferenceOrRefusesOverflow) {
  check_exact<float>(performer::softmax_attention<float>{}, "softmax_attention");
  check_exact<double>(performer::softmax_attention<double>{}, "softmax_attention");
}

TEST(ExtremeValuesExact, TiledMatchesLongDoubleReferenceOrRefusesOverflow) {
  // Small tiles: several key tiles per row, so the running maximum rises and rescales.
  check_exact<float>(performer::tiled_softmax_attention<float>(7, 11), "tiled_softmax_attention(7, 11)");
  check_exact<double>(performer::tiled_softmax_attention<double>(7, 11), "tiled_softmax_attention(7, 11)");
  check_exact<float>(performer::tiled_softmax_attention<float>{}, "tiled_softmax_attention");
  check_exact<double>(performer::tiled_softmax_attention<double>{}, "tiled_softmax_attention");
}

// ---- FAVOR ---------------------------------------------------------------------------------------
//
// FAVOR is compared float against double with the same projection matrix (the double mechanism
// is given the float one's matrix, cast), not against exact softmax: its approximation error is
// not the point here, its arithmetic is. The output is out_i = num_i / den_i with
// num_i = sum_j c_ij v_j, den_i = sum_j c_ij, c_ij = exp(ls_j - shift_i) phi(q_i).phi(k_j), ls_j
// the key's log scale and shift_i the largest ls_j query i sees. The reference evaluates this in
// long double from the double mechanism's own features. A run in X differs from it by
//   (a) its features: measured exactly, by evaluating X's map on the same rows in the same row
//       blocks as the mechanism does (hence the same products, bit for bit), giving c~_ij. The
//       same perturbation enters num and den, so it moves out_i by at most
//       sum_j |c~_ij - c_ij| |v_j - out_i| / den_i;
//   (b) its arithmetic, independently in num and den: each term passes through at most
//       N + 2M + 48 roundings (the key sum, the feature sum, the causal chunk products, the
//       weighting), 2 u per exponential of the stabiliser (its weight, one per rescale of the
//       carried state: key blocks, causal chunks, every token in the decoder), u (shift_i - ls_j)
//       for the rounding of the exponents' arguments (the rises of the running maximum add up to
//       at most that): R_ij = (those) u |c|_ij, with |c|_ij the same sum over |products|;
//   (c) roundings in the subnormal range, at most tiny / 2 each, absolute: A_i = tiny ((N + 40)
//       sum_f |phi_f(q_i)| + M + 8) in num and in den (the key sums' roundings are multiplied by
//       the query's features, the feature sum adds M).
// So |out~_i - out_i| <= (sum_j |c~ - c| |v_j - out_i| + sum_j R_ij (|v_j| + |out_i|)
// + A_i (1 + |out_i|)) / (|den_i| - sum_j (|c~ - c| + R_ij) - A_i), plus the final division.
// A row is well-conditioned in X when every term is finite, the subtracted perturbation is at
// most |den_i| / 2 (X knows its normaliser to within a factor 2), and no partial sum can overflow
// X (the key sums sum_j |phi(k_j)| |v_j|, num and den). Where a row is not well-conditioned
// (features or normalisers outside X's range) only the contract applies: refuse with the
// overflow message, or return a finite row (inside the hull for the non-negative maps).

/// Features of q and k as the mechanism computes them: the map (calibrated to (q, k) when the
/// bidirectional path would), applied to the same row blocks; and the dot products in long double.
struct favor_features {
  ld_matrix phi_q, phi_k;
  ld_vector log_k;
  ld_matrix dot, abs_dot;  // phi(q_i).phi(k_j) and sum_f |phi_f(q_i) phi_f(k_j)|
  ld_vector q_mass;        // sum_f |phi_f(q_i)|
  ld k_mass = 0;           // sum_j max_f |phi_f(k_j)|: bounds the key sums' entries over |v|
};

template <class A>
favor_features features_of(const A& favor, const row_matrix<typename A::scalar_type>& q,
                           const row_matrix<typename A::scalar_type>& k, bool calibrate,
                           index block) {
  using T = typename A::scalar_type;
  using map_type = typename A::feature_map_type;
  map_type map = favor.feature_map();
  if constexpr (requires { map.calibrated_for(q, k, std::span<const std::uint8_t>{}); }) {
    if (calibrate) map = favor.feature_map().calibrated_for(q, k, {});
  } else {
    static_cast<void>(calibrate);
  }
  const auto& w = favor.projection().matrix();
  const index m = favor.feature_count();
  const auto apply = [&](const row_matrix<T>& x, ld_matrix& phi, ld_vector& log_scale) {
    phi.resize(x.rows(), m);
    log_scale.resize(x.rows());
    row_matrix<T> phi_t(block, m);
    performer::vector<T> log_t(block);
    for (index r0 = 0; r0 < x.rows(); r0 += block) {
      const index rows = std::min(block, x.rows() - r0);
      if (block == 1) {  // the decoder maps one token at a time, through a 1 x d map
        map.apply(w, Eigen::Map<const row_matrix<T>>(x.row(r0).data(), 1, x.cols()),
                  phi_t.topRows(1), log_t.head(1));
      } else {
        map.apply(w, x.middleRows(r0, rows), phi_t.topRows(rows), log_t.head(rows));
      }
      phi.middleRows(r0, rows) = phi_t.topRows(rows).template cast<ld>();
      log_scale.segment(r0, rows) = log_t.head(rows).template cast<ld>();
    }
  };
  favor_features f;
  ld_vector unused;
  apply(q, f.phi_q, unused);
  apply(k, f.phi_k, f.log_k);
  const bool signed_features = (f.phi_q.array() < 0).any() || (f.phi_k.array() < 0).any();
  if constexpr (std::is_same_v<T, float>) {
    // Float features multiply exactly in double, whose sums add a relative M 1e-16: nothing next
    // to float's bounds, and a double product is many times faster than a long double one.
    const row_matrix<double> pq = f.phi_q.template cast<double>();
    const row_matrix<double> pk = f.phi_k.template cast<double>();
    f.dot = (pq * pk.transpose()).template cast<ld>();
    f.abs_dot = signed_features ? ld_matrix((pq.cwiseAbs() * pk.cwiseAbs().transpose()).template cast<ld>()) : f.dot;
  } else {
    f.dot = f.phi_q * f.phi_k.transpose();
    f.abs_dot = signed_features ? ld_matrix(f.phi_q.cwiseAbs() * f.phi_k.cwiseAbs().transpose()) : f.dot;
  }
  f.q_mass = f.phi_q.cwiseAbs().rowwise().sum();
  f.k_mass = f.phi_k.cwiseAbs().rowwise().maxCoeff().sum();
  return f;
}

/// c_ij and the quantities its rounding depends on, for the pairs query i sees.
struct favor_terms {
  ld_matrix c;      // exp(ls_j - shift_i) phi(q_i).phi(k_j)
  ld_matrix c_abs;  // exp(ls_j - shift_i) sum_f |phi_f(q_i) phi_f(k_j)|
  ld_matrix rise;   // shift_i - ls_j (0 for a key whose weight is 0)
  ld_vector q_mass;
  ld k_mass = 0;
};

favor_terms terms_of(const favor_features& f, bool causal) {
  const index n_q = f.phi_q.rows();
  const index n_k = f.phi_k.rows();
  favor_terms t{ld_matrix::Zero(n_q, n_k), ld_matrix::Zero(n_q, n_k), ld_matrix::Zero(n_q, n_k),
                f.q_mass, f.k_mass};
  const ld nan = std::numeric_limits<ld>::quiet_NaN();
  for (index i = 0; i < n_q; ++i) {
    const index vis = causal ? i + 1 : n_k;
    ld shift = -ld_inf;
    for (index j = 0; j < vis; ++j) {
      shift = std::isnan(f.log_k(j)) || std::isnan(shift) ? nan : std::max(shift, f.log_k(j));
    }
    for (index j = 0; j < vis; ++j) {
      // A key whose log scale is -inf has weight 0 exactly (as detail::shifted_exp gives).
      const ld weight = f.log_k(j) == -ld_inf ? 0.0L : exp_of(f.log_k(j) - shift);
      const bool zero = weight == 0 && std::isfinite(f.abs_dot(i, j));
      t.c(i, j) = zero ? 0.0L : weight * f.dot(i, j);
      t.c_abs(i, j) = zero ? 0.0L : weight * f.abs_dot(i, j);
      t.rise(i, j) = weight == 0 ? 0.0L : shift - f.log_k(j);
    }
  }
  return t;
}

/// Expectations for FAVOR in X against the reference built from the double terms `td`; `tx` are
/// X's own terms; `width` is M; `exponentials` the stabiliser's exps per term (see above). Sets
/// well[i] when row i is well-conditioned in X.
template <class X>
row_expectations favor_expectations(const favor_terms& tx, const favor_terms& td, const problem& p,
                                    bool causal, index width, double exponentials,
                                    bool non_negative, std::vector<bool>& well) {
  const index n = p.q.rows();
  const ld u = unit_roundoff<X>();
  const ld tiny_x = tiny<X>();
  const ld roundings = static_cast<ld>(n + 2 * width + 48) + 2 * static_cast<ld>(exponentials);
  const ld range = static_cast<ld>(std::numeric_limits<X>::max()) / 8;
  const ld_matrix v = p.v.cast<ld>();
  const ld vmax = p.v.cwiseAbs().maxCoeff();
  row_expectations e{ld_matrix::Constant(n, p.v.cols(), std::numeric_limits<ld>::quiet_NaN()),
                     Eigen::VectorXd::Constant(n, inf), Eigen::VectorXd::Constant(n, inf)};
  well.assign(static_cast<std::size_t>(n), false);
  for (index i = 0; i < n; ++i) {
    const index vis = causal ? i + 1 : p.k.rows();
    const ld den = td.c.row(i).head(vis).sum();
    const ld den_x = tx.c.row(i).head(vis).sum();
    const ld absolute = tiny_x * ((n + 40) * tx.q_mass(i) + width + 8);
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
    for (index j = 0; j < vis; ++j) {
      const ld measured = std::abs(tx.c(i, j) - td.c(i, j));
      const ld rounding = (roundings + tx.rise(i, j)) * u * tx.c_abs(i, j);
      perturbation += measured + rounding;
      error += measured * (v.row(j) - e.ref.row(i)).cwiseAbs().maxCoeff() +
               rounding * (v.row(j).cwiseAbs().maxCoeff() + out_max);
      magnitude += tx.c_abs(i, j) * (1 + v.row(j).cwiseAbs().maxCoeff());
    }
    const bool fits = magnitude < range && tx.k_mass * (1 + vmax) < range;
    if (!fits || !std::isfinite(error) || !(perturbation <= std::abs(den) / 2)) continue;
    well[static_cast<std::size_t>(i)] = true;
    e.tol(i) = static_cast<double>(error / (std::abs(den) - perturbation) + 4 * u * out_max + tiny_x);
  }
  return e;
}

bool all_of(const std::vector<bool>& flags) {
  return std::all_of(flags.begin(), flags.end(), [](bool b) { return b; });
}

/// |a_i - b_i| <= tol_a(i) + tol_b(i) wherever both bounds are finite: float FAVOR against double
/// FAVOR directly (both are bounded against the same reference).
template <class A, class B>
void check_agreement(violations& bad, const A& a, const B& b, const row_expectations& ea,
                     const row_expectations& eb) {
  int compared = 0;
  double worst = 0;
  for (index i = 0; i < a.rows(); ++i) {
    const double tol = ea.tol(i) + eb.tol(i);
    if (!std::isfinite(tol)) continue;
    const double err =
        (a.row(i).template cast<double>() - b.row(i).template cast<double>()).cwiseAbs().maxCoeff();
    ++compared;
    worst = std::max(worst, err / tol);
    if (!(err <= tol)) bad.add("row ", i, ": |float - double| = ", err, " > ", tol);
  }
  if (verbose()) {
    std::printf("  %-70s float vs double: %2d/%2d rows compared, worst error/bound %.3g\n",
                bad.label().c_str(), compared, static_cast<int>(a.rows()), worst);
  }
}

// FAVOR's sizes: the reference costs N^2 M per problem.
constexpr index favor_tokens = 32;
constexpr index favor_features_m = 32;
// One feature block (a second query block would open an OpenMP region per call, which costs
// milliseconds on a loaded machine) and chunks of 8, so that the causal path carries and
// rescales its state across four chunks.
constexpr performer::favor_options favor_layout{.block = favor_tokens, .chunk = 8};

/// Exponentials of the stabiliser a batch term passes through: its weight, one rescale per key
/// block and per causal chunk folded after it, the carried state's factor.
constexpr double batch_exponentials =
    favor_tokens / favor_layout.block + favor_tokens / favor_layout.chunk + 4;
/// The decoder rescales its state whenever a key raises the running maximum: up to every token.
constexpr double decoder_exponentials = favor_tokens + 4;

template <template <class> class Map, class T>
performer::favor_attention<T, Map<T>> make_favor(std::uint64_t seed) {
  return performer::favor_attention<T, Map<T>>(head_dim, favor_features_m, seed, {}, {}, favor_layout);
}

/// The double mechanism with the float one's projection.
template <template <class> class Map>
performer::favor_attention<double, Map<double>> double_twin(const performer::favor_attention<float, Map<float>>& f) {
  auto twin = make_favor<Map, double>(0);
  twin.projection().set_matrix(f.projection().matrix().template cast<double>());
  return twin;
}

template <class Map>
constexpr bool is_adaptive = requires(const Map& map, const row_matrix<float>& x) {
  map.calibrated_for(x, x, std::span<const std::uint8_t>{});
};

template <template <class> class Map>
void check_favor(const char* name, bool non_negative) {
  const auto f32 = make_favor<Map, float>(5);
  const auto f64 = double_twin<Map>(f32);
  const index width = f32.feature_count();
  for (const input_case& c : input_cases()) {
    // Both runs solve the float-rounded problem.
    const problem p = make_problem<float>(c, 21, favor_tokens);
    const row_matrix<float> qf = p.q.cast<float>();
    const row_matrix<float> kf = p.k.cast<float>();
    const row_matrix<float> vf = p.v.cast<float>();
    std::optional<favor_features> ff;
    std::optional<favor_features> fd;
    for (const bool causal : {false, true}) {
      // Only FAVOR++'s bidirectional path fits its map to the call; otherwise compute once.
      if (!ff || is_adaptive<Map<float>>) {
        ff = features_of(f32, qf, kf, !causal, favor_layout.block);
        fd = features_of(f64, p.q, p.k, !causal, favor_layout.block);
      }
      const favor_terms tf = terms_of(*ff, causal);
      const favor_terms td = terms_of(*fd, causal);
      std::vector<bool> well_f;
      std::vector<bool> well_d;
      const row_expectations ef =
          favor_expectations<float>(tf, td, p, causal, width, batch_exponentials, non_negative, well_f);
      const row_expectations ed =
          favor_expectations<double>(td, td, p, causal, width, batch_exponentials, non_negative, well_d);
      const attention_mask mask{causal, {}};
      const auto of = attempt([&] { return run(f32, qf, kf, vf, mask); });
      const auto od = attempt([&] { return run(f64, p.q, p.k, p.v, mask); });
      violations bad_f(label_of<float>(name, c, causal));
      violations bad_d(label_of<double>(name, c, causal));
      // A call may be refused only when some row's result is not representable in its type.
      check_outcome(bad_f, of, p, causal, !all_of(well_f), ef);
      check_outcome(bad_d, od, p, causal, !all_of(well_d), ed);
      if (of.out && od.out) check_agreement(bad_f, *of.out, *od.out, ef, ed);
      bad_f.report();
      bad_d.report();
    }
  }
}

TEST(ExtremeValuesFavor, PositiveFeatures) { check_favor<performer::positive_features>("favor positive", true); }
TEST(ExtremeValuesFavor, HyperbolicFeatures) { check_favor<performer::hyperbolic_features>("favor hyperbolic", true); }
TEST(ExtremeValuesFavor, TrigonometricFeatures) {
  // Signed features: no hull (the normaliser can be small or negative); rows where it is small
  // next to the terms' sizes are ill-conditioned by the definition above.
  check_favor<performer::trigonometric_features>("favor trigonometric", false);
}
TEST(ExtremeValuesFavor, ReluFeatures) { check_favor<performer::relu_features>("favor relu", true); }
TEST(ExtremeValuesFavor, EluFeatures) { check_favor<performer::elu_features>("favor elu", true); }
TEST(ExtremeValuesFavor, FavorPlusPlusFeatures) {
  // Bidirectional: A fitted to each call's q and k (adaptive); causal: the stored A = 0.
  check_favor<performer::favor_plus_plus_features>("favor++", true);
}

// ---- favor_decoder --------------------------------------------------------------------------------

/// The decoder, token by token, against the double batch causal pass: its features are mapped
/// one token at a time (measured the same way, through a 1 x d map), and it may rescale its
/// state at every token.
template <class T, class Map, class Terms>
void check_decoder_run(const char* name, const input_case& c, const problem& p,
                       const performer::favor_attention<T, Map>& mechanism, const Terms& td,
                       bool non_negative) {
  const row_matrix<T> q = p.q.template cast<T>();
  const row_matrix<T> k = p.k.template cast<T>();
  const row_matrix<T> v = p.v.template cast<T>();
  const favor_terms tx = terms_of(features_of(mechanism, q, k, false, 1), true);
  std::vector<bool> well;
  const row_expectations e = favor_expectations<T>(tx, td, p, true, mechanism.feature_count(),
                                                   decoder_exponentials, non_negative, well);
  performer::favor_decoder<T, Map> decoder(mechanism, value_dim);
  row_matrix<T> out(q.rows(), value_dim);
  index produced = 0;
  std::string error;
  for (; produced < q.rows(); ++produced) {
    try {
      decoder.step(q.row(produced), k.row(produced), v.row(produced), out.row(produced));
    } catch (const performer::invalid_argument& ex) {
      error = ex.what();
      break;
    }
  }
  violations bad(label_of<T>(name, c, true));
  if (produced < q.rows()) {
    // A refused step must be one whose result is not representable in T.
    const outcome<T> refused{std::nullopt, error};
    check_outcome(bad, refused, p, true, !well[static_cast<std::size_t>(produced)], e);
  }
  check_rows(bad, row_matrix<T>(out.topRows(produced)), p, true, e);
  bad.report();
}

template <template <class> class Map>
void check_decoder(const char* name, bool non_negative) {
  const auto f32 = make_favor<Map, float>(9);
  const auto f64 = double_twin<Map>(f32);
  for (const input_case& c : input_cases()) {
    // Both decoders solve the float-rounded problem, against the double batch's terms.
    const problem p = make_problem<float>(c, 31, favor_tokens);
    const favor_terms td = terms_of(features_of(f64, p.q, p.k, false, favor_layout.block), true);
    check_decoder_run(name, c, p, f32, td, non_negative);
    check_decoder_run(name, c, p, f64, td, non_negative);
  }
}

TEST(ExtremeValuesDecoder, PositiveFeatures) { check_decoder<performer::positive_features>("favor_decoder positive", true); }
TEST(ExtremeValuesDecoder, HyperbolicFeatures) { check_decoder<performer::hyperbolic_features>("favor_decoder hyperbolic", true); }
TEST(ExtremeValuesDecoder, TrigonometricFeatures) {
  check_decoder<performer::trigonometric_features>("favor_decoder trigonometric", false);
}
TEST(ExtremeValuesDecoder, ReluFeatures) { check_decoder<performer::relu_features>("favor_decoder relu", true); }
TEST(ExtremeValuesDecoder, EluFeatures) { check_decoder<performer::elu_features>("favor_decoder elu", true); }
TEST(ExtremeValuesDecoder, FavorPlusPlusFeatures) {
  // The decoder, like the causal path, uses the stored A = 0.
  check_decoder<performer::favor_plus_plus_features>("favor_decoder favor++", true);
}

TEST(ExtremeValuesDecoder, KeyWhoseSquaredNormOverflowsFloatGetsWeightZero) {
  // The fuzzer's reproducer (tests/fuzz/crashes/decoder-float-first-key-norm-overflow-nan-state):
  // d = 2, k_0 = (1e20, 0) has |k_0|^2 = 1e40 > FLT_MAX. Its FAVOR weight relative to k_1 = 0 is
  // exp(-|k_0|^2 / (2 sqrt(2)) + O(|k_0|)) ~ exp(-3.5e39): zero in any precision, so token 1's
  // output is v_1 = 1 (to rounding), and the state must stay finite.
  const performer::favor_attention<float> favor(2, 4, 1);
  performer::favor_decoder<float> decoder(favor, 1);
  row_matrix<float> k(2, 2);
  k << 1e20F, 0.0F, 0.0F, 0.0F;
  row_matrix<float> v(2, 1);
  v << 100.0F, 1.0F;
  row_matrix<float> q(1, 2);
  q << 0.5F, 0.25F;
  decoder.prime(k.topRows(1), v.topRows(1));
  row_matrix<float> out(1, 1);
  decoder.step(q.row(0), k.row(1), v.row(1), out.row(0));
  EXPECT_NEAR(out(0, 0), 1.0F, 1e-6F);
  // The batch causal pass agrees on token 1 (token 0 sees only k_0, whose weight underflows:
  // refusing the call for it is the documented outcome).
  row_matrix<float> q2(2, 2);
  q2 << 0.5F, 0.25F, 0.5F, 0.25F;
  const auto batch = attempt([&] { return run(favor, q2, k, v, attention_mask{true, {}}); });
  if (batch.out) {
    EXPECT_NEAR((*batch.out)(1, 0), 1.0F, 1e-6F);
  } else {
    EXPECT_TRUE(mentions_overflow(batch.error)) << batch.error;
  }
}

// ---- LSH attention ----------------------------------------------------------------------------------

constexpr index lsh_tokens = 32;

/// One bucket (zero rotations: every projection is 0, a tie, so every vector goes to bucket 0)
/// and one chunk of all N keys: every query's window is every key it may see (both rounds
/// propose each key, counted once), so LSH is exact softmax attention, with the shared-QK
/// self-penalty, and the softmax reference and its bound apply.
template <class T>
performer::lsh_attention<T> one_window_lsh(index dim, bool shared_qk, index n) {
  performer::lsh_attention<T> lsh(dim, {.buckets = 2, .hashes = 2, .chunk = n, .shared_qk = shared_qk, .seed = 1});
  for (index r = 0; r < 2; ++r) lsh.set_rotation(r, row_matrix<T>::Zero(dim, 1));
  return lsh;
}

template <class T>
void check_lsh_one_window(bool shared) {
  const auto lsh = one_window_lsh<T>(head_dim, shared, lsh_tokens);
  for (const input_case& c : input_cases()) {
    const problem p = make_problem<T>(c, 41, lsh_tokens);
    const row_matrix<T> q = p.q.template cast<T>();
    const row_matrix<T> k = shared ? q : row_matrix<T>(p.k.template cast<T>());
    const row_matrix<T> v = p.v.template cast<T>();
    for (const bool causal : {false, true}) {
      const softmax_reference ref = make_softmax_reference(p, causal, shared);
      violations bad(label_of<T>(shared ? "lsh shared-QK, one window" : "lsh, one window", c, causal));
      const auto o = attempt([&] { return run(lsh, q, k, v, attention_mask{causal, {}}); });
      check_outcome(bad, o, p, causal, !softmax_fits<T>(ref, p), softmax_expectations<T>(ref, p));
      bad.report();
    }
  }
}

TEST(ExtremeValuesLsh, OneWindowSharedQkMatchesReference) {
  // The reference applies the documented rule: logit (i, i) := -|logit (i, i)| - 1e5. With
  // trax's plain "lowered by 1e5" (the rule before this test found the problem) a token at
  // |q_i| ~ 1e6 (d = 16) or at scale 1e30 attended to itself alone although it had other keys.
  check_lsh_one_window<float>(true);
  check_lsh_one_window<double>(true);
}

TEST(ExtremeValuesLsh, OneWindowSeparateKeysMatchesReference) {
  check_lsh_one_window<float>(false);
  check_lsh_one_window<double>(false);
}

/// Bound on |out_T(i) - softmax over W|, for ANY window W of the keys query i sees (LSH's
/// windows depend on the hashes; float and double are compared where their buckets agree).
/// Bound 1: every weight in W moves by a factor within exp(+-2 D), D the largest logit error
/// over the non-self keys (the self key's weight is below exp(-60) of any other's when its
/// penalised logit is 60 below every other logit), so the output moves by at most
/// expm1(2 D) / 2 times the values' spread. Bound 2: when every two logits differ by more than
/// 2 D_max, W has a clear top key and the mass off it is at most (|W| - 1) exp(2 D_max - G_min)
/// in T and (|W| - 1) exp(-G_min) exactly. Plus the weighted sum's rounding.
template <class T>
double window_tolerance(const softmax_reference& r, const problem& p, index i) {
  const index vis = r.visible(i);
  const auto s = r.logits.row(i).head(vis);
  const index self = r.self_penalty ? i : -1;
  const ld_matrix v = p.v.topRows(vis).cast<ld>();
  ld spread = 0;
  for (index c = 0; c < v.cols(); ++c) spread = std::max(spread, v.col(c).maxCoeff() - v.col(c).minCoeff());
  ld bound1 = 0;  // the window may hold the query's own key only: its value, exactly
  if (vis > (self >= 0 ? 1 : 0)) {
    ld top_other = -ld_inf;
    ld bottom_other = ld_inf;
    for (index j = 0; j < vis; ++j) {
      if (j == self) continue;
      top_other = std::max(top_other, s(j));
      bottom_other = std::min(bottom_other, s(j));
    }
    ld delta = 0;
    for (index j = 0; j < vis; ++j) {
      if (j != self) delta = std::max(delta, logit_error<T>(r, i, j, top_other));
    }
    const ld self_weight = self >= 0 ? exp_of(s(self) - bottom_other) : 0.0L;
    bound1 = self_weight > exp_of(-60) ? ld_inf : expm1_of(2 * delta) / 2 * spread + 2 * self_weight * spread;
  }
  ld bound2 = 0;
  if (vis > 1) {
    std::vector<ld> sorted(s.data(), s.data() + vis);
    std::sort(sorted.begin(), sorted.end());
    ld gap = ld_inf;
    for (std::size_t j = 1; j < sorted.size(); ++j) gap = std::min(gap, sorted[j] - sorted[j - 1]);
    ld delta_max = 0;
    for (index j = 0; j < vis; ++j) delta_max = std::max(delta_max, logit_error<T>(r, i, j, s.maxCoeff()));
    bound2 = static_cast<ld>(vis - 1) * (exp_of(2 * delta_max - gap) + exp_of(-gap)) * spread;
  }
  const double n = static_cast<double>(vis);
  return static_cast<double>(std::min(bound1, bound2)) +
         (4 * n + 32) * unit_roundoff<T>() * p.v.topRows(vis).cwiseAbs().maxCoeff() + (4 * n + 32) * tiny<T>();
}

/// Seeded rotations: 4 buckets, 2 rounds, chunks of 8, so windows are real subsets. Float and
/// double use the same rotations (the float ones, cast); where every bucket agrees their windows
/// are the same and both must be within window_tolerance of that window's exact softmax.
void check_lsh_windows(bool shared) {
  const performer::lsh_options options{.buckets = 4, .hashes = 2, .chunk = 8, .shared_qk = shared, .seed = 3};
  const performer::lsh_attention<float> lf(head_dim, options);
  performer::lsh_attention<double> ld_(head_dim, options);
  for (index r = 0; r < options.hashes; ++r) ld_.set_rotation(r, lf.rotation(r).cast<double>());
  int compared = 0;
  int returned = 0;
  for (const input_case& c : input_cases()) {
    const problem p = make_problem<float>(c, 51, lsh_tokens);
    const row_matrix<float> qf = p.q.cast<float>();
    const row_matrix<float> kf = shared ? qf : row_matrix<float>(p.k.cast<float>());
    const row_matrix<float> vf = p.v.cast<float>();
    const row_matrix<double> kd = shared ? p.q : p.k;
    bool same_windows = true;
    for (index r = 0; r < options.hashes; ++r) {
      same_windows = same_windows && lf.buckets(qf, r) == ld_.buckets(p.q, r) &&
                     (shared || lf.buckets(kf, r) == ld_.buckets(kd, r));
    }
    for (const bool causal : {false, true}) {
      const softmax_reference ref = make_softmax_reference(p, causal, shared);
      // The contract on each run: no reference (tol = inf), the hull of the keys it may see.
      const index n = p.q.rows();
      const double vmax = p.v.cwiseAbs().maxCoeff();
      row_expectations ef{ref.out, Eigen::VectorXd::Constant(n, inf),
                          Eigen::VectorXd::Constant(n, (4.0 * n + 32) * (unit_roundoff<float>() * vmax + tiny<float>()))};
      row_expectations ed{ref.out, Eigen::VectorXd::Constant(n, inf),
                          Eigen::VectorXd::Constant(n, (4.0 * n + 32) * (unit_roundoff<double>() * vmax + tiny<double>()))};
      for (index i = 0; i < n && same_windows; ++i) {
        ef.tol(i) = window_tolerance<float>(ref, p, i);
        ed.tol(i) = window_tolerance<double>(ref, p, i);
      }
      const attention_mask mask{causal, {}};
      const auto of = attempt([&] { return run(lf, qf, kf, vf, mask); });
      const auto od = attempt([&] { return run(ld_, p.q, kd, p.v, mask); });
      const char* name = shared ? "lsh shared-QK, seeded" : "lsh, seeded";
      violations bad_f(label_of<float>(name, c, causal));
      violations bad_d(label_of<double>(name, c, causal));
      const row_expectations no_ref_f{ef.ref, Eigen::VectorXd::Constant(p.q.rows(), inf), ef.slack};
      const row_expectations no_ref_d{ed.ref, Eigen::VectorXd::Constant(p.q.rows(), inf), ed.slack};
      check_outcome(bad_f, of, p, causal, !softmax_fits<float>(ref, p), no_ref_f);
      check_outcome(bad_d, od, p, causal, !softmax_fits<double>(ref, p), no_ref_d);
      returned += of.out && od.out ? 1 : 0;
      if (of.out && od.out && same_windows) {
        ++compared;
        check_agreement(bad_f, *of.out, *od.out, ef, ed);
      }
      bad_f.report();
      bad_d.report();
    }
  }
  // Hashes of unit vectors in float and double only differ at near-ties: the comparison must
  // have run on nearly every problem that both precisions solved.
  EXPECT_GE(compared, returned - 2);
}

TEST(ExtremeValuesLsh, SeededSharedQkFloatMatchesDouble) { check_lsh_windows(true); }
TEST(ExtremeValuesLsh, SeededSeparateKeysFloatMatchesDouble) { check_lsh_windows(false); }

// ---- Transformer block and stack -----------------------------------------------------------------

template <class To, class From>
performer::block_parameters<To> cast_parameters(const performer::block_parameters<From>& p) {
  performer::block_parameters<To> r;
  r.w_q = p.w_q.template cast<To>();
  r.w_k = p.w_k.template cast<To>();
  r.w_v = p.w_v.template cast<To>();
  r.w_o = p.w_o.template cast<To>();
  r.b_q = p.b_q.template cast<To>();
  r.b_k = p.b_k.template cast<To>();
  r.b_v = p.b_v.template cast<To>();
  r.b_o = p.b_o.template cast<To>();
  r.norm1_gain = p.norm1_gain.template cast<To>();
  r.norm1_bias = p.norm1_bias.template cast<To>();
  r.norm2_gain = p.norm2_gain.template cast<To>();
  r.norm2_bias = p.norm2_bias.template cast<To>();
  r.w_ff1 = p.w_ff1.template cast<To>();
  r.b_ff1 = p.b_ff1.template cast<To>();
  r.w_ff2 = p.w_ff2.template cast<To>();
  r.b_ff2 = p.b_ff2.template cast<To>();
  return r;
}

constexpr index block_tokens = 32;
constexpr index block_width = 16;  // d_model
constexpr index block_heads = 2;   // head width 8
constexpr index block_ff = 32;

struct block_input {
  const char* name;
  double row_norm;  // 0: keep the uniform rows
  double scale;
};

// Row norms up to 100, and whole inputs at 1e-30, subnormal (1e-40) and 1e30.
const std::vector<block_input>& block_inputs() {
  static const std::vector<block_input> inputs = {
      {"x row norms 1", 1, 1},  {"x row norms 10", 10, 1}, {"x row norms 100", 100, 1},
      {"x x 1e-30", 0, 1e-30}, {"x subnormal (1e-40)", 0, 1e-40}, {"x x 1e30", 0, 1e30},
  };
  return inputs;
}

row_matrix<double> block_x(const block_input& in, std::uint64_t seed) {
  row_matrix<double> x = random_matrix<double>(block_tokens, block_width, seed);
  if (in.row_norm > 0) {
    for (index i = 0; i < x.rows(); ++i) x.row(i) *= in.row_norm / x.row(i).norm();
  }
  x *= in.scale;
  return x.cast<float>().cast<double>();  // float-rounded: both precisions run the same input
}

/// LayerNorm in long double with unit gain and zero bias, eps as given (the reference of the
/// stack's final norm).
ld_matrix layer_norm_reference(const row_matrix<double>& x, double eps) {
  ld_matrix out(x.rows(), x.cols());
  for (index i = 0; i < x.rows(); ++i) {
    const auto row = x.row(i).cast<ld>().array();
    const ld mean = row.mean();
    const ld var = (row - mean).square().mean();
    out.row(i) = ((row - mean) / std::sqrt(var + static_cast<ld>(eps))).matrix();
  }
  return out;
}

/// Largest |logit| the first attention sublayer can see (sum_c |q_c k_c| / sqrt(d_head) over
/// heads and pairs), from the double parameters, in long double: what exact attention's float
/// rounding scales with.
ld first_layer_logits(const performer::block_parameters<double>& params, const row_matrix<double>& x,
                      bool pre) {
  const ld_matrix h = pre ? layer_norm_reference(x, 1e-5) : ld_matrix(x.cast<ld>());
  const ld_matrix q = (h * params.w_q.cast<ld>()).rowwise() + params.b_q.cast<ld>();
  const ld_matrix k = (h * params.w_k.cast<ld>()).rowwise() + params.b_k.cast<ld>();
  const index dh = block_width / block_heads;
  ld largest = 0;
  for (index head = 0; head < block_heads; ++head) {
    const ld_matrix dots = q.middleCols(head * dh, dh).cwiseAbs() * k.middleCols(head * dh, dh).cwiseAbs().transpose();
    largest = std::max(largest, dots.maxCoeff() / std::sqrt(static_cast<ld>(dh)));
  }
  return largest;
}

/// Bound on max |y_float - y_double| / max |y_double| for one block. The attention's weights
/// move by at most expm1(2 D) with D = (d_head + 16) u L (L from first_layer_logits; FAVOR's
/// features move by the same order, its exponents being of the size of the logits and the
/// scaled squared norms, both bounded by L + the norms below); every other stage (LayerNorm, the
/// four projections, the feed-forward pair, the residual sums) is a sum of at most
/// K = d_model + d_ff + N terms, K u relative each. LayerNorm amplifies a perturbation of its
/// input by at most sqrt(d_model) relative to the row's spread, and the residual stream carries
/// the errors of both sublayers: 4 sqrt(d_model) covers both. Subnormal inputs make every
/// rounding absolute (tiny / 2) relative to the output's scale. A double run's own error is
/// 1e-9 of this and ignored.
double block_tolerance(ld logits, ld norms, double output_scale) {
  const ld u = unit_roundoff<float>();
  const ld dh = block_width / block_heads;
  const ld attention = 2 * expm1_of(2 * (dh + 16) * u * (logits + norms));
  // ~10 stages, K roundings each; in the subnormal range each rounding is absolute (tiny / 2),
  // relative to the output's scale.
  const ld k = static_cast<ld>(block_width + block_ff + block_tokens);
  const ld stages = 16 * k * (u + static_cast<ld>(tiny<float>()) / static_cast<ld>(output_scale));
  return static_cast<double>(4 * std::sqrt(static_cast<ld>(block_width)) * (attention + stages));
}

/// Largest squared query/key norm over sqrt(d_head) in the first attention sublayer: the scale
/// of FAVOR's feature exponents |x~|^2 / 2.
ld first_layer_norms(const performer::block_parameters<double>& params, const row_matrix<double>& x,
                     bool pre) {
  const ld_matrix h = pre ? layer_norm_reference(x, 1e-5) : ld_matrix(x.cast<ld>());
  const ld_matrix q = (h * params.w_q.cast<ld>()).rowwise() + params.b_q.cast<ld>();
  const ld_matrix k = (h * params.w_k.cast<ld>()).rowwise() + params.b_k.cast<ld>();
  const index dh = block_width / block_heads;
  ld largest = 0;
  for (index head = 0; head < block_heads; ++head) {
    largest = std::max({largest, q.middleCols(head * dh, dh).rowwise().squaredNorm().maxCoeff(),
                        k.middleCols(head * dh, dh).rowwise().squaredNorm().maxCoeff()});
  }
  return largest / std::sqrt(static_cast<ld>(dh));
}

/// Float block against the double block with the same parameters (and the same projection or
/// rotations), pre-LN and post-LN, bidirectional and causal.
/// Contract: a pre-LN block normalises every row before attention, so its logits are O(1) for
/// any finite x and it must never refuse; a post-LN block attends over x W directly, so float
/// may refuse where those logits do not fit (x x 1e30); double never. Accuracy: compared where
/// the attention is well-conditioned in float: exact attention and LSH always (the bound grows
/// with L), FAVOR only while its feature exponents stay well inside float's range (a feature
/// e^-2E below the row's largest must stay normal: 2 E < 70).
template <class Af, class Ad>
void check_block(const char* name, const Af& attention_f, const Ad& attention_d, bool favor) {
  for (const auto norm : {performer::norm_placement::pre, performer::norm_placement::post}) {
    for (const bool causal : {false, true}) {
      const bool pre = norm == performer::norm_placement::pre;
      const performer::block_config cfg{.d_model = block_width, .heads = block_heads, .d_ff = block_ff,
                                        .causal = causal, .norm = norm};
      const performer::transformer_block<Af> block_f(cfg, attention_f, 7);
      performer::transformer_block<Ad> block_d(cfg, attention_d, 7);
      block_d.set_parameters(cast_parameters<double>(block_f.parameters()));
      for (const block_input& in : block_inputs()) {
        const row_matrix<double> x = block_x(in, 61);
        const row_matrix<float> xf = x.cast<float>();
        std::ostringstream label;
        label << name << (pre ? " pre-LN" : " post-LN") << (causal ? " causal" : "") << ", " << in.name;
        violations bad(label.str());
        const auto of = attempt([&] { return block_f.forward(xf); });
        const auto od = attempt([&] { return block_d.forward(x); });
        const bool overflows_float = !pre && in.scale > 1e20;
        if (!od.out) bad.add("double refused: ", od.error);
        if (!of.out) {
          if (!overflows_float) bad.add("float refused a representable input: ", of.error);
          if (!mentions_overflow(of.error)) bad.add("float threw without naming the overflow: ", of.error);
        } else if (!of.out->allFinite()) {
          bad.add("float output is not finite");
        }
        if (of.out && od.out) {
          const ld logits = first_layer_logits(block_d.parameters(), x, pre);
          const ld norms = favor ? first_layer_norms(block_d.parameters(), x, pre) : 0.0L;
          const bool conditioned = !favor || logits + norms < 35;
          const double scale = od.out->cwiseAbs().maxCoeff();
          const double err = (of.out->template cast<double>() - *od.out).cwiseAbs().maxCoeff() / scale;
          const double tol = block_tolerance(logits, norms, scale);
          if (verbose()) {
            std::printf("  %-60s L %9.3g, relative error %9.3g, bound %9.3g%s\n", label.str().c_str(),
                        static_cast<double>(logits), err, tol, conditioned ? "" : " (not compared)");
          }
          if (conditioned && !(err <= tol)) bad.add("relative error ", err, " > ", tol, " (L = ", static_cast<double>(logits), ")");
        }
        bad.report();
      }
    }
  }
}

TEST(ExtremeValuesBlock, SoftmaxFloatMatchesDouble) {
  check_block("block<softmax>", performer::softmax_attention<float>{}, performer::softmax_attention<double>{}, false);
}

TEST(ExtremeValuesBlock, TiledFloatMatchesDouble) {
  check_block("block<tiled>", performer::tiled_softmax_attention<float>(8, 8),
              performer::tiled_softmax_attention<double>(8, 8), false);
}

TEST(ExtremeValuesBlock, FavorFloatMatchesDouble) {
  const performer::favor_attention<float> f(block_width / block_heads, favor_features_m, 3);
  performer::favor_attention<double> d(block_width / block_heads, favor_features_m, 3);
  d.projection().set_matrix(f.projection().matrix().cast<double>());
  check_block("block<favor>", f, d, true);
}

TEST(ExtremeValuesBlock, LshFloatMatchesDouble) {
  // One window (see one_window_lsh), so float and double see the same keys.
  check_block("block<lsh>", one_window_lsh<float>(block_width / block_heads, true, block_tokens),
              one_window_lsh<double>(block_width / block_heads, true, block_tokens), false);
}

/// A pre-LN stack at a huge input scale: every layer adds O(1) updates (its sublayers see
/// LayerNorm'd rows) to rows of size |x|, which they change by a relative 1/|x|, below rounding;
/// so the result is the final LayerNorm of the input itself, which is finite and O(1) for any
/// finite x. Float must get it (to LayerNorm's rounding, (2 d + 32) u relative to its O(1)
/// output, plus the residual's one rounding of x, u sqrt(d) after normalisation), as double
/// does; 1e20 is the first scale where float's squared deviations overflow.
template <class T, class A>
void check_stack_at_huge_scale(const char* name, const A& attention) {
  for (const double scale : {1e20, 1e30}) {
    for (const bool causal : {false, true}) {
      const performer::block_config cfg{.d_model = block_width, .heads = block_heads, .d_ff = block_ff, .causal = causal};
      const performer::transformer_stack<A> stack(cfg, 2, attention, 5);
      row_matrix<double> x = random_matrix<double>(block_tokens, block_width, 71);
      x *= scale;
      x = x.cast<T>().template cast<double>();
      std::ostringstream label;
      label << name << "<" << type_name<T>() << ">" << (causal ? " causal" : "") << ", x x " << scale;
      violations bad(label.str());
      const auto o = attempt([&] { return stack.forward(x.cast<T>()); });
      if (!o.out) {
        bad.add("refused: ", o.error);
      } else {
        const ld_matrix ref = layer_norm_reference(x, 1e-5);
        const double err = static_cast<double>((o.out->template cast<ld>() - ref).cwiseAbs().maxCoeff());
        const double tol = (2.0 * block_width + 32 + std::sqrt(block_width)) * unit_roundoff<T>() *
                           (1 + static_cast<double>(ref.cwiseAbs().maxCoeff()));
        if (verbose()) std::printf("  %-60s error %9.3g, bound %9.3g\n", label.str().c_str(), err, tol);
        if (!(err <= tol)) bad.add("max |y - LayerNorm(x)| = ", err, " > ", tol);
      }
      bad.report();
    }
  }
}

TEST(ExtremeValuesStack, HugeInputGivesLayerNormOfInput) {
  check_stack_at_huge_scale<float>("stack<softmax>", performer::softmax_attention<float>{});
  check_stack_at_huge_scale<double>("stack<softmax>", performer::softmax_attention<double>{});
  check_stack_at_huge_scale<float>("stack<favor>", performer::favor_attention<float>(block_width / block_heads, favor_features_m, 3));
  check_stack_at_huge_scale<double>("stack<favor>", performer::favor_attention<double>(block_width / block_heads, favor_features_m, 3));
}

TEST(ExtremeValuesStack, FloatMatchesDouble) {
  // Two pre-LN layers and the final LayerNorm, float against double with the same parameters
  // (layer by layer), over the block inputs: the stack composes two blocks' errors (twice
  // block_tolerance) and the final LayerNorm (amplification sqrt(d_model), already in it).
  for (const bool causal : {false, true}) {
    const performer::block_config cfg{.d_model = block_width, .heads = block_heads, .d_ff = block_ff, .causal = causal};
    const performer::transformer_stack<performer::softmax_attention<float>> stack_f(cfg, 2, performer::softmax_attention<float>{}, 9);
    performer::transformer_stack<performer::softmax_attention<double>> stack_d(cfg, 2, performer::softmax_attention<double>{}, 9);
    for (index l = 0; l < 2; ++l) stack_d.layer(l).set_parameters(cast_parameters<double>(stack_f.layer(l).parameters()));
    for (const block_input& in : block_inputs()) {
      const row_matrix<double> x = block_x(in, 81);
      std::ostringstream label;
      label << "stack<softmax>" << (causal ? " causal" : "") << ", " << in.name;
      violations bad(label.str());
      const auto of = attempt([&] { return stack_f.forward(x.cast<float>()); });
      const auto od = attempt([&] { return stack_d.forward(x); });
      if (!of.out) bad.add("float refused: ", of.error);
      if (!od.out) bad.add("double refused: ", od.error);
      if (of.out && od.out) {
        // Logits of the first layer; later layers see LayerNorm'd rows of the same kind.
        const ld logits = first_layer_logits(stack_d.layer(0).parameters(), x, true);
        const double scale = od.out->cwiseAbs().maxCoeff();
        const double tol = 2 * block_tolerance(2 * logits, 0, scale);
        const double err = (of.out->cast<double>() - *od.out).cwiseAbs().maxCoeff() / scale;
        if (verbose()) std::printf("  %-60s relative error %9.3g, bound %9.3g\n", label.str().c_str(), err, tol);
        if (!(err <= tol)) bad.add("relative error ", err, " > ", tol);
      }
      bad.report();
    }
  }
}

// ---- Invariances exact in theory ------------------------------------------------------------------

/// Runs `f(q, k, v)` through every mechanism family in T (exact, tiled, LSH with one window,
/// FAVOR with each non-negative map, the decoder) and hands each output to `check(name, out)`.
/// `width_of` records M per mechanism for the bounds (N for exact and LSH).
template <class T, class Check>
void for_each_mechanism(const row_matrix<T>& q, const row_matrix<T>& k, const row_matrix<T>& v,
                        bool causal, Check&& check) {
  const attention_mask mask{causal, {}};
  check("softmax_attention", index{0}, run(performer::softmax_attention<T>{}, q, k, v, mask));
  check("tiled_softmax_attention(7, 11)", index{0}, run(performer::tiled_softmax_attention<T>(7, 11), q, k, v, mask));
  check("lsh, one window", index{0}, run(one_window_lsh<T>(head_dim, false, q.rows()), q, k, v, mask));
  const auto favor = [&](const char* name, const auto& mechanism) {
    check(name, mechanism.feature_count(), run(mechanism, q, k, v, mask));
  };
  favor("favor positive", make_favor<performer::positive_features, T>(5));
  favor("favor hyperbolic", make_favor<performer::hyperbolic_features, T>(5));
  favor("favor relu", make_favor<performer::relu_features, T>(5));
  favor("favor elu", make_favor<performer::elu_features, T>(5));
  favor("favor++", make_favor<performer::favor_plus_plus_features, T>(5));
  if (causal) {
    const auto mechanism = make_favor<performer::positive_features, T>(5);
    performer::favor_decoder<T> decoder(mechanism, v.cols());
    row_matrix<T> out(q.rows(), v.cols());
    for (index t = 0; t < q.rows(); ++t) decoder.step(q.row(t), k.row(t), v.row(t), out.row(t));
    check("favor_decoder positive", mechanism.feature_count(), out);
  }
}

/// Every mechanism's weights do not depend on v, so out(q, k, c v) = c out(q, k, v) exactly in
/// real arithmetic; in T the two runs share every weight and differ only in the weighted sums'
/// roundings, (N + 2M + 48) u of c max |v| each (N + 16 for exact attention), plus the
/// multiplication by c. In double that is below 1e-13 here, inside the 1e-12.
template <class T>
void check_value_scaling() {
  const input_case norms{"row norms 10", 10, 1, 1, 1};
  const problem p = make_problem<T>(norms, 91, favor_tokens);
  const row_matrix<T> q = p.q.template cast<T>();
  const row_matrix<T> k = p.k.template cast<T>();
  const row_matrix<T> v = p.v.template cast<T>();
  for (const bool causal : {false, true}) {
    std::vector<std::pair<std::string, row_matrix<T>>> plain;
    for_each_mechanism<T>(q, k, v, causal, [&](const char* name, index, const row_matrix<T>& out) {
      plain.emplace_back(name, out);
    });
    for (const T c : {T(1e30), T(1e-30)}) {
      const row_matrix<T> scaled_v = v * c;
      std::size_t at = 0;
      for_each_mechanism<T>(q, k, scaled_v, causal, [&](const char* name, index width, const row_matrix<T>& out) {
        // FAVOR's key sums multiply features (as small as e^-30 relative to the row's largest)
        // by the values: at 1e-30 in float those products are subnormal and carry absolute, not
        // relative, errors (bounded in the reference comparisons above). Exact attention's
        // weights are normalised to a largest of 1, so its sums stay normal.
        if (std::is_same_v<T, float> && c < T(1) && width > 0) return;
        const row_matrix<double> expected = plain[at++].second.template cast<double>() * static_cast<double>(c);
        const double scale = static_cast<double>(c) * p.v.cwiseAbs().maxCoeff();
        const double err = (out.template cast<double>() - expected).cwiseAbs().maxCoeff() / scale;
        const double tol = 2 * static_cast<double>(favor_tokens + 2 * width + 48) * unit_roundoff<T>() + 2 * unit_roundoff<T>();
        EXPECT_LE(err, tol) << name << "<" << type_name<T>() << ">, v x " << c << (causal ? ", causal" : "");
        if (std::is_same_v<T, double>) {
          EXPECT_LE(err, 1e-12) << name;
        }
      });
    }
  }
}

TEST(ExtremeValuesInvariance, ScalingValuesBy1e30Or1e_30ScalesTheOutput) {
  check_value_scaling<float>();
  check_value_scaling<double>();
}

/// q and k scaled to 1e-30 (q.k ~ 1e-60: 0 in float, below double's rounding of 1 in exp) or to
/// float subnormals: every weight is exactly equal (for FAVOR every feature is exp(0) times a
/// common factor, ReLU's is epsilon, ELU's 1), so out_i is the mean of the values query i sees,
/// to the sums' rounding: (N + 2M + 48) u max |v|.
template <class T>
void check_tiny_queries_and_keys() {
  for (const double scale : {1e-30, 1e-40}) {
    const input_case tiny_case{"tiny", 0, scale, scale, 1};
    const problem p = make_problem<T>(tiny_case, 101, favor_tokens);
    const row_matrix<T> q = p.q.template cast<T>();
    const row_matrix<T> k = p.k.template cast<T>();
    const row_matrix<T> v = p.v.template cast<T>();
    for (const bool causal : {false, true}) {
      row_matrix<double> mean(p.v.rows(), p.v.cols());
      for (index i = 0; i < p.v.rows(); ++i) {
        const index vis = causal ? i + 1 : p.v.rows();
        mean.row(i) = p.v.topRows(vis).colwise().mean();
      }
      for_each_mechanism<T>(q, k, v, causal, [&](const char* name, index width, const row_matrix<T>& out) {
        const double err = (out.template cast<double>() - mean).cwiseAbs().maxCoeff() / p.v.cwiseAbs().maxCoeff();
        const double tol = static_cast<double>(favor_tokens + 2 * width + 48) * unit_roundoff<T>();
        EXPECT_LE(err, tol) << name << "<" << type_name<T>() << ">, q, k x " << scale << (causal ? ", causal" : "");
      });
      // Shared-QK LSH: the same, but a token's own key is masked (weight exp(-1e5) = 0) unless it
      // has no other: the mean of the other visible values, and v_0 for the first causal token.
      const auto lsh = one_window_lsh<T>(head_dim, true, q.rows());
      const row_matrix<T> out = run(lsh, q, q, v, attention_mask{causal, {}});
      for (index i = 0; i < q.rows(); ++i) {
        const index vis = causal ? i + 1 : q.rows();
        const Eigen::RowVectorXd others =
            vis == 1 ? Eigen::RowVectorXd(p.v.row(i))
                     : Eigen::RowVectorXd((p.v.topRows(vis).colwise().sum() - p.v.row(i)) / static_cast<double>(vis - 1));
        EXPECT_LE((out.row(i).template cast<double>() - others).cwiseAbs().maxCoeff() / p.v.cwiseAbs().maxCoeff(),
                  static_cast<double>(favor_tokens + 48) * unit_roundoff<T>())
            << "lsh shared-QK<" << type_name<T>() << ">, q x " << scale << ", row " << i << (causal ? ", causal" : "");
      }
    }
  }
}

TEST(ExtremeValuesInvariance, TinyQueriesAndKeysGiveTheMeanOfTheValues) {
  check_tiny_queries_and_keys<float>();
  check_tiny_queries_and_keys<double>();
}

// ---- The fuzzer's exact-attention reproducers ------------------------------------------------------

/// tests/fuzz/crashes/{softmax,tiled}-float-logit-overflow-gives-zero-row and the two variants
/// in its write-up. Every input is representable in double, which must return the exact answer;
/// in float the logits overflow (to -inf, or to NaN as +inf - inf), so float must refuse with the
/// overflow message or return that same answer, never the "no visible key" zero row.
TEST(ExtremeValuesExact, FuzzerLogitOverflowReproducers) {
  struct reproducer {
    const char* name;
    row_matrix<double> q, k, v;
    double expected;
  };
  std::vector<reproducer> cases;
  {
    reproducer r{"q = 1e30, k = -1e30 (logit -1e60)", row_matrix<double>(1, 1), row_matrix<double>(1, 1),
                 row_matrix<double>(1, 1), 1.0};
    r.q << 1e30;
    r.k << -1e30;
    r.v << 1.0;
    cases.push_back(r);
  }
  {
    // Logits -2e40 / sqrt(2) and -3e40 / sqrt(2): a gap of 7e39, so the first key takes it all.
    reproducer r{"all logits -inf in float", row_matrix<double>(1, 2), row_matrix<double>(2, 2),
                 row_matrix<double>(2, 1), 2.0};
    r.q << 1e20, 1e20;
    r.k << -1e20, -1e20, -3e20, 0;
    r.v << 2.0, 3.0;
    cases.push_back(r);
  }
  {
    // q.k = 1e60 - 1e60 = 0 exactly in double; +inf - inf = NaN in float.
    reproducer r{"logit NaN in float", row_matrix<double>(1, 2), row_matrix<double>(1, 2),
                 row_matrix<double>(1, 1), 5.0};
    r.q << 1e30, 1e30;
    r.k << 1e30, -1e30;
    r.v << 5.0;
    cases.push_back(r);
  }
  for (const reproducer& r : cases) {
    const auto d1 = run(performer::softmax_attention<double>{}, r.q, r.k, r.v);
    const auto d2 = run(performer::tiled_softmax_attention<double>{}, r.q, r.k, r.v);
    EXPECT_EQ(d1(0, 0), r.expected) << r.name;
    EXPECT_EQ(d2(0, 0), r.expected) << r.name;
    const row_matrix<float> q = r.q.cast<float>();
    const row_matrix<float> k = r.k.cast<float>();
    const row_matrix<float> v = r.v.cast<float>();
    for (const auto& o : {attempt([&] { return run(performer::softmax_attention<float>{}, q, k, v); }),
                          attempt([&] { return run(performer::tiled_softmax_attention<float>{}, q, k, v); })}) {
      if (o.out) {
        EXPECT_EQ((*o.out)(0, 0), static_cast<float>(r.expected)) << r.name << ": float returned a wrong answer";
      } else {
        EXPECT_TRUE(mentions_overflow(o.error)) << r.name << ": " << o.error;
      }
    }
  }
}

}  // namespace
