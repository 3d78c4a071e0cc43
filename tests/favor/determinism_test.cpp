// FAVOR (every feature map and blocking in makers.hpp) through the determinism suite (performer/testing/determinism.hpp): same seed, same bits, on any thread count.
#include <performer/testing/determinism.hpp>

#include "favor/makers.hpp"

namespace performer::conformance {
INSTANTIATE_TYPED_TEST_SUITE_P(favor, attention_determinism, test::favor_core_makers);
}  // namespace performer::conformance
