// FAVOR's bad input (docs/bad_input_matrix.md §1, §2 and §4): the reusable suite on every FAVOR
// maker, the constructor's checks, the stabiliser's large logits and the trigonometric map's
// vanishing normaliser.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include <performer/testing/bad_input.hpp>
#include <performer/testing/detail/extreme_contract.hpp>

#include "favor/makers.hpp"
#include "support/bad_input_cells.hpp"

namespace performer::test {
// Named as well as anonymous: the unity build compiles several test files as one.
namespace favor_bad_input_test {
namespace {

constexpr index_t d = 4;
constexpr index_t dv = 4;

/// The makers with what the suite needs to know of FAVOR: the function its messages name, the
/// projection's fixed head width, and finite inputs whose result leaves T.
template <class Maker>
struct favor_bad_input_maker : Maker {
  using A = typename Maker::attention_type;
  using T = typename A::scalar_type;
  using map = typename A::feature_map_type;
  static constexpr std::string_view forward_name = "favor_attention::forward";
  static constexpr bool fixed_head_width = true;

  static std::vector<conformance::overflow_input<T>> overflow_inputs(A& /*a*/, index_t head_dim,
                                                                     index_t d_v) {
    auto cases = conformance::logit_overflow_inputs<T>(head_dim, d_v);
    if constexpr (std::is_same_v<map, relu_features<T>> || std::is_same_v<map, elu_features<T>>) {
      // These kernels are not exp(q.k): a key opposite to the query has an ordinary weight
      // (the output is that key's value). Only the feature products overflow.
      cases.erase(cases.begin());
    } else {
      // A key whose squared norm leaves T has weight 0 (log scale -inf). The query has a key,
      // so a zero row would be wrong: a zero normaliser must be reported as an overflow.
      conformance::overflow_input<T> huge_key{
          "key norm beyond T", conformance::random_matrix<T>(1, head_dim, 1),
          row_matrix<T>::Zero(1, head_dim), row_matrix<T>::Ones(1, d_v)};
      huge_key.k(0, 0) = T(4) * std::sqrt(std::numeric_limits<T>::max());
      cases.push_back(huge_key);
    }
    return cases;
  }
};

using favor_bad_input_makers = conformance::wrap_each_t<favor_bad_input_maker, favor_core_makers>;

// favor_attention's constructor builds its projection first, so a non-positive width or
// feature count is reported by random_projection's constructor (the message names
// random_projection, not favor_attention).
TEST(FavorBadInput, FavorCtor_NonPositiveHeadDim) {
  for_float_and_double([]<class T>() {
    using favor = favor_attention<T>;
    PERFORMER_EXPECT_INVALID("random_projection", "input width must be positive (got 0)",
                             favor(0, 8));
    PERFORMER_EXPECT_INVALID("random_projection", "input width must be positive (got -1)",
                             favor(-1, 8));
  });
}

TEST(FavorBadInput, FavorCtor_NonPositiveFeatures) {
  for_float_and_double([]<class T>() {
    using favor = favor_attention<T>;
    PERFORMER_EXPECT_INVALID("random_projection", "number of features must be positive (got 0)",
                             favor(d, 0));
    PERFORMER_EXPECT_INVALID("random_projection", "number of features must be positive (got -3)",
                             favor(d, -3));
  });
}

TEST(FavorBadInput, FavorCtor_NonPositiveOptions) {
  for_float_and_double([]<class T>() {
    using favor = favor_attention<T>;
    for (const index_t bad : {index_t{0}, index_t{-1}}) {
      SCOPED_TRACE(bad);
      const std::string block = "block (" + std::to_string(bad) + ")";
      PERFORMER_EXPECT_INVALID("favor_attention", block, favor(d, 8, 1, {}, {}, {.block = bad}));
      PERFORMER_EXPECT_INVALID("favor_attention", "must be positive",
                               favor(d, 8, 1, {}, {}, {.chunk = bad}));
      PERFORMER_EXPECT_INVALID("favor_attention", "must be positive",
                               favor(d, 8, 1, {}, {}, {.segments = bad}));
      const std::string min_segment = "min_segment (" + std::to_string(bad) + ")";
      PERFORMER_EXPECT_INVALID("favor_attention", min_segment,
                               favor(d, 8, 1, {}, {}, {.min_segment = bad}));
      if (bad < 0) {  // 0: one block per thread
        const std::string wave_blocks = "wave_blocks (" + std::to_string(bad) + ") at least 0";
        PERFORMER_EXPECT_INVALID("favor_attention", wave_blocks,
                                 favor(d, 8, 1, {}, {}, {.wave_blocks = bad}));
      }
      const std::string work = "parallel_block_work (" + std::to_string(bad) + ")";
      PERFORMER_EXPECT_INVALID("favor_attention", work,
                               favor(d, 8, 1, {}, {}, {.parallel_block_work = bad}));
    }
  });
}

// A trained matrix goes in through favor_attention::projection(): a rejected one leaves the
// projection, and so every later forward, as they were.
TEST(FavorBadInput, FavorProjectionSetMatrix_Rejected) {
  for_float_and_double([]<class T>() {
    favor_attention<T> favor(d, 8, 1);
    const row_matrix<T> before = favor.projection().matrix();
    const row_matrix<T> x = conformance::random_matrix<T>(6, d, 1);
    const row_matrix<T> expected = conformance::run(favor, x, x, x);
    for (const T bad : {nan_v<T>, inf_v<T>, -inf_v<T>}) {
      row_matrix<T> w = before;
      w(3, 2) = bad;
      PERFORMER_EXPECT_INVALID("random_projection::set_matrix",
                               "w (8x4) contains a NaN or an infinity",
                               favor.projection().set_matrix(w));
    }
    PERFORMER_EXPECT_INVALID("random_projection::set_matrix", "w is 8x5, expected 8x4",
                             favor.projection().set_matrix(row_matrix<T>::Ones(8, d + 1)));
    EXPECT_EQ(favor.projection().matrix(), before);
    EXPECT_EQ(conformance::run(favor, x, x, x), expected);
  });
}

/// FAVOR's stabiliser (README, "Numerical stabiliser"): norms of 100 give softmax logits of
/// about 1e4 / sqrt(d), far beyond exp's range, yet the result is finite and each entry stays
/// within the values' range (positive features: a convex combination).
TEST(FavorBadInput, FavorForward_LargeLogitsFinite) {
  for_float_and_double([]<class T>() {
    const favor_attention<T> favor(d, 8, 1, {}, {}, {.block = 4, .chunk = 2});
    const row_matrix<T> q = conformance::random_matrix<T>(6, d, 1).rowwise().normalized() * T(100);
    const row_matrix<T> k = conformance::random_matrix<T>(6, d, 2).rowwise().normalized() * T(100);
    const row_matrix<T> v = conformance::random_matrix<T>(6, dv, 3);
    for (const bool causal : {false, true}) {
      SCOPED_TRACE(causal ? "causal" : "bidirectional");
      row_matrix<T> out;
      try {
        out = conformance::run(favor, q, k, v, attention_mask{causal, {}});
      } catch (const performer::invalid_argument& e) {
        // Norm 100 at d = 8: float's features span beyond its exponent range, and whether every
        // product of a query underflows depends on the platform's exp (extreme_contract.hpp).
        // The documented refusal is then the answer; double must always give a result.
        ASSERT_TRUE((std::is_same_v<T, float>)) << e.what();
        ASSERT_TRUE(conformance::extreme::mentions_vanished_normaliser(e.what())) << e.what();
        continue;
      }
      ASSERT_TRUE(out.allFinite()) << out;
      const T slack = T(1e-4);
      for (index_t j = 0; j < dv; ++j) {
        EXPECT_GE(out.col(j).minCoeff(), v.col(j).minCoeff() - slack);
        EXPECT_LE(out.col(j).maxCoeff(), v.col(j).maxCoeff() + slack);
      }
    }
  });
}

// The trigonometric map's estimate phi(q).phi(k) can be exactly 0; its documentation promises
// an exception then ("an exception when the normaliser is exactly zero"), not the zero row that
// means "no visible key". The construction: m = 4 rows alternating (0, 1) and (1, 0), q = 0 and
// k~ = (pi, 0), so the estimate is (cos 0 + cos pi) / 2 twice over, 0 exactly: cos of the
// rounded pi rounds to -1, and with m = 4 every feature is cos / 2, so every product in the
// normaliser is exact and an FMA (x86-64-v3 and up) cannot leave a rounding residue behind. With
// m = 2 (features cos / sqrt 2) it did: the x86-64-v3 build got a normaliser of one rounding
// error and the output 1.
TEST(FavorBadInput, TrigonometricForward_ZeroNormaliser) {
  for_float_and_double([]<class T>() {
    favor_attention<T, trigonometric_features<T>> favor(2, 4, 1);
    row_matrix<T> w(4, 2);
    w << 0, 1, 1, 0, 0, 1, 1, 0;
    favor.projection().set_matrix(w);
    const row_matrix<T> q = row_matrix<T>::Zero(1, 2);
    row_matrix<T> k(1, 2);
    k << static_cast<T>(3.14159265358979323846 * std::pow(2.0, 0.25)), 0;  // k~ = k 2^(-1/4)
    const row_matrix<T> v = row_matrix<T>::Ones(1, 2);
    row_matrix<T> out(1, 2);
    typename decltype(favor)::workspace_type ws;
    for (const bool causal : {false, true}) {
      SCOPED_TRACE(causal ? "causal" : "bidirectional");
      PERFORMER_EXPECT_INVALID("favor_attention::forward", "normaliser vanished",
                               favor.forward(q, k, v, out, attention_mask{causal, {}}, ws));
    }
  });
}

}  // namespace
}  // namespace favor_bad_input_test
using namespace favor_bad_input_test;  // for what follows
}  // namespace performer::test

namespace performer::conformance {
INSTANTIATE_TYPED_TEST_SUITE_P(favor, attention_bad_input, test::favor_bad_input_makers);
}  // namespace performer::conformance
