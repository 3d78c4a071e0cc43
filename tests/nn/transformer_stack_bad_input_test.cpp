// The Transformer stack's bad input (docs/bad_input_matrix.md §5): its constructor, layer(),
// set_final_norm and forward, which checks y itself and leaves x and the mask to its first layer.
#include <gtest/gtest.h>

#include <cstdint>
#include <limits>
#include <string_view>
#include <vector>

#include <performer/nn/transformer_stack.hpp>
#include <performer/softmax/softmax_attention.hpp>

#include "instances/instances.hpp"

#include "support/bad_input_cells.hpp"

namespace performer::test {
// Named as well as anonymous: the unity build compiles several test files as one.
namespace nn_transformer_stack_bad_input_test {
namespace {

using conformance::random_matrix;

template <class T>
using stack_of = transformer_stack<softmax_attention<T>>;

constexpr index_t n = 6;
constexpr index_t d_model = 8;
constexpr const char* block_forward = "transformer_block::forward";
constexpr const char* stack_forward = "transformer_stack::forward";

template <class T>
struct stack_case {
  stack_of<T> s{{.d_model = d_model, .heads = 2}, 2, softmax_attention<T>{}, 3};
  row_matrix<T> x = random_matrix<T>(n, d_model, 1);
  typename stack_of<T>::workspace_type ws{};
};

TEST(NnBadInput, StackCtor_NonPositiveLayers) {
  for_float_and_double([]<class T>() {
    PERFORMER_EXPECT_INVALID("transformer_stack", "layers must be positive (got 0)",
                             stack_of<T>({.d_model = d_model}, 0, softmax_attention<T>{}));
    PERFORMER_EXPECT_INVALID("transformer_stack", "layers must be positive (got -1)",
                             stack_of<T>({.d_model = d_model}, -1, softmax_attention<T>{}));
  });
}

TEST(NnBadInput, StackCtor_BadConfig) {
  // Documented: "or as transformer_block": each layer's constructor checks the config.
  for_float_and_double([]<class T>() {
    PERFORMER_EXPECT_INVALID(
        "transformer_block", "heads (3) does not divide d_model (8)",
        stack_of<T>({.d_model = d_model, .heads = 3}, 2, softmax_attention<T>{}));
    PERFORMER_EXPECT_INVALID(
        "transformer_block", "layer_norm_eps must be positive and finite",
        stack_of<T>({.d_model = d_model, .layer_norm_eps = 0}, 2, softmax_attention<T>{}));
  });
}

// Found by the matrix: layer(l) used std::vector::at, so an index out of range threw
// std::out_of_range with the standard library's message instead of performer::invalid_argument.
TEST(NnBadInput, StackLayer_OutOfRange) {
  for_float_and_double([]<class T>() {
    stack_case<T> c;
    const stack_of<T>& const_stack = c.s;
    PERFORMER_EXPECT_INVALID("transformer_stack::layer", "index 2 out of range (2 layers)",
                             c.s.layer(2));
    PERFORMER_EXPECT_INVALID("transformer_stack::layer", "index -1 out of range", c.s.layer(-1));
    PERFORMER_EXPECT_INVALID("transformer_stack::layer", "index 2 out of range",
                             const_stack.layer(2));
  });
}

constexpr const char* set_final_norm = "transformer_stack::set_final_norm";

TEST(NnBadInput, StackSetFinalNorm_WrongShape) {
  for_float_and_double([]<class T>() {
    stack_case<T> c;
    const row_vector<T> ones = row_vector<T>::Ones(d_model);
    PERFORMER_EXPECT_INVALID(set_final_norm, "gain is 1x7 and bias is 1x8, expected 1x8",
                             c.s.set_final_norm(row_vector<T>::Ones(d_model - 1), ones));
    PERFORMER_EXPECT_INVALID(set_final_norm, "gain is 1x8 and bias is 1x9, expected 1x8",
                             c.s.set_final_norm(ones, row_vector<T>::Zero(d_model + 1)));
    PERFORMER_EXPECT_INVALID(set_final_norm, "gain is 1x0",
                             c.s.set_final_norm(row_vector<T>(0), ones));
    // Nothing replaced: the defaults (unit gain, zero bias) stay.
    EXPECT_EQ(c.s.final_norm_gain(), ones);
    EXPECT_TRUE(c.s.final_norm_bias().isZero(0));
  });
}

TEST(NnBadInput, StackSetFinalNorm_NonFinite) {
  for_float_and_double([]<class T>() {
    stack_case<T> c;
    const row_vector<T> ones = row_vector<T>::Ones(d_model);
    for (const T bad : {nan_v<T>, inf_v<T>, -inf_v<T>}) {
      row_vector<T> broken = ones;
      broken(3) = bad;
      PERFORMER_EXPECT_INVALID(set_final_norm, "gain (1x8) contains a NaN or an infinity",
                               c.s.set_final_norm(broken, ones));
      PERFORMER_EXPECT_INVALID(set_final_norm, "bias (1x8) contains a NaN or an infinity",
                               c.s.set_final_norm(ones * T(2), broken));
    }
    EXPECT_EQ(c.s.final_norm_gain(), ones);  // not even the valid gain of the last try
    EXPECT_TRUE(c.s.final_norm_bias().isZero(0));
  });
}

// "Same contract as the block's": the first layer checks x and the mask, so these messages
// name transformer_block::forward.
TEST(NnBadInput, StackForward_EmptySequence) {
  for_float_and_double([]<class T>() {
    stack_case<T> c;
    PERFORMER_EXPECT_INVALID(block_forward, "empty sequence",
                             c.s.forward(row_matrix<T>(0, d_model)));
  });
}

TEST(NnBadInput, StackForward_WrongWidth) {
  for_float_and_double([]<class T>() {
    stack_case<T> c;
    PERFORMER_EXPECT_INVALID(block_forward, "x is 6x7 but d_model is 8",
                             c.s.forward(random_matrix<T>(n, d_model - 1, 1)));
  });
}

TEST(NnBadInput, StackForward_WrongOutShape) {
  // Checked by the stack itself: with an even number of layers no block sees y.
  for_float_and_double([]<class T>() {
    stack_case<T> c;
    row_matrix<T> wide(n, d_model + 1);
    row_matrix<T> short_y(n - 1, d_model);
    PERFORMER_EXPECT_INVALID(stack_forward, "y is 6x9 but x is 6x8",
                             c.s.forward(c.x, wide, {}, c.ws));
    PERFORMER_EXPECT_INVALID(stack_forward, "y is 5x8 but x is 6x8",
                             c.s.forward(c.x, short_y, {}, c.ws));
  });
}

TEST(NnBadInput, StackForward_KeyMaskLength) {
  for_float_and_double([]<class T>() {
    stack_case<T> c;
    const std::vector<std::uint8_t> keep(n + 1, 1);
    PERFORMER_EXPECT_INVALID(block_forward, "key_mask has 7 entries", c.s.forward(c.x, keep));
  });
}

TEST(NnBadInput, StackForward_NaNAndInf) {
  for_float_and_double([]<class T>() {
    stack_case<T> c;
    for (const T bad : {nan_v<T>, inf_v<T>, -inf_v<T>}) {
      row_matrix<T> x = c.x;
      x(0, 7) = bad;
      PERFORMER_EXPECT_INVALID(block_forward, "x (6x8) contains a NaN or an infinity",
                               c.s.forward(x));
    }
  });
}

// y overlapping x, for an odd and an even number of layers. Before the fix of the fuzzer's
// tests/fuzz/corpus/regression-stack-even-layers-accepts-y-aliasing-x, the even case was
// accepted, because no single layer ever saw x and y together.
TEST(NnBadInput, StackForward_OutAliasesInput) {
  for_float_and_double([]<class T>() {
    for (const index_t layers : {1, 2, 3}) {
      SCOPED_TRACE(layers);
      const stack_of<T> s({.d_model = d_model, .heads = 2}, layers, softmax_attention<T>{}, 3);
      typename stack_of<T>::workspace_type ws;
      row_matrix<T> x = random_matrix<T>(n, d_model, 1);
      PERFORMER_EXPECT_INVALID(stack_forward, "y overlaps x", s.forward(x, x, {}, ws));
      row_matrix<T> buffer = random_matrix<T>(n + 1, d_model, 2);
      PERFORMER_EXPECT_INVALID(stack_forward, "y overlaps x",
                               s.forward(buffer.topRows(n), buffer.bottomRows(n), {}, ws));
    }
  });
}

TEST(NnBadInput, StackForward_AllPadded) {
  for_float_and_double([]<class T>() {
    stack_case<T> c;
    const std::vector<std::uint8_t> none(n, 0);
    const row_matrix<T> y = c.s.forward(c.x, none);
    EXPECT_TRUE(y.allFinite()) << y;
  });
}

// The last block's output is finite (entries near +-max), but the stack's final LayerNorm sums
// a row to +inf. Before the fix of "stack-final-layer-norm-nan" the stack returned the NaN rows
// without an exception. Never a silent NaN: either a finite result (a LayerNorm that rescales
// such rows) or an error from the stack.
TEST(NnBadInput, StackForward_FinalLayerNormOverflow) {
  for_float_and_double([]<class T>() {
    stack_of<T> s({.d_model = 4, .heads = 1}, 1, softmax_attention<T>{}, 3);
    auto p = s.layer(0).parameters();
    for (auto* w : {&p.w_q, &p.w_k, &p.w_v, &p.w_o, &p.w_ff1, &p.w_ff2}) w->setZero();
    constexpr T top = std::numeric_limits<T>::max();
    p.b_ff2 << std::numeric_limits<T>::lowest(), top, top, top;
    s.layer(0).set_parameters(p);
    const row_matrix<T> x = row_matrix<T>::Zero(3, 4);
    // The block alone is fine: its output is x + b_ff2, finite.
    ASSERT_TRUE(s.layer(0).forward(x).allFinite());
    try {
      const row_matrix<T> y = s.forward(x);
      EXPECT_TRUE(y.allFinite()) << y;
    } catch (const invalid_argument& e) {
      EXPECT_TRUE(std::string_view(e.what()).starts_with("transformer_stack::forward: "))
          << e.what();
    }
  });
}

// Finite final-norm parameters near T's limit: the normalised rows times a gain of max leave T.
// The stack checks its result: an overflow error naming the stack, never an infinity returned.
TEST(NnBadInput, StackForward_FinalNormParametersOverflow) {
  for_float_and_double([]<class T>() {
    stack_case<T> c;
    c.s.set_final_norm(row_vector<T>::Constant(d_model, std::numeric_limits<T>::max()),
                       row_vector<T>::Constant(d_model, std::numeric_limits<T>::max()));
    PERFORMER_EXPECT_INVALID(stack_forward, "overflowed", c.s.forward(c.x));
  });
}

}  // namespace
}  // namespace nn_transformer_stack_bad_input_test
}  // namespace performer::test
