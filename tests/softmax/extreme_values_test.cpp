// Covers performer/softmax/*.hpp under extreme values: the extreme-values suite
// (performer/testing/extreme_values.hpp) against the long double softmax reference for every
// exact maker, with tiles of 7 x 11 as well (several key tiles per row, so the running maximum
// rises and rescales), and the fuzzer's logit-overflow reproducers.
#include <vector>

#include <performer/testing/extreme_values.hpp>

#include "softmax/makers.hpp"

namespace performer::conformance {

using extreme_softmax_makers =
    join_types<test::softmax_makers, ::testing::Types<test::tiled_maker<float, 7, 11>,
                                                      test::tiled_maker<double, 7, 11>>>::type;
INSTANTIATE_TYPED_TEST_SUITE_P(softmax, attention_extreme_values, extreme_softmax_makers);

// Named as well as anonymous: the unity build compiles several test files as one.
namespace softmax_extreme_values_test {
namespace {

/// tests/fuzz/crashes/{softmax,tiled}-float-logit-overflow-gives-zero-row and the two variants
/// in its write-up. Every input is representable in double, which must return the exact answer;
/// in float the logits overflow (to -inf, or to NaN as +inf - inf), so float must refuse with the
/// overflow message or return that same answer, never the "no visible key" zero row.
TEST(ExtremeValuesExact, FuzzerLogitOverflowReproducers) {
  struct reproducer {
    const char* name;
    row_matrix<double> q, k, v;
    double expected;
  };
  std::vector<reproducer> cases;
  {
    reproducer r{"q = 1e30, k = -1e30 (logit -1e60)", row_matrix<double>(1, 1),
                 row_matrix<double>(1, 1), row_matrix<double>(1, 1), 1.0};
    r.q << 1e30;
    r.k << -1e30;
    r.v << 1.0;
    cases.push_back(r);
  }
  {
    // Logits -2e40 / sqrt(2) and -3e40 / sqrt(2): a gap of 7e39, so the first key takes it all.
    reproducer r{"all logits -inf in float", row_matrix<double>(1, 2), row_matrix<double>(2, 2),
                 row_matrix<double>(2, 1), 2.0};
    r.q << 1e20, 1e20;
    r.k << -1e20, -1e20, -3e20, 0;
    r.v << 2.0, 3.0;
    cases.push_back(r);
  }
  {
    // q.k = 1e60 - 1e60 = 0 exactly in double; +inf - inf = NaN in float.
    reproducer r{"logit NaN in float", row_matrix<double>(1, 2), row_matrix<double>(1, 2),
                 row_matrix<double>(1, 1), 5.0};
    r.q << 1e30, 1e30;
    r.k << 1e30, -1e30;
    r.v << 5.0;
    cases.push_back(r);
  }
  for (const reproducer& r : cases) {
    const auto d1 = run(softmax_attention<double>{}, r.q, r.k, r.v);
    const auto d2 = run(tiled_softmax_attention<double>{}, r.q, r.k, r.v);
    EXPECT_EQ(d1(0, 0), r.expected) << r.name;
    EXPECT_EQ(d2(0, 0), r.expected) << r.name;
    const row_matrix<float> q = r.q.cast<float>();
    const row_matrix<float> k = r.k.cast<float>();
    const row_matrix<float> v = r.v.cast<float>();
    for (const auto& o :
         {extreme::attempt([&] { return run(softmax_attention<float>{}, q, k, v); }),
          extreme::attempt([&] { return run(tiled_softmax_attention<float>{}, q, k, v); })}) {
      if (o.out) {
        EXPECT_EQ((*o.out)(0, 0), static_cast<float>(r.expected))
            << r.name << ": float returned a wrong answer";
      } else {
        EXPECT_TRUE(extreme::mentions_overflow(o.error)) << r.name << ": " << o.error;
      }
    }
  }
}

}  // namespace
}  // namespace softmax_extreme_values_test
}  // namespace performer::conformance
