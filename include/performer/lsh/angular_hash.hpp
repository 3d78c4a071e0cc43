/// @file lsh/angular_hash.hpp
/// @brief Angular LSH by random rotations, the Reformer's hash family (Kitaev et al. 2020,
/// section 2, after Andoni et al. 2015; docs/algorithms.md §6.2, §6.9).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "../core/error.hpp"
#include "../core/types.hpp"
#include "../core/validate.hpp"
#include "../random/detail/generator.hpp"
#include "../random/sampler.hpp"
#include "hash_family.hpp"

namespace performer {

/**
 * @brief h rounds of angular LSH: round r maps x to argmax [x^ R ; -x^ R] (b values, the first
 * index winning a tie) with x^ = x / |x| and R a d x b/2 matrix of standard normals; a zero
 * vector goes to bucket 0.
 *
 * Above 32 buckets a round is the product of two such hashes with b1 and b2 = b / b1 buckets
 * (b1 = 2^ceil(log2 sqrt b)): bucket = h1 b2 + h2, as trax factorises large bucket counts, so
 * that hashing costs O(d sqrt b) per round instead of O(d b). (trax factorises above 128; at 64
 * and 128 buckets one rotation made hashing the costliest part of a forward pass, measured.)
 * User rotations are single d x b/2 matrices, for up to 128 buckets.
 *
 * Rotations are drawn from the library's portable Gaussian stream: round r, factor f from
 * seed detail::derive_seed(detail::derive_seed(seed, r), f), so the same seed gives the same
 * bits on every platform, and a bucket count's rotations do not depend on which other counts
 * were used before. A user rotation (set_rotation) replaces round r's for its bucket count.
 *
 * Complexity: prepare O(h d sqrt(b)) normals when b or the rotations change, else O(1);
 * hash O(h d sqrt(b)) per row (O(h d b) up to 32 buckets).
 */
template <real_scalar T>
class angular_hash {
 public:
  using scalar_type = T;

  /// The rotations for one bucket count, all rounds side by side.
  struct tables_type {
    index_t buckets = 0;      ///< b these tables hash into (0: not built)
    std::uint64_t stamp = 0;  ///< the family state that built them
    index_t outer = 0;        ///< b1: buckets of the first factor
    index_t inner = 1;        ///< b2: buckets of the second factor (1: a single factor)
    row_matrix<T> stacked;    ///< d x h (b1 + b2) / 2 (b2 counted only when > 1)
  };

  /// Drawn rotations: bucket counts up to this many are hashed with one rotation per round.
  static constexpr index_t max_drawn_single = 32;
  /// User rotations (set_rotation) are one rotation per round, for up to this many buckets.
  static constexpr index_t max_single_factor = 128;

  /**
   * @param dim d > 0. @param rounds h >= 1. @param seed the rotations' seed.
   * @throws performer::invalid_argument if dim or rounds is not positive.
   */
  explicit angular_hash(index_t dim, index_t rounds = 4, std::uint64_t seed = 0)
      : d_(dim), rounds_(rounds), seed_(seed), stamp_(detail::next_hash_stamp()) {
    PERFORMER_PRECONDITION(dim > 0, "angular_hash: dim must be positive (got ", dim, ")");
    PERFORMER_PRECONDITION(rounds >= 1, "angular_hash: rounds must be at least 1 (got ", rounds,
                           ")");
    user_.resize(static_cast<std::size_t>(rounds));
  }

  [[nodiscard]] index_t dim() const noexcept { return d_; }
  [[nodiscard]] index_t rounds() const noexcept { return rounds_; }
  [[nodiscard]] std::uint64_t seed() const noexcept { return seed_; }

  /// Draws every round's rotations afresh from `seed` and forgets user rotations.
  void redraw(std::uint64_t seed) {
    seed_ = seed;
    for (auto& u : user_) u.resize(0, 0);
    stamp_ = detail::next_hash_stamp();
  }

  /**
   * @brief Round r's single rotation for b buckets (d x b/2; b even, 2 <= b <= 128): the
   * user's if one was set for that b, else the seeded draw. It is what hash() uses for b <= 32,
   * and for b <= 128 once any round has a user rotation; above, drawn rounds are factorised.
   * @throws performer::invalid_argument if r or b is out of range.
   */
  [[nodiscard]] row_matrix<T> rotation(index_t r, index_t buckets) const {
    constexpr const char* who = "angular_hash::rotation";
    check_round(who, r);
    PERFORMER_PRECONDITION(buckets >= 2 && buckets % 2 == 0 && buckets <= max_single_factor, who,
                           ": buckets must be even and in [2, ", max_single_factor, "] (got ",
                           buckets, ")");
    const auto& user = user_[static_cast<std::size_t>(r)];
    if (user.cols() * 2 == buckets) return user;
    return draw(r, 0, buckets);
  }

  /**
   * @brief Replaces round r's rotation by a d x b/2 matrix, for b = 2 rotation.cols() <= 128
   * buckets (a trained or hand-made one; a zero matrix sends every vector to bucket 0, which
   * turns that round into chunked local attention). A call that needs another bucket count
   * then throws: set lsh_options::buckets to b.
   * @throws performer::invalid_argument if r is out of range, or the matrix is not d x b/2
   * with 1 <= b/2 <= 64, or holds a non-finite value.
   */
  void set_rotation(index_t r, const Eigen::Ref<const row_matrix<T>>& rotation) {
    constexpr const char* who = "angular_hash::set_rotation";
    check_round(who, r);
    PERFORMER_PRECONDITION(rotation.rows() == d_ && rotation.cols() >= 1 &&
                               rotation.cols() <= max_single_factor / 2,
                           who, ": rotation is ", detail::shape(rotation), ", expected ", d_,
                           " x b/2 with b/2 in [1, ", max_single_factor / 2, "]");
    require_finite(who, "rotation", rotation);
    user_[static_cast<std::size_t>(r)] = rotation;
    stamp_ = detail::next_hash_stamp();
  }

  /// Builds `t` for b buckets unless it already holds this family's tables for b.
  /// @throws performer::invalid_argument if a user rotation is for another bucket count; `t`
  /// is then left empty (never half built: the next call rebuilds it).
  void prepare(index_t buckets, tables_type& t) const {
    if (t.buckets == buckets && t.stamp == stamp_) return;
    // A family with user rotations hashes every round with one rotation; a drawn one splits.
    bool user_rotations = false;
    for (const auto& u : user_) user_rotations = user_rotations || u.size() > 0;
    const bool split = buckets > (user_rotations ? max_single_factor : max_drawn_single);
    for (index_t r = 0; r < rounds_; ++r) {
      const auto& user = user_[static_cast<std::size_t>(r)];
      if (user.size() > 0 && (split || user.cols() * 2 != buckets)) {
        t.buckets = 0;
        PERFORMER_THROW(invalid_argument(detail::message(
            "angular_hash::prepare: round ", r, "'s rotation is for ", 2 * user.cols(),
            " buckets but this call needs ", buckets, " (set lsh_options::buckets to ",
            2 * user.cols(), ")")));
      }
    }
    index_t outer = buckets;
    if (split) {
      outer = 2;
      while (outer * outer < buckets) outer *= 2;  // 2^ceil(log2 sqrt b)
    }
    const index_t inner = buckets / outer;
    const index_t columns = outer / 2 + (inner > 1 ? inner / 2 : 0);
    t.buckets = 0;  // not valid until fully built
    t.stacked.resize(d_, rounds_ * columns);
    for (index_t r = 0; r < rounds_; ++r) {
      const auto& user = user_[static_cast<std::size_t>(r)];
      t.stacked.middleCols(r * columns, outer / 2) = user.size() > 0 ? user : draw(r, 0, outer);
      if (inner > 1) t.stacked.middleCols(r * columns + outer / 2, inner / 2) = draw(r, 1, inner);
    }
    t.outer = outer;
    t.inner = inner;
    t.buckets = buckets;
    t.stamp = stamp_;
  }

  [[nodiscard]] index_t scratch_size(const tables_type& t) const { return d_ + t.stacked.cols(); }

  /**
   * Buckets of one row in every round. Every step has a fixed order of operations that does
   * not depend on where the row or the buffers sit in memory, so a row hashes to the same
   * bits on any thread. |x| is taken after scaling by max |x_c|, so that it neither overflows
   * nor underflows.
   */
  void hash(const tables_type& t, const T* x, std::int32_t* buckets, T* scratch) const {
    T largest = 0;
    for (index_t c = 0; c < d_; ++c) largest = std::max(largest, std::abs(x[c]));
    if (largest == T(0)) {
      std::fill(buckets, buckets + rounds_, std::int32_t{0});
      return;
    }
    T* unit = scratch;
    const T inverse = T(1) / largest;
    if (inverse <= std::numeric_limits<T>::max()) {
      for (index_t c = 0; c < d_; ++c) unit[c] = x[c] * inverse;
    } else {
      for (index_t c = 0; c < d_; ++c) unit[c] = x[c] / largest;  // subnormal largest entry
    }
    // Four interleaved partial sums: a fixed association that compilers may vectorise as is.
    T partial[4] = {0, 0, 0, 0};
    index_t c = 0;
    for (; c + 4 <= d_; c += 4) {
      for (index_t k = 0; k < 4; ++k) partial[k] += unit[c + k] * unit[c + k];
    }
    for (; c < d_; ++c) partial[0] += unit[c] * unit[c];
    const T inverse_root = T(1) / std::sqrt((partial[0] + partial[1]) + (partial[2] + partial[3]));
    for (c = 0; c < d_; ++c) unit[c] *= inverse_root;

    // x^ times every round's columns, in strips whose sums stay in registers; each entry is
    // the same sequence of multiply-adds over c whatever the strip.
    constexpr index_t strip = 16;
    const index_t m = t.stacked.cols();
    const T* rotation = t.stacked.data();
    T* projection = scratch + d_;
    index_t t0 = 0;
    for (; t0 + strip <= m; t0 += strip) {
      T acc[strip] = {};
      for (c = 0; c < d_; ++c) {
        const T u = unit[c];
        const T* row = rotation + c * m + t0;
        for (index_t s = 0; s < strip; ++s) acc[s] += u * row[s];
      }
      std::copy_n(acc, strip, projection + t0);
    }
    for (index_t s = t0; s < m; ++s) {
      T acc = 0;
      for (c = 0; c < d_; ++c) acc += unit[c] * rotation[c * m + s];
      projection[s] = acc;
    }
    const index_t columns = m / rounds_;
    for (index_t r = 0; r < rounds_; ++r) {
      const T* p = projection + r * columns;
      index_t bucket = argmax_signed(p, t.outer / 2);
      if (t.inner > 1) bucket = bucket * t.inner + argmax_signed(p + t.outer / 2, t.inner / 2);
      buckets[r] = static_cast<std::int32_t>(bucket);
    }
  }

 private:
  /// argmax over [p ; -p] (2 half values), the first index winning a tie.
  static index_t argmax_signed(const T* p, index_t half) {
    index_t best = 0;
    T best_value = p[0];
    for (index_t s = 1; s < half; ++s) {
      if (p[s] > best_value) {
        best = s;
        best_value = p[s];
      }
    }
    for (index_t s = 0; s < half; ++s) {
      if (-p[s] > best_value) {
        best = half + s;
        best_value = -p[s];
      }
    }
    return best;
  }

  [[nodiscard]] row_matrix<T> draw(index_t r, index_t factor, index_t buckets) const {
    const std::uint64_t seed = detail::derive_seed(
        detail::derive_seed(seed_, static_cast<std::uint64_t>(r)), static_cast<std::uint64_t>(factor));
    return gaussian_sampler{}.sample(d_, buckets / 2, seed).template cast<T>();
  }

  void check_round(const char* who, index_t r) const {
    PERFORMER_PRECONDITION(r >= 0 && r < rounds_, who, ": round ", r,
                           " is out of range (rounds = ", rounds_, ")");
  }

  index_t d_;
  index_t rounds_;
  std::uint64_t seed_;
  std::uint64_t stamp_;
  std::vector<row_matrix<T>> user_;  ///< per round: a user rotation, or empty
};

static_assert(hash_family<angular_hash<float>>);
static_assert(hash_family<angular_hash<double>>);

}  // namespace performer
