// FAVOR (every feature map and blocking in makers.hpp) through the conformance suite (performer/testing/conformance.hpp).
#include <performer/testing/conformance.hpp>

#include "favor/makers.hpp"

namespace performer::conformance {
INSTANTIATE_TYPED_TEST_SUITE_P(favor, attention_conformance, test::favor_makers);
}  // namespace performer::conformance
