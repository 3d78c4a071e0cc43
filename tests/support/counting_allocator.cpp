// The counting allocator of performer/testing/counting_allocator.hpp, defined once per test
// executable: the allocation suite reads its counters. Under a sanitizer it defines nothing.
#define PERFORMER_DEFINE_COUNTING_ALLOCATOR
#include <performer/testing/counting_allocator.hpp>
