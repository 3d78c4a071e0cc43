/// @file core/detail/register_tiles.hpp
/// @brief How performer's AVX-512 products (fp32_product.hpp, bf16_product.hpp) cut C into
/// tiles of sums held in registers: the rows per tile and the groups of column registers.
#pragma once

#include <cstddef>
#include <type_traits>

#include "../types.hpp"

namespace performer::detail {

/// The rows of a tile of T column registers: as many as keep R T sums, T right-hand registers
/// and one broadcast within the 32 registers, and at least 12 sums, enough to keep an FMA
/// (latency 4, two ports) and VDPBF16PS busy (bench_bf16's instruction_rate reaches
/// VDPBF16PS's rate with 12). A lone register of sums (the den of [S z], 65 columns) ran its
/// 6 rows at less than half the rate, taking half as long as the 64 columns before it (a Zen 5
/// profile of bench_favor_bf16 avx512_bf16/16384: 5.3% of the time against 11.7%).
template <std::size_t T>
inline constexpr std::size_t tile_rows = T >= 5   ? 5
                                         : T == 4 ? 6
                                         : T == 3 ? 8
                                                  : 12;

/// Calls columns(std::integral_constant<std::size_t, T>{}, t0, holds_last) for the column
/// registers [t0, t0 + T) of a product with `registers` registers of 16 columns: groups of 4,
/// the last group of 2 to 5 (1 only when there is one register), so that no lone register of
/// sums follows a group of 4. holds_last is true for the group with the final register, whose
/// columns may end inside it.
template <class Columns>
void for_column_groups(index_t registers, Columns&& columns) {
  index_t t = 0;
  for (; registers - t > 5; t += 4) columns(std::integral_constant<std::size_t, 4>{}, t, false);
  switch (registers - t) {
    case 5:
      columns(std::integral_constant<std::size_t, 5>{}, t, true);
      break;
    case 4:
      columns(std::integral_constant<std::size_t, 4>{}, t, true);
      break;
    case 3:
      columns(std::integral_constant<std::size_t, 3>{}, t, true);
      break;
    case 2:
      columns(std::integral_constant<std::size_t, 2>{}, t, true);
      break;
    default:
      columns(std::integral_constant<std::size_t, 1>{}, t, true);
      break;
  }
}

}  // namespace performer::detail
