// Exact attention (materialized and tiled) through the conformance suite (performer/testing/conformance.hpp).
#include <performer/testing/conformance.hpp>

#include "softmax/makers.hpp"

namespace performer::conformance {
INSTANTIATE_TYPED_TEST_SUITE_P(softmax, attention_conformance, test::softmax_makers);
}  // namespace performer::conformance
