/// @file core/bfloat16.hpp
/// @brief bfloat16 storage with float accumulation: the rounding, the backends of its products,
/// and which of them this CPU runs (docs/algorithms.md §10).
///
/// bfloat16 keeps float's 8-bit exponent and 8 of its 24 significand bits (a relative rounding
/// error of at most 2^-8, about 0.4%), so it halves the memory of features and values without
/// float16's overflow. Products multiply two bfloat16 values exactly in float and add them to
/// float sums, in the order AVX512-BF16's VDPBF16PS does; the portable backend repeats that order
/// with std::fma, so both give the same bits. AMX-BF16 has its own order.
#pragma once

#include <bit>
#include <cstdint>

#include <Eigen/Core>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif
#endif

#include "error.hpp"

namespace performer {

/// Storage type of bfloat16 data (Eigen's, so Eigen matrices of it work as usual).
using bfloat16 = Eigen::bfloat16;

/// Which code computes a bfloat16 product. portable and avx512_bf16 give the same bits; amx gives
/// its own (AMX-BF16 adds a tile's products in an order and precision of its own, within the same
/// error bound; docs/algorithms.md §10).
enum class bf16_backend {
  automatic,    ///< the fastest this CPU and OS run: amx, else avx512_bf16, else portable
  portable,     ///< standard C++ (std::fma): any CPU
  avx512_bf16,  ///< VDPBF16PS (AVX512-BF16)
  amx           ///< TDPBF16PS on 16 x 16 tiles (AMX-BF16; Linux, which must grant the tile state)
};

namespace detail::bf16 {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
inline bool cpu_runs_avx512_bf16() noexcept {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl");
}
inline bool cpu_runs_amx_bf16() noexcept {
#if defined(__linux__)
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx) == 0) return false;
  constexpr unsigned amx_bf16 = 1u << 22, amx_tile = 1u << 24;
  if ((edx & amx_bf16) == 0 || (edx & amx_tile) == 0) return false;
  // Linux hands out the 8 KiB tile state only on request (arch_prctl ARCH_REQ_XCOMP_PERM for
  // XFEATURE_XTILEDATA); the grant holds for every thread of the process.
  constexpr long request_permission = 0x1023, tile_data = 18;
  return syscall(SYS_arch_prctl, request_permission, tile_data) == 0;
#else
  return false;
#endif
}
#else
inline bool cpu_runs_avx512_bf16() noexcept { return false; }
inline bool cpu_runs_amx_bf16() noexcept { return false; }
#endif
}  // namespace detail::bf16

/// Whether this CPU and OS run `backend` (automatic and portable always do). The first call for
/// amx asks Linux for the tile state. O(1) after the first call.
[[nodiscard]] inline bool bf16_available(bf16_backend backend) noexcept {
  static const bool avx512 = detail::bf16::cpu_runs_avx512_bf16();
  switch (backend) {
    case bf16_backend::avx512_bf16:
      return avx512;
    case bf16_backend::amx: {
      static const bool amx = detail::bf16::cpu_runs_amx_bf16();
      return amx;
    }
    default:
      return true;
  }
}

/// "automatic", "portable", "avx512_bf16" or "amx".
[[nodiscard]] constexpr const char* bf16_name(bf16_backend backend) noexcept {
  switch (backend) {
    case bf16_backend::portable:
      return "portable";
    case bf16_backend::avx512_bf16:
      return "avx512_bf16";
    case bf16_backend::amx:
      return "amx";
    default:
      return "automatic";
  }
}

/// The backend `requested` resolves to on this CPU.
/// @throws performer::invalid_argument if the CPU or OS does not run the requested backend.
[[nodiscard]] inline bf16_backend bf16_resolve(bf16_backend requested) {
  if (requested == bf16_backend::automatic) {
    for (const bf16_backend fast : {bf16_backend::amx, bf16_backend::avx512_bf16}) {
      if (bf16_available(fast)) return fast;
    }
    return bf16_backend::portable;
  }
  PERFORMER_PRECONDITION(bf16_available(requested), "bf16_resolve: bf16_backend::",
                         bf16_name(requested),
                         " requested, but this CPU or OS does not run it (use "
                         "bf16_backend::automatic or portable)");
  return requested;
}

namespace detail::bf16 {

/// float to bfloat16 bits, rounding to nearest even. A NaN stays a (quiet) NaN; a subnormal
/// becomes a zero of the same sign, as VCVTNEPS2BF16 converts it and VDPBF16PS reads it (a normal
/// value never rounds below bfloat16's smallest normal, which is float's).
[[nodiscard]] constexpr std::uint16_t round(float x) noexcept {
  // Selects, not branches: the packing loops that call this vectorise only without branches.
  const auto bits = std::bit_cast<std::uint32_t>(x);
  const std::uint32_t nearest = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
  const std::uint32_t flushed = (bits & 0x7F800000u) == 0 ? (bits >> 16) & 0x8000u : nearest;
  const bool nan = (bits & 0x7FFFFFFFu) > 0x7F800000u;
  return static_cast<std::uint16_t>(nan ? (bits >> 16) | 0x40u : flushed);
}

/// bfloat16 bits to float (exact).
[[nodiscard]] constexpr float widen(std::uint16_t h) noexcept {
  return std::bit_cast<float>(static_cast<std::uint32_t>(h) << 16);
}

}  // namespace detail::bf16
}  // namespace performer
