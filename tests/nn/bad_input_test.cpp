// The Transformer block's bad input (docs/bad_input_matrix.md §5): its constructor,
// set_parameters and forward, including finite inputs whose LayerNorm or residual sums overflow.
#include <gtest/gtest.h>

#include <cstdint>
#include <limits>
#include <string_view>
#include <vector>

#include <performer/favor/favor_attention.hpp>
#include <performer/nn/transformer_block.hpp>
#include <performer/softmax/softmax_attention.hpp>

#include "instances/instances.hpp"

#include "support/bad_input_cells.hpp"

namespace performer::test {
// Named as well as anonymous: the unity build compiles several test files as one.
namespace nn_bad_input_test {
namespace {

using conformance::random_matrix;

template <class T>
using block_of = transformer_block<softmax_attention<T>>;

constexpr index_t n = 6;
constexpr index_t d_model = 8;
constexpr const char* ctor = "transformer_block";
constexpr const char* block_forward = "transformer_block::forward";

TEST(NnBadInput, BlockCtor_NonPositiveWidthOrHeads) {
  for_float_and_double([]<class T>() {
    using B = block_of<T>;
    PERFORMER_EXPECT_INVALID(ctor, "d_model must be positive (got 0)", B({.d_model = 0}, {}));
    PERFORMER_EXPECT_INVALID(ctor, "d_model must be positive (got -8)", B({.d_model = -8}, {}));
    PERFORMER_EXPECT_INVALID(ctor, "heads must be positive (got 0)",
                             B({.d_model = 8, .heads = 0}, {}));
    PERFORMER_EXPECT_INVALID(ctor, "heads must be positive (got -2)",
                             B({.d_model = 8, .heads = -2}, {}));
  });
}

TEST(NnBadInput, BlockCtor_HeadsNotDividing) {
  for_float_and_double([]<class T>() {
    PERFORMER_EXPECT_INVALID(ctor, "heads (3) does not divide d_model (8)",
                             block_of<T>({.d_model = 8, .heads = 3}, {}));
  });
}

TEST(NnBadInput, BlockCtor_RotaryOddHeadWidthOrBadBase) {
  for_float_and_double([]<class T>() {
    PERFORMER_EXPECT_INVALID(ctor, "rotary embedding needs an even head width (d_model / heads = 3)",
                             block_of<T>({.d_model = 6, .heads = 2, .rotary = true}, {}));
    PERFORMER_EXPECT_INVALID(ctor, "rotary_base must be finite and greater than 1 (got 0.5)",
                             block_of<T>({.d_model = 8, .heads = 2, .rotary = true, .rotary_base = 0.5}, {}));
  });
}

TEST(NnBadInput, BlockCtor_NegativeDff) {
  for_float_and_double([]<class T>() {
    PERFORMER_EXPECT_INVALID(ctor, "d_ff must be >= 0 (got -1)",
                             block_of<T>({.d_model = 8, .d_ff = -1}, {}));
  });
}

TEST(NnBadInput, BlockCtor_BadLayerNormEps) {
  for_float_and_double([]<class T>() {
    for (const double bad : {0.0, -1e-5, nan_v<double>, inf_v<double>}) {
      SCOPED_TRACE(bad);
      PERFORMER_EXPECT_INVALID(ctor, "layer_norm_eps must be positive and finite",
                               block_of<T>({.d_model = 8, .layer_norm_eps = bad}, {}));
    }
  });
}

template <class T>
struct block_case {
  block_of<T> b{{.d_model = d_model, .heads = 2}, {}, 3};
  row_matrix<T> x = random_matrix<T>(n, d_model, 1);
  typename block_of<T>::workspace_type ws{};
};

TEST(NnBadInput, BlockForward_EmptySequence) {
  for_float_and_double([]<class T>() {
    block_case<T> c;
    const row_matrix<T> x(0, d_model);
    row_matrix<T> y(0, d_model);
    PERFORMER_EXPECT_INVALID(block_forward, "empty sequence (x is 0x8)",
                             c.b.forward(x, y, {}, c.ws));
  });
}

TEST(NnBadInput, BlockForward_WrongWidth) {
  for_float_and_double([]<class T>() {
    block_case<T> c;
    const row_matrix<T> x = random_matrix<T>(n, d_model + 1, 1);
    PERFORMER_EXPECT_INVALID(block_forward, "x is 6x9 but d_model is 8", c.b.forward(x));
  });
}

TEST(NnBadInput, BlockForward_WrongOutShape) {
  for_float_and_double([]<class T>() {
    block_case<T> c;
    row_matrix<T> short_y(n - 1, d_model);
    row_matrix<T> wide_y(n, d_model + 1);
    PERFORMER_EXPECT_INVALID(block_forward, "y is 5x8, expected 6x8",
                             c.b.forward(c.x, short_y, {}, c.ws));
    PERFORMER_EXPECT_INVALID(block_forward, "y is 6x9, expected 6x8",
                             c.b.forward(c.x, wide_y, {}, c.ws));
  });
}

TEST(NnBadInput, BlockForward_KeyMaskLength) {
  for_float_and_double([]<class T>() {
    block_case<T> c;
    for (const std::size_t length : {n - 1, n + 1}) {
      const std::vector<std::uint8_t> keep(length, 1);
      PERFORMER_EXPECT_INVALID(block_forward,
                               "key_mask has " + std::to_string(length) + " entries, expected 6",
                               c.b.forward(c.x, keep));
    }
  });
}

TEST(NnBadInput, BlockForward_OutAliasesInput) {
  for_float_and_double([]<class T>() {
    block_case<T> c;
    PERFORMER_EXPECT_INVALID(block_forward, "y overlaps x", c.b.forward(c.x, c.x, {}, c.ws));
    row_matrix<T> buffer = random_matrix<T>(n + 1, d_model, 2);
    PERFORMER_EXPECT_INVALID(block_forward, "y overlaps x",
                             c.b.forward(buffer.topRows(n), buffer.bottomRows(n), {}, c.ws));
  });
}

TEST(NnBadInput, BlockForward_NaNAndInf) {
  for_float_and_double([]<class T>() {
    block_case<T> c;
    for (const T bad : {nan_v<T>, inf_v<T>, -inf_v<T>}) {
      row_matrix<T> x = c.x;
      x(n - 1, 0) = bad;
      PERFORMER_EXPECT_INVALID(block_forward, "x (6x8) contains a NaN or an infinity",
                               c.b.forward(x));
      // A padded token's row must be finite too: the contract is on x, not on the kept rows.
      std::vector<std::uint8_t> keep(n, 1);
      keep[n - 1] = 0;
      PERFORMER_EXPECT_INVALID(block_forward, "x (6x8) contains a NaN", c.b.forward(x, keep));
    }
  });
}

TEST(NnBadInput, BlockForward_MechanismRejects) {
  // Documented ("anything the mechanism rejects"): a FAVOR mechanism built for head width 8 in
  // a block whose heads are 4 wide is accepted by the constructor and rejected, by the
  // mechanism, on the first forward call.
  for_float_and_double([]<class T>() {
    using B = transformer_block<favor_attention<T>>;
    const B b({.d_model = d_model, .heads = 2}, favor_attention<T>(8, 8, 1), 1);
    PERFORMER_EXPECT_INVALID("favor_attention::forward", "projection is for head width 8",
                             b.forward(random_matrix<T>(n, d_model, 1)));
  });
}

TEST(NnBadInput, BlockForward_AllPadded) {
  // Every token padded: each head's queries see no key and get zero rows (documented), so the
  // attention sublayer adds only its bias; the block's output stays finite.
  for_float_and_double([]<class T>() {
    block_case<T> c;
    const std::vector<std::uint8_t> none(n, 0);
    const row_matrix<T> y = c.b.forward(c.x, none);
    EXPECT_TRUE(y.allFinite()) << y;
  });
}

TEST(NnBadInput, BlockForward_ResultOverflow) {
  // Finite input and parameters whose residual sum overflows: x + b_o with x near max/2 and an
  // output bias of max is +inf. The block checks its result, so no infinity or NaN leaves it.
  for_float_and_double([]<class T>() {
    block_case<T> c;
    auto p = c.b.parameters();
    p.b_o.setConstant(std::numeric_limits<T>::max());
    c.b.set_parameters(p);
    // Two distinct values per row: its LayerNorm is well defined once rescaled.
    row_matrix<T> x(n, d_model);
    for (index_t j = 0; j < d_model; ++j) {
      x.col(j).setConstant(std::numeric_limits<T>::max() / (j % 2 == 0 ? 3 : 2));
    }
    PERFORMER_EXPECT_INVALID(block_forward, "overflowed", c.b.forward(x));
  });
}

// Finite input near the largest T, whose LayerNorm row sums overflow. A NaN out of the first
// LayerNorm would reach the mechanism, whose error ("softmax_attention::forward: q (6x4)
// contains a NaN or an infinity") blames a q the user never passed. Acceptable outcomes: a
// finite result (a LayerNorm that rescales such rows), or an error from the block itself.
// Rows of alternating sign and rows of one repeated value (variance 0) are both tried; the
// latter was found by the matrix (the rescaled LayerNorm divided 0 by 0).
TEST(NnBadInput, BlockForward_LayerNormOverflow) {
  for_float_and_double([]<class T>() {
    block_case<T> c;
    const T half = std::numeric_limits<T>::max() / 2;
    row_matrix<T> alternating(n, d_model);
    for (index_t j = 0; j < d_model; ++j) alternating.col(j).setConstant(j % 2 == 0 ? half : -half);
    const row_matrix<T> constant = row_matrix<T>::Constant(n, d_model, half);
    for (const row_matrix<T>* x : {static_cast<const row_matrix<T>*>(&alternating), &constant}) {
      SCOPED_TRACE(x == &constant ? "constant rows" : "alternating rows");
      try {
        const row_matrix<T> y = c.b.forward(*x);
        EXPECT_TRUE(y.allFinite()) << y;
      } catch (const invalid_argument& e) {
        EXPECT_TRUE(std::string_view(e.what()).starts_with("transformer_block::forward: "))
            << e.what();
      }
    }
  });
}

constexpr const char* set_parameters = "transformer_block::set_parameters";

TEST(NnBadInput, BlockSetParameters_WrongShape) {
  for_float_and_double([]<class T>() {
    block_case<T> c;
    const auto before = c.b.parameters();
    auto p = before;
    p.w_q = row_matrix<T>::Zero(d_model, d_model + 1);
    PERFORMER_EXPECT_INVALID(set_parameters, "w_q is 8x9, expected 8x8", c.b.set_parameters(p));
    p = before;
    p.b_k = row_vector<T>::Zero(d_model - 1);
    PERFORMER_EXPECT_INVALID(set_parameters, "b_k is 1x7, expected 1x8", c.b.set_parameters(p));
    p = before;
    p.norm2_gain = row_vector<T>::Zero(0);
    PERFORMER_EXPECT_INVALID(set_parameters, "norm2_gain is 1x0", c.b.set_parameters(p));
    p = before;
    p.w_ff1 = row_matrix<T>::Zero(d_model, 4 * d_model - 1);
    PERFORMER_EXPECT_INVALID(set_parameters, "w_ff1 is 8x31, expected 8x32", c.b.set_parameters(p));
    // Checked before anything is replaced: the valid w_q of the last try did not go in alone.
    EXPECT_EQ(c.b.parameters().w_q, before.w_q);
    EXPECT_EQ(c.b.parameters().w_ff1, before.w_ff1);
  });
}

TEST(NnBadInput, BlockSetParameters_NonFinite) {
  for_float_and_double([]<class T>() {
    block_case<T> c;
    const auto before = c.b.parameters();
    auto p = before;
    p.w_q.setZero();  // a valid change that must not go in with the invalid one
    p.w_o(2, 3) = nan_v<T>;
    PERFORMER_EXPECT_INVALID(set_parameters, "w_o (8x8) contains a NaN", c.b.set_parameters(p));
    p = before;
    p.b_ff1(5) = inf_v<T>;
    PERFORMER_EXPECT_INVALID(set_parameters, "b_ff1 (1x32) contains a NaN", c.b.set_parameters(p));
    p = before;
    p.norm1_bias(0) = -inf_v<T>;
    PERFORMER_EXPECT_INVALID(set_parameters, "norm1_bias (1x8) contains a NaN",
                             c.b.set_parameters(p));
    EXPECT_EQ(c.b.parameters().w_o, before.w_o);
    EXPECT_EQ(c.b.parameters().w_q, before.w_q);
  });
}

}  // namespace
}  // namespace nn_bad_input_test
}  // namespace performer::test
