// LSH (every configuration in makers.hpp) through the allocation suite (performer/testing/allocation.hpp): counted heap bytes.
#include <performer/testing/allocation.hpp>

#include "lsh/makers.hpp"

namespace performer::conformance {
INSTANTIATE_TYPED_TEST_SUITE_P(lsh, attention_allocation, test::lsh_core_makers);
}  // namespace performer::conformance
