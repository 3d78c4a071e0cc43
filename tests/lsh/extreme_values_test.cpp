// Covers performer/lsh/lsh_attention.hpp under extreme values: the extreme-values suite
// (performer/testing/extreme_values.hpp) for every LSH maker: the contract as made; with every
// token hashed to one bucket, exact softmax over the chunk windows (shared-QK with the 1e5
// self-penalty); a float mechanism against its double twin where their buckets agree.
#include <performer/testing/extreme_values.hpp>

#include "lsh/makers.hpp"

namespace performer::conformance {
// Named as well as anonymous: the unity build compiles several test files as one.
namespace lsh_extreme_values_test {
namespace {

/// Two buckets, two rounds and one chunk of all the suite's 32 keys: with one bucket every
/// query's window is every key it may see (both rounds propose each key, counted once).
template <class T, bool Shared>
struct one_window_maker : test::lsh_maker_base<lsh_attention<T>> {
  static constexpr bool shared_qk = Shared;
  static constexpr bool cross_padding_equivalence = false;
  static lsh_attention<T> make(index_t head_dim) {
    return lsh_attention<T>(
        head_dim, {.buckets = 2, .hashes = 2, .chunk = 32, .shared_qk = Shared, .seed = 1});
  }
};

/// Seeded rotations: 4 buckets, 2 rounds, chunks of 8, so windows are real subsets.
template <class T, bool Shared>
struct seeded_maker : test::lsh_maker_base<lsh_attention<T>> {
  static constexpr bool shared_qk = Shared;
  static constexpr bool cross_padding_equivalence = false;
  static lsh_attention<T> make(index_t head_dim) {
    return lsh_attention<T>(
        head_dim, {.buckets = 4, .hashes = 2, .chunk = 8, .shared_qk = Shared, .seed = 3});
  }
};

}  // namespace
}  // namespace lsh_extreme_values_test
using namespace lsh_extreme_values_test;  // for what follows

// The shared-QK reference applies the documented rule: logit (i, i) := -|logit (i, i)| - 1e5.
// With trax's plain "lowered by 1e5" (the rule before these tests found the problem) a token at
// |q_i| ~ 1e6 (d = 16) or at scale 1e30 attended to itself alone although it had other keys.
using extreme_lsh_makers =
    join_types<test::lsh_makers,
               ::testing::Types<one_window_maker<float, true>, one_window_maker<double, true>,
                                one_window_maker<float, false>, one_window_maker<double, false>,
                                seeded_maker<float, true>, seeded_maker<float, false>>>::type;
INSTANTIATE_TYPED_TEST_SUITE_P(lsh, attention_extreme_values, extreme_lsh_makers);

}  // namespace performer::conformance
