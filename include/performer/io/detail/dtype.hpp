/// @file io/detail/dtype.hpp
/// @brief safetensors data types, their names and sizes, and the exact conversions between the
/// stored bytes and float or double (bfloat16 included).
#pragma once

#include <array>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <string_view>
#include <type_traits>

#include "../../core/concepts.hpp"

// The stored data is little-endian; the conversions below read it by memcpy, which is only
// right on a little-endian host. Refuse the others at compile time rather than misread files.
static_assert(std::endian::native == std::endian::little,
              "performer/io reads and writes safetensors files on little-endian hosts only");

namespace performer::io {

/**
 * @brief The data types of the safetensors format. Every one is recognised when a file is opened
 * (so that a file holding, say, an F16 tensor can still be read for its other tensors);
 * float, double and bfloat16 convert to float and double, I64 reads as std::int64_t.
 */
enum class dtype : std::uint8_t {
  f64, f32, bf16, i64,  // the ones performer reads and writes
  f16, i32, u32, u64, i16, u16, i8, u8, boolean, f8_e4m3, f8_e5m2,  // recognised only
};

namespace detail {

struct dtype_entry {
  dtype type;
  std::string_view name;
  std::size_t size;
};

inline constexpr std::array<dtype_entry, 15> dtype_table{{
    {dtype::f64, "F64", 8},     {dtype::f32, "F32", 4},         {dtype::bf16, "BF16", 2},
    {dtype::i64, "I64", 8},     {dtype::f16, "F16", 2},         {dtype::i32, "I32", 4},
    {dtype::u32, "U32", 4},     {dtype::u64, "U64", 8},         {dtype::i16, "I16", 2},
    {dtype::u16, "U16", 2},     {dtype::i8, "I8", 1},           {dtype::u8, "U8", 1},
    {dtype::boolean, "BOOL", 1}, {dtype::f8_e4m3, "F8_E4M3", 1}, {dtype::f8_e5m2, "F8_E5M2", 1},
}};

}  // namespace detail

/// The format's name of a type ("F32", "BF16", ...).
[[nodiscard]] constexpr std::string_view dtype_name(dtype t) noexcept {
  for (const auto& e : detail::dtype_table) {
    if (e.type == t) return e.name;
  }
  return "?";
}

/// Bytes per element.
[[nodiscard]] constexpr std::size_t dtype_size(dtype t) noexcept {
  for (const auto& e : detail::dtype_table) {
    if (e.type == t) return e.size;
  }
  return 0;
}

/// The type named `name` in a header, if the format defines it.
[[nodiscard]] constexpr std::optional<dtype> dtype_from_name(std::string_view name) noexcept {
  for (const auto& e : detail::dtype_table) {
    if (e.name == name) return e.type;
  }
  return std::nullopt;
}

/// True for the types read<T>() converts to float or double.
[[nodiscard]] constexpr bool is_real_dtype(dtype t) noexcept {
  return t == dtype::f32 || t == dtype::f64 || t == dtype::bf16;
}

/// The type a model of scalar T is saved in by default: F32 for float, F64 for double, so that
/// a save and a load reproduce every bit.
template <real_scalar T>
inline constexpr dtype default_dtype = std::is_same_v<T, float> ? dtype::f32 : dtype::f64;

namespace detail {

/// bfloat16 is the high half of a float: widening is exact.
[[nodiscard]] inline float bf16_to_float(std::uint16_t bits) noexcept {
  return std::bit_cast<float>(static_cast<std::uint32_t>(bits) << 16);
}

/// Round to nearest, ties to even (as PyTorch's .to(torch.bfloat16)). The value must be finite;
/// one that rounds beyond bfloat16's range gives an infinity, which the writer rejects.
[[nodiscard]] inline std::uint16_t float_to_bf16(float f) noexcept {
  const auto bits = std::bit_cast<std::uint32_t>(f);
  const std::uint32_t rounded = bits + 0x7FFFu + ((bits >> 16) & 1u);
  return static_cast<std::uint16_t>(rounded >> 16);
}

/// Correctly rounded double -> bfloat16. Rounding to float first could make a false tie (a
/// float exactly halfway between two bfloat16 values when the double was not): such a tie is
/// broken by the side the double lies on.
[[nodiscard]] inline std::uint16_t double_to_bf16(double d) noexcept {
  const float f = static_cast<float>(d);
  const auto bits = std::bit_cast<std::uint32_t>(f);
  if ((bits & 0xFFFFu) == 0x8000u && static_cast<double>(f) != d) {
    const bool away = std::fabs(d) > std::fabs(static_cast<double>(f));
    return static_cast<std::uint16_t>((bits >> 16) + (away ? 1u : 0u));
  }
  return float_to_bf16(f);
}

/// Reads element i of a run of `type` (F32, F64 or BF16) at `src` as T. memcpy: the data need
/// not be aligned, and a file's offsets need not be multiples of the element size.
template <real_scalar T>
[[nodiscard]] T load_real(dtype type, const std::byte* src, std::size_t i) noexcept {
  switch (type) {
    case dtype::f32: {
      float v;
      std::memcpy(&v, src + i * 4, 4);
      return static_cast<T>(v);
    }
    case dtype::f64: {
      double v;
      std::memcpy(&v, src + i * 8, 8);
      return static_cast<T>(v);
    }
    default: {  // bf16 (the caller checked the type)
      std::uint16_t v;
      std::memcpy(&v, src + i * 2, 2);
      return static_cast<T>(bf16_to_float(v));
    }
  }
}

/// Converts n elements of `type` at src into dst. A run whose type is T is one memcpy.
template <real_scalar T>
void convert_run(dtype type, const std::byte* src, std::size_t n, T* dst) noexcept {
  if ((type == dtype::f32 && std::is_same_v<T, float>) ||
      (type == dtype::f64 && std::is_same_v<T, double>)) {
    std::memcpy(dst, src, n * sizeof(T));
    return;
  }
  for (std::size_t i = 0; i < n; ++i) dst[i] = load_real<T>(type, src, i);
}

/// Writes n values as `type` (F32, F64 or BF16) into dst; returns false if one is not finite
/// in that type (a NaN, an infinity, or a double beyond its range), writing nothing further.
template <real_scalar T>
[[nodiscard]] bool store_run(dtype type, const T* src, std::size_t n, std::byte* dst) noexcept {
  for (std::size_t i = 0; i < n; ++i) {
    const T v = src[i];
    if (type == dtype::f64) {
      const auto d = static_cast<double>(v);
      if (!std::isfinite(d)) return false;
      std::memcpy(dst + i * 8, &d, 8);
    } else if (type == dtype::f32) {
      const auto f = static_cast<float>(v);
      if (!std::isfinite(f)) return false;
      std::memcpy(dst + i * 4, &f, 4);
    } else {
      const std::uint16_t b = std::is_same_v<T, double> ? double_to_bf16(static_cast<double>(v))
                                                        : float_to_bf16(static_cast<float>(v));
      if (!std::isfinite(v) || !std::isfinite(bf16_to_float(b))) return false;
      std::memcpy(dst + i * 2, &b, 2);
    }
  }
  return true;
}

}  // namespace detail
}  // namespace performer::io
