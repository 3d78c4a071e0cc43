// Exact attention (materialized and tiled) through the allocation suite (performer/testing/allocation.hpp): counted heap bytes.
#include <performer/testing/allocation.hpp>

#include "softmax/makers.hpp"

namespace performer::conformance {
INSTANTIATE_TYPED_TEST_SUITE_P(softmax, attention_allocation, test::softmax_core_makers);
}  // namespace performer::conformance
