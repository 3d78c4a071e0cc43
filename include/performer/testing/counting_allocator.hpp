/// @file testing/counting_allocator.hpp
/// @brief A counting replacement of malloc and friends: live and peak heap bytes of the whole
/// process, for tests and benchmarks that must measure memory exactly (resident-set growth has a
/// noise floor of several MiB). No GoogleTest needed.
///
/// Include it with PERFORMER_DEFINE_COUNTING_ALLOCATOR defined in exactly ONE translation unit
/// of an executable (it defines malloc, free, calloc, realloc and the aligned variants); every
/// other file may include it without the macro to read the counters.
///
/// How it counts. Eigen allocates through std::malloc (aligned_malloc -> malloc, or
/// handmade_aligned_malloc -> malloc), not through operator new, so counting has to happen one
/// level lower: the defining unit provides malloc, free, calloc, realloc and the aligned
/// variants, which glibc allows a program to replace. The dynamic linker then binds every call to
/// them (Eigen's, libstdc++'s operator new, libgomp's) to these definitions. Each forwards to
/// glibc's own allocator (__libc_malloc and friends) and counts malloc_usable_size of the block,
/// which is the same number when the block is allocated and when it is freed, whoever frees it.
/// Counters are atomic because OpenMP threads allocate too.
///
/// Sanitizers (ASan, TSan, MSan) replace malloc themselves, and the replacement needs glibc:
/// elsewhere `performer::counting::available` is false and nothing is counted, so a
/// test must report itself skipped rather than pass.
#pragma once

#include <atomic>
#include <cerrno>
#include <cstddef>

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define PERFORMER_UNDER_SANITIZER 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) || \
    __has_feature(memory_sanitizer) || __has_feature(hwaddress_sanitizer)
#define PERFORMER_UNDER_SANITIZER 1
#endif
#endif
#ifndef PERFORMER_UNDER_SANITIZER
#define PERFORMER_UNDER_SANITIZER 0
#endif

// Replacing malloc this way is a glibc feature (__libc_malloc and friends are its exported
// entry points); elsewhere the tests skip rather than measure nothing and pass.
#if !PERFORMER_UNDER_SANITIZER && defined(__GLIBC__) && defined(__linux__)
#define PERFORMER_COUNTING_ALLOCATOR 1
#else
#define PERFORMER_COUNTING_ALLOCATOR 0
#endif

#if PERFORMER_COUNTING_ALLOCATOR
#include <malloc.h>  // malloc_usable_size
#endif

namespace performer::counting {

// Bytes live now and the highest value live has reached since the last reset, both in
// malloc_usable_size units (at least the requested size: an upper bound, as a bound test wants).
inline std::atomic<long long> live_bytes{0};
inline std::atomic<long long> peak_bytes{0};
inline std::atomic<unsigned long long> allocations{0};

#if PERFORMER_COUNTING_ALLOCATOR
inline void on_allocate(void* p) noexcept {
  if (p == nullptr) return;
  const auto size = static_cast<long long>(malloc_usable_size(p));
  const long long now = live_bytes.fetch_add(size, std::memory_order_relaxed) + size;
  allocations.fetch_add(1, std::memory_order_relaxed);
  long long peak = peak_bytes.load(std::memory_order_relaxed);
  while (now > peak &&
         !peak_bytes.compare_exchange_weak(peak, now, std::memory_order_relaxed)) {
  }
}

inline void on_release(void* p) noexcept {
  if (p == nullptr) return;
  live_bytes.fetch_sub(static_cast<long long>(malloc_usable_size(p)), std::memory_order_relaxed);
}
#endif

}  // namespace performer::counting


namespace performer::counting {

/// True when this build counts (glibc, no sanitizer).
inline constexpr bool available = PERFORMER_COUNTING_ALLOCATOR != 0;

/// Starts a measurement: the peak restarts from the bytes live now. Returns that baseline.
inline long long reset_peak() noexcept {
  const long long now = live_bytes.load(std::memory_order_relaxed);
  peak_bytes.store(now, std::memory_order_relaxed);
  return now;
}

/// Heap use of one measured region.
struct heap_usage {
  long long peak = 0;      ///< highest live bytes above the starting level
  long long retained = 0;  ///< live bytes above the starting level at the end
  unsigned long long allocations = 0;
};

/// Measures body() with the counting allocator.
template <class Body>
heap_usage measure_heap(Body&& body) {
  const long long base = reset_peak();
  const unsigned long long calls = allocations.load();
  body();
  return {peak_bytes.load() - base, live_bytes.load() - base, allocations.load() - calls};
}

/// Runs f and returns the peak of live heap bytes during it above those live before it.
template <class F>
long long peak_during(F&& f) {
  const long long base = reset_peak();
  f();
  return peak_bytes.load(std::memory_order_relaxed) - base;
}

}  // namespace performer::counting

#if defined(PERFORMER_DEFINE_COUNTING_ALLOCATOR)
#if PERFORMER_COUNTING_ALLOCATOR
#if __has_include(<mm_malloc.h>)
// clang's <mm_malloc.h> (reached from Eigen through the intrinsics headers) redeclares
// posix_memalign without noexcept; it must come before the definition below, not after it.
#include <mm_malloc.h>
#endif
// glibc's own allocator, which the replacements below forward to.
extern "C" {
void* __libc_malloc(std::size_t size);
void __libc_free(void* p);
void* __libc_calloc(std::size_t count, std::size_t size);
void* __libc_realloc(void* p, std::size_t size);
void* __libc_memalign(std::size_t alignment, std::size_t size);
void* __libc_valloc(std::size_t size);
void* __libc_pvalloc(std::size_t size);

void* malloc(std::size_t size) noexcept {
  void* p = __libc_malloc(size);
  performer::counting::on_allocate(p);
  return p;
}

void free(void* p) noexcept {
  performer::counting::on_release(p);
  __libc_free(p);
}

void* calloc(std::size_t count, std::size_t size) noexcept {
  void* p = __libc_calloc(count, size);
  performer::counting::on_allocate(p);
  return p;
}

void* realloc(void* p, std::size_t size) noexcept {
  const auto old_size = p == nullptr ? 0LL : static_cast<long long>(malloc_usable_size(p));
  void* q = __libc_realloc(p, size);
  if (q != nullptr) {
    // The new block is counted before the old one is released: a moving realloc holds both for
    // a moment, and the peak should not miss that.
    performer::counting::on_allocate(q);
    performer::counting::live_bytes.fetch_sub(old_size, std::memory_order_relaxed);
  } else if (p != nullptr && size == 0) {
    performer::counting::live_bytes.fetch_sub(old_size, std::memory_order_relaxed);  // glibc freed p
  }
  return q;
}

// glibc's reallocarray calls its internal realloc, which would bypass the count.
void* reallocarray(void* p, std::size_t count, std::size_t size) noexcept {
  if (size != 0 && count > static_cast<std::size_t>(-1) / size) {
    errno = ENOMEM;
    return nullptr;
  }
  return realloc(p, count * size);
}

void* memalign(std::size_t alignment, std::size_t size) noexcept {
  void* p = __libc_memalign(alignment, size);
  performer::counting::on_allocate(p);
  return p;
}

void* aligned_alloc(std::size_t alignment, std::size_t size) noexcept {
  void* p = __libc_memalign(alignment, size);
  performer::counting::on_allocate(p);
  return p;
}

int posix_memalign(void** out, std::size_t alignment, std::size_t size) noexcept {
  if (alignment == 0 || alignment % sizeof(void*) != 0 || (alignment & (alignment - 1)) != 0) {
    return EINVAL;
  }
  void* p = __libc_memalign(alignment, size);
  if (p == nullptr) return ENOMEM;
  performer::counting::on_allocate(p);
  *out = p;
  return 0;
}

void* valloc(std::size_t size) noexcept {
  void* p = __libc_valloc(size);
  performer::counting::on_allocate(p);
  return p;
}

void* pvalloc(std::size_t size) noexcept {
  void* p = __libc_pvalloc(size);
  performer::counting::on_allocate(p);
  return p;
}
}  // extern "C"
#endif
#endif  // PERFORMER_DEFINE_COUNTING_ALLOCATOR
