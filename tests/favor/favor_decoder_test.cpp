// Covers performer/favor/favor_decoder.hpp: recurrent decoding against the causal batch path
// (every map's state algebra is favor/state.hpp's), priming, bad input, keys beyond the
// scalar's range, the memory of a long stream, and float accumulation over a million tokens.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include <performer/favor/favor_attention.hpp>
#include <performer/favor/favor_decoder.hpp>
#include <performer/favor/features/hyperbolic_features.hpp>
#include <performer/favor/features/positive_features.hpp>
#include <performer/testing/counting_allocator.hpp>
#include <performer/testing/helpers.hpp>

#include "favor/makers.hpp"

// Named as well as anonymous: the unity build compiles several test files as one.
namespace favor_favor_decoder_test {
namespace {

using performer::attention_mask;
using performer::favor_attention;
using performer::index_t;
using performer::row_matrix;
using performer::conformance::random_matrix;
using performer::conformance::relative_difference;
using performer::conformance::run;

template <class Map>
void check_decoder_matches_batch() {
  const index_t n = 50;
  const auto q = random_matrix<float>(n, 16, 21);
  auto k = random_matrix<float>(n, 16, 22);
  const auto v = random_matrix<float>(n, 8, 23);
  k.row(30) *= 20.0F;  // a late key with a large norm: the running maximum must rise mid-stream
  const favor_attention<float, Map> favor(16, 64, 9, {}, {}, {.block = 16, .chunk = 8});
  const auto batch = run(favor, q, k, v, attention_mask{true, {}});
  performer::favor_decoder<float, Map> decoder(favor, 8);
  row_matrix<float> stream(n, 8);
  for (index_t t = 0; t < n; ++t) decoder.step(q.row(t), k.row(t), v.row(t), stream.row(t));
  EXPECT_EQ(decoder.position(), n);
  // Same sums in a different order (token by token vs chunked GEMMs): float rounding only.
  EXPECT_LE(relative_difference(stream, batch), 1e-5);

  // Primed with a prefix, then continued: the same outputs for the remaining tokens.
  decoder.reset();
  decoder.prime(k.topRows(20), v.topRows(20));
  row_matrix<float> rest(n - 20, 8);
  for (index_t t = 20; t < n; ++t) decoder.step(q.row(t), k.row(t), v.row(t), rest.row(t - 20));
  EXPECT_LE(relative_difference(rest, batch.bottomRows(n - 20)), 1e-5);
}

TEST(FavorDecoder, MatchesCausalBatchPositiveFeatures) { check_decoder_matches_batch<performer::positive_features<float>>(); }
TEST(FavorDecoder, MatchesCausalBatchHyperbolicFeatures) { check_decoder_matches_batch<performer::hyperbolic_features<float>>(); }

TEST(FavorDecoder, RejectsBadInput) {
  const favor_attention<float> favor(16, 32, 1);
  EXPECT_THROW(performer::favor_decoder<float>(favor, 0), performer::invalid_argument);
  performer::favor_decoder<float> decoder(favor, 4);
  const auto x = random_matrix<float>(1, 16, 1);
  const auto narrow = random_matrix<float>(1, 15, 1);
  const auto v = random_matrix<float>(1, 4, 1);
  row_matrix<float> out(1, 4);
  row_matrix<float> wide_out(1, 5);
  EXPECT_THROW(decoder.step(narrow.row(0), x.row(0), v.row(0), out.row(0)), performer::invalid_argument);
  EXPECT_THROW(decoder.step(x.row(0), x.row(0), v.row(0), wide_out.row(0)), performer::invalid_argument);
  auto nan = x;
  nan(0, 3) = std::nanf("");
  EXPECT_THROW(decoder.step(x.row(0), nan.row(0), v.row(0), out.row(0)), performer::invalid_argument);
  EXPECT_THROW(decoder.prime(narrow, v), performer::invalid_argument);
}

// Found by the fuzzer: a key whose squared norm overflows float (|k| = 1e20) made the feature
// maps return log_scale = -inf and the decoder's state NaN. Such a key's weight is 0; the maps
// now scale before squaring, and the decoder drops it as the batch path does.
TEST(FavorDecoder, KeyBeyondFloatRangeIsDroppedLikeTheBatchPath) {
  const favor_attention<float> favor(2, 4, 3);
  row_matrix<float> q(3, 2), k(3, 2), v(3, 1);
  q << 0.5F, 0.25F, 0.5F, 0.25F, -0.3F, 0.1F;
  k << 1.0F, 0.5F, 1e20F, 0.0F, 0.0F, 0.0F;
  v << 1.0F, 100.0F, 3.0F;
  const auto batch = run(favor, q, k, v, attention_mask{true, {}});
  performer::favor_decoder<float> decoder(favor, 1);
  row_matrix<float> stream(3, 1);
  for (index_t t = 0; t < 3; ++t) decoder.step(q.row(t), k.row(t), v.row(t), stream.row(t));
  EXPECT_LE(relative_difference(stream, batch), 1e-6);
  EXPECT_FLOAT_EQ(stream(1, 0), 1.0F);  // token 1's key has weight 0: only value 1 is seen

  // The scaled norm fits float here, so log_scale stays finite (it used to be -inf).
  row_matrix<float> phi(1, 4);
  performer::vector<float> log_scale(1);
  performer::positive_features<float>{}.apply(favor.projection().matrix(),
                                               row_matrix<float>::Constant(1, 2, 1.5e19F), phi,
                                               log_scale);
  EXPECT_TRUE(std::isfinite(log_scale(0)));
}


// The state is allocated when the decoder is made; priming 8,192 tokens and stepping 256 more
// allocates nothing, however long the context grows.
TEST(FavorDecoder, StreamAllocatesNothingAfterConstruction) {
  if (!performer::counting::available) GTEST_SKIP() << "no counting allocator in this build";
  constexpr index_t n = 8192;
  const auto q = random_matrix<float>(n, 64, 1);
  const auto k = random_matrix<float>(n, 64, 2);
  const auto v = random_matrix<float>(n, 64, 3);
  const favor_attention<float> favor(64, 256, 7);
  performer::favor_decoder<float> decoder(favor, 64);
  performer::row_vector<float> out(64);
  const auto u = performer::counting::measure_heap([&] {
    decoder.prime(k, v);
    for (index_t t = 0; t < 256; ++t) decoder.step(q.row(t), k.row(t), v.row(t), out);
  });
  EXPECT_EQ(u.allocations, 0U);
  EXPECT_EQ(u.retained, 0);
  EXPECT_TRUE(out.allFinite());
}

}  // namespace
}  // namespace favor_favor_decoder_test
