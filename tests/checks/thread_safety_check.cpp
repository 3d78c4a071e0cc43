// Separate executable (also run under ThreadSanitizer by the tsan preset): one const block
// shared by several threads, each with its own workspace, gives exactly the serial results.
#include <gtest/gtest.h>

#include <thread>
#include <vector>

#include <performer/performer.hpp>
#include <performer/testing/helpers.hpp>

namespace {

using performer::row_matrix;
using performer::conformance::random_matrix;

template <class A>
void check_shared_block(const A& mechanism) {
  const performer::block_config cfg{.d_model = 32, .heads = 4, .causal = true};
  const performer::transformer_block<A> block(cfg, mechanism, 3);
  constexpr int threads = 4;
  std::vector<row_matrix<float>> inputs;
  std::vector<row_matrix<float>> serial;
  for (int t = 0; t < threads; ++t) {
    inputs.push_back(random_matrix<float>(50 + t, 32, static_cast<std::uint64_t>(10 + t)));
    serial.push_back(block.forward(inputs.back()));
  }
  std::vector<row_matrix<float>> parallel(threads);
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      typename performer::transformer_block<A>::workspace_type ws;  // one per thread
      parallel[static_cast<std::size_t>(t)].resize(inputs[static_cast<std::size_t>(t)].rows(), 32);
      for (int rep = 0; rep < 3; ++rep) {
        block.forward(inputs[static_cast<std::size_t>(t)], parallel[static_cast<std::size_t>(t)], {}, ws);
      }
    });
  }
  for (auto& th : pool) th.join();
  for (int t = 0; t < threads; ++t) {
    EXPECT_EQ(parallel[static_cast<std::size_t>(t)], serial[static_cast<std::size_t>(t)]) << "thread " << t;
  }
}

TEST(ThreadSafety, SharedConstBlockExact) { check_shared_block(performer::softmax_attention<float>{}); }
TEST(ThreadSafety, SharedConstBlockTiled) { check_shared_block(performer::tiled_softmax_attention<float>(8, 8)); }

}  // namespace
