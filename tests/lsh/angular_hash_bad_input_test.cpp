// The hash families' bad input (docs/bad_input_matrix.md §2): angular_hash's constructor,
// rotation, set_rotation and redraw, a rotation that does not fit the call's bucket count, and
// the example family's constructor and bucket counts.
#include <gtest/gtest.h>

#include <performer/lsh/angular_hash.hpp>
#include <performer/lsh/example_hash_family.hpp>
#include <performer/lsh/lsh_attention.hpp>
#include <performer/testing/expect_invalid.hpp>
#include <performer/testing/helpers.hpp>

#include "support/bad_input_cells.hpp"

namespace performer::test {
// Named as well as anonymous: the unity build compiles several test files as one.
namespace lsh_angular_hash_bad_input_test {
namespace {

using conformance::random_matrix;

constexpr index_t n = 6;
constexpr index_t d = 4;

template <class T>
lsh_attention<T> small_lsh() {
  return lsh_attention<T>(d, {.buckets = 4, .hashes = 2, .chunk = 2, .seed = 1});
}

TEST(LshBadInput, AngularHashCtor_NonPositive) {
  for_float_and_double([]<class T>() {
    PERFORMER_EXPECT_INVALID("angular_hash", "dim must be positive (got 0)", angular_hash<T>(0));
    PERFORMER_EXPECT_INVALID("angular_hash", "dim must be positive (got -3)",
                             angular_hash<T>(-3, 2));
    PERFORMER_EXPECT_INVALID("angular_hash", "rounds must be at least 1 (got 0)",
                             angular_hash<T>(d, 0));
  });
}

TEST(LshBadInput, LshRotation_RoundOutOfRange) {
  for_float_and_double([]<class T>() {
    const auto lsh = small_lsh<T>();
    const auto& family = lsh.hash_family();
    PERFORMER_EXPECT_INVALID("angular_hash::rotation", "round -1 is out of range (rounds = 2)",
                             family.rotation(-1, 4));
    PERFORMER_EXPECT_INVALID("angular_hash::rotation", "round 2 is out of range (rounds = 2)",
                             family.rotation(2, 4));
  });
}

// The rotations are the family's now, for any bucket count it may be asked for.
TEST(LshBadInput, LshRotation_BadBucketCount) {
  for_float_and_double([]<class T>() {
    const auto lsh = small_lsh<T>();
    for (const index_t bad : {index_t{0}, index_t{-2}, index_t{3}, index_t{130}}) {
      SCOPED_TRACE(bad);
      PERFORMER_EXPECT_INVALID("angular_hash::rotation", "buckets must be even and in [2, 128]",
                               lsh.hash_family().rotation(0, bad));
    }
    EXPECT_EQ(lsh.hash_family().rotation(0, 128).cols(), 64);
  });
}

TEST(LshBadInput, LshSetRotation_RoundOutOfRange) {
  for_float_and_double([]<class T>() {
    auto lsh = small_lsh<T>();
    const row_matrix<T> r = random_matrix<T>(d, 2, 5);
    PERFORMER_EXPECT_INVALID("angular_hash::set_rotation", "round -1 is out of range",
                             lsh.hash_family().set_rotation(-1, r));
    PERFORMER_EXPECT_INVALID("angular_hash::set_rotation", "round 2 is out of range",
                             lsh.hash_family().set_rotation(2, r));
  });
}

// A d x 3 rotation was "the wrong shape" for 4 buckets before the hash-family API; it is now a
// valid rotation for 6 buckets (LshForward_RotationForOtherBucketCount covers its misuse).
TEST(LshBadInput, LshSetRotation_WrongShape) {
  for_float_and_double([]<class T>() {
    auto lsh = small_lsh<T>();
    const row_matrix<T> before = lsh.hash_family().rotation(0, 4);
    const char* who = "angular_hash::set_rotation";
    PERFORMER_EXPECT_INVALID(who, "rotation is 3x2, expected 4 x b/2 with b/2 in [1, 64]",
                             lsh.hash_family().set_rotation(0, random_matrix<T>(d - 1, 2, 5)));
    PERFORMER_EXPECT_INVALID(who, "rotation is 4x0, expected 4 x b/2",
                             lsh.hash_family().set_rotation(0, row_matrix<T>(d, 0)));
    PERFORMER_EXPECT_INVALID(who, "rotation is 4x65, expected 4 x b/2",
                             lsh.hash_family().set_rotation(0, random_matrix<T>(d, 65, 5)));
    EXPECT_EQ(lsh.hash_family().rotation(0, 4), before);  // a rejected rotation changes nothing
  });
}

TEST(LshBadInput, LshSetRotation_NonFinite) {
  for_float_and_double([]<class T>() {
    auto lsh = small_lsh<T>();
    const row_matrix<T> before = lsh.hash_family().rotation(1, 4);
    for (const T bad : {nan_v<T>, inf_v<T>, -inf_v<T>}) {
      row_matrix<T> r = random_matrix<T>(d, 2, 5);
      r(1, 1) = bad;
      PERFORMER_EXPECT_INVALID("angular_hash::set_rotation",
                               "rotation (4x2) contains a NaN or an infinity",
                               lsh.hash_family().set_rotation(1, r));
    }
    EXPECT_EQ(lsh.hash_family().rotation(1, 4), before);
  });
}

TEST(LshBadInput, LshSetRotation_ZeroMatrix) {
  // Documented: a zero rotation sends every vector to bucket 0 (all ties; the first index wins).
  for_float_and_double([]<class T>() {
    auto lsh = small_lsh<T>();
    lsh.hash_family().set_rotation(1, row_matrix<T>::Zero(d, 2));
    const auto buckets = lsh.buckets(random_matrix<T>(n, d, 6), 1);
    EXPECT_EQ(buckets, std::vector<index_t>(n, 0));
  });
}

// A user rotation fixes its round's bucket count: a call that needs another count throws, and
// the message, from the family, says which lsh_options::buckets would fit.
TEST(LshBadInput, LshForward_RotationForOtherBucketCount) {
  for_float_and_double([]<class T>() {
    auto lsh = small_lsh<T>();
    lsh.hash_family().set_rotation(0, row_matrix<T>::Zero(d, 3));  // 6 buckets; the options say 4
    const row_matrix<T> q = random_matrix<T>(n, d, 1);
    const row_matrix<T> v = random_matrix<T>(n, 2, 2);
    const char* fragment =
        "round 0's rotation is for 6 buckets but this call needs 4 (set "
        "lsh_options::buckets to 6)";
    PERFORMER_EXPECT_INVALID("angular_hash::prepare", fragment, conformance::run(lsh, q, q, v));
    PERFORMER_EXPECT_INVALID("angular_hash::prepare", fragment, lsh.buckets(q, 1));
    // Automatic buckets: the count follows N_k, so the same rotation fits one length only.
    lsh_attention<T> automatic(d, {.hashes = 1, .chunk = 3});
    automatic.hash_family().set_rotation(0, row_matrix<T>::Zero(d, 2));  // 4 buckets
    ASSERT_EQ(automatic.bucket_count(n), 4);
    EXPECT_NO_THROW(conformance::run(automatic, q, q, v));
    const row_matrix<T> longer = random_matrix<T>(4 * n, d, 3);
    PERFORMER_EXPECT_INVALID(
        "angular_hash::prepare", "set lsh_options::buckets to 4",
        conformance::run(automatic, longer, longer, random_matrix<T>(4 * n, 2, 4)));
  });
}

// Documented: redraw(seed) forgets user rotations, so a rotation that no longer fits stops
// mattering, and every seed is valid.
TEST(LshBadInput, AngularHashRedraw_ForgetsUserRotations) {
  for_float_and_double([]<class T>() {
    auto lsh = small_lsh<T>();
    const row_matrix<T> drawn = lsh.hash_family().rotation(0, 4);
    lsh.hash_family().set_rotation(0, row_matrix<T>::Zero(d, 3));
    lsh.hash_family().redraw(1);  // the seed it was built with
    EXPECT_EQ(lsh.hash_family().rotation(0, 4), drawn);
    const row_matrix<T> q = random_matrix<T>(n, d, 1);
    EXPECT_NO_THROW(conformance::run(lsh, q, q, random_matrix<T>(n, 2, 2)));
  });
}

TEST(LshBadInput, SignProjectionHashCtor_NonPositive) {
  for_float_and_double([]<class T>() {
    PERFORMER_EXPECT_INVALID("sign_projection_hash", "dim (0) and rounds (4) must be positive",
                             sign_projection_hash<T>(0));
    PERFORMER_EXPECT_INVALID("sign_projection_hash", "dim (4) and rounds (0) must be positive",
                             sign_projection_hash<T>(d, 0));
  });
}

// The example family needs a power of two; lsh_attention accepts any even count, so the family's
// prepare refuses it on the first call.
TEST(LshBadInput, SignProjectionHash_BucketsNotAPowerOfTwo) {
  for_float_and_double([]<class T>() {
    const lsh_attention<T, sign_projection_hash<T>> lsh(sign_projection_hash<T>(d, 2),
                                                        {.buckets = 6, .shared_qk = false});
    const row_matrix<T> q = random_matrix<T>(n, d, 1);
    PERFORMER_EXPECT_INVALID("sign_projection_hash::prepare", "6 buckets is not a power of two",
                             conformance::run(lsh, q, q, random_matrix<T>(n, 2, 2)));
  });
}

}  // namespace
}  // namespace lsh_angular_hash_bad_input_test
}  // namespace performer::test
