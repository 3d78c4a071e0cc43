// The feature maps' bad input (docs/bad_input_matrix.md §4): each map's apply(w, x, phi,
// log_scale), which checks shapes only, in O(1) (values are the callers' to check), and FAVOR++'s
// set_a, optimal_a and calibrate.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include <performer/favor/features/elu_features.hpp>
#include <performer/favor/features/favor_plus_plus_features.hpp>
#include <performer/favor/features/hyperbolic_features.hpp>
#include <performer/favor/features/positive_features.hpp>
#include <performer/favor/features/relu_features.hpp>
#include <performer/favor/features/trigonometric_features.hpp>
#include <performer/testing/expect_invalid.hpp>
#include <performer/testing/helpers.hpp>

#include "support/bad_input_cells.hpp"

namespace performer::test {
// Named as well as anonymous: the unity build compiles several test files as one.
namespace favor_feature_map_bad_input_test {
namespace {

using conformance::random_matrix;

constexpr index_t n = 6;
constexpr index_t d = 4;

template <class Map, class T>
struct map_case {
  static constexpr index_t m = 3;
  Map map{};
  row_matrix<T> w = random_matrix<T>(m, d, 7);
  row_matrix<T> x = random_matrix<T>(n, d, 8);
  index_t features = map.feature_count(m, d);
  row_matrix<T> phi = row_matrix<T>(n, features);
  vector<T> log_scale = vector<T>(n);
};

template <template <class> class Map>
void map_x_width(const char* who) {
  for_float_and_double([who]<class T>() {
    map_case<Map<T>, T> c;
    const row_matrix<T> x = random_matrix<T>(n, d + 1, 8);
    PERFORMER_EXPECT_INVALID(who, "x has width 5 but the projection has width 4",
                             c.map.apply(c.w, x, c.phi, c.log_scale));
  });
}

template <template <class> class Map>
void map_phi_shape(const char* who) {
  for_float_and_double([who]<class T>() {
    map_case<Map<T>, T> c;
    row_matrix<T> short_phi(n - 1, c.features);
    row_matrix<T> wide_phi(n, c.features + 1);
    PERFORMER_EXPECT_INVALID(who, "phi is 5x", c.map.apply(c.w, c.x, short_phi, c.log_scale));
    PERFORMER_EXPECT_INVALID(who, "phi is 6x", c.map.apply(c.w, c.x, wide_phi, c.log_scale));
  });
}

template <template <class> class Map>
void map_log_scale_size(const char* who) {
  for_float_and_double([who]<class T>() {
    map_case<Map<T>, T> c;
    vector<T> log_scale(n + 1);
    PERFORMER_EXPECT_INVALID(who, "log_scale has 7 entries, expected 6",
                             c.map.apply(c.w, c.x, c.phi, log_scale));
  });
}

template <template <class> class Map>
void map_empty_x() {
  // No rows: nothing to map, no error (a zero-row block is a valid view).
  for_float_and_double([]<class T>() {
    map_case<Map<T>, T> c;
    const row_matrix<T> x(0, d);
    row_matrix<T> phi(0, c.features);
    vector<T> log_scale(0);
    EXPECT_NO_THROW(c.map.apply(c.w, x, phi, log_scale));
  });
}

/// Documented (feature_map concept): the exponential maps scale x before squaring its norm, so
/// log_scale stays finite while |x~|^2 = |x|^2 / sqrt(d) fits in T, even when |x|^2 does not;
/// beyond, log_scale is -inf (a weight below T's range), or +inf for the trigonometric map. phi
/// stays finite either way.
template <template <class> class Map>
void map_huge_norm(bool grows) {
  for_float_and_double([grows]<class T>() {
    map_case<Map<T>, T> c;
    const T root = std::sqrt(std::numeric_limits<T>::max());
    row_matrix<T> x = row_matrix<T>::Zero(2, d);
    x(0, 0) = T(1.2) * root;  // |x|^2 overflows, |x~|^2 = 0.72 max does not (d = 4)
    x(1, 0) = T(4) * root;    // |x~|^2 = 8 max overflows
    row_matrix<T> phi(2, c.features);
    vector<T> log_scale(2);
    c.map.apply(c.w, x, phi, log_scale);
    EXPECT_TRUE(phi.allFinite()) << phi;
    EXPECT_TRUE(std::isfinite(log_scale(0))) << log_scale(0);
    EXPECT_EQ(log_scale(1), grows ? inf_v<T> : -inf_v<T>);
  });
}

// Found by the matrix: m = 0 used to fail an Eigen assertion in the maps that take a row
// maximum of phi (positive, hyperbolic, FAVOR++) and pass in the others; d = 0 gave NaN
// features (the input scale d^(-1/4) is infinite) or meaningless ones. favor_attention cannot
// build either shape, but apply() is public.
template <template <class> class Map>
void map_empty_projection(const char* who) {
  for_float_and_double([who]<class T>() {
    const Map<T> map{};
    const row_matrix<T> w(0, d);
    const row_matrix<T> x = random_matrix<T>(n, d, 8);
    row_matrix<T> phi(n, map.feature_count(0, d));
    vector<T> log_scale(n);
    PERFORMER_EXPECT_INVALID(who, "the projection is empty (0 features)",
                             map.apply(w, x, phi, log_scale));
  });
}

template <template <class> class Map>
void map_zero_width(const char* who) {
  for_float_and_double([who]<class T>() {
    const Map<T> map{};
    const row_matrix<T> w(3, 0);
    const row_matrix<T> x(n, 0);
    row_matrix<T> phi(n, map.feature_count(3, 0));
    vector<T> log_scale(n);
    PERFORMER_EXPECT_INVALID(who, "x has zero width", map.apply(w, x, phi, log_scale));
  });
}

// One line per cell, named <Map>Apply_<column> as in the document's table.
#define PERFORMER_MAP_CELLS(Name, Map)                                                            \
  TEST(FeatureMapBadInput, Name##Apply_PhiShape) { map_phi_shape<Map>(#Map "::apply"); }          \
  TEST(FeatureMapBadInput, Name##Apply_LogScaleSize) { map_log_scale_size<Map>(#Map "::apply"); } \
  TEST(FeatureMapBadInput, Name##Apply_EmptyX) { map_empty_x<Map>(); }                            \
  TEST(FeatureMapBadInput, Name##Apply_ZeroWidth) { map_zero_width<Map>(#Map "::apply"); }
#define PERFORMER_PROJECTION_MAP_CELLS(Name, Map)                                    \
  PERFORMER_MAP_CELLS(Name, Map)                                                     \
  TEST(FeatureMapBadInput, Name##Apply_XWidth) { map_x_width<Map>(#Map "::apply"); } \
  TEST(FeatureMapBadInput, Name##Apply_EmptyProjection) {                            \
    map_empty_projection<Map>(#Map "::apply");                                       \
  }

PERFORMER_PROJECTION_MAP_CELLS(Positive, positive_features)
PERFORMER_PROJECTION_MAP_CELLS(Hyperbolic, hyperbolic_features)
PERFORMER_PROJECTION_MAP_CELLS(Trigonometric, trigonometric_features)
PERFORMER_PROJECTION_MAP_CELLS(Relu, relu_features)
PERFORMER_PROJECTION_MAP_CELLS(FavorPlusPlus, favor_plus_plus_features)
// elu_features uses no projection: w is ignored, so its width and row count cannot be wrong.
PERFORMER_MAP_CELLS(Elu, elu_features)

TEST(FeatureMapBadInput, PositiveApply_HugeNorm) { map_huge_norm<positive_features>(false); }
TEST(FeatureMapBadInput, HyperbolicApply_HugeNorm) { map_huge_norm<hyperbolic_features>(false); }
TEST(FeatureMapBadInput, TrigonometricApply_HugeNorm) {
  map_huge_norm<trigonometric_features>(true);
}
TEST(FeatureMapBadInput, FavorPlusPlusApply_HugeNorm) {
  map_huge_norm<favor_plus_plus_features>(false);
}

#undef PERFORMER_PROJECTION_MAP_CELLS
#undef PERFORMER_MAP_CELLS

// ---- FAVOR++'s other entry points -----------------------------------------------------------

TEST(FeatureMapBadInput, FavorPlusPlusSetA_OutOfRange) {
  for_float_and_double([]<class T>() {
    favor_plus_plus_features<T> map;
    map.set_a(-0.25);
    for (const double bad : {0.125, 0.2, 1.0}) {
      PERFORMER_EXPECT_INVALID("favor_plus_plus_features::set_a", "below 1/8", map.set_a(bad));
    }
    EXPECT_EQ(map.a(), -0.25);  // a rejected A leaves the stored one
  });
}

TEST(FeatureMapBadInput, FavorPlusPlusSetA_NonFinite) {
  for_float_and_double([]<class T>() {
    favor_plus_plus_features<T> map;
    for (const double bad : {nan_v<double>, inf_v<double>, -inf_v<double>}) {
      PERFORMER_EXPECT_INVALID("favor_plus_plus_features::set_a", "must be finite", map.set_a(bad));
    }
    EXPECT_EQ(map.a(), 0.0);
  });
}

constexpr const char* optimal_a = "favor_plus_plus_features::optimal_a";

TEST(FeatureMapBadInput, FavorPlusPlusOptimalA_BadShapes) {
  for_float_and_double([]<class T>() {
    using map = favor_plus_plus_features<T>;
    const auto q = random_matrix<T>(n, d, 1);
    PERFORMER_EXPECT_INVALID(optimal_a, "q is 0x4", map::optimal_a(row_matrix<T>(0, d), q));
    PERFORMER_EXPECT_INVALID(optimal_a, "k is 0x4", map::optimal_a(q, row_matrix<T>(0, d)));
    PERFORMER_EXPECT_INVALID(optimal_a, "k is 6x3",
                             map::optimal_a(q, random_matrix<T>(n, d - 1, 2)));
    PERFORMER_EXPECT_INVALID(optimal_a, "q is 6x0",
                             map::optimal_a(row_matrix<T>(n, 0), row_matrix<T>(n, 0)));
    map m;  // calibrate() goes through optimal_a()
    m.set_a(-0.0625);
    PERFORMER_EXPECT_INVALID(optimal_a, "k is 6x3", m.calibrate(q, random_matrix<T>(n, d - 1, 2)));
    EXPECT_EQ(m.a(), -0.0625);
  });
}

// Found by the matrix: optimal_a() and calibrate() did not check values, so a NaN in q gave
// A = NaN, which set_a() would reject, and every later call failed with a misleading message.
// Only visible rows are read: a padded row may hold anything (FavorPlusPlusOptimalA_PaddedRows).
TEST(FeatureMapBadInput, FavorPlusPlusCalibrate_NonFinite) {
  for_float_and_double([]<class T>() {
    favor_plus_plus_features<T> map;
    const auto k = random_matrix<T>(n, d, 2);
    for (const T bad : {nan_v<T>, inf_v<T>, -inf_v<T>}) {
      row_matrix<T> q = random_matrix<T>(n, d, 1);
      q(0, 0) = bad;
      PERFORMER_EXPECT_INVALID(optimal_a, "q row 0 contains a NaN or an infinity",
                               favor_plus_plus_features<T>::optimal_a(q, k));
      PERFORMER_EXPECT_INVALID(optimal_a, "q row 0 contains a NaN", map.calibrate(q, k));
      row_matrix<T> bad_k = k;
      bad_k(n - 1, d - 1) = bad;
      PERFORMER_EXPECT_INVALID(optimal_a, "k row 5 contains a NaN", map.calibrate(k, bad_k));
    }
    EXPECT_EQ(map.a(), 0.0);
  });
}

// Found by the matrix: optimal_a(q, k, key_mask) read key_mask[j] for every key without
// checking its length, so a short mask was read out of bounds (forward checks it first; direct
// calls did not). The query mask is checked alike.
TEST(FeatureMapBadInput, FavorPlusPlusOptimalA_KeyMaskLength) {
  for_float_and_double([]<class T>() {
    const auto q = random_matrix<T>(n, d, 1);
    const std::vector<std::uint8_t> short_mask(2, 1);
    const std::vector<std::uint8_t> long_mask(n + 1, 1);
    using map = favor_plus_plus_features<T>;
    PERFORMER_EXPECT_INVALID(optimal_a, "key_mask has 2 entries, expected 6",
                             map::optimal_a(q, q, short_mask));
    PERFORMER_EXPECT_INVALID(optimal_a, "key_mask has 7 entries, expected 6",
                             map::optimal_a(q, q, long_mask));
    PERFORMER_EXPECT_INVALID(optimal_a, "query_mask has 2 entries, expected 6",
                             map::optimal_a(q, q, {}, short_mask));
    map m;
    PERFORMER_EXPECT_INVALID(optimal_a, "query_mask has 7 entries",
                             m.calibrate(q, q, {}, long_mask));
  });
}

// Documented: only visible rows enter the statistic, so a padded row's non-finite values are
// not an error and do not move A.
TEST(FeatureMapBadInput, FavorPlusPlusOptimalA_PaddedRows) {
  for_float_and_double([]<class T>() {
    using map = favor_plus_plus_features<T>;
    const auto q = random_matrix<T>(n, d, 1);
    const auto k = random_matrix<T>(n, d, 2);
    std::vector<std::uint8_t> keep(n, 1);
    keep[2] = 0;
    row_matrix<T> bad_q = q;
    row_matrix<T> bad_k = k;
    bad_q(2, 1) = nan_v<T>;
    bad_k(2, 3) = inf_v<T>;
    const double expected = map::optimal_a(q, k, keep, keep);
    EXPECT_TRUE(std::isfinite(expected));
    EXPECT_EQ(map::optimal_a(bad_q, bad_k, keep, keep), expected);
  });
}

}  // namespace
}  // namespace favor_feature_map_bad_input_test
}  // namespace performer::test
