/// @file detail/parallel.hpp
/// @brief The library's own parallel loop: OpenMP when the user compiles with it, a plain loop
/// otherwise (no warning either way), and exceptions carried out of the parallel region
/// instead of terminating the program.
#pragma once

#include <algorithm>
#include <exception>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "../types.hpp"

namespace performer::detail {

/// Threads a parallel_for may use here: 1 without OpenMP or inside an active parallel region
/// (nested regions would oversubscribe the cores).
[[nodiscard]] inline index available_threads() noexcept {
#ifdef _OPENMP
  return omp_in_parallel() ? 1 : static_cast<index>(omp_get_max_threads());
#else
  return 1;
#endif
}

/// Lanes (per-thread scratch slots) a parallel_for over `count` items needs.
[[nodiscard]] inline index lanes_for(index count) noexcept {
  return std::max<index>(1, std::min(count, available_threads()));
}

/**
 * @brief Calls body(i, lane) for i in [0, count), statically scheduled over lanes_for(count)
 * threads; `lane` < lanes_for(count) identifies the calling thread's scratch. The items must be
 * independent: each must compute the same bits whichever thread runs it, which is what makes
 * results independent of the thread count. The first exception thrown by a body is rethrown
 * after the loop (the other items still run).
 */
template <class Body>
void parallel_for(index count, Body&& body) {
  std::exception_ptr error;
  [[maybe_unused]] const int lanes = static_cast<int>(lanes_for(count));
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(lanes) if (lanes > 1)
#endif
  for (index i = 0; i < count; ++i) {
    try {
#ifdef _OPENMP
      body(i, static_cast<index>(omp_get_thread_num()));
#else
      body(i, index{0});
#endif
    } catch (...) {
#ifdef _OPENMP
#pragma omp critical(performer_parallel_for_error)
#endif
      if (!error) error = std::current_exception();
    }
  }
  if (error) std::rethrow_exception(error);
}

}  // namespace performer::detail
