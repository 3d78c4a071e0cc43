/// @file nn/rotary_embedding.hpp
/// @brief Rotary position embedding (RoPE; Su et al., "RoFormer", 2021): rotates queries and
/// keys by their position so that q_m . k_n depends on m - n only. Applied to q and k before a
/// mechanism's feature map, as protein language models such as ESM-2 do.
#pragma once

#include <cmath>
#include <vector>

#include "../core/concepts.hpp"
#include "../core/error.hpp"
#include "../core/types.hpp"

namespace performer {

/// Which channels of a head rotate together.
enum class rotary_pairing {
  /// Channel i with channel i + d/2 (GPT-NeoX, ESM-2, Hugging Face LLaMA: "rotate_half").
  half,
  /// Channel 2i with channel 2i + 1 (RoFormer, GPT-J).
  interleaved,
};

/**
 * @brief RoPE for heads of width d (even): the channel pair (a, b) of frequency
 * theta_i = base^(-2i/d), i < d/2, of the token at position p becomes
 * (a cos(p theta_i) - b sin(p theta_i), a sin(p theta_i) + b cos(p theta_i)).
 *
 * Angles are formed in double (a float angle at position 10^6 would be off by about 0.03 rad),
 * then rounded to T once, so float and double agree to T's rounding at any position.
 * Complexity: O(N H d) time for N tokens of H heads, no allocation.
 */
template <real_scalar T>
class rotary_embedding {
 public:
  /**
   * @param head_dim d, even and positive.
   * @param base the frequency base (10,000 in RoFormer and ESM-2).
   * @param pairing which channels rotate together.
   * @throws performer::invalid_argument if head_dim is not positive and even, or base is not
   * finite and greater than 1.
   */
  explicit rotary_embedding(index_t head_dim, double base = 10000.0,
                            rotary_pairing pairing = rotary_pairing::half)
      : head_dim_(head_dim), base_(base), pairing_(pairing) {
    PERFORMER_PRECONDITION(head_dim > 0 && head_dim % 2 == 0,
                           "rotary_embedding: head_dim must be positive and even (got ", head_dim,
                           ")");
    PERFORMER_PRECONDITION(std::isfinite(base) && base > 1.0,
                           "rotary_embedding: base must be finite and greater than 1 (got ", base,
                           ")");
    const index_t half = head_dim / 2;
    inv_freq_.resize(static_cast<std::size_t>(half));
    for (index_t i = 0; i < half; ++i) {
      inv_freq_[static_cast<std::size_t>(i)] =
          std::pow(base, -2.0 * static_cast<double>(i) / static_cast<double>(head_dim));
    }
  }

  [[nodiscard]] index_t head_dim() const noexcept { return head_dim_; }
  [[nodiscard]] double base() const noexcept { return base_; }
  [[nodiscard]] rotary_pairing pairing() const noexcept { return pairing_; }

  /**
   * @brief Rotates x in place: row r is the token at position first_position + r, and its
   * columns are heads of width d side by side (x.cols() a multiple of d).
   * @throws performer::invalid_argument if x.cols() is not a positive multiple of head_dim or
   * first_position is negative.
   */
  void apply(matrix_ref<T> x, index_t first_position = 0) const {
    rotate(x, first_position, T(1), "rotary_embedding::apply");
  }

  /// Rotates x in place by the opposite angles (R^T = R^-1): the backward of apply(), which
  /// takes the gradient with respect to rotated rows to the gradient with respect to the rows.
  /// @throws as apply().
  void apply_transpose(matrix_ref<T> x, index_t first_position = 0) const {
    rotate(x, first_position, T(-1), "rotary_embedding::apply_transpose");
  }

 private:
  void rotate(matrix_ref<T> x, index_t first_position, T sign, const char* who) const {
    PERFORMER_PRECONDITION(x.cols() > 0 && x.cols() % head_dim_ == 0,
                           who, ": x has ", x.cols(),
                           " columns, not a positive multiple of the head width ", head_dim_);
    PERFORMER_PRECONDITION(first_position >= 0,
                           who, ": first_position must be >= 0 (got ",
                           first_position, ")");
    const index_t half = head_dim_ / 2;
    const index_t heads = x.cols() / head_dim_;
    // Channel offsets of pair i within a head: (i, i + d/2) or (2i, 2i + 1).
    const bool halves = pairing_ == rotary_pairing::half;
    for (index_t r = 0; r < x.rows(); ++r) {
      const double position = static_cast<double>(first_position + r);
      for (index_t i = 0; i < half; ++i) {
        const double angle = position * inv_freq_[static_cast<std::size_t>(i)];
        const T c = static_cast<T>(std::cos(angle));
        const T s = sign * static_cast<T>(std::sin(angle));
        const index_t first = halves ? i : 2 * i;
        const index_t second = halves ? i + half : 2 * i + 1;
        for (index_t h = 0; h < heads; ++h) {
          T& a = x(r, h * head_dim_ + first);
          T& b = x(r, h * head_dim_ + second);
          const T a0 = a;
          a = a0 * c - b * s;
          b = a0 * s + b * c;
        }
      }
    }
  }

  index_t head_dim_;
  double base_;
  rotary_pairing pairing_;
  std::vector<double> inv_freq_;
};

}  // namespace performer
