// Exact attention (materialized and tiled) through the determinism suite (performer/testing/determinism.hpp): same seed, same bits, on any thread count.
#include <performer/testing/determinism.hpp>

#include "softmax/makers.hpp"

namespace performer::conformance {
INSTANTIATE_TYPED_TEST_SUITE_P(softmax, attention_determinism, test::softmax_core_makers);
}  // namespace performer::conformance
