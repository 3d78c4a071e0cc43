// Covers performer/testing/expect_invalid.hpp and bad_input.hpp themselves: each way a rejection
// can be wrong makes the check fail, the suite's fixture catches a mechanism that forgets a check
// or writes before it throws, and the suite runs on a user-written mechanism
// (examples/window_attention.hpp) that names no forward function.
#include <gtest/gtest-spi.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <stdexcept>
#include <string_view>
#include <vector>

#include <performer/core/validate.hpp>
#include <performer/testing/bad_input.hpp>

#include "window_attention.hpp"

namespace performer::conformance {
// Named as well as anonymous: the unity build compiles several test files as one.
namespace testing_bad_input_test {
namespace {

void throws_invalid(const char* message) { throw invalid_argument(message); }

TEST(ExpectInvalid, PassesOnTheNamedFunctionAndFragment) {
  PERFORMER_EXPECT_INVALID("f", "bad x", throws_invalid("f: bad x (1x2)"));
  expect_invalid([] { throws_invalid("f: bad x (1x2)"); }, "f", {"bad x", "(1x2)"}, __FILE__,
                 __LINE__);
}

TEST(ExpectInvalid, FailsWhenNothingIsThrown) {
  EXPECT_NONFATAL_FAILURE(PERFORMER_EXPECT_INVALID("f", "bad x", static_cast<void>(0)),
                          "did not throw");
}

TEST(ExpectInvalid, FailsOnAnotherExceptionType) {
  EXPECT_NONFATAL_FAILURE(
      PERFORMER_EXPECT_INVALID("f", "bad x", throw std::out_of_range("f: bad x")),
      "not performer::invalid_argument");
}

TEST(ExpectInvalid, FailsWhenTheMessageNamesAnotherFunction) {
  EXPECT_NONFATAL_FAILURE(PERFORMER_EXPECT_INVALID("f", "bad x", throws_invalid("g: bad x")),
                          "does not start with \"f: \"");
  // A prefix of the name is not the name.
  EXPECT_NONFATAL_FAILURE(PERFORMER_EXPECT_INVALID("f", "bad x", throws_invalid("f2: bad x")),
                          "does not start with");
}

TEST(ExpectInvalid, FailsWhenAFragmentIsMissing) {
  EXPECT_NONFATAL_FAILURE(PERFORMER_EXPECT_INVALID("f", "bad y", throws_invalid("f: bad x")),
                          "does not say \"bad y\"");
}

TEST(ExpectInvalid, AnyForwardNameWhenNoneIsGiven) {
  EXPECT_TRUE(names_the_function("window_attention::forward: q is 0x8", ""));
  EXPECT_TRUE(names_the_function("ns::my_attention<float>::forward: x", ""));
  EXPECT_FALSE(names_the_function("forward: q is 0x8", ""));
  EXPECT_FALSE(names_the_function("bad input in my_attention::forward: q", ""));
  EXPECT_FALSE(names_the_function("window_attention::forward q is 0x8", ""));
}

/// Mean of the values, with every shape check of check_attention_args but not the finiteness
/// checks; `scribble` writes out before the shape checks run.
template <bool Scribble>
struct lax_attention {
  using scalar_type = double;
  struct workspace_type {};
  static constexpr bool supports_causal = true;
  void forward(const const_matrix_ref<double>& q, const const_matrix_ref<double>& k,
               const const_matrix_ref<double>& v, matrix_ref<double> out,
               const attention_mask& mask, workspace_type& /*ws*/) const {
    if constexpr (Scribble) out.setZero();
    const row_matrix<double> finite_q =
        q.unaryExpr([](double x) { return std::isfinite(x) ? x : 0.0; });
    check_attention_args<double>("lax_attention::forward", finite_q, k, v, out, mask);
    for (index_t i = 0; i < q.rows(); ++i) out.row(i) = v.colwise().mean();
  }
};

template <bool Scribble>
struct lax_maker {
  using attention_type = lax_attention<Scribble>;
  static attention_type make(index_t /*head_dim*/) { return {}; }
};

/// The suite's fixture outside the framework, so that its checks can be run on purpose-made
/// defects and their failures caught.
template <class Maker>
struct fixture : attention_bad_input<Maker> {
  void TestBody() override {}
};

TEST(BadInputSuite, CatchesAMechanismThatSkipsAFiniteCheck) {
  fixture<lax_maker<false>> f;
  row_matrix<double> q = f.q;
  q(2, 3) = std::numeric_limits<double>::quiet_NaN();
  EXPECT_NONFATAL_FAILURE(f.expect_rejected({"q (9x8) contains a NaN or an infinity"}, q, f.k, f.v,
                                            f.out, attention_mask{}, __FILE__, __LINE__),
                          "did not throw");
}

TEST(BadInputSuite, CatchesAMechanismThatWritesBeforeItThrows) {
  fixture<lax_maker<true>> f;
  const row_matrix<double> short_v = f.v.topRows(f.n - 1);
  EXPECT_NONFATAL_FAILURE(f.expect_rejected({"same number of rows"}, f.q, f.k, short_v, f.out,
                                            attention_mask{}, __FILE__, __LINE__),
                          "a rejected call changed q, k, v or out");
}

/// A user mechanism with its default traits: no forward_name (any "<name>::forward: " prefix
/// passes), any head width, and exact logits whose overflow it must report.
template <class T>
struct window_maker {
  using attention_type = window_attention<T>;
  static attention_type make(index_t /*head_dim*/) { return attention_type(2); }
  static std::vector<overflow_input<T>> overflow_inputs(attention_type& /*a*/, index_t d,
                                                        index_t d_v) {
    return logit_overflow_inputs<T>(d, d_v);
  }
};

using user_makers = ::testing::Types<window_maker<float>, window_maker<double>>;
INSTANTIATE_TYPED_TEST_SUITE_P(user, attention_bad_input, user_makers);

}  // namespace
}  // namespace testing_bad_input_test
}  // namespace performer::conformance
