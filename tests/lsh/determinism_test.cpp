// LSH (every configuration in makers.hpp) through the determinism suite (performer/testing/determinism.hpp): same seed, same bits, on any thread count.
#include <performer/testing/determinism.hpp>

#include "lsh/makers.hpp"

namespace performer::conformance {
INSTANTIATE_TYPED_TEST_SUITE_P(lsh, attention_determinism, test::lsh_core_makers);
}  // namespace performer::conformance
