/// @file core/concepts.hpp
/// @brief The Attention concept (`performer::attention_mechanism`) and the scalar concept.
///
/// Every mechanism in the library (exact, tiled exact, FAVOR+, LSH) models
/// attention_mechanism, proved by a static_assert next to its definition; a user type that
/// models it drops into performer::transformer_block unchanged.
#pragma once

#include <concepts>
#include <type_traits>

#include "attention_mask.hpp"
#include "types.hpp"

namespace performer {

/// The scalars the kernels are written and tested for: float and double. (Other types, such
/// as Eigen::half, lack the std:: maths and numeric_limits the kernels rely on, so the concept
/// does not invite them.)
template <class T>
concept real_scalar = std::same_as<T, float> || std::same_as<T, double>;

/**
 * @brief The Attention concept: what an attention mechanism provides, per head.
 *
 * Requires, for `const A a`, `typename A::workspace_type ws` and `T = A::scalar_type`:
 * - `A::scalar_type` models real_scalar;
 * - `A::workspace_type` is default-constructible: scratch memory the caller owns, so that
 *   `forward` can be `const` (one mechanism shared by threads, each with its own workspace)
 *   and allocates nothing once the workspace has seen the same shapes;
 * - `A::supports_causal` is a constant expression convertible to bool;
 * - `a.forward(q, k, v, out, mask, ws)` returns void, where q, k, v are
 *   `const_matrix_ref<T>` and out is `matrix_ref<T>`.
 *
 * Semantic requirements (checked by the conformance suite in performer/testing/conformance.hpp,
 * not by the compiler):
 * - shapes: q is N_q x d, k is N_k x d, v is N_k x d_v, out is N_q x d_v, sized by the caller;
 *   rows are tokens (row-major);
 * - out row i is a convex combination of the rows of v that query i may see, weighted
 *   (exactly or approximately) by softmax(q_i . k_j / sqrt(d)); padded keys
 *   (attention_mask::key_mask) and, under attention_mask::causal, keys j > i get no weight;
 * - a query that may see no key gets a zero row;
 * - bad input (mismatched shapes, empty sequences, zero width, a mask of the wrong length,
 *   causal with N_q != N_k, a causal request the mechanism does not support, non-finite values,
 *   out overlapping an input) throws performer::invalid_argument;
 * - the result does not depend on the workspace's history or on the thread count.
 *
 * Optional: `static constexpr bool key_permutation_invariant = true;` declares that permuting
 * the rows of k and v together leaves out unchanged; the conformance suite then checks it.
 *
 * Optional: `static constexpr bool query_independent = true;` declares that a query's output
 * depends only on that query and the keys it may see (not on the other queries, nor on its
 * row's index): exact attention is, LSH attention (whose buckets and chunks mix every token) is
 * not. Streaming decoding can then cache keys and values (head_decoder); the conformance suite
 * checks it.
 */
template <class A>
concept attention_mechanism =
    requires {
      typename A::scalar_type;
      typename A::workspace_type;
    } && real_scalar<typename A::scalar_type> &&
    std::default_initializable<typename A::workspace_type> &&
    requires(const A& a, const const_matrix_ref<typename A::scalar_type>& x,
             matrix_ref<typename A::scalar_type> out, const attention_mask& mask,
             typename A::workspace_type& ws) {
      typename std::bool_constant<static_cast<bool>(A::supports_causal)>;
      { a.forward(x, x, x, out, mask, ws) } -> std::same_as<void>;
    };

/// True when A declares `key_permutation_invariant = true` (see attention_mechanism).
template <class A>
inline constexpr bool is_key_permutation_invariant = [] {
  if constexpr (requires { A::key_permutation_invariant; }) {
    return static_cast<bool>(A::key_permutation_invariant);
  } else {
    return false;
  }
}();

/// True when A declares `query_independent = true` (see attention_mechanism).
template <class A>
inline constexpr bool is_query_independent = [] {
  if constexpr (requires { A::query_independent; }) {
    return static_cast<bool>(A::query_independent);
  } else {
    return false;
  }
}();

}  // namespace performer
