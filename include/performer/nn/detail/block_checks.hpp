/// @file nn/detail/block_checks.hpp
/// @brief The checks of a transformer_block's inputs: one sequence, a padded batch, the memory.
#pragma once

#include <cstdint>
#include <span>

#include "../../core/error.hpp"
#include "../../core/types.hpp"
#include "../../core/validate.hpp"
#include "../batched_attention.hpp"
#include "../block_config.hpp"

namespace performer::detail {

/// The memory of a block without cross-attention: none.
template <class T>
[[nodiscard]] Eigen::Map<const row_matrix<T>> no_memory() noexcept {
  return {nullptr, 0, 0};
}

/// One sequence: x N x d (N > 0, finite), y its shape and apart from it, a mask of N entries or
/// none.
template <class T>
void check_sequence(const char* who, index_t d, const const_matrix_ref<T>& x,
                    const matrix_ref<T>& y, std::span<const std::uint8_t> key_mask) {
  const index_t n = x.rows();
  PERFORMER_PRECONDITION(n > 0, who, ": empty sequence (x is ", shape(x), ")");
  PERFORMER_PRECONDITION(x.cols() == d, who, ": x is ", shape(x), " but d_model is ", d);
  PERFORMER_PRECONDITION(y.rows() == n && y.cols() == d, who, ": y is ", shape(y), ", expected ", n,
                         "x", d);
  PERFORMER_PRECONDITION(key_mask.empty() || key_mask.size() == static_cast<std::size_t>(n), who,
                         ": key_mask has ", key_mask.size(), " entries, expected ", n,
                         " (one per token) or none");
  PERFORMER_PRECONDITION(!overlaps(x, y), who, ": y overlaps x");
  require_finite(who, "x", x);
}

/// A batch: x `batch` sequences of one positive length N, d wide, real rows finite; y x's shape
/// and apart from it; lengths B entries in [0, N] or none. Returns N.
template <class T>
index_t check_batch(const char* who, index_t d, const const_matrix_ref<T>& x, index_t batch,
                    const matrix_ref<T>& y, std::span<const index_t> lengths) {
  PERFORMER_PRECONDITION(batch > 0 && x.rows() > 0 && x.rows() % batch == 0, who, ": x is ",
                         shape(x), ", not a positive multiple of ", batch,
                         " sequences of equal length");
  const index_t n = x.rows() / batch;
  PERFORMER_PRECONDITION(x.cols() == d, who, ": x is ", shape(x), " but d_model is ", d);
  PERFORMER_PRECONDITION(y.rows() == x.rows() && y.cols() == d, who, ": y is ", shape(y),
                         ", expected ", x.rows(), "x", d);
  PERFORMER_PRECONDITION(!overlaps(x, y), who, ": y overlaps x");
  check_lengths(who, "lengths", lengths, batch, n);
  for (index_t b = 0; b < batch; ++b)
    require_finite(who, "x", x.middleRows(b * n, length_of(lengths, b, n)));
  return n;
}

/// A memory exactly when the block has cross-attention: `batch` sequences of one positive
/// length M, d_model wide, real rows finite (those within memory_lengths), with
/// memory_lengths B entries in [0, M] or none and a mask of M entries or none (`batch` 1).
template <class T>
void check_memory(const char* who, const block_config& c, const const_matrix_ref<T>& memory,
                  index_t batch, std::span<const index_t> memory_lengths,
                  std::span<const std::uint8_t> memory_mask) {
  if (!c.cross_attention) {
    PERFORMER_PRECONDITION(memory.size() == 0 && memory_mask.empty() && memory_lengths.empty(), who,
                           ": a memory is given but the block has no cross-attention "
                           "(block_config::cross_attention is false)");
    return;
  }
  PERFORMER_PRECONDITION(memory.rows() > 0 && memory.rows() % batch == 0, who,
                         ": the block has cross-attention and needs the encoder's memory: ", batch,
                         " sequence(s) of a positive length (memory is ", shape(memory), ")");
  PERFORMER_PRECONDITION(memory.cols() == c.d_model, who, ": memory is ", shape(memory),
                         " but d_model is ", c.d_model);
  PERFORMER_PRECONDITION(
      memory_mask.empty() || memory_mask.size() == static_cast<std::size_t>(memory.rows()), who,
      ": memory_mask has ", memory_mask.size(), " entries, expected ", memory.rows(),
      " (one per memory token) or none");
  const index_t m = memory.rows() / batch;
  check_lengths(who, "memory_lengths", memory_lengths, batch, m);
  for (index_t b = 0; b < batch; ++b) {
    require_finite(who, "memory", memory.middleRows(b * m, length_of(memory_lengths, b, m)));
  }
}

}  // namespace performer::detail
