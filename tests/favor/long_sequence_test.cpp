// Covers the float accumulation of performer/favor/favor_attention.hpp (causal path) and
// performer/favor/favor_decoder.hpp over 2^20 tokens, against the same computation with a
// double accumulator (same float features, so only the sums differ).
//
// The bound (docs/algorithms.md §2.7). The float path's output is num / den, each a sum of
// positive weights (times values for num) built by a chain of additions: for the causal path
// the folds of a block's C-token chunks into the block's state (B / C), the prefix over the
// blocks' states (N / B), the merge of the two, the C-term sums inside a chunk's products, the
// M-term dot product with the query's features, and one rescaling per rise of the running
// maximum (R rises) or of a block's own maximum (at most B / C per block), and the correction to
// the query's shift; for the decoder one fold per token (N folds). Modelling the
// roundings as independent with mean zero (Higham and Mary, SIAM J. Sci. Comput. 41(5), 2019,
// Theorem 3.1), a chain of n additions has relative error at most lambda sqrt(n) u with
// probability at least 1 - 2 exp(-lambda^2 / 2); lambda = 6 makes a failure by chance less likely
// than 3e-8. So |den_f - den| <= gamma den and |num_f - num| <= gamma sum_j w_j |v_j| <=
// gamma den max|v| with gamma = lambda u (sqrt(chain) + ...), and
// |out_f - out| <= gamma max|v| + |out| gamma <= 2 gamma max|v|.
// The worst-case bound (n u instead of sqrt(n) u: 2^20 u = 0.0625 for the decoder) could not
// catch a real accumulation bug; this one is about 7e-4 of max|v| for the decoder and 1e-4 for
// the causal path, and a state that is not rescaled or folded wrongly is off by O(1).
// Test names start with LongSequence: sanitizer builds leave them out (seconds here, minutes
// under ASan; the same code runs under ASan in every other FAVOR test).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>

#include <performer/core/attend.hpp>
#include <performer/favor/favor_attention.hpp>
#include <performer/favor/favor_decoder.hpp>
#include <performer/favor/features/positive_features.hpp>
#include <performer/testing/helpers.hpp>

#include "favor/makers.hpp"

// Named as well as anonymous: the unity build compiles several test files as one.
namespace favor_long_sequence_test {
namespace {

using performer::index_t;
using performer::row_matrix;
using performer::conformance::random_matrix;

constexpr index_t n = index_t{1} << 20;
constexpr index_t d = 8;
constexpr index_t m = 16;
constexpr index_t d_v = 4;
constexpr double u = 0x1p-24;  // float's unit roundoff
constexpr double lambda = 6.0;

using float_sums = performer::favor_attention<float>;
using double_sums = performer::test::favor_mixed<float>;

struct inputs {
  row_matrix<float> q = random_matrix<float>(n, d, 11);
  row_matrix<float> k = random_matrix<float>(n, d, 12);
  row_matrix<float> v = random_matrix<float>(n, d_v, 13);
};

const inputs& data() {
  static const inputs in;
  return in;
}

/// Rises of the running maximum of the keys' log scales: the rescalings the state went through.
index_t rises_of(const float_sums& a, const row_matrix<float>& k) {
  row_matrix<float> phi(1, m);
  performer::vector<float> log_scale(1);
  index_t rises = 0;
  float top = -std::numeric_limits<float>::infinity();
  for (index_t j = 0; j < k.rows(); ++j) {
    a.feature_map().apply(a.projection().matrix(), k.row(j), phi, log_scale);
    if (log_scale(0) > top) {
      top = log_scale(0);
      ++rises;
    }
  }
  return rises;
}

TEST(LongSequence, CausalFloatAccumulationOverAMillionTokens) {
  const auto& in = data();
  const float_sums f(d, m, 5);
  const double_sums g(d, m, 5);
  ASSERT_EQ(f.projection().matrix(), g.projection().matrix());
  const index_t c = f.options().chunk;
  const index_t b_rows = f.options().block;
  const row_matrix<float> a = performer::attend(f, in.q, in.k, in.v, {.causal = true});
  const row_matrix<float> b = performer::attend(g, in.q, in.k, in.v, {.causal = true});
  const double chain = std::sqrt(static_cast<double>(n / b_rows + b_rows / c + 1)) +
                       std::sqrt(static_cast<double>(c)) + std::sqrt(static_cast<double>(m)) +
                       static_cast<double>(rises_of(f, in.k) + b_rows / c + 1);
  const double bound = 2.0 * lambda * u * chain * static_cast<double>(in.v.cwiseAbs().maxCoeff());
  const double error = (a - b).cwiseAbs().maxCoeff();
  RecordProperty("max_error", std::to_string(error));
  RecordProperty("bound", std::to_string(bound));
  EXPECT_LE(error, bound) << "max |float sums - double sums| over " << n << " tokens";
  EXPECT_GT(error, 0.0) << "the two accumulators agree exactly: the comparison is vacuous";
}

TEST(LongSequence, DecoderFloatAccumulationOverAMillionTokens) {
  const auto& in = data();
  const float_sums f(d, m, 5);
  const double_sums g(d, m, 5);
  performer::favor_decoder<float> fd(f, d_v);
  performer::favor_decoder<float, performer::positive_features<float>, performer::orthogonal_sampler,
                           double>
      gd(g, d_v);
  performer::row_vector<float> a(d_v);
  performer::row_vector<float> b(d_v);
  double error = 0;
  for (index_t t = 0; t < n; ++t) {
    fd.step(in.q.row(t), in.k.row(t), in.v.row(t), a);
    gd.step(in.q.row(t), in.k.row(t), in.v.row(t), b);
    error = std::max(error, static_cast<double>((a - b).cwiseAbs().maxCoeff()));
  }
  const double chain = std::sqrt(static_cast<double>(n)) + std::sqrt(static_cast<double>(m)) +
                       static_cast<double>(rises_of(f, in.k));
  const double bound = 2.0 * lambda * u * chain * static_cast<double>(in.v.cwiseAbs().maxCoeff());
  RecordProperty("max_error", std::to_string(error));
  RecordProperty("bound", std::to_string(bound));
  EXPECT_LE(error, bound) << "max |float state - double state| over " << n << " decoding steps";
  EXPECT_GT(error, 0.0) << "the two accumulators agree exactly: the comparison is vacuous";
}

}  // namespace
}  // namespace favor_long_sequence_test
