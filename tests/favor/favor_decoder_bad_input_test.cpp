// The recurrent decoder's bad input (docs/bad_input_matrix.md §3): favor_decoder's constructor,
// prime() and step(), and keys whose squared norm leaves T.
#include <gtest/gtest.h>

#include <performer/favor/favor_attention.hpp>
#include <performer/favor/favor_decoder.hpp>
#include <performer/testing/expect_invalid.hpp>
#include <performer/testing/helpers.hpp>

#include "support/bad_input_cells.hpp"

namespace performer::test {
// Named as well as anonymous: the unity build compiles several test files as one.
namespace favor_favor_decoder_bad_input_test {
namespace {

using conformance::random_matrix;
using conformance::relative_difference;

constexpr index_t d = 4;
constexpr index_t dv = 4;

template <class T>
favor_attention<T> decoder_attention() {
  return favor_attention<T>(d, 8, 1);
}

/// Fails unless `dec` is still at position 0 with an empty state: its next step gives the same
/// bits as a fresh decoder's (a rejected call folded nothing in, not even partly).
template <class T>
void expect_untouched(favor_decoder<T>& dec) {
  EXPECT_EQ(dec.position(), 0);
  favor_decoder<T> fresh(decoder_attention<T>(), dv);
  const row_vector<T> q = random_matrix<T>(1, d, 11);
  const row_vector<T> k = random_matrix<T>(1, d, 12);
  const row_vector<T> v = random_matrix<T>(1, dv, 13);
  row_vector<T> out(dv);
  row_vector<T> expected(dv);
  dec.step(q, k, v, out);
  fresh.step(q, k, v, expected);
  EXPECT_EQ(out, expected);
}

TEST(FavorDecoderBadInput, DecoderCtor_ZeroValueDim) {
  for_float_and_double([]<class T>() {
    const auto favor = decoder_attention<T>();
    PERFORMER_EXPECT_INVALID("favor_decoder", "value_dim must be positive (got 0)",
                             favor_decoder<T>(favor, 0));
  });
}

// Found by the matrix: a negative value_dim used to reach Eigen (the state is sized in the
// member initialisers) and fail an Eigen assertion. It is now checked before anything is sized.
TEST(FavorDecoderBadInput, DecoderCtor_NegativeValueDim) {
  for_float_and_double([]<class T>() {
    const auto favor = decoder_attention<T>();
    PERFORMER_EXPECT_INVALID("favor_decoder", "value_dim must be positive (got -1)",
                             favor_decoder<T>(favor, -1));
  });
}

TEST(FavorDecoderBadInput, DecoderPrime_WrongShapes) {
  for_float_and_double([]<class T>() {
    favor_decoder<T> dec(decoder_attention<T>(), dv);
    const auto k = random_matrix<T>(3, d, 1);
    const auto v = random_matrix<T>(3, dv, 2);
    const char* who = "favor_decoder::prime";
    PERFORMER_EXPECT_INVALID(who, "k is 3x5 and v is 3x4, expected n x 4 and n x 4",
                             dec.prime(random_matrix<T>(3, d + 1, 1), v));
    PERFORMER_EXPECT_INVALID(who, "v is 3x3, expected n x 4",
                             dec.prime(k, random_matrix<T>(3, dv - 1, 2)));
    PERFORMER_EXPECT_INVALID(who, "k is 3x4 and v is 2x4", dec.prime(k, v.topRows(2)));
    expect_untouched(dec);
  });
}

TEST(FavorDecoderBadInput, DecoderPrime_NonFinite) {
  for_float_and_double([]<class T>() {
    favor_decoder<T> dec(decoder_attention<T>(), dv);
    for (const T bad : {nan_v<T>, inf_v<T>, -inf_v<T>}) {
      row_matrix<T> k = random_matrix<T>(3, d, 1);
      row_matrix<T> v = random_matrix<T>(3, dv, 2);
      const row_matrix<T> good_k = k;
      k(2, 3) = bad;  // the last token: the first two must not be folded in meanwhile
      PERFORMER_EXPECT_INVALID("favor_decoder::prime", "k (3x4) contains a NaN or an infinity",
                               dec.prime(k, v));
      v(0, 1) = bad;
      PERFORMER_EXPECT_INVALID("favor_decoder::prime", "v (3x4) contains a NaN or an infinity",
                               dec.prime(good_k, v));
    }
    expect_untouched(dec);
  });
}

TEST(FavorDecoderBadInput, DecoderPrime_Empty) {
  // "Same as calling step() on each token": no tokens, nothing happens.
  for_float_and_double([]<class T>() {
    favor_decoder<T> dec(decoder_attention<T>(), dv);
    dec.prime(row_matrix<T>(0, d), row_matrix<T>(0, dv));
    expect_untouched(dec);
  });
}

TEST(FavorDecoderBadInput, DecoderStep_WrongShapes) {
  for_float_and_double([]<class T>() {
    favor_decoder<T> dec(decoder_attention<T>(), dv);
    const row_vector<T> x = random_matrix<T>(1, d, 1);
    const row_vector<T> v = random_matrix<T>(1, dv, 2);
    const row_vector<T> wide = random_matrix<T>(1, d + 1, 3);
    row_vector<T> out(dv);
    row_vector<T> wide_out(dv + 1);
    const char* who = "favor_decoder::step";
    PERFORMER_EXPECT_INVALID(who, "q has 5 and k has 4 entries, expected 4",
                             dec.step(wide, x, v, out));
    PERFORMER_EXPECT_INVALID(who, "q has 4 and k has 5 entries, expected 4",
                             dec.step(x, wide, v, out));
    PERFORMER_EXPECT_INVALID(who, "v has 5 and out has 4 entries, expected 4",
                             dec.step(x, x, wide, out));
    PERFORMER_EXPECT_INVALID(who, "v has 4 and out has 5 entries, expected 4",
                             dec.step(x, x, v, wide_out));
    expect_untouched(dec);
  });
}

TEST(FavorDecoderBadInput, DecoderStep_NonFinite) {
  for_float_and_double([]<class T>() {
    favor_decoder<T> dec(decoder_attention<T>(), dv);
    const row_vector<T> x = random_matrix<T>(1, d, 1);
    const row_vector<T> v = random_matrix<T>(1, dv, 2);
    row_vector<T> out(dv);
    const char* who = "favor_decoder::step";
    for (const T bad : {nan_v<T>, inf_v<T>, -inf_v<T>}) {
      row_vector<T> b = x;
      b(1) = bad;
      PERFORMER_EXPECT_INVALID(who, "q (1x4) contains a NaN or an infinity",
                               dec.step(b, x, v, out));
      PERFORMER_EXPECT_INVALID(who, "k (1x4) contains a NaN or an infinity",
                               dec.step(x, b, v, out));
      PERFORMER_EXPECT_INVALID(who, "v (1x4) contains a NaN or an infinity",
                               dec.step(x, x, b, out));
    }
    // Values are checked before the token is folded in, so a stream survives a rejected token.
    expect_untouched(dec);
  });
}

TEST(FavorDecoderBadInput, DecoderStep_OutAliasesInput) {
  // Not checked, and harmless: step reads q, k and v before it writes out.
  for_float_and_double([]<class T>() {
    const auto favor = decoder_attention<T>();
    const row_matrix<T> q = random_matrix<T>(1, d, 1);
    const row_matrix<T> k = random_matrix<T>(1, d, 2);
    const row_matrix<T> v = random_matrix<T>(1, dv, 3);
    favor_decoder<T> separate(favor, dv);
    row_vector<T> expected(dv);
    separate.step(q.row(0), k.row(0), v.row(0), expected);
    for (int which = 0; which < 3; ++which) {
      favor_decoder<T> dec(favor, dv);
      row_matrix<T> qa = q;
      row_matrix<T> ka = k;
      row_matrix<T> va = v;
      row_matrix<T>& target = which == 0 ? qa : which == 1 ? ka : va;
      dec.step(qa.row(0), ka.row(0), va.row(0), target.row(0));
      EXPECT_EQ(row_vector<T>(target.row(0)), expected) << "out aliasing input " << which;
    }
  });
}

// A finite key whose squared norm overflows T has a weight below T's range: 0, as if absent.
// The batch causal path drops it and stays finite; the decoder must give the same outputs,
// token by token. Before the fix of the fuzzer's
// tests/fuzz/corpus/regression-decoder-float-first-key-norm-overflow-nan-state, such a key made
// the decoder's state NaN and every later step threw.
// Here the huge key is token 1, so that every query still sees a key with a weight.
TEST(FavorDecoderBadInput, DecoderStep_KeyNormOverflow) {
  for_float_and_double([]<class T>() {
    const favor_attention<T> favor(2, 4, 1);
    row_matrix<T> q(3, 2);
    row_matrix<T> k(3, 2);
    row_matrix<T> v(3, 1);
    q << T(0.5), T(0.25), T(0.5), T(0.25), T(-0.5), T(0.75);
    k << T(0.25), T(-0.5), overflowing_root<T>(), T(0), T(0), T(0);
    v << T(3), T(100), T(1);
    const row_matrix<T> batch = conformance::run(favor, q, k, v, attention_mask{true, {}});
    ASSERT_TRUE(batch.allFinite()) << batch;

    favor_decoder<T> dec(favor, 1);
    row_vector<T> out(1);
    for (index_t t = 0; t < 3; ++t) {
      dec.step(q.row(t), k.row(t), v.row(t), out);
      EXPECT_TRUE(out.allFinite()) << "token " << t << ": " << out;
      EXPECT_LE(relative_difference(out, batch.row(t)), 1e-5) << "token " << t;
    }
    EXPECT_EQ(dec.position(), 3);

    // The same key through prime().
    dec.reset();
    dec.prime(k.topRows(2), v.topRows(2));
    dec.step(q.row(2), k.row(2), v.row(2), out);
    EXPECT_LE(relative_difference(out, batch.row(2)), 1e-5);
  });
}

// The fuzzer's case: the huge key comes first, through prime(). It must leave the state as it
// was (weight 0), so the next token's output is that token's value, its only weighted key.
TEST(FavorDecoderBadInput, DecoderPrime_FirstKeyNormOverflow) {
  for_float_and_double([]<class T>() {
    const favor_attention<T> favor(2, 4, 1);
    favor_decoder<T> dec(favor, 1);
    row_matrix<T> k(1, 2);
    k << overflowing_root<T>(), T(0);
    dec.prime(k, row_matrix<T>::Constant(1, 1, T(100)));
    EXPECT_EQ(dec.position(), 1);
    row_vector<T> q(2);
    q << T(0.5), T(0.25);
    row_vector<T> out(1);
    dec.step(q, row_vector<T>::Zero(2), row_vector<T>::Ones(1), out);
    EXPECT_NEAR(out(0), T(1), 1e-5) << out;
  });
}

}  // namespace
}  // namespace favor_favor_decoder_bad_input_test
}  // namespace performer::test
