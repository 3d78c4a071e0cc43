// Covers performer/favor/favor_attention.hpp under extreme values: the extreme-values suite
// (performer/testing/extreme_values.hpp) for every FAVOR maker, the estimate recomputed in long
// double from the mechanism's own features and a float mechanism against its double twin; and
// every feature map (trigonometric included) in one block of 32 rows with causal chunks of 8,
// so that the causal path carries and rescales its state across four chunks.
#include <performer/testing/extreme_values.hpp>

#include "favor/makers.hpp"

namespace performer::conformance {
// Named as well as anonymous: the unity build compiles several test files as one.
namespace favor_extreme_values_test {
namespace {

/// M = 32 projections, one feature block (a second query block would open an OpenMP region per
/// call, which costs milliseconds on a loaded machine), chunks of 8, one segment.
template <class A>
using chunked_maker = test::favor_maker<A, 32, 32, 8, 1>;

/// Signed features: no hull (the normaliser can be small or negative); rows where it is small
/// next to the terms' sizes are ill-conditioned by the definition in extreme_favor.hpp.
template <class A>
struct signed_chunked_maker : chunked_maker<A> {
  static constexpr bool convex = false;
};

}  // namespace
}  // namespace favor_extreme_values_test
using namespace favor_extreme_values_test;  // for what follows

using extreme_favor_makers = join_types<
    test::favor_makers,
    ::testing::Types<chunked_maker<favor_attention<float>>,
                     chunked_maker<favor_attention<float, hyperbolic_features<float>>>,
                     signed_chunked_maker<favor_attention<float, trigonometric_features<float>>>,
                     chunked_maker<favor_attention<float, relu_features<float>>>,
                     chunked_maker<favor_attention<float, elu_features<float>>>,
                     // Bidirectional: A fitted to each call's q and k (adaptive); causal: the
                     // stored A = 0.
                     chunked_maker<favor_attention<float, favor_plus_plus_features<float>>>>>::type;
INSTANTIATE_TYPED_TEST_SUITE_P(favor, attention_extreme_values, extreme_favor_makers);

}  // namespace performer::conformance
