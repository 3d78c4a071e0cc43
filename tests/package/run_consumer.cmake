# Configures, builds and runs one consumer project of performer, in a fresh binary directory.
# Run by CTest as: cmake -D<var>=<value>... -P run_consumer.cmake
#
#   NAME                  test name, for messages
#   SOURCE_DIR            consumer project
#   BINARY_DIR            its build directory (deleted first)
#   GENERATOR, MAKE_PROGRAM, CXX_COMPILER, BUILD_TYPE, GENERATOR_PLATFORM, GENERATOR_TOOLSET
#                         the parent build's settings, so consumers build the same way
#   EXPECTED_VERSION      performer's version: the program must print "performer <version>"
#   CONSUMER_ARGS         extra -D options for the consumer, separated by '|'
#   EXPECT                "run" (default): configure, build and run must succeed;
#                         "configure-failure": configure must fail with output matching
#                         FAILURE_REGEX
#   FIRST_LINE_ONLY       ON: only the program's first line must be the version
#   CHECK_SUBPROJECT      ON: performer was added as a subproject and must have added no tests
#                         and no install rules
cmake_minimum_required(VERSION 3.21)

foreach(_var IN ITEMS NAME SOURCE_DIR BINARY_DIR GENERATOR CXX_COMPILER EXPECTED_VERSION)
  if(NOT DEFINED ${_var} OR "${${_var}}" STREQUAL "")
    message(FATAL_ERROR "run_consumer.cmake: ${_var} is not set")
  endif()
endforeach()
if(NOT DEFINED EXPECT)
  set(EXPECT run)
endif()

file(REMOVE_RECURSE "${BINARY_DIR}")

set(_configure "${CMAKE_COMMAND}" -S "${SOURCE_DIR}" -B "${BINARY_DIR}" -G "${GENERATOR}"
    "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}"
    # Only what the test names may be found: no package registries.
    -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF
    -DCMAKE_FIND_USE_SYSTEM_PACKAGE_REGISTRY=OFF)
if(MAKE_PROGRAM)
  list(APPEND _configure "-DCMAKE_MAKE_PROGRAM=${MAKE_PROGRAM}")
endif()
if(GENERATOR_PLATFORM)
  list(APPEND _configure -A "${GENERATOR_PLATFORM}")
endif()
if(GENERATOR_TOOLSET)
  list(APPEND _configure -T "${GENERATOR_TOOLSET}")
endif()
if(BUILD_TYPE)
  list(APPEND _configure "-DCMAKE_BUILD_TYPE=${BUILD_TYPE}")
endif()
if(CONSUMER_ARGS)
  string(REPLACE "|" ";" _consumer_args "${CONSUMER_ARGS}")
  list(APPEND _configure ${_consumer_args})
endif()

function(run_step what)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE _result OUTPUT_VARIABLE _out ERROR_VARIABLE _out)
  set(_step_result "${_result}" PARENT_SCOPE)
  set(_step_output "${_out}" PARENT_SCOPE)
endfunction()

message(STATUS "[${NAME}] configure: ${_configure}")
run_step(configure ${_configure})

if(EXPECT STREQUAL "configure-failure")
  if(_step_result EQUAL 0)
    message("${_step_output}")
    message(FATAL_ERROR "[${NAME}] configure succeeded but was expected to fail")
  endif()
  if(DEFINED FAILURE_REGEX AND NOT _step_output MATCHES "${FAILURE_REGEX}")
    message("${_step_output}")
    message(FATAL_ERROR "[${NAME}] configure failed, but not with a message matching '${FAILURE_REGEX}'")
  endif()
  message(STATUS "[${NAME}] configure failed as expected:\n${_step_output}")
  return()
endif()

if(NOT _step_result EQUAL 0)
  message("${_step_output}")
  message(FATAL_ERROR "[${NAME}] configure failed (${_step_result})")
endif()
message(STATUS "[${NAME}] configure output:\n${_step_output}")

if(CHECK_SUBPROJECT)
  file(GLOB_RECURSE _ctest_files "${BINARY_DIR}/CTestTestfile.cmake")
  if(_ctest_files)
    message(FATAL_ERROR "[${NAME}] performer added tests to a consumer: ${_ctest_files}")
  endif()
endif()

set(_build "${CMAKE_COMMAND}" --build "${BINARY_DIR}")
if(BUILD_TYPE)
  list(APPEND _build --config "${BUILD_TYPE}")
endif()
run_step(build ${_build})
if(NOT _step_result EQUAL 0)
  message("${_step_output}")
  message(FATAL_ERROR "[${NAME}] build failed (${_step_result})")
endif()

set(_app "")
foreach(_candidate IN ITEMS "${BINARY_DIR}/app" "${BINARY_DIR}/app.exe"
                            "${BINARY_DIR}/${BUILD_TYPE}/app" "${BINARY_DIR}/${BUILD_TYPE}/app.exe")
  if(EXISTS "${_candidate}" AND NOT IS_DIRECTORY "${_candidate}")
    set(_app "${_candidate}")
    break()
  endif()
endforeach()
if(NOT _app)
  message(FATAL_ERROR "[${NAME}] the consumer built no 'app' in ${BINARY_DIR}")
endif()
execute_process(COMMAND "${_app}" RESULT_VARIABLE _result OUTPUT_VARIABLE _out ERROR_VARIABLE _err)
if(NOT _result EQUAL 0)
  message(FATAL_ERROR "[${NAME}] ${_app} exited with ${_result}:\n${_out}${_err}")
endif()
string(STRIP "${_out}" _out)
if(FIRST_LINE_ONLY)
  # Consumers that print more than the version (the examples/consumer project).
  string(REGEX REPLACE "\n.*" "" _out "${_out}")
endif()
if(NOT _out STREQUAL "performer ${EXPECTED_VERSION}")
  message(FATAL_ERROR "[${NAME}] ${_app} printed '${_out}', expected 'performer ${EXPECTED_VERSION}'")
endif()
message(STATUS "[${NAME}] app printed: ${_out}")

if(CHECK_SUBPROJECT)
  # The consumer installs nothing itself, so anything installed came from performer.
  set(_install_prefix "${BINARY_DIR}/install-check")
  set(_install "${CMAKE_COMMAND}" --install "${BINARY_DIR}" --prefix "${_install_prefix}")
  if(BUILD_TYPE)
    list(APPEND _install --config "${BUILD_TYPE}")
  endif()
  run_step(install ${_install})
  if(NOT _step_result EQUAL 0)
    message("${_step_output}")
    message(FATAL_ERROR "[${NAME}] cmake --install of the consumer failed (${_step_result})")
  endif()
  file(GLOB_RECURSE _installed "${_install_prefix}/*")
  if(_installed)
    message(FATAL_ERROR "[${NAME}] performer's install rules leaked into a consumer: ${_installed}")
  endif()
  message(STATUS "[${NAME}] no tests and no install rules from performer")
endif()
message(STATUS "[${NAME}] passed")
