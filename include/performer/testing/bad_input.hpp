/// @file testing/bad_input.hpp
/// @brief Reusable GoogleTest suite of the bad input every attention mechanism's forward() must
/// reject, and how: a performer::invalid_argument whose message starts with the function's name
/// and names the argument and the shapes, with q, k, v and out left as they were.
///
/// Needs GoogleTest (it is not included by performer.hpp). Write a maker as for the conformance
/// suite (testing/conformance.hpp: `attention_type`, `make(head_dim)`, and its traits such as
/// `shared_qk`) and instantiate:
/// @code
/// struct my_maker {
///   using attention_type = my_attention<float>;
///   static attention_type make(performer::index_t head_dim) { return attention_type(head_dim); }
///   // optional: static constexpr std::string_view forward_name = "my_attention::forward";
///   //           (unset: any "<name>::forward: " prefix is accepted)
///   // optional: static constexpr bool fixed_head_width = true;  (built for head_dim only)
///   // optional: static std::vector<performer::conformance::overflow_input<float>>
///   //               overflow_inputs(attention_type& a, index_t d, index_t d_v);
///   //           (finite inputs whose result overflows; logit_overflow_inputs() suits exact
///   //           logits) and static constexpr std::string_view overflow_skip_reason = "...";
/// };
/// namespace performer::conformance {
/// INSTANTIATE_TYPED_TEST_SUITE_P(mine, attention_bad_input, ::testing::Types<my_maker>);
/// }
/// @endcode
/// To give traits to makers you cannot edit, wrap them: `wrap_each_t<Wrap, List>`. The message
/// checks are testing/expect_invalid.hpp's (PERFORMER_EXPECT_INVALID for your own entry points).
///
/// Every test runs bidirectional and, when the mechanism supports it, causal; a test that does
/// not apply to a maker reports itself skipped with the reason. docs/bad_input_matrix.md maps
/// each test to its cells.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "../core/attention_mask.hpp"
#include "../core/error.hpp"
#include "../core/types.hpp"
#include "bad_input_traits.hpp"
#include "expect_invalid.hpp"
#include "helpers.hpp"

namespace performer::conformance {

template <class Maker>
class attention_bad_input : public ::testing::Test {
 public:  // expect_non_finite_rejected and tests/testing/bad_input_test.cpp drive it from outside
  using traits = bad_input_traits<Maker>;
  using attention_type = typename traits::attention_type;
  using T = typename traits::scalar;
  using workspace_type = typename attention_type::workspace_type;
  // 9 tokens cross the makers' small tiles, blocks and chunks; d != d_v, so that a check that
  // confuses the two widths fails. The expected messages spell these shapes out ("q is 9x8").
  static constexpr index_t n = 9;
  static constexpr index_t d = 8;
  static constexpr index_t d_v = 5;

  attention_type a = Maker::make(d);
  workspace_type ws{};
  row_matrix<T> q = random_matrix<T>(n, d, 1);
  /// q itself for shared-QK mechanisms, whose k must have q's shape.
  row_matrix<T> k = traits::shared_qk ? q : random_matrix<T>(n, d, 2);
  row_matrix<T> v = random_matrix<T>(n, d_v, 3);
  /// Every entry a sentinel: a rejected call must not write it.
  row_matrix<T> out = row_matrix<T>::Constant(n, d_v, T(-7));

  /// Bidirectional, and causal when the mechanism supports it.
  static std::vector<bool> modes() {
    if constexpr (attention_type::supports_causal) return {false, true};
    return {false};
  }

  /// forward(q, k, v, out, mask) throws as expect_invalid says, and then q, k, v and out hold
  /// what they held (a rejected call changes nothing a caller can see).
  void expect_rejected(std::initializer_list<std::string_view> fragments,
                       const const_matrix_ref<T>& q_in, const const_matrix_ref<T>& k_in,
                       const const_matrix_ref<T>& v_in, matrix_ref<T> out_in,
                       const attention_mask& mask, const char* file, int line) {
    const row_matrix<T> q0 = q_in;
    const row_matrix<T> k0 = k_in;
    const row_matrix<T> v0 = v_in;
    const row_matrix<T> out0 = out_in;
    const bool rejected = expect_invalid([&] { a.forward(q_in, k_in, v_in, out_in, mask, ws); },
                                         traits::forward_name, fragments, file, line);
    if (rejected && (!same_bits(q_in, q0) || !same_bits(k_in, k0) ||
                     !same_bits(v_in, v0) || !same_bits(out_in, out0))) {
      ADD_FAILURE_AT(file, line) << "a rejected call changed q, k, v or out";
    }
  }
};

// Inside the suite only (undefined at the end). The fragments come in parentheses, ("a", "b"),
// which PERFORMER_BAD_INPUT_LIST turns into the braced list: a macro argument cannot hold the
// braced list's commas.
#define PERFORMER_BAD_INPUT_LIST(...) \
  { __VA_ARGS__ }
#define PERFORMER_BAD_INPUT_REJECTS(fragments, q_in, k_in, v_in, out_in, mask)              \
  this->expect_rejected(PERFORMER_BAD_INPUT_LIST fragments, q_in, k_in, v_in, out_in, mask, \
                        __FILE__, __LINE__)

TYPED_TEST_SUITE_P(attention_bad_input);

TYPED_TEST_P(attention_bad_input, EmptyQuery) {
  using T = typename TestFixture::T;
  const row_matrix<T> empty(0, TestFixture::d);
  row_matrix<T> out(0, TestFixture::d_v);
  // Shared-QK keys must have q's shape, so they are empty too; the query check comes first.
  const row_matrix<T>& k = TestFixture::traits::shared_qk ? empty : this->k;
  for (const bool causal : TestFixture::modes()) {
    PERFORMER_BAD_INPUT_REJECTS(("empty query sequence (q is 0x8)"), empty, k, this->v, out,
                                (attention_mask{causal, {}}));
  }
}

TYPED_TEST_P(attention_bad_input, EmptyKeys) {
  using T = typename TestFixture::T;
  const row_matrix<T> k(0, TestFixture::d);
  const row_matrix<T> v(0, TestFixture::d_v);
  for (const bool causal : TestFixture::modes()) {
    PERFORMER_BAD_INPUT_REJECTS(("empty key sequence (k is 0x8)"), this->q, k, v, this->out,
                                (attention_mask{causal, {}}));
  }
}

TYPED_TEST_P(attention_bad_input, ZeroHeadWidth) {
  using T = typename TestFixture::T;
  const row_matrix<T> q(TestFixture::n, 0);
  for (const bool causal : TestFixture::modes()) {
    PERFORMER_BAD_INPUT_REJECTS(("zero head width (q is 9x0)"), q, q, this->v, this->out,
                                (attention_mask{causal, {}}));
  }
}

TYPED_TEST_P(attention_bad_input, ZeroValueWidth) {
  using T = typename TestFixture::T;
  const row_matrix<T> v(TestFixture::n, 0);
  row_matrix<T> out(TestFixture::n, 0);
  for (const bool causal : TestFixture::modes()) {
    PERFORMER_BAD_INPUT_REJECTS(("zero value width (v is 9x0)"), this->q, this->k, v, out,
                                (attention_mask{causal, {}}));
  }
}

TYPED_TEST_P(attention_bad_input, KeyWidthMismatch) {
  using T = typename TestFixture::T;
  const row_matrix<T> narrow = random_matrix<T>(TestFixture::n, TestFixture::d - 1, 2);
  const row_matrix<T> wide = random_matrix<T>(TestFixture::n, TestFixture::d + 1, 2);
  for (const bool causal : TestFixture::modes()) {
    const attention_mask mask{causal, {}};
    PERFORMER_BAD_INPUT_REJECTS(("k is 9x7 but q is 9x8", "need the same width"), this->q, narrow,
                                this->v, this->out, mask);
    PERFORMER_BAD_INPUT_REJECTS(("k is 9x9 but q is 9x8", "need the same width"), this->q, wide,
                                this->v, this->out, mask);
  }
}

TYPED_TEST_P(attention_bad_input, ValueRowsMismatch) {
  using T = typename TestFixture::T;
  const row_matrix<T> short_v = random_matrix<T>(TestFixture::n - 1, TestFixture::d_v, 3);
  const row_matrix<T> long_v = random_matrix<T>(TestFixture::n + 1, TestFixture::d_v, 3);
  for (const bool causal : TestFixture::modes()) {
    const attention_mask mask{causal, {}};
    PERFORMER_BAD_INPUT_REJECTS(("v is 8x5 but k is 9x8", "same number of rows"), this->q, this->k,
                                short_v, this->out, mask);
    PERFORMER_BAD_INPUT_REJECTS(("v is 10x5 but k is 9x8", "same number of rows"), this->q, this->k,
                                long_v, this->out, mask);
  }
}

TYPED_TEST_P(attention_bad_input, WrongOutShape) {
  using T = typename TestFixture::T;
  row_matrix<T> wide = row_matrix<T>::Zero(TestFixture::n, TestFixture::d_v + 1);
  row_matrix<T> short_out = row_matrix<T>::Zero(TestFixture::n - 1, TestFixture::d_v);
  for (const bool causal : TestFixture::modes()) {
    const attention_mask mask{causal, {}};
    PERFORMER_BAD_INPUT_REJECTS(("out is 9x6, expected 9x5"), this->q, this->k, this->v, wide,
                                mask);
    PERFORMER_BAD_INPUT_REJECTS(("out is 8x5, expected 9x5"), this->q, this->k, this->v, short_out,
                                mask);
  }
}

TYPED_TEST_P(attention_bad_input, KeyMaskLength) {
  for (const bool causal : TestFixture::modes()) {
    for (const index_t length : {TestFixture::n - 1, TestFixture::n + 1}) {
      const std::vector<std::uint8_t> keep(static_cast<std::size_t>(length), 1);
      const std::string fragment =
          "key_mask has " + std::to_string(length) + " entries, expected 9";
      PERFORMER_BAD_INPUT_REJECTS((fragment), this->q, this->k, this->v, this->out,
                                  (attention_mask{causal, keep}));
    }
  }
}

TYPED_TEST_P(attention_bad_input, CausalCrossLength) {
  if constexpr (!TestFixture::attention_type::supports_causal) {
    GTEST_SKIP() << "the mechanism has no causal mode (CausalUnsupported checks the refusal)";
  } else {
    using T = typename TestFixture::T;
    const row_matrix<T> q = random_matrix<T>(TestFixture::n - 1, TestFixture::d, 1);
    row_matrix<T> out(TestFixture::n - 1, TestFixture::d_v);
    PERFORMER_BAD_INPUT_REJECTS(
        ("causal masking needs as many queries as keys (q is 8x8, k is 9x8)"), q, this->k, this->v,
        out, (attention_mask{true, {}}));
  }
}

TYPED_TEST_P(attention_bad_input, CausalUnsupported) {
  if constexpr (TestFixture::attention_type::supports_causal) {
    GTEST_SKIP() << "the mechanism supports causal masking";
  } else {
    // No wording is prescribed: only that forward, not a later step, refuses.
    PERFORMER_BAD_INPUT_REJECTS((""), this->q, this->k, this->v, this->out,
                                (attention_mask{true, {}}));
  }
}

/// A NaN (nan = true) or +-inf in each of q, k and v, at the first, a middle and the last entry,
/// and in a padded token's row: inputs must be finite whether or not the mask reads them.
template <class Fixture>
void expect_non_finite_rejected(Fixture& f, bool nan) {
  using T = typename Fixture::T;
  constexpr index_t n = Fixture::n;
  const std::vector<T> bad =
      nan ? std::vector<T>{std::numeric_limits<T>::quiet_NaN()}
          : std::vector<T>{std::numeric_limits<T>::infinity(), -std::numeric_limits<T>::infinity()};
  std::vector<std::uint8_t> last_padded(n, 1);
  last_padded[n - 1] = 0;
  for (const bool causal : Fixture::modes()) {
    for (const bool padded : {false, true}) {
      const attention_mask mask{causal, padded ? std::span<const std::uint8_t>(last_padded)
                                               : std::span<const std::uint8_t>()};
      for (const T value : bad) {
        for (const char name : {'q', 'k', 'v'}) {
          const index_t cols = name == 'v' ? Fixture::d_v : Fixture::d;
          std::vector<std::pair<index_t, index_t>> positions{{n - 1, 0}};
          if (!padded) positions = {{0, 0}, {n / 2, cols / 2}, {n - 1, cols - 1}};
          for (const auto& [i, j] : positions) {
            SCOPED_TRACE(testing::Message() << name << "(" << i << ", " << j << ") = " << value
                                            << ", causal " << causal << ", padded " << padded);
            row_matrix<T> q = f.q;
            row_matrix<T> k = f.k;
            row_matrix<T> v = f.v;
            (name == 'q' ? q : name == 'k' ? k : v)(i, j) = value;
            const std::string fragment = std::string(1, name) + " (9x" + std::to_string(cols) +
                                         ") contains a NaN or an infinity";
            f.expect_rejected({fragment}, q, k, v, f.out, mask, __FILE__, __LINE__);
          }
        }
      }
    }
  }
}

TYPED_TEST_P(attention_bad_input, NaN) { expect_non_finite_rejected(*this, true); }

TYPED_TEST_P(attention_bad_input, Inf) { expect_non_finite_rejected(*this, false); }

TYPED_TEST_P(attention_bad_input, OutAliasesInput) {
  using T = typename TestFixture::T;
  constexpr index_t n = TestFixture::n;
  constexpr std::string_view overlap = "out overlaps an input";
  // out as q or k itself needs values as wide as q.
  const row_matrix<T> v_wide = random_matrix<T>(n, TestFixture::d, 4);
  row_matrix<T> buffer = random_matrix<T>(n + 2, TestFixture::d_v, 5);
  for (const bool causal : TestFixture::modes()) {
    const attention_mask mask{causal, {}};
    row_matrix<T> q = this->q;
    row_matrix<T> k = this->k;
    row_matrix<T> v = this->v;
    PERFORMER_BAD_INPUT_REJECTS((overlap), q, k, v_wide, q, mask);
    PERFORMER_BAD_INPUT_REJECTS((overlap), q, k, v_wide, k, mask);
    PERFORMER_BAD_INPUT_REJECTS((overlap), q, k, v, v, mask);
    // Part of q's memory, and part of v's (rows 2.. of one buffer).
    PERFORMER_BAD_INPUT_REJECTS((overlap), q, k, v, q.leftCols(TestFixture::d_v), mask);
    PERFORMER_BAD_INPUT_REJECTS((overlap), q, k, buffer.topRows(n), buffer.bottomRows(n), mask);
  }
}

TYPED_TEST_P(attention_bad_input, OtherHeadWidth) {
  using T = typename TestFixture::T;
  const row_matrix<T> q = random_matrix<T>(TestFixture::n, TestFixture::d + 3, 1);
  const row_matrix<T> k =
      TestFixture::traits::shared_qk ? q : random_matrix<T>(TestFixture::n, TestFixture::d + 3, 2);
  for (const bool causal : TestFixture::modes()) {
    const attention_mask mask{causal, {}};
    if constexpr (TestFixture::traits::fixed_head_width) {
      PERFORMER_BAD_INPUT_REJECTS(("q is 9x11", "head width 8"), q, k, this->v, this->out, mask);
    } else {
      // Not built for a width: q and k that agree with each other are valid at any width.
      this->a.forward(q, k, this->v, this->out, mask, this->ws);
      EXPECT_TRUE(this->out.allFinite()) << this->out;
    }
  }
}

TYPED_TEST_P(attention_bad_input, SharedQkShape) {
  if constexpr (!TestFixture::traits::shared_qk) {
    GTEST_SKIP() << "separate keys: N_q != N_k is valid cross-attention";
  } else {
    using T = typename TestFixture::T;
    const row_matrix<T> k = random_matrix<T>(TestFixture::n - 1, TestFixture::d, 2);
    const row_matrix<T> v = random_matrix<T>(TestFixture::n - 1, TestFixture::d_v, 3);
    const row_matrix<T> wide = random_matrix<T>(TestFixture::n, TestFixture::d + 1, 2);
    for (const bool causal : TestFixture::modes()) {
      const attention_mask mask{causal, {}};
      if (!causal) {  // causal masking refuses N_q != N_k first (CausalCrossLength)
        PERFORMER_BAD_INPUT_REJECTS(("q is 9x8", "k is 8x8"), this->q, k, v, this->out, mask);
      }
      // A width mismatch is the generic check's (KeyWidthMismatch), whatever the keys are.
      PERFORMER_BAD_INPUT_REJECTS(("k is 9x9 but q is 9x8"), this->q, wide, this->v, this->out,
                                  mask);
      // The keys are derived from q: k's values, once finite and of q's shape, change nothing.
      const row_matrix<T> other = random_matrix<T>(TestFixture::n, TestFixture::d, 9);
      EXPECT_TRUE(same_bits(run(this->a, this->q, other, this->v, mask),
                                run(this->a, this->q, this->q, this->v, mask)));
    }
  }
}

TYPED_TEST_P(attention_bad_input, NoVisibleKey) {
  using T = typename TestFixture::T;
  constexpr index_t n = TestFixture::n;
  // Values in [1, 3]: a weighted mean of them is never a zero row by accident.
  const row_matrix<T> v = (this->v.array() + T(2)).matrix();
  const std::vector<std::uint8_t> none(n, 0);
  std::vector<std::uint8_t> first_padded(n, 1);
  first_padded[0] = 0;
  for (const bool causal : TestFixture::modes()) {
    SCOPED_TRACE(testing::Message() << "causal " << causal);
    this->out.setConstant(std::numeric_limits<T>::quiet_NaN());  // every entry must be written
    this->a.forward(this->q, this->k, v, this->out, attention_mask{causal, none}, this->ws);
    EXPECT_TRUE(this->out.isZero(0)) << "every key padded:\n" << this->out;
    // Key 0 padded: under causal masking query 0 alone sees nothing; without causal masking
    // every query still sees keys 1 to n - 1.
    this->out.setConstant(std::numeric_limits<T>::quiet_NaN());
    this->a.forward(this->q, this->k, v, this->out, attention_mask{causal, first_padded}, this->ws);
    EXPECT_TRUE(this->out.allFinite()) << this->out;
    for (index_t i = 0; i < n; ++i) {
      const bool sees_a_key = !causal || i > 0;
      EXPECT_EQ(this->out.row(i).isZero(0), !sees_a_key) << "row " << i << ": " << this->out.row(i);
    }
  }
}

TYPED_TEST_P(attention_bad_input, Overflow) {
  if constexpr (!TestFixture::traits::has_overflow_inputs) {
    GTEST_SKIP() << TestFixture::traits::overflow_skip_reason;
  } else {
    const auto cases = TypeParam::overflow_inputs(this->a, TestFixture::d, TestFixture::d_v);
    if (cases.empty()) GTEST_SKIP() << TestFixture::traits::overflow_skip_reason;
    for (const auto& c : cases) {
      for (const bool causal : TestFixture::modes()) {
        SCOPED_TRACE(testing::Message() << c.what << ", causal " << causal);
        row_matrix<typename TestFixture::T> out(c.q.rows(), c.v.cols());
        // Checked after the computation, so out may have been written: only the throw counts.
        expect_invalid(
            [&] {
              this->a.forward(c.q, c.k, c.v, out, attention_mask{causal, {}}, this->ws);
            },
            TestFixture::traits::forward_name, std::string_view("overflow"), __FILE__, __LINE__);
      }
    }
  }
}

TYPED_TEST_P(attention_bad_input, RejectedCallsLeaveTheWorkspaceUsable) {
  using T = typename TestFixture::T;
  std::vector<overflow_input<T>> overflow;
  // First: overflow_inputs may change the mechanism (e.g. its hash functions).
  if constexpr (TestFixture::traits::has_overflow_inputs) {
    overflow = TypeParam::overflow_inputs(this->a, TestFixture::d, TestFixture::d_v);
  }
  const auto fresh = run(this->a, this->q, this->k, this->v);
  // Rejections of several kinds and shapes through one workspace, then a valid call through it.
  row_matrix<T> nan_v = this->v;
  nan_v(3, 1) = std::numeric_limits<T>::quiet_NaN();
  const row_matrix<T> empty(0, TestFixture::d);
  row_matrix<T> wide(TestFixture::n, TestFixture::d_v + 1);
  for (const bool causal : TestFixture::modes()) {
    const attention_mask mask{causal, {}};
    EXPECT_THROW(this->a.forward(this->q, this->k, nan_v, this->out, mask, this->ws),
                 invalid_argument);
    EXPECT_THROW(this->a.forward(this->q, empty, empty.leftCols(TestFixture::d_v), this->out, mask,
                                 this->ws),
                 invalid_argument);
    EXPECT_THROW(this->a.forward(this->q, this->k, this->v, wide, mask, this->ws),
                 invalid_argument);
    for (const auto& c : overflow) {  // these fail after the work, with the workspace in use
      row_matrix<T> out(c.q.rows(), c.v.cols());
      EXPECT_THROW(this->a.forward(c.q, c.k, c.v, out, mask, this->ws), invalid_argument);
    }
  }
  this->a.forward(this->q, this->k, this->v, this->out, attention_mask{}, this->ws);
  EXPECT_TRUE(same_bits(this->out, fresh)) << "after rejected calls:\n"
                                               << this->out << "\nfresh workspace:\n"
                                               << fresh;
}

#undef PERFORMER_BAD_INPUT_REJECTS
#undef PERFORMER_BAD_INPUT_LIST

REGISTER_TYPED_TEST_SUITE_P(attention_bad_input, EmptyQuery, EmptyKeys, ZeroHeadWidth,
                            ZeroValueWidth, KeyWidthMismatch, ValueRowsMismatch, WrongOutShape,
                            KeyMaskLength, CausalCrossLength, CausalUnsupported, NaN, Inf,
                            OutAliasesInput, OtherHeadWidth, SharedQkShape, NoVisibleKey, Overflow,
                            RejectedCallsLeaveTheWorkspaceUsable);

}  // namespace performer::conformance
