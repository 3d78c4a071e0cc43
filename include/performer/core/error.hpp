/// @file core/error.hpp
/// @brief Exceptions and the precondition macros.
///
/// Three tiers: concepts and static_assert at compile time; PERFORMER_PRECONDITION, always on,
/// for what a caller can get wrong (shapes, options, non-finite values), which throws
/// performer::invalid_argument; PERFORMER_ASSERT for internal invariants, compiled out with
/// NDEBUG and overridable like eigen_assert.
#pragma once

#include <cassert>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace performer {

/// Thrown when an argument breaks a documented precondition. The message names the function,
/// the argument and, for shape errors, the shapes involved.
class invalid_argument : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

namespace detail {

/// Builds a message from streamable parts: message("f: k has ", 3, " rows").
template <class... Parts>
[[nodiscard]] std::string message(const Parts&... parts) {
  std::ostringstream os;
  (os << ... << parts);
  return os.str();
}

}  // namespace detail
}  // namespace performer

#ifndef PERFORMER_THROW
/// Single throw point, so that a no-exceptions build can redirect it later.
#define PERFORMER_THROW(exception) throw exception
#endif

/// Checks a caller-facing precondition; throws performer::invalid_argument built from the
/// remaining arguments (streamed together) when it fails. Always on.
#define PERFORMER_PRECONDITION(cond, ...)                                                  \
  do {                                                                                     \
    if (!(cond)) [[unlikely]] {                                                            \
      PERFORMER_THROW(::performer::invalid_argument(::performer::detail::message(__VA_ARGS__))); \
    }                                                                                      \
  } while (false)

#ifndef PERFORMER_ASSERT
/// Internal invariant; compiled out with NDEBUG. Define it before including to override.
#define PERFORMER_ASSERT(cond) assert(cond)
#endif
