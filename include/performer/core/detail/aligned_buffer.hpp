/// @file core/detail/aligned_buffer.hpp
/// @brief A std::vector on 64-byte boundaries, for the operands of performer's own products.
#pragma once

#include <cstddef>
#include <new>
#include <vector>

namespace performer::detail {

/// Allocates on 64-byte boundaries: an AMX tile row or an AVX-512 load that straddles two cache
/// lines costs two (measured on bench_bf16's output product: 1.53 ms or 2.48 ms for the same
/// kernel, as malloc happened to align the buffers).
template <class T>
struct cache_line_allocator {
  using value_type = T;
  static constexpr std::align_val_t alignment{64};
  cache_line_allocator() = default;
  template <class U>
  constexpr cache_line_allocator(const cache_line_allocator<U>& /*other*/) noexcept {}
  [[nodiscard]] T* allocate(std::size_t n) {
    return static_cast<T*>(::operator new(n * sizeof(T), alignment));
  }
  void deallocate(T* p, std::size_t /*n*/) noexcept { ::operator delete(p, alignment); }
  friend constexpr bool operator==(cache_line_allocator, cache_line_allocator) noexcept {
    return true;
  }
};

template <class T>
using aligned_buffer = std::vector<T, cache_line_allocator<T>>;

}  // namespace performer::detail
