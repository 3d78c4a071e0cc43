/// @file core/attention_mask.hpp
/// @brief How a call says which keys each query may see.
#pragma once

#include <cstdint>
#include <span>

namespace performer {

/// Masking for one attention call (one head or all heads of one sequence).
///
/// - `causal`: query i sees only keys j <= i. Requires as many queries as keys (self-attention);
///   every mechanism checks this and throws otherwise.
/// - `key_mask`: empty means every key is a real token. Otherwise it has one entry per key:
///   nonzero keeps key j, zero marks it as padding. A padded key contributes to neither the
///   weighted sum nor its normaliser, so the output equals that of the unpadded sequence.
///
/// A query that sees no key at all (every key it could see is padding) gets an all-zero output
/// row: finite and documented, never NaN.
struct attention_mask {
  bool causal = false;
  std::span<const std::uint8_t> key_mask{};

  /// True when `key_mask` is empty or keeps key j.
  [[nodiscard]] constexpr bool keeps(std::size_t j) const noexcept {
    return key_mask.empty() || key_mask[j] != 0;
  }
};

}  // namespace performer
