// The exact mechanisms' bad input (docs/bad_input_matrix.md §1 and §2): the reusable suite on
// every softmax maker, and the tiled mechanism's constructor.
#include <gtest/gtest.h>

#include <string_view>
#include <type_traits>
#include <vector>

#include <performer/testing/bad_input.hpp>

#include "softmax/makers.hpp"
#include "support/bad_input_cells.hpp"

namespace performer::test {
// Named as well as anonymous: the unity build compiles several test files as one.
namespace softmax_bad_input_test {
namespace {

/// The makers with what the suite needs to know of exact attention: the function its messages
/// name, and that its logits are exact, so that the three logit overflows must be reported.
template <class Maker>
struct softmax_bad_input_maker : Maker {
  using A = typename Maker::attention_type;
  using T = typename A::scalar_type;
  static constexpr std::string_view forward_name = std::is_same_v<A, tiled_softmax_attention<T>>
                                                       ? "tiled_softmax_attention::forward"
                                                       : "softmax_attention::forward";
  static std::vector<conformance::overflow_input<T>> overflow_inputs(A& /*a*/, index_t d,
                                                                     index_t d_v) {
    return conformance::logit_overflow_inputs<T>(d, d_v);
  }
};

using softmax_bad_input_makers = conformance::wrap_each_t<softmax_bad_input_maker, softmax_core_makers>;

TEST(SoftmaxBadInput, TiledCtor_NonPositiveTiles) {
  for_float_and_double([]<class T>() {
    using tiled = tiled_softmax_attention<T>;
    PERFORMER_EXPECT_INVALID("tiled_softmax_attention", "tile sizes must be positive (got 0 x 4)",
                             tiled(0, 4));
    PERFORMER_EXPECT_INVALID("tiled_softmax_attention", "tile sizes must be positive (got 4 x 0)",
                             tiled(4, 0));
    PERFORMER_EXPECT_INVALID("tiled_softmax_attention", "tile sizes must be positive", tiled(-1));
  });
}

}  // namespace
}  // namespace softmax_bad_input_test
using namespace softmax_bad_input_test;  // for what follows
}  // namespace performer::test

namespace performer::conformance {
INSTANTIATE_TYPED_TEST_SUITE_P(softmax, attention_bad_input, test::softmax_bad_input_makers);
}  // namespace performer::conformance
