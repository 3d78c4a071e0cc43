// Covers performer/testing/conformance.hpp itself: a user-written mechanism
// (examples/window_attention.hpp) through the suites, and the suite rejecting what merely looks
// like attention. The library's own mechanisms run the suites in their families' folders.
#include <performer/performer.hpp>
#include <performer/testing/conformance.hpp>
#include <performer/testing/determinism.hpp>

#include "window_attention.hpp"

namespace performer::conformance {
// Named as well as anonymous: the unity build compiles several test files as one.
namespace testing_conformance_test {
namespace {

template <class T>
struct window_maker {
  using attention_type = window_attention<T>;
  // Windows much shorter than the suite's sequences: padding can empty a window.
  static attention_type make(performer::index_t /*head_dim*/) { return attention_type(2); }
  // Not a key-permutation-invariant mechanism, and padding moves the window over other keys.
  static constexpr bool exact_padding_equivalence = false;
};
using user_makers = ::testing::Types<window_maker<float>, window_maker<double>>;
INSTANTIATE_TYPED_TEST_SUITE_P(user, attention_conformance, user_makers);
INSTANTIATE_TYPED_TEST_SUITE_P(user, attention_determinism, user_makers);
// The allocation suite is for the library's own mechanisms: the example reallocates its logits
// row as window lengths change, which is fine for an example.
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(attention_allocation);

/// Uniform attention: the mean of the visible values, whatever q and k. It has the right shapes,
/// is convex, causal and padding invariant: only the logit check can tell it from attention.
template <class T>
struct mean_attention {
  using scalar_type = T;
  struct workspace_type {};
  static constexpr bool supports_causal = true;
  void forward(const const_matrix_ref<T>& q, const const_matrix_ref<T>& k,
               const const_matrix_ref<T>& v, matrix_ref<T> out, const attention_mask& mask,
               workspace_type& /*unused*/) const {
    check_attention_args<T>("mean_attention::forward", q, k, v, out, mask);
    for (performer::index_t i = 0; i < q.rows(); ++i) {
      out.row(i).setZero();
      performer::index_t count = 0;
      for (performer::index_t j = 0; j < (mask.causal ? i + 1 : k.rows()); ++j) {
        if (!mask.keeps(static_cast<std::size_t>(j))) continue;
        out.row(i) += v.row(j);
        ++count;
      }
      if (count > 0) out.row(i) /= static_cast<T>(count);
    }
  }
};

TEST(ConformanceSuite, LogitCheckRejectsUniformAttention) {
  EXPECT_EQ(logit_response(mean_attention<double>{}, 16, 8), 0.0);
  EXPECT_NEAR(logit_response(softmax_attention<double>{}, 16, 8), 1.0, 1e-12);
  EXPECT_NEAR(logit_response(window_attention<double>(100), 16, 8), 1.0, 1e-12);
}

}  // namespace
}  // namespace testing_conformance_test
}  // namespace performer::conformance
