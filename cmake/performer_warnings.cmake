# Private build settings for performer's OWN targets (tests, benchmarks, examples). Never applied
# to the performer INTERFACE target, so nothing here reaches consumers.
include_guard(GLOBAL)

# performer_target_defaults(<target>)
#   Warnings as errors (-Wall -Wextra -Wpedantic -Werror with GCC and Clang, /W4 /WX with MSVC),
#   and OpenMP when PERFORMER_USE_OPENMP is on and find_package(OpenMP) found it.
function(performer_target_defaults target)
  if(CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
    target_compile_options(${target} PRIVATE -Wall -Wextra -Wpedantic -Werror)
  elseif(MSVC)
    target_compile_options(${target} PRIVATE /W4 /WX /permissive-)
  endif()
  if(PERFORMER_USE_OPENMP AND TARGET OpenMP::OpenMP_CXX)
    target_link_libraries(${target} PRIVATE OpenMP::OpenMP_CXX)
  endif()
endfunction()
