// LSH attention's bad input (docs/bad_input_matrix.md §1 and §2): the reusable suite on every
// LSH maker, the constructors' checks and lsh_attention::buckets.
#include <gtest/gtest.h>

#include <string_view>
#include <type_traits>
#include <vector>

#include <performer/testing/bad_input.hpp>

#include "lsh/makers.hpp"
#include "support/bad_input_cells.hpp"

namespace performer::test {
// Named as well as anonymous: the unity build compiles several test files as one.
namespace lsh_bad_input_test {
namespace {

using conformance::random_matrix;

constexpr index_t n = 6;
constexpr index_t d = 4;

/// The makers with what the suite needs to know of LSH: the function its messages name, the
/// hash family's fixed head width, and, with separate keys, inputs whose logits overflow.
template <class Maker>
struct lsh_bad_input_maker : Maker {
  using A = typename Maker::attention_type;
  using T = typename A::scalar_type;
  static constexpr std::string_view forward_name = "lsh_attention::forward";
  static constexpr bool fixed_head_width = true;
  static constexpr std::string_view overflow_skip_reason =
      "shared-QK keys are unit vectors: a logit is at most |q| / sqrt(d), and no finite input "
      "is known whose logit leaves T";

  static std::vector<conformance::overflow_input<T>> overflow_inputs(A& a, index_t head_dim,
                                                                     index_t d_v) {
    if constexpr (conformance::bad_input_traits<Maker>::shared_qk) {
      return {};
    } else {
      if constexpr (std::is_same_v<typename A::hash_type, angular_hash<T>>) {
        // Opposite vectors never share a bucket; zero rotations put every token in bucket 0,
        // so the query meets the key in its window. The example family keeps its hyperplanes:
        // the query's buckets then hold no key, and the fallback attends to it instead.
        for (index_t r = 0; r < a.options().hashes; ++r) {
          a.hash_family().set_rotation(r, row_matrix<T>::Zero(head_dim, a.bucket_count(1) / 2));
        }
      }
      return conformance::logit_overflow_inputs<T>(head_dim, d_v);
    }
  }
};

using lsh_bad_input_makers = conformance::wrap_each_t<lsh_bad_input_maker, lsh_core_makers>;

TEST(LshBadInput, LshCtor_NonPositiveHeadDim) {
  for_float_and_double([]<class T>() {
    PERFORMER_EXPECT_INVALID("lsh_attention", "head_dim must be positive (got 0)",
                             lsh_attention<T>(0));
    PERFORMER_EXPECT_INVALID("lsh_attention", "head_dim must be positive (got -4)",
                             lsh_attention<T>(-4));
  });
}

// buckets = 0 is valid since the automatic bucket count (lsh_options): it is no longer a cell
// of "bad buckets" but of "accepted".
TEST(LshBadInput, LshCtor_BadBuckets) {
  for_float_and_double([]<class T>() {
    using lsh = lsh_attention<T>;
    for (const index_t bad : {index_t{-2}, index_t{1}, index_t{3}, index_t{31}}) {
      SCOPED_TRACE(bad);
      PERFORMER_EXPECT_INVALID(
          "lsh_attention",
          "buckets must be 0 (automatic) or even and at least 2 (got " + std::to_string(bad) + ")",
          lsh(d, {.buckets = bad}));
    }
    for (const index_t bad : {lsh_max_buckets + 2, index_t{1} << 31}) {
      PERFORMER_EXPECT_INVALID("lsh_attention", "buckets must be at most 1073741824",
                               lsh(d, {.buckets = bad}));
    }
    EXPECT_NO_THROW(lsh(d, {.buckets = 0}));
    EXPECT_NO_THROW(lsh(d, {.buckets = lsh_max_buckets}));
  });
}

TEST(LshBadInput, LshCtor_BadHashesAndChunk) {
  for_float_and_double([]<class T>() {
    using lsh = lsh_attention<T>;
    PERFORMER_EXPECT_INVALID("lsh_attention", "hashes must be at least 1 (got 0)",
                             lsh(d, {.hashes = 0}));
    PERFORMER_EXPECT_INVALID("lsh_attention", "hashes must be at least 1 (got -1)",
                             lsh(d, {.hashes = -1}));
    PERFORMER_EXPECT_INVALID("lsh_attention", "chunk must be at least 1 (got 0)",
                             lsh(d, {.chunk = 0}));
    PERFORMER_EXPECT_INVALID("lsh_attention", "chunk must be at least 1 (got -5)",
                             lsh(d, {.chunk = -5}));
  });
}

// With a given hash family the options' hashes and seed are not used (the family has its own
// rounds), but buckets and chunk are still checked.
TEST(LshBadInput, LshCtor_WithFamily) {
  for_float_and_double([]<class T>() {
    using lsh = lsh_attention<T>;
    PERFORMER_EXPECT_INVALID("lsh_attention", "chunk must be at least 1",
                             lsh(angular_hash<T>(d, 2), {.chunk = 0}));
    PERFORMER_EXPECT_INVALID("lsh_attention", "buckets must be 0 (automatic) or even",
                             lsh(angular_hash<T>(d, 2), {.buckets = 5}));
    const lsh a(angular_hash<T>(d, 3), {.hashes = 0});
    EXPECT_EQ(a.options().hashes, 3);
  });
}

template <class T>
lsh_attention<T> small_lsh() {
  return lsh_attention<T>(d, {.buckets = 4, .hashes = 2, .chunk = 2, .seed = 1});
}

constexpr const char* buckets_of = "lsh_attention::buckets";

// One row at a time is what bucket_of(x, r) did before the hash-family API.
TEST(LshBadInput, LshBuckets_RowWrongSize) {
  for_float_and_double([]<class T>() {
    const auto lsh = small_lsh<T>();
    PERFORMER_EXPECT_INVALID(buckets_of, "x is 1x5, expected 4 columns",
                             lsh.buckets(row_vector<T>::Ones(d + 1), 0));
    PERFORMER_EXPECT_INVALID(buckets_of, "x is 1x0, expected 4 columns",
                             lsh.buckets(row_vector<T>(0), 0));
  });
}

TEST(LshBadInput, LshBuckets_RowNonFinite) {
  for_float_and_double([]<class T>() {
    const auto lsh = small_lsh<T>();
    for (const T bad : {nan_v<T>, inf_v<T>, -inf_v<T>}) {
      row_vector<T> x = row_vector<T>::Ones(d);
      x(2) = bad;
      PERFORMER_EXPECT_INVALID(buckets_of, "x (1x4) contains a NaN or an infinity",
                               lsh.buckets(x, 0));
    }
  });
}

TEST(LshBadInput, LshBuckets_RowRoundOutOfRange) {
  for_float_and_double([]<class T>() {
    const auto lsh = small_lsh<T>();
    PERFORMER_EXPECT_INVALID(buckets_of, "round 2 is out of range (hashes = 2)",
                             lsh.buckets(row_vector<T>::Ones(d), 2));
    PERFORMER_EXPECT_INVALID(buckets_of, "round -1 is out of range",
                             lsh.buckets(row_vector<T>::Ones(d), -1));
  });
}

TEST(LshBadInput, LshBuckets_ZeroRow) {
  // Documented: a zero vector has no direction and goes to bucket 0 in every round.
  for_float_and_double([]<class T>() {
    const auto lsh = small_lsh<T>();
    EXPECT_EQ(lsh.buckets(row_vector<T>::Zero(d), 0), std::vector<index_t>{0});
    EXPECT_EQ(lsh.buckets(row_vector<T>::Zero(d), 1), std::vector<index_t>{0});
  });
}

TEST(LshBadInput, LshBuckets_WrongWidth) {
  for_float_and_double([]<class T>() {
    const auto lsh = small_lsh<T>();
    PERFORMER_EXPECT_INVALID(buckets_of, "x is 6x5, expected 4 columns",
                             lsh.buckets(random_matrix<T>(n, d + 1, 1), 0));
  });
}

TEST(LshBadInput, LshBuckets_NonFinite) {
  for_float_and_double([]<class T>() {
    const auto lsh = small_lsh<T>();
    row_matrix<T> x = random_matrix<T>(n, d, 1);
    x(4, 0) = nan_v<T>;
    PERFORMER_EXPECT_INVALID(buckets_of, "x (6x4) contains a NaN", lsh.buckets(x, 0));
    x(4, 0) = inf_v<T>;
    PERFORMER_EXPECT_INVALID(buckets_of, "x (6x4) contains a NaN", lsh.buckets(x, 0));
  });
}

TEST(LshBadInput, LshBuckets_RoundOutOfRange) {
  for_float_and_double([]<class T>() {
    const auto lsh = small_lsh<T>();
    PERFORMER_EXPECT_INVALID(buckets_of, "round 2 is out of range",
                             lsh.buckets(random_matrix<T>(n, d, 1), 2));
  });
}

TEST(LshBadInput, LshBuckets_NegativeKeyCount) {
  for_float_and_double([]<class T>() {
    const auto lsh = small_lsh<T>();
    PERFORMER_EXPECT_INVALID(buckets_of, "n_keys is negative (-1)",
                             lsh.buckets(random_matrix<T>(n, d, 1), 0, -1));
  });
}

TEST(LshBadInput, LshBuckets_Empty) {
  // No rows is not an error here: there is nothing to hash, and the result is empty.
  for_float_and_double([]<class T>() {
    const auto lsh = small_lsh<T>();
    EXPECT_TRUE(lsh.buckets(row_matrix<T>(0, d), 0).empty());
    EXPECT_TRUE(lsh_attention<T>(d).buckets(row_matrix<T>(0, d), 0).empty());  // automatic b
  });
}

}  // namespace
}  // namespace lsh_bad_input_test
using namespace lsh_bad_input_test;  // for what follows
}  // namespace performer::test

namespace performer::conformance {
INSTANTIATE_TYPED_TEST_SUITE_P(lsh, attention_bad_input, test::lsh_bad_input_makers);
}  // namespace performer::conformance
