// A user-defined mechanism written only against the public concept: uniform attention (every
// visible key gets the same weight). It stands for "a type the user writes" in the tests.
#pragma once

#include <performer/attention_mask.hpp>
#include <performer/detail/validate.hpp>
#include <performer/types.hpp>

namespace performer::test {

template <class T>
struct mean_attention {
  using scalar_type = T;
  struct workspace_type {};
  static constexpr bool supports_causal = true;
  static constexpr bool key_permutation_invariant = true;

  void forward(const const_matrix_ref<T>& q, const const_matrix_ref<T>& k,
               const const_matrix_ref<T>& v, matrix_ref<T> out, const attention_mask& mask,
               workspace_type& /*unused*/) const {
    detail::check_attention_args<T>("mean_attention::forward", q, k, v, out, mask);
    for (index i = 0; i < q.rows(); ++i) {
      const index visible = mask.causal ? i + 1 : k.rows();
      out.row(i).setZero();
      index count = 0;
      for (index j = 0; j < visible; ++j) {
        if (!mask.keeps(static_cast<std::size_t>(j))) continue;
        out.row(i) += v.row(j);
        ++count;
      }
      if (count > 0) out.row(i) /= static_cast<T>(count);
    }
  }
};

}  // namespace performer::test
