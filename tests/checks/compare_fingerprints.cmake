# Compares determinism fingerprints (tests/determinism_fingerprint.cpp): every line is
# `name hash`, and the library promises the same bits on any thread count and with any compiler.
#
# Two modes, run with cmake -P:
#   cmake -DFINGERPRINT=<exe> -DWORK_DIR=<dir> [-DTHREADS="1;2"] [-DARGS="--eigen-threads;1"]
#         -P compare_fingerprints.cmake
#       runs the program once per thread count (--threads T --out <dir>/fingerprint-T.txt, plus
#       ARGS) and compares every output with the first one.
#   cmake -DFILES="<a.txt>;<b.txt>" -P compare_fingerprints.cmake
#       compares two existing outputs (e.g. a g++ build's and a clang++ build's).
# Fails (FATAL_ERROR, so a non-zero exit) naming every line that differs or is missing.
cmake_minimum_required(VERSION 3.25)

# Reads a fingerprint file into <prefix>_names (in order) and <prefix>_hash_<name> variables.
function(_fingerprint_read path prefix)
  if(NOT EXISTS "${path}")
    message(FATAL_ERROR "compare_fingerprints: ${path} does not exist")
  endif()
  file(STRINGS "${path}" _lines)
  if(NOT _lines)
    message(FATAL_ERROR "compare_fingerprints: ${path} is empty")
  endif()
  set(_names "")
  foreach(_line IN LISTS _lines)
    if(NOT _line MATCHES "^([^ ]+) ([0-9a-f]+)$")
      message(FATAL_ERROR "compare_fingerprints: ${path}: malformed line '${_line}'")
    endif()
    list(APPEND _names "${CMAKE_MATCH_1}")
    set(${prefix}_hash_${CMAKE_MATCH_1} "${CMAKE_MATCH_2}" PARENT_SCOPE)
  endforeach()
  set(${prefix}_names "${_names}" PARENT_SCOPE)
endfunction()

# Compares two files; appends a description of each difference to the caller's _problems.
function(_fingerprint_compare a b)
  _fingerprint_read("${a}" A)
  _fingerprint_read("${b}" B)
  set(_found "${_problems}")
  set(_differ 0)
  foreach(_name IN LISTS A_names)
    if(NOT DEFINED B_hash_${_name})
      string(APPEND _found "\n  ${_name}: in ${a}, missing from ${b}")
      math(EXPR _differ "${_differ} + 1")
    elseif(NOT A_hash_${_name} STREQUAL B_hash_${_name})
      string(APPEND _found
             "\n  ${_name}: ${A_hash_${_name}} (${a}) != ${B_hash_${_name}} (${b})")
      math(EXPR _differ "${_differ} + 1")
    endif()
  endforeach()
  foreach(_name IN LISTS B_names)
    if(NOT DEFINED A_hash_${_name})
      string(APPEND _found "\n  ${_name}: in ${b}, missing from ${a}")
      math(EXPR _differ "${_differ} + 1")
    endif()
  endforeach()
  list(LENGTH A_names _count)
  if(_differ EQUAL 0)
    message(STATUS "compare_fingerprints: ${a} and ${b} agree on all ${_count} fingerprints")
  endif()
  set(_problems "${_found}" PARENT_SCOPE)
endfunction()

set(_problems "")
if(DEFINED FILES)
  list(LENGTH FILES _file_count)
  if(NOT _file_count EQUAL 2)
    message(FATAL_ERROR "compare_fingerprints: FILES must name exactly two files (got '${FILES}')")
  endif()
  list(GET FILES 0 _first)
  list(GET FILES 1 _second)
  _fingerprint_compare("${_first}" "${_second}")
elseif(DEFINED FINGERPRINT)
  if(NOT DEFINED WORK_DIR)
    message(FATAL_ERROR "compare_fingerprints: FINGERPRINT needs WORK_DIR")
  endif()
  if(NOT DEFINED THREADS)
    set(THREADS 1 2)
  endif()
  file(MAKE_DIRECTORY "${WORK_DIR}")
  set(_outputs "")
  foreach(_threads IN LISTS THREADS)
    set(_out "${WORK_DIR}/fingerprint-${_threads}.txt")
    file(REMOVE "${_out}")
    execute_process(COMMAND "${FINGERPRINT}" --threads ${_threads} ${ARGS} --out "${_out}"
                    RESULT_VARIABLE _result)
    if(NOT _result EQUAL 0)
      message(FATAL_ERROR "compare_fingerprints: '${FINGERPRINT} --threads ${_threads} ${ARGS}' "
                          "failed (${_result})")
    endif()
    list(APPEND _outputs "${_out}")
  endforeach()
  list(GET _outputs 0 _reference)
  list(SUBLIST _outputs 1 -1 _others)
  foreach(_other IN LISTS _others)
    _fingerprint_compare("${_reference}" "${_other}")
  endforeach()
else()
  message(FATAL_ERROR "compare_fingerprints: pass -DFINGERPRINT=<exe> -DWORK_DIR=<dir> "
                      "or -DFILES=<a>;<b>")
endif()

if(NOT _problems STREQUAL "")
  message(FATAL_ERROR "compare_fingerprints: fingerprints differ:${_problems}")
endif()
