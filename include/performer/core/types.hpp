/// @file core/types.hpp
/// @brief Matrix aliases used across the library.
///
/// Every sequence is stored token-major: row i of an N x d matrix is token i. The aliases spell
/// the storage order explicitly so that a user's EIGEN_DEFAULT_TO_ROW_MAJOR cannot change them.
/// A column-major matrix passed where a `const_matrix_ref` is expected is copied once into a
/// row-major temporary by Eigen::Ref; pass row-major data (or an Eigen::Map over it) to avoid that.
#pragma once

// Concepts, std::span and designated initialisers are C++20: say so before the first error deep
// inside a header does.
#if !defined(__cplusplus) || (__cplusplus < 202002L && (!defined(_MSVC_LANG) || _MSVC_LANG < 202002L))
#error "performer needs C++20: compile with -std=c++20 (CMake: target_compile_features(<target> PRIVATE cxx_std_20), which linking performer::performer does for you)"
#endif

#include <Eigen/Core>

namespace performer {

/// Index type of every size and position: Eigen's signed index. (Not `index`, which would
/// collide with POSIX's index() under `using namespace performer`.)
using index_t = Eigen::Index;

/// Dense row-major matrix: the storage of every sequence (tokens are rows).
template <class T>
using row_matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// Dense column vector.
template <class T>
using vector = Eigen::Matrix<T, Eigen::Dynamic, 1>;

/// Dense row vector (one token).
template <class T>
using row_vector = Eigen::Matrix<T, 1, Eigen::Dynamic>;

/// Read-only view of a row-major matrix or of a row/column block of one (zero-copy head slicing).
template <class T>
using const_matrix_ref = Eigen::Ref<const row_matrix<T>>;

/// Writable view of a row-major matrix or block; the caller sizes it.
template <class T>
using matrix_ref = Eigen::Ref<row_matrix<T>>;

/// Read-only view of a contiguous vector.
template <class T>
using const_vector_ref = Eigen::Ref<const vector<T>>;

}  // namespace performer
