// LSH (every configuration in makers.hpp) through the conformance suite (performer/testing/conformance.hpp).
#include <performer/testing/conformance.hpp>

#include "lsh/makers.hpp"

namespace performer::conformance {
INSTANTIATE_TYPED_TEST_SUITE_P(lsh, attention_conformance, test::lsh_makers);
}  // namespace performer::conformance
