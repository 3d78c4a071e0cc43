/// @file testing/detail/extreme_twin.hpp
/// @brief What the extreme-values suite derives from a maker's mechanism: its double twin (the
/// same random draws in double, so that float and double differ only in their arithmetic) and,
/// for LSH, the same mechanism with every token hashed to one bucket (so that its windows are
/// known and exact softmax over them is the reference). A maker may supply either itself:
/// `static auto double_twin(const attention_type&, index_t n_keys)` and
/// `static void single_bucket(attention_type&, index_t n_keys)`.
#pragma once

#include <cstdint>
#include <type_traits>

#include "../../core/types.hpp"

namespace performer::conformance::extreme {

/// X with every float in its template arguments replaced by double, recursively:
/// favor_attention<float, positive_features<float>, orthogonal_sampler, float> becomes
/// favor_attention<double, positive_features<double>, orthogonal_sampler, double>.
template <class X>
struct rebind_to_double {
  using type = X;
};
template <>
struct rebind_to_double<float> {
  using type = double;
};
template <template <class...> class F, class... Args>
struct rebind_to_double<F<Args...>> {
  using type = F<typename rebind_to_double<Args>::type...>;
};

/// A favor_attention-like mechanism: the projection and the blocking are public (the blocks,
/// causal chunks and bidirectional segments extreme_favor.hpp models).
template <class A>
concept favor_like = requires(const A& a) {
  a.projection().matrix();
  a.projection().features();
  a.projection().seed();
  a.feature_map();
  a.feature_count();
  a.options().block;
  a.options().chunk;
  a.options().segments;
  a.options().min_segment;
};

/// An lsh_attention-like mechanism whose hash family exposes its rotations.
template <class A>
concept rotation_lsh_like = requires(A& a, const A& c, index_t r) {
  c.options().chunk;
  c.bucket_count(r);
  c.head_dim();
  c.hash_family().rotation(r, r);
  a.hash_family().set_rotation(r, row_matrix<typename A::scalar_type>());
};

template <class Maker>
struct twin_of {
  using attention_type = typename Maker::attention_type;
  using double_type = typename rebind_to_double<attention_type>::type;

  static constexpr bool available = [] {
    if constexpr (requires(const attention_type& a) { Maker::double_twin(a, index_t{}); }) {
      return true;
    } else if constexpr (std::is_same_v<double_type, attention_type>) {
      return false;  // nothing to rebind: not a float mechanism of a known kind
    } else {
      return favor_like<attention_type> || rotation_lsh_like<attention_type>;
    }
  }();

  /// The double mechanism with a's random draws (its projection, or its rotations for n_keys
  /// keys, the bucket count depending on N).
  static auto make(const attention_type& a, index_t n_keys) {
    if constexpr (requires { Maker::double_twin(a, n_keys); }) {
      return Maker::double_twin(a, n_keys);
    } else if constexpr (favor_like<attention_type>) {
      using map_type = typename double_type::feature_map_type;
      map_type map{};
      // FAVOR++: the same mode (adaptive or stored A) and the same stored A.
      if constexpr (requires { map_type(a.feature_map().adaptive()); }) {
        map = map_type(a.feature_map().adaptive());
      }
      if constexpr (requires { map.set_a(a.feature_map().a()); }) map.set_a(a.feature_map().a());
      double_type twin(a.projection().dim(), a.projection().features(), a.projection().seed(), map,
                       {}, a.options());
      twin.projection().set_matrix(a.projection().matrix().template cast<double>());
      return twin;
    } else {
      static_assert(rotation_lsh_like<attention_type>, "no double twin for this mechanism");
      double_type twin(a.head_dim(), a.options());
      const index_t buckets = a.bucket_count(n_keys);
      for (index_t r = 0; r < a.options().hashes; ++r) {
        twin.hash_family().set_rotation(
            r, a.hash_family().rotation(r, buckets).template cast<double>());
      }
      return twin;
    }
  }
};

/// Whether the suite can hash every token of a maker's LSH mechanism to one bucket.
template <class Maker>
inline constexpr bool can_single_bucket = requires(typename Maker::attention_type& a) {
  Maker::single_bucket(a, index_t{});
}
|| rotation_lsh_like<typename Maker::attention_type>;

/// Zero rotations: every projection is 0, a tie, so every vector goes to bucket 0 in every
/// round, and each query's window is its chunk of the whole sequence and the one before.
template <class Maker>
void single_bucket(typename Maker::attention_type& a, index_t n_keys) {
  using A = typename Maker::attention_type;
  if constexpr (requires { Maker::single_bucket(a, n_keys); }) {
    Maker::single_bucket(a, n_keys);
  } else {
    const index_t buckets = a.bucket_count(n_keys);
    for (index_t r = 0; r < a.options().hashes; ++r) {
      a.hash_family().set_rotation(
          r, row_matrix<typename A::scalar_type>::Zero(a.head_dim(), buckets / 2));
    }
  }
}

}  // namespace performer::conformance::extreme
