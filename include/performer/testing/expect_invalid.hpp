/// @file testing/expect_invalid.hpp
/// @brief A GoogleTest check that a call is rejected the way performer's entry points reject bad
/// input: a performer::invalid_argument whose message starts with the function's name and says
/// which check fired. testing/bad_input.hpp builds its suite on it; use it for your own
/// constructors and setters too:
/// @code
/// PERFORMER_EXPECT_INVALID("my_attention", "radius must be >= 0", my_attention<float>(-1));
/// @endcode
/// Needs GoogleTest (it is not included by performer.hpp).
#pragma once

#include <gtest/gtest.h>

#include <exception>
#include <initializer_list>
#include <string>
#include <string_view>
#include <typeinfo>

#include "../core/error.hpp"

namespace performer::conformance {

/// True when `what` starts with "<who>: ", or, for an empty `who`, with "<name>::forward: "
/// (a name without spaces): what a user reads first to tell which call failed.
[[nodiscard]] inline bool names_the_function(std::string_view what, std::string_view who) {
  if (!who.empty()) return what.starts_with(std::string(who) + ": ");
  const auto colon = what.find(": ");
  if (colon == std::string_view::npos) return false;
  const std::string_view name = what.substr(0, colon);
  return name.ends_with("::forward") && name.find(' ') == std::string_view::npos;
}

/**
 * Fails (at file:line) unless `call` throws performer::invalid_argument whose message names the
 * function (names_the_function) and holds every fragment. The prefix tells a user which call
 * failed; the fragments prove that the intended check fired, not an earlier one. Returns
 * whether the call threw performer::invalid_argument at all.
 */
template <class Call>
bool expect_invalid(Call&& call, std::string_view who,
                    std::initializer_list<std::string_view> fragments, const char* file, int line) {
  const std::string expected = who.empty() ? std::string("<name>::forward") : std::string(who);
  try {
    call();
  } catch (const performer::invalid_argument& e) {
    const std::string_view what = e.what();
    if (!names_the_function(what, who)) {
      ADD_FAILURE_AT(file, line) << "the message does not start with \"" << expected
                                 << ": \": " << what;
    }
    for (const std::string_view fragment : fragments) {
      if (what.find(fragment) == std::string_view::npos) {
        ADD_FAILURE_AT(file, line) << "the message does not say \"" << fragment << "\": " << what;
      }
    }
    return true;
  } catch (const std::exception& e) {
    ADD_FAILURE_AT(file, line) << "threw " << typeid(e).name() << " (" << e.what()
                               << "), not performer::invalid_argument";
    return false;
  }
  ADD_FAILURE_AT(file, line) << "did not throw; expected performer::invalid_argument from "
                             << expected;
  return false;
}

template <class Call>
bool expect_invalid(Call&& call, std::string_view who, std::string_view fragment, const char* file,
                    int line) {
  return expect_invalid(static_cast<Call&&>(call), who, {fragment}, file, line);
}

}  // namespace performer::conformance

/// Expects `...` (an expression; its value is discarded) to throw performer::invalid_argument
/// whose message starts with "<who>: " and holds `fragment` (see expect_invalid).
#define PERFORMER_EXPECT_INVALID(who, fragment, ...)                                     \
  ::performer::conformance::expect_invalid([&] { static_cast<void>(__VA_ARGS__); }, who, \
                                           std::string_view(fragment), __FILE__, __LINE__)
