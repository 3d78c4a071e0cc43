/// @file core/detail/parallel.hpp
/// @brief The library's own parallel loop: OpenMP when the user compiles with it, a plain loop
/// otherwise (no warning either way), and exceptions carried out of the parallel region
/// instead of terminating the program.
#pragma once

#include <algorithm>
#include <array>
#include <exception>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "../types.hpp"

namespace performer::detail {

/// Threads a parallel_for may use here: 1 without OpenMP or inside an active parallel region
/// (nested regions would oversubscribe the cores).
[[nodiscard]] inline index_t available_threads() noexcept {
#ifdef _OPENMP
  return omp_in_parallel() ? 1 : static_cast<index_t>(omp_get_max_threads());
#else
  return 1;
#endif
}

/// Lanes (per-thread scratch slots) a parallel_for over `count` items needs.
[[nodiscard]] inline index_t lanes_for(index_t count) noexcept {
  return std::max<index_t>(1, std::min(count, available_threads()));
}

/**
 * @brief Calls body(i, lane) for i in [0, count), statically scheduled over lanes_for(count)
 * threads; `lane` < lanes_for(count) identifies the calling thread's scratch. The items must be
 * independent: each must compute the same bits whichever thread runs it, which is what makes
 * results independent of the thread count. The first exception thrown by a body is rethrown
 * after the loop (the other items still run).
 *
 * With one lane it is a plain loop: even a parallel region that `if` keeps on one thread makes
 * libgomp allocate a team, and a warm forward pass allocates nothing. (Dynamic scheduling would
 * make it allocate work-sharing state now and then, too.)
 */
template <class Body>
void parallel_for(index_t count, Body&& body) {
  std::exception_ptr error;
  const auto run = [&](index_t i, index_t lane) {
    try {
      body(i, lane);
    } catch (...) {
#ifdef _OPENMP
#pragma omp critical(performer_parallel_for_error)
#endif
      if (!error) error = std::current_exception();
    }
  };
  [[maybe_unused]] const int lanes = static_cast<int>(lanes_for(count));
#ifdef _OPENMP
  if (lanes > 1) {
#pragma omp parallel for schedule(static) num_threads(lanes)
    for (index_t i = 0; i < count; ++i) run(i, static_cast<index_t>(omp_get_thread_num()));
  } else {
    for (index_t i = 0; i < count; ++i) run(i, index_t{0});
  }
#else
  for (index_t i = 0; i < count; ++i) run(i, index_t{0});
#endif
  if (error) std::rethrow_exception(error);
}

/**
 * @brief combine(... combine(init, part(r0, r1)) ...) over contiguous ranges [r0, r1) of `rows`
 * rows, in range order. A pass over `entries` >= 2^22 values (16 MiB of floats) is split into up
 * to 16 ranges that run in parallel: such passes (input checks, a maximum) are bound by memory
 * bandwidth, which one core does not use up. Smaller passes run whole on the calling thread.
 * With an exact, order-independent combine (logical and, maximum) the result does not depend
 * on the split. R must be default-constructible. Allocates nothing.
 */
template <class R, class Part, class Combine>
[[nodiscard]] R reduce_row_ranges(index_t rows, index_t entries, R init, Part&& part,
                                  Combine&& combine) {
  constexpr index_t most = 16;
  const index_t parts = entries >= (index_t{1} << 22)
                            ? std::clamp<index_t>(std::min(available_threads(), rows), 1, most)
                            : 1;
  if (parts == 1) return combine(init, part(index_t{0}, rows));
  std::array<R, most> results{};
  parallel_for(parts, [&](index_t p, index_t) {
    results[static_cast<std::size_t>(p)] = part(rows * p / parts, rows * (p + 1) / parts);
  });
  for (index_t p = 0; p < parts; ++p) init = combine(init, results[static_cast<std::size_t>(p)]);
  return init;
}

}  // namespace performer::detail
