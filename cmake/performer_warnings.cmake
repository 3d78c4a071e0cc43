# Private build settings for performer's OWN targets (tests, benchmarks, examples). Never applied
# to the performer INTERFACE target, so nothing here reaches consumers.
include_guard(GLOBAL)

# Warnings are always on for our own targets; turning them into errors is CI's policy (its
# presets set this), never something that can break a newcomer's or a user's build.
option(PERFORMER_WARNINGS_AS_ERRORS "Treat warnings in performer's own tests, benchmarks and examples as errors" OFF)

# GCC 12 and AVX-512: GCC bug 105593. In GCC 12's avx512fintrin.h, intrinsics such as
# _mm512_max_ps or _mm512_extractf32x8_ps pass _mm512_undefined_ps() (`__m512 __Y = __Y;`) as
# the unused merge source of a masked builtin. Once inlined into Eigen's AVX-512 packet code
# (gemm_pack_lhs, ptranspose, psincos_float, pmax, reached from our feature maps and products),
# -O2 and above report "'__Y' may be used uninitialized" (-Wmaybe-uninitialized and
# -Wuninitialized) at our call sites. The warnings are false positives of the compiler's own
# header, fixed in GCC 13. We switch off those two warnings only where both conditions hold:
# GCC older than 13, and flags that enable AVX-512 (-march=native on an AVX-512 host, or
# -march=x86-64-v4). Clang builds keep -Wuninitialized everywhere.
set(_performer_gcc12_avx512 OFF)
if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU" AND CMAKE_CXX_COMPILER_VERSION VERSION_LESS 13)
  include(CheckCXXSourceCompiles)
  check_cxx_source_compiles("
    #ifndef __AVX512F__
    #error AVX-512 is not enabled by these flags
    #endif
    int main() { return 0; }" PERFORMER_TARGET_HAS_AVX512)
  if(PERFORMER_TARGET_HAS_AVX512)
    set(_performer_gcc12_avx512 ON)
    message(STATUS "performer: GCC ${CMAKE_CXX_COMPILER_VERSION} with AVX-512: -Wno-maybe-uninitialized "
                   "-Wno-uninitialized on our own targets (GCC bug 105593)")
  endif()
endif()

# performer_target_defaults(<target>)
#   -Wall -Wextra -Wpedantic (GCC, Clang) or /W4 /permissive- (MSVC), plus -Werror or /WX when
#   PERFORMER_WARNINGS_AS_ERRORS is on, and OpenMP when PERFORMER_USE_OPENMP is on and
#   find_package(OpenMP) found it.
function(performer_target_defaults target)
  if(CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
    target_compile_options(${target} PRIVATE -Wall -Wextra -Wpedantic)
    if(PERFORMER_WARNINGS_AS_ERRORS)
      target_compile_options(${target} PRIVATE -Werror)
    endif()
    if(_performer_gcc12_avx512)
      target_compile_options(${target} PRIVATE -Wno-maybe-uninitialized -Wno-uninitialized)
    endif()
  elseif(MSVC)
    target_compile_options(${target} PRIVATE /W4 /permissive-)
    if(PERFORMER_WARNINGS_AS_ERRORS)
      target_compile_options(${target} PRIVATE /WX)
    endif()
  endif()
  if(PERFORMER_USE_OPENMP AND TARGET OpenMP::OpenMP_CXX)
    target_link_libraries(${target} PRIVATE OpenMP::OpenMP_CXX)
  endif()
endfunction()
