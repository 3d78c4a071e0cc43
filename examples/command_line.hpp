/// @file examples/command_line.hpp
/// @brief Reading option values, shared by the protein_encoder example and performer_run: the
/// value after a flag, a finite number, a whole number in a range. Each problem is thrown as
/// `Error` (any exception type constructible from a std::string) naming the flag.
#pragma once

#include <cmath>
#include <exception>
#include <string>

namespace command_line {

template <class Error>
class reader {
 public:
  reader(int argc, char** argv) : argc_(argc), argv_(argv) {}

  /// The argument after argv[i] (and i moves to it). @throws Error if there is none.
  std::string value(int& i) const {
    if (i + 1 >= argc_) throw Error(std::string(argv_[i]) + " needs a value");
    return argv_[++i];
  }

  /// `text` as a finite number, all of it. @throws Error otherwise.
  static double number(const std::string& flag, const std::string& text) {
    std::size_t used = 0;
    double x = 0;
    try {
      x = std::stod(text, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != text.size() || !std::isfinite(x)) {
      throw Error(flag + " needs a number, got '" + text + "'");
    }
    return x;
  }

  /// `text` as a whole number in [min, max]. @throws Error otherwise.
  static long long whole(const std::string& flag, const std::string& text, double min, double max) {
    const double x = number(flag, text);
    if (x < min || x > max || x != std::floor(x)) {
      throw Error(flag + " needs a whole number in [" +
                  std::to_string(static_cast<long long>(min)) + ", " +
                  std::to_string(static_cast<long long>(max)) + "], got '" + text + "'");
    }
    return static_cast<long long>(x);
  }

 private:
  int argc_;
  char** argv_;
};

}  // namespace command_line
