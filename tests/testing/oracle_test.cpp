// Covers performer/testing/oracle.hpp and counting_allocator.hpp, the tools the other tests
// trust: the references against values worked out by hand, and the counter against
// allocations it must see.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <vector>

#include <performer/testing/counting_allocator.hpp>
#include <performer/testing/helpers.hpp>
#include <performer/testing/oracle.hpp>
#include <performer/testing/registry.hpp>

// Named as well as anonymous: the unity build compiles several test files as one.
namespace testing_oracle_test {
namespace {

using performer::attention_mask;
using performer::row_matrix;

TEST(Oracle, SoftmaxAttentionAgainstHandWorkedValues) {
  // d = 4 (scale 1/2): query (2, 0, 0, 0) against keys e_0 and -e_0 has logits +1 and -1, so
  // weights e / (e + 1/e) and (1/e) / (e + 1/e).
  row_matrix<double> q(2, 4), k(2, 4), v(2, 2);
  q << 2, 0, 0, 0, 0, 0, 0, 0;
  k << 1, 0, 0, 0, -1, 0, 0, 0;
  v << 1, 0, 0, 1;
  const double w = std::exp(1.0) / (std::exp(1.0) + std::exp(-1.0));
  const auto out = performer::oracle::softmax_attention(q, k, v);
  EXPECT_NEAR(out(0, 0), w, 1e-15);
  EXPECT_NEAR(out(0, 1), 1 - w, 1e-15);
  EXPECT_NEAR(out(1, 0), 0.5, 1e-15);  // logits 0 and 0
  // Causal: query 0 sees key 0 only. Padding key 0: query 0 sees nothing (zero row).
  const auto causal = performer::oracle::softmax_attention(q, k, v, {.causal = true});
  EXPECT_EQ(causal(0, 0), 1.0);
  const std::vector<std::uint8_t> keep{0, 1};
  const auto padded = performer::oracle::softmax_attention(q, k, v, {true, keep});
  EXPECT_EQ(padded.row(0), Eigen::RowVector2d::Zero());
  EXPECT_EQ(padded(1, 1), 1.0);
  // Shared-QK: keys are the normalised queries, and a token sees itself only when alone.
  row_matrix<double> qs(2, 4);
  qs << 2, 0, 0, 0, 0, 3, 0, 0;
  const auto shared = performer::oracle::softmax_attention(qs, qs, v, {}, {.shared_qk = true});
  EXPECT_EQ(shared(0, 1), 1.0);  // token 0 attends only to token 1
  EXPECT_EQ(shared(1, 0), 1.0);
}

TEST(Oracle, LayerNormAgainstHandWorkedValues) {
  row_matrix<double> x(1, 4);
  x << 1, 2, 3, 4;  // mean 2.5, variance 1.25
  const Eigen::RowVector4d gain(1, 2, 1, 1);
  const Eigen::RowVector4d bias(0, 0, 0, 1);
  const auto y = performer::oracle::layer_norm(x, gain, bias, 0.0);
  const double s = std::sqrt(1.25);
  EXPECT_NEAR(y(0, 0), -1.5 / s, 1e-15);
  EXPECT_NEAR(y(0, 1), -1.0 / s, 1e-15);
  EXPECT_NEAR(y(0, 3), 1.5 / s + 1, 1e-15);
}

TEST(CountingAllocator, SeesMallocOperatorNewAndEigenAndTheirRelease) {
  if (!performer::counting::available) GTEST_SKIP() << "no counting allocator in this build";
  static void* volatile sink = nullptr;  // volatile: the compiler may not elide the allocations
  const auto u = performer::counting::measure_heap([] {
    sink = std::malloc(1 << 20);
    std::free(sink);
    auto* floats = new float[1 << 18];
    sink = floats;
    delete[] floats;
    const row_matrix<float> eigen(512, 512);  // Eigen's aligned_malloc
    sink = const_cast<float*>(eigen.data());
  });
  EXPECT_GE(u.peak, 1LL << 20);
  EXPECT_GE(u.allocations, 3U);
  EXPECT_EQ(u.retained, 0);
}

TEST(Registry, EveryEntryModelsTheConceptInFloatAndDouble) {
  int entries = 0;
  performer::registry::for_each_mechanism([&](auto entry) {
    using E = decltype(entry);
    static_assert(performer::attention_mechanism<typename E::template type<float>>);
    static_assert(performer::attention_mechanism<typename E::template type<double>>);
    const auto a = E::template make<float>(8, 16, 1);
    const auto q = performer::conformance::random_matrix<float>(10, 8, 1);
    const auto out = performer::conformance::run(a, q, q, q);
    EXPECT_TRUE(out.allFinite()) << E::name;
    ++entries;
  });
  EXPECT_EQ(entries, static_cast<int>(std::tuple_size_v<performer::registry::all>));
}

}  // namespace
}  // namespace testing_oracle_test
