// FAVOR (every feature map and blocking in makers.hpp) through the allocation suite (performer/testing/allocation.hpp): counted heap bytes.
#include <performer/testing/allocation.hpp>

#include "favor/makers.hpp"

namespace performer::conformance {
INSTANTIATE_TYPED_TEST_SUITE_P(favor, attention_allocation, test::favor_core_makers);
}  // namespace performer::conformance
