# A newcomer's path: `cmake -S <source> -B <build> && cmake --install <build>` on a machine with
# Eigen alone. GoogleTest and Google Benchmark are made unfindable, so the test fails if a plain
# configure ever needs them again. Run by CTest as:
#   cmake -DSOURCE_DIR=... -DBINARY_DIR=... -DGENERATOR=... -DCXX_COMPILER=... -P newcomer_install.cmake
cmake_minimum_required(VERSION 3.21)
foreach(_var IN ITEMS SOURCE_DIR BINARY_DIR GENERATOR CXX_COMPILER)
  if(NOT DEFINED ${_var} OR "${${_var}}" STREQUAL "")
    message(FATAL_ERROR "newcomer_install.cmake: ${_var} is not set")
  endif()
endforeach()
file(REMOVE_RECURSE "${BINARY_DIR}")
execute_process(
  COMMAND "${CMAKE_COMMAND}" -S "${SOURCE_DIR}" -B "${BINARY_DIR}/build" -G "${GENERATOR}"
          "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}"
          -DCMAKE_DISABLE_FIND_PACKAGE_GTest=ON -DCMAKE_DISABLE_FIND_PACKAGE_benchmark=ON
  RESULT_VARIABLE _result OUTPUT_VARIABLE _out ERROR_VARIABLE _out)
message("${_out}")
if(NOT _result EQUAL 0)
  message(FATAL_ERROR "a plain configure failed without GoogleTest and Google Benchmark")
endif()
execute_process(COMMAND "${CMAKE_COMMAND}" --install "${BINARY_DIR}/build" --prefix "${BINARY_DIR}/prefix"
                RESULT_VARIABLE _result OUTPUT_VARIABLE _out ERROR_VARIABLE _out)
message("${_out}")
if(NOT _result EQUAL 0 OR NOT EXISTS "${BINARY_DIR}/prefix/include/performer/performer.hpp")
  message(FATAL_ERROR "cmake --install failed after a plain configure")
endif()
message(STATUS "configured and installed with Eigen alone")
