/// @file lsh/example_hash_family.hpp
/// @brief A documented example model of the hash_family concept, to copy when writing your
/// own: sign random projections ("SimHash", Charikar 2002). Each round draws log2(b) random
/// hyperplanes; a vector's bucket is the binary number formed by the sides of the hyperplanes
/// it lies on. Two vectors at angle theta agree on a hyperplane with probability
/// 1 - theta / pi, so nearby vectors tend to share buckets.
///
/// Use it as `lsh_attention<float, sign_projection_hash<float>>(sign_projection_hash<float>(d))`.
#pragma once

#include <cstdint>

#include "../core/error.hpp"
#include "../core/types.hpp"
#include "../random/detail/generator.hpp"
#include "../random/sampler.hpp"
#include "hash_family.hpp"

namespace performer {

/**
 * @brief Sign-random-projection LSH: round r hashes x to sum_i [w_ri . x > 0] 2^i over
 * log2(b) Gaussian hyperplanes w_ri. Needs b to be a power of two (the automatic bucket count
 * always is). Complexity: prepare O(h d log b) normals when b changes; hash O(h d log b).
 */
template <real_scalar T>
class sign_projection_hash {
 public:
  // --- What the concept asks for -------------------------------------------------------------
  using scalar_type = T;

  /// The hyperplanes for one bucket count. `stamp` says which family state built them, so
  /// that tables cached in a workspace are rebuilt after a redraw or for another family.
  struct tables_type {
    index_t buckets = 0;
    std::uint64_t stamp = 0;
    index_t bits = 0;
    row_matrix<T> planes;  ///< (h bits) x d, round r's hyperplanes in rows [r bits, (r+1) bits)
  };

  [[nodiscard]] index_t rounds() const noexcept { return rounds_; }
  [[nodiscard]] index_t dim() const noexcept { return d_; }

  /// Cheap when t already holds this family's hyperplanes for b buckets.
  /// @throws performer::invalid_argument unless b is a power of two.
  void prepare(index_t buckets, tables_type& t) const {
    if (t.buckets == buckets && t.stamp == stamp_) return;
    PERFORMER_PRECONDITION(buckets >= 2 && (buckets & (buckets - 1)) == 0,
                           "sign_projection_hash::prepare: ", buckets,
                           " buckets is not a power of two");
    index_t bits = 0;
    while ((index_t{1} << bits) < buckets) ++bits;
    t.planes = gaussian_sampler{}.sample(rounds_ * bits, d_, seed_).template cast<T>();
    t.bits = bits;
    t.buckets = buckets;
    t.stamp = stamp_;
  }

  /// No scratch: each bit is one dot product.
  [[nodiscard]] index_t scratch_size(const tables_type& /*t*/) const noexcept { return 0; }

  /// A pure function of x and t with a fixed order of operations (thread-independent bits).
  void hash(const tables_type& t, const T* x, std::int32_t* buckets, T* /*scratch*/) const {
    for (index_t r = 0; r < rounds_; ++r) {
      std::int32_t bucket = 0;
      for (index_t i = 0; i < t.bits; ++i) {
        const T* w = t.planes.data() + (r * t.bits + i) * d_;
        T dot = 0;
        for (index_t c = 0; c < d_; ++c) dot += w[c] * x[c];
        if (dot > T(0)) bucket |= std::int32_t{1} << i;  // a zero vector: bucket 0
      }
      buckets[r] = bucket;
    }
  }

  // --- Everything else is this family's own business -----------------------------------------
  /// @throws performer::invalid_argument if dim or rounds is not positive.
  explicit sign_projection_hash(index_t dim, index_t rounds = 4, std::uint64_t seed = 0)
      : d_(dim), rounds_(rounds), seed_(seed), stamp_(detail::next_hash_stamp()) {
    PERFORMER_PRECONDITION(dim > 0 && rounds >= 1, "sign_projection_hash: dim (", dim,
                           ") and rounds (", rounds, ") must be positive");
  }

  /// New hyperplanes from `seed`.
  void redraw(std::uint64_t seed) {
    seed_ = seed;
    stamp_ = detail::next_hash_stamp();
  }

 private:
  index_t d_;
  index_t rounds_;
  std::uint64_t seed_;
  std::uint64_t stamp_;
};

static_assert(hash_family<sign_projection_hash<float>>);

}  // namespace performer
