// Compile-time proofs: each mechanism models the concept, and types that lack a required member
// do not (the negative cases are what make the positive ones mean something).
#include <gtest/gtest.h>

#include <performer/performer.hpp>

#include "window_attention.hpp"

// Named as well as anonymous: the unity build compiles several test files as one.
namespace core_concepts_test {
namespace {

using performer::attention_mask;
using performer::const_matrix_ref;
using performer::matrix_ref;

static_assert(performer::attention_mechanism<performer::softmax_attention<float>>);
static_assert(performer::attention_mechanism<performer::softmax_attention<double>>);
static_assert(performer::attention_mechanism<performer::tiled_softmax_attention<float>>);
static_assert(performer::attention_mechanism<performer::tiled_softmax_attention<double>>);
static_assert(performer::attention_mechanism<window_attention<float>>);

struct no_workspace {
  using scalar_type = float;
  [[maybe_unused]] static constexpr bool supports_causal = false;
  void forward(const const_matrix_ref<float>&, const const_matrix_ref<float>&,
               const const_matrix_ref<float>&, matrix_ref<float>, const attention_mask&) const {}
};
static_assert(!performer::attention_mechanism<no_workspace>);

struct integer_scalar {
  using scalar_type = int;
  struct workspace_type {};
  [[maybe_unused]] static constexpr bool supports_causal = false;
};
static_assert(!performer::attention_mechanism<integer_scalar>);

struct no_causal_flag {
  using scalar_type = float;
  struct workspace_type {};
  void forward(const const_matrix_ref<float>&, const const_matrix_ref<float>&,
               const const_matrix_ref<float>&, matrix_ref<float>, const attention_mask&,
               workspace_type&) const {}
};
static_assert(!performer::attention_mechanism<no_causal_flag>);

struct non_const_forward {
  using scalar_type = float;
  struct workspace_type {};
  static constexpr bool supports_causal = true;
  void forward(const const_matrix_ref<float>&, const const_matrix_ref<float>&,
               const const_matrix_ref<float>&, matrix_ref<float>, const attention_mask&,
               workspace_type&) {}
};
static_assert(!performer::attention_mechanism<non_const_forward>);

struct runtime_causal_flag {
  using scalar_type = float;
  struct workspace_type {};
  bool supports_causal = true;  // not a constant expression
  void forward(const const_matrix_ref<float>&, const const_matrix_ref<float>&,
               const const_matrix_ref<float>&, matrix_ref<float>, const attention_mask&,
               workspace_type&) const {}
};
static_assert(!performer::attention_mechanism<runtime_causal_flag>);

static_assert(performer::real_scalar<float> && performer::real_scalar<double>);
static_assert(!performer::real_scalar<int>);
static_assert(performer::is_key_permutation_invariant<performer::softmax_attention<float>>);
static_assert(!performer::is_key_permutation_invariant<no_causal_flag>);

TEST(Concepts, StaticAssertionsAboveCompiled) { SUCCEED(); }

}  // namespace
}  // namespace core_concepts_test
