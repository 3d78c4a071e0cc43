// Covers performer/favor/favor_decoder.hpp under extreme values: the decoder, token by token,
// against the long double estimate from the double batch causal pass's features, in float and
// double, for every feature map; value scaling and tiny queries and keys; and the fuzzer's
// reproducer of a key whose squared norm overflows float. The inputs, the contract and the
// FAVOR bound are those of performer/testing/extreme_values.hpp.
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include <performer/favor/favor_decoder.hpp>
#include <performer/testing/detail/extreme_favor.hpp>

#include "favor/makers.hpp"

namespace performer::conformance::extreme {
// Named as well as anonymous: the unity build compiles several test files as one.
namespace favor_decoder_extreme_values_test {
namespace {

// The FAVOR suite's chunked layout (favor/extreme_values_test.cpp): M = 32 projections.
constexpr favor_options decoder_layout{.block = 32, .chunk = 8};
constexpr index_t projections = 32;

template <template <class> class Map, class T>
favor_attention<T, Map<T>> make_favor(std::uint64_t seed) {
  return favor_attention<T, Map<T>>(head_dim, projections, seed, {}, {}, decoder_layout);
}

/// The decoder over the whole problem, one step per token; the steps up to the first refusal.
template <class T, class Map>
outcome<T> decode(const favor_attention<T, Map>& mechanism, const problem& p, index_t& produced) {
  const row_matrix<T> q = p.q.template cast<T>();
  const row_matrix<T> k = p.k.template cast<T>();
  const row_matrix<T> v = p.v.template cast<T>();
  favor_decoder<T, Map> decoder(mechanism, v.cols());
  row_matrix<T> out(q.rows(), v.cols());
  for (produced = 0; produced < q.rows(); ++produced) {
    try {
      decoder.step(q.row(produced), k.row(produced), v.row(produced), out.row(produced));
    } catch (const performer::invalid_argument& ex) {
      return {row_matrix<T>(out.topRows(produced)), ex.what()};
    }
  }
  return {out, {}};
}

/// The decoder, token by token, against the double batch causal pass: its features are mapped
/// one token at a time (measured the same way, through 1 x d blocks), and it may rescale its
/// state at every token.
template <class T, class Map>
void check_decoder_run(const char* name, const input_case& c, const problem& p,
                       const favor_attention<T, Map>& mechanism, const favor_terms& td,
                       bool non_negative) {
  const auto tx = mechanism_terms(mechanism, p.q.template cast<T>(), p.k.template cast<T>(), true,
                                  decoder_blockings(p.q.rows()));
  std::vector<bool> well;
  const row_expectations e =
      favor_expectations<T>(tx, td, p, true, mechanism.feature_count(),
                            decoder_exponentials(p.q.rows()), non_negative, well);
  index_t produced = 0;
  const outcome<T> o = decode(mechanism, p, produced);
  violations bad(label_of<T>(name, c, true));
  if (produced < p.q.rows()) {
    // A refused step must be one whose result is not representable in T.
    const outcome<T> refused{std::nullopt, o.error};
    check_outcome(bad, refused, p, true, !well[static_cast<std::size_t>(produced)], e);
  }
  check_rows(bad, *o.out, p, true, e);
  bad.report();
}

template <template <class> class Map>
void check_decoder(const char* name, bool non_negative) {
  const auto f32 = make_favor<Map, float>(9);
  auto f64 = make_favor<Map, double>(0);
  f64.projection().set_matrix(f32.projection().matrix().template cast<double>());
  for (const input_case& c : input_cases()) {
    // Both decoders solve the float-rounded problem, against the double batch's terms.
    const problem p = make_problem<float>(c, 31);
    const favor_terms td =
        mechanism_terms(f64, p.q, p.k, true, blockings_of(f64, n_tokens, true)).front();
    check_decoder_run(name, c, p, f32, td, non_negative);
    check_decoder_run(name, c, p, f64, td, non_negative);
  }
}

TEST(ExtremeValuesDecoder, PositiveFeatures) {
  check_decoder<positive_features>("favor_decoder positive", true);
}
TEST(ExtremeValuesDecoder, HyperbolicFeatures) {
  check_decoder<hyperbolic_features>("favor_decoder hyperbolic", true);
}
TEST(ExtremeValuesDecoder, TrigonometricFeatures) {
  check_decoder<trigonometric_features>("favor_decoder trigonometric", false);
}
TEST(ExtremeValuesDecoder, ReluFeatures) {
  check_decoder<relu_features>("favor_decoder relu", true);
}
TEST(ExtremeValuesDecoder, EluFeatures) { check_decoder<elu_features>("favor_decoder elu", true); }
TEST(ExtremeValuesDecoder, FavorPlusPlusFeatures) {
  // The decoder, like the causal path, uses the stored A = 0.
  check_decoder<favor_plus_plus_features>("favor_decoder favor++", true);
}

/// The decoder's weights do not depend on v: out(q, k, c v) = c out(q, k, v), to the sums'
/// roundings, (N + 2M + 48) u of c max |v| each, plus the multiplication by c (the batch
/// mechanisms' check in the suite, ScalingValuesScalesTheOutput).
template <class T>
void check_value_scaling() {
  const auto mechanism = make_favor<positive_features, T>(5);
  const index_t width = mechanism.feature_count();
  const problem p = make_problem<T>({"row norms 10", 10, 1, 1, 1, true}, 91);
  index_t produced = 0;
  const outcome<T> plain = decode(mechanism, p, produced);
  ASSERT_EQ(produced, p.q.rows()) << plain.error;
  for (const double c : {1e30, 1e-30}) {
    // At 1e-30 in float the key sums' products are subnormal: absolute errors (see the suite).
    if (std::is_same_v<T, float> && c < 1) continue;
    problem scaled = p;
    scaled.v *= c;
    const outcome<T> out = decode(mechanism, scaled, produced);
    ASSERT_EQ(produced, p.q.rows()) << out.error;
    const row_matrix<double> expected = plain.out->template cast<double>() * c;
    const double err = (out.out->template cast<double>() - expected).cwiseAbs().maxCoeff() /
                       (c * p.v.cwiseAbs().maxCoeff());
    const double u = unit_roundoff<T>();
    EXPECT_LE(err, 2 * static_cast<double>(n_tokens + 2 * width + 48) * u + 2 * u)
        << type_name<T>() << ", v x " << c;
    if (std::is_same_v<T, double>) {
      EXPECT_LE(err, 1e-12) << "v x " << c;
    }
  }
}

TEST(ExtremeValuesDecoder, ScalingValuesBy1e30Or1e_30ScalesTheOutput) {
  check_value_scaling<float>();
  check_value_scaling<double>();
}

/// q and k at 1e-30 or subnormal: every feature is exp(0) times a common factor, so step t
/// returns the mean of v_0 .. v_t, to (N + 2M + 48) u max |v|.
template <class T>
void check_tiny_queries_and_keys() {
  const auto mechanism = make_favor<positive_features, T>(5);
  for (const double scale : {1e-30, 1e-40}) {
    const problem p = make_problem<T>({"tiny", 0, scale, scale, 1}, 101);
    index_t produced = 0;
    const outcome<T> o = decode(mechanism, p, produced);
    ASSERT_EQ(produced, p.q.rows()) << o.error;
    row_matrix<double> mean(p.v.rows(), p.v.cols());
    for (index_t i = 0; i < p.v.rows(); ++i) mean.row(i) = p.v.topRows(i + 1).colwise().mean();
    const double err =
        (o.out->template cast<double>() - mean).cwiseAbs().maxCoeff() / p.v.cwiseAbs().maxCoeff();
    EXPECT_LE(err, static_cast<double>(n_tokens + 2 * mechanism.feature_count() + 48) *
                       unit_roundoff<T>())
        << type_name<T>() << ", q, k x " << scale;
  }
}

TEST(ExtremeValuesDecoder, TinyQueriesAndKeysGiveTheMeanOfTheValues) {
  check_tiny_queries_and_keys<float>();
  check_tiny_queries_and_keys<double>();
}

TEST(ExtremeValuesDecoder, KeyWhoseSquaredNormOverflowsFloatGetsWeightZero) {
  // The fuzzer's reproducer (tests/fuzz/crashes/decoder-float-first-key-norm-overflow-nan-state):
  // d = 2, k_0 = (1e20, 0) has |k_0|^2 = 1e40 > FLT_MAX. Its FAVOR weight relative to k_1 = 0 is
  // exp(-|k_0|^2 / (2 sqrt(2)) + O(|k_0|)) ~ exp(-3.5e39): zero in any precision, so token 1's
  // output is v_1 = 1 (to rounding), and the state must stay finite.
  const favor_attention<float> favor(2, 4, 1);
  favor_decoder<float> decoder(favor, 1);
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

}  // namespace
}  // namespace favor_decoder_extreme_values_test
}  // namespace performer::conformance::extreme
