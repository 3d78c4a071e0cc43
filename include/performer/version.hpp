/// @file version.hpp
/// @brief Library version. CMake parses these three lines, so the version lives only here.
#pragma once

#define PERFORMER_VERSION_MAJOR 0
#define PERFORMER_VERSION_MINOR 2
#define PERFORMER_VERSION_PATCH 0

namespace performer {
/// Version as "major.minor.patch".
inline constexpr const char* version_string = "0.2.0";
}  // namespace performer
