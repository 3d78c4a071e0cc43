/// @file testing/detail/extreme_contract.hpp
/// @brief The extreme-values suite's inputs and the contract every result must meet (issue 7):
/// query/key row norms 1, 10 and 100, whole inputs scaled by 1e-30 and 1e30, subnormal inputs
/// (1e-40 in float), built in double and rounded once to the scalar type under test.
///
/// The contract checked everywhere:
/// - a call either returns finite outputs or throws performer::invalid_argument whose message
///   mentions the overflow (README "Errors": "finite inputs whose logits overflow the scalar
///   type");
/// - it may throw only when the problem is not representable in the scalar type (defined per
///   reference, see extreme_reference.hpp); where it is, it must return;
/// - a finite output must be right: never the "no visible key" zero row for a query that sees
///   keys (values are drawn in [1, 3) times a scale, so a zero row is outside the values' hull
///   and never a correct answer), inside the hull of the visible values for every mechanism
///   whose weights are non-negative, and equal to a double or long double reference within a
///   bound derived from the rounding analysis wherever the result is well-conditioned.
///
/// Notation: u is the unit roundoff of the scalar type (2^-24 ~ 6e-8 for float, 2^-53 ~ 1.1e-16
/// for double), "tiny" its smallest subnormal (2^-149 ~ 1.4e-45 for float): a rounding in the
/// subnormal range adds at most tiny/2 in absolute terms, whatever the operands.
///
/// Every problem is built in double and rounded once to the scalar type under test; the double
/// run and the long double references then use those rounded numbers, so float and double solve
/// exactly the same problem and only their arithmetic differs.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <optional>
#include <sstream>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "../../core/error.hpp"
#include "../../core/types.hpp"
#include "../helpers.hpp"

namespace performer::conformance::extreme {

using ld = long double;
using ld_matrix = Eigen::Matrix<ld, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using ld_vector = Eigen::Matrix<ld, Eigen::Dynamic, 1>;

inline constexpr double inf = std::numeric_limits<double>::infinity();
inline constexpr ld ld_inf = std::numeric_limits<ld>::infinity();

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

// Sizes: small enough that a maker's whole suite runs in well under a second, since the
// references cost N^2 (d + M) long double operations per problem.
inline constexpr index_t n_tokens = 32;
inline constexpr index_t head_dim = 16;
inline constexpr index_t value_dim = 4;

// ---- Inputs ------------------------------------------------------------------------------------

/// q and k are uniform in [-1, 1)^d, optionally with every row rescaled to `row_norm`; v is
/// uniform in [1, 3); then each is multiplied by its scale.
struct input_case {
  const char* name;
  double row_norm;  // 0: keep the uniform rows
  double q_scale, k_scale, v_scale;
  /// Logits and features of order 1 at most: every mechanism, whatever it is, must return.
  bool ordinary = false;
};

// Row norms 1, 10, 100 with d = 16 give logits q.k / sqrt(d) up to 0.25, 25 and 2500. Scaled
// cases: 1e-30 makes q.k ~1e-60, which underflows float to 0 (and is ~0 in double): uniform
// attention. 1e30 makes q.k ~1e60: beyond float (max ~3.4e38), representable in double.
// "q x 1e30" alone keeps q.k ~1e30 (representable in float, logits ~1e29: one-hot), and
// "q x 1e-30, k x 1e30" keeps q.k of order 1 with both operands extreme. 1e-40 is subnormal in
// float (smallest normal ~1.2e-38).
inline const std::vector<input_case>& input_cases() {
  static const std::vector<input_case> cases = {
      {"row norms 1", 1, 1, 1, 1, true},
      {"row norms 10", 10, 1, 1, 1, true},
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

/// One problem, already rounded to the scalar type it is built for (stored in double). Under
/// shared-QK k is q (the mechanism is handed q as its keys).
struct problem {
  row_matrix<double> q, k, v;
};

template <class T>
problem make_problem(const input_case& c, std::uint64_t seed, bool shared_qk = false,
                     index_t n = n_tokens, index_t d = head_dim, index_t dv = value_dim) {
  row_matrix<double> q = random_matrix<double>(n, d, seed);
  row_matrix<double> k = random_matrix<double>(n, d, seed + 1);
  row_matrix<double> v = (random_matrix<double>(n, dv, seed + 2).array() + 2.0).matrix();
  if (c.row_norm > 0) {
    for (index_t i = 0; i < n; ++i) {
      q.row(i) *= c.row_norm / q.row(i).norm();
      k.row(i) *= c.row_norm / k.row(i).norm();
    }
  }
  q *= c.q_scale;
  k *= c.k_scale;
  v *= c.v_scale;
  problem p{q.cast<T>().template cast<double>(), k.cast<T>().template cast<double>(),
            v.cast<T>().template cast<double>()};
  if (shared_qk) p.k = p.q;
  return p;
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
inline bool mentions_overflow(const std::string& message) {
  return message.find("overflow") != std::string::npos ||
         message.find("underflow") != std::string::npos;
}

/// FAVOR's documented refusal when, in T, every product phi(q).phi(k) a query's normaliser sums
/// underflows to zero. At query and key norms where the features span more than T's exponent
/// range, whether that happens depends on the platform's exp: Eigen's SSE and AVX2 exp return
/// subnormal results down to about e^-103 in float, its AVX-512 exp flushes them to zero below
/// e^-87.3, so one input can be finite on one host and refused on the other.
inline bool mentions_vanished_normaliser(const std::string& message) {
  return message.find("normaliser vanished") != std::string::npos;
}

/// PERFORMER_EXTREME_VERBOSE=1 prints, per labelled run, whether it returned or threw, how many
/// rows were compared against the reference and the largest error as a fraction of its bound.
inline bool verbose() {
  static const bool on = std::getenv("PERFORMER_EXTREME_VERBOSE") != nullptr;
  return on;
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

template <class T>
std::string label_of(const std::string& mechanism, const input_case& c, bool causal) {
  std::ostringstream os;
  os << mechanism << "<" << type_name<T>() << ">, " << c.name
     << (causal ? ", causal" : ", bidirectional");
  return os.str();
}

/// What each output row must satisfy. `tol(i)` is the bound on max_c |out_ic - ref_ic| (inf when
/// the row is not well-conditioned in T); `slack(i)` how far outside the visible values' hull a
/// row may lie (inf: no hull check, e.g. trigonometric features, whose weights can be negative).
struct row_expectations {
  ld_matrix ref;
  Eigen::VectorXd tol, slack;
};

/// No reference, the hull within `slack` (inf: none) for every row.
inline row_expectations contract_expectations(const problem& p, double slack) {
  const index_t n = p.q.rows();
  return {ld_matrix::Zero(n, p.v.cols()), Eigen::VectorXd::Constant(n, inf),
          Eigen::VectorXd::Constant(n, slack)};
}

/// Checks every row of an output against the contract and the expectations. Query i sees keys
/// j <= i when causal, else all keys.
template <class T>
void check_rows(violations& bad, const row_matrix<T>& out_t, const problem& p, bool causal,
                const row_expectations& e) {
  const row_matrix<double> out = out_t.template cast<double>();
  int compared = 0;
  double worst = 0;
  for (index_t i = 0; i < out.rows(); ++i) {
    if (!out.row(i).allFinite()) {
      bad.add("row ", i, " is not finite: ", out.row(i));
      continue;
    }
    const index_t visible = causal ? i + 1 : p.k.rows();
    if (out.row(i).isZero(0)) {
      bad.add("row ", i, " is the 'no visible key' zero row, but the query sees ", visible,
              " keys (values in [1, 3) x scale)");
      continue;
    }
    if (std::isfinite(e.slack(i))) {
      for (index_t c = 0; c < out.cols(); ++c) {
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
      for (index_t c = 0; c < out.cols(); ++c) {
        err =
            std::max(err, static_cast<double>(std::abs(static_cast<ld>(out(i, c)) - e.ref(i, c))));
      }
      ++compared;
      worst = std::max(worst, err / e.tol(i));
      if (!(err <= e.tol(i))) {
        bad.add("row ", i, ": |out - ref| = ", err, " > tolerance ", e.tol(i), " (out ", out(i, 0),
                ", ref ", static_cast<double>(e.ref(i, 0)), ")");
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

/// |a_i - b_i| <= tol_a(i) + tol_b(i) wherever both bounds are finite: a float mechanism against
/// its double twin directly (both are bounded against the same reference). Returns the number
/// of rows compared.
template <class A, class B>
int check_agreement(violations& bad, const A& a, const B& b, const row_expectations& ea,
                    const row_expectations& eb) {
  int compared = 0;
  double worst = 0;
  for (index_t i = 0; i < a.rows(); ++i) {
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
  return compared;
}

/// exp and expm1 without libm's slow error path for results beyond long double's range (the
/// references take exponentials of differences of logits of 1e60).
inline ld exp_of(ld x) { return x < -12000 ? 0.0L : x > 12000 ? ld_inf : std::exp(x); }
inline ld expm1_of(ld x) { return x > 12000 ? ld_inf : std::expm1(x); }

}  // namespace performer::conformance::extreme
