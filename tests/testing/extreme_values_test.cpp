// Covers performer/testing/extreme_values.hpp on a mechanism it knows nothing about: the
// user-written window attention (examples/window_attention.hpp) as a contract_only maker, which
// gets the contract and value scaling and reports the reference comparisons skipped.
#include <performer/testing/extreme_values.hpp>

#include "window_attention.hpp"

namespace performer::conformance {
// Named as well as anonymous: the unity build compiles several test files as one.
namespace testing_extreme_values_test {
namespace {

template <class T>
struct window_extreme_maker {
  using attention_type = window_attention<T>;
  // A window shorter than the suite's sequences, so that most queries mix a few keys only.
  static attention_type make(index_t /*head_dim*/) { return attention_type(3); }
};

}  // namespace
}  // namespace testing_extreme_values_test
using namespace testing_extreme_values_test;  // for what follows

using window_extreme_makers =
    ::testing::Types<window_extreme_maker<float>, window_extreme_maker<double>>;
INSTANTIATE_TYPED_TEST_SUITE_P(user, attention_extreme_values, window_extreme_makers);

}  // namespace performer::conformance
