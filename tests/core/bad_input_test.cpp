// performer::attend's bad input (docs/bad_input_matrix.md §1, column "attend"): it allocates out
// and forwards to the mechanism (here softmax_attention), so out's shape and aliasing cannot be
// wrong, and every message names the mechanism's forward.
#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include <performer/core/attend.hpp>
#include <performer/softmax/softmax_attention.hpp>
#include <performer/testing/bad_input_traits.hpp>

#include "support/bad_input_cells.hpp"

namespace performer::test {
// Named as well as anonymous: the unity build compiles several test files as one.
namespace core_bad_input_test {
namespace {

using conformance::random_matrix;

constexpr index_t n = 6;
constexpr index_t d = 4;
constexpr index_t dv = 4;
constexpr const char* who = "softmax_attention::forward";

template <class T>
row_matrix<T> attend_softmax(const row_matrix<T>& q, const row_matrix<T>& k, const row_matrix<T>& v,
                             const attention_mask& mask = {}) {
  return attend(softmax_attention<T>{}, q, k, v, mask);
}

TEST(CoreBadInput, Attend_EmptySequences) {
  for_float_and_double([]<class T>() {
    const auto q = random_matrix<T>(n, d, 1);
    const auto v = random_matrix<T>(n, dv, 3);
    PERFORMER_EXPECT_INVALID(who, "empty query sequence (q is 0x4)",
                             attend_softmax<T>(row_matrix<T>(0, d), q, v));
    PERFORMER_EXPECT_INVALID(who, "empty key sequence (k is 0x4)",
                             attend_softmax<T>(q, row_matrix<T>(0, d), row_matrix<T>(0, dv)));
  });
}

TEST(CoreBadInput, Attend_ZeroWidths) {
  for_float_and_double([]<class T>() {
    const auto q = random_matrix<T>(n, d, 1);
    const auto v = random_matrix<T>(n, dv, 3);
    PERFORMER_EXPECT_INVALID(who, "zero head width (q is 6x0)",
                             attend_softmax<T>(row_matrix<T>(n, 0), row_matrix<T>(n, 0), v));
    PERFORMER_EXPECT_INVALID(who, "zero value width (v is 6x0)",
                             attend_softmax<T>(q, q, row_matrix<T>(n, 0)));
  });
}

TEST(CoreBadInput, Attend_MismatchedShapes) {
  for_float_and_double([]<class T>() {
    const auto q = random_matrix<T>(n, d, 1);
    const auto v = random_matrix<T>(n, dv, 3);
    PERFORMER_EXPECT_INVALID(who, "k is 6x3 but q is 6x4; queries and keys need the same width",
                             attend_softmax<T>(q, random_matrix<T>(n, d - 1, 2), v));
    PERFORMER_EXPECT_INVALID(who, "v is 5x4 but k is 6x4; keys and values need the same number",
                             attend_softmax<T>(q, q, v.topRows(n - 1)));
  });
}

TEST(CoreBadInput, Attend_KeyMaskLength) {
  for_float_and_double([]<class T>() {
    const auto q = random_matrix<T>(n, d, 1);
    const std::vector<std::uint8_t> keep(n + 1, 1);
    PERFORMER_EXPECT_INVALID(who, "key_mask has 7 entries, expected 6",
                             attend_softmax<T>(q, q, q, {false, keep}));
  });
}

TEST(CoreBadInput, Attend_CausalCrossLength) {
  for_float_and_double([]<class T>() {
    const auto q = random_matrix<T>(n, d, 1);
    PERFORMER_EXPECT_INVALID(who,
                             "causal masking needs as many queries as keys (q is 5x4, k is 6x4)",
                             attend_softmax<T>(q.topRows(n - 1), q, q, {true, {}}));
  });
}

TEST(CoreBadInput, Attend_NaNAndInf) {
  for_float_and_double([]<class T>() {
    const auto q = random_matrix<T>(n, d, 1);
    for (const T bad : {nan_v<T>, inf_v<T>, -inf_v<T>}) {
      row_matrix<T> broken = q;
      broken(2, 2) = bad;
      PERFORMER_EXPECT_INVALID(who, "q (6x4) contains a NaN or an infinity",
                               attend_softmax<T>(broken, q, q));
      PERFORMER_EXPECT_INVALID(who, "k (6x4) contains a NaN", attend_softmax<T>(q, broken, q));
      PERFORMER_EXPECT_INVALID(who, "v (6x4) contains a NaN", attend_softmax<T>(q, q, broken));
    }
  });
}

TEST(CoreBadInput, Attend_ColumnMajorNaN) {
  // attend copies a column-major input into row-major storage first; the copy is checked.
  for_float_and_double([]<class T>() {
    Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic> q = random_matrix<T>(n, d, 1);
    q(3, 0) = nan_v<T>;
    const auto k = random_matrix<T>(n, d, 2);
    PERFORMER_EXPECT_INVALID(who, "q (6x4) contains a NaN",
                             attend(softmax_attention<T>{}, q, k, k));
    PERFORMER_EXPECT_INVALID(who, "v (6x4) contains a NaN",
                             attend(softmax_attention<T>{}, k, k, q.transpose().transpose()));
  });
}

TEST(CoreBadInput, Attend_NoVisibleKey) {
  for_float_and_double([]<class T>() {
    const auto q = random_matrix<T>(n, d, 1);
    const std::vector<std::uint8_t> none(n, 0);
    for (const bool causal : {false, true}) {
      const auto out = attend_softmax<T>(q, q, q, {causal, none});
      EXPECT_TRUE(out.isZero(0)) << out;
    }
  });
}

TEST(CoreBadInput, Attend_LogitOverflow) {
  for_float_and_double([]<class T>() {
    for (const auto& c : conformance::logit_overflow_inputs<T>(2, 1)) {
      SCOPED_TRACE(c.what);
      PERFORMER_EXPECT_INVALID(who, "overflowed", attend_softmax<T>(c.q, c.k, c.v));
    }
  });
}

}  // namespace
}  // namespace core_bad_input_test
}  // namespace performer::test
