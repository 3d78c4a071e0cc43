# Installs performer's build tree into a fresh prefix and checks the expected files are there.
# Run by CTest (the fixture of the find_package and pkg-config consumers) as:
#   cmake -DBUILD_DIR=... -DPREFIX=... -DINCLUDEDIR=... -DCMAKEDIR=... -DPKGCONFIGDIR=...
#         -DDOCDIR=... [-DCONFIG=...] -P install_prefix.cmake
cmake_minimum_required(VERSION 3.21)
foreach(_var IN ITEMS BUILD_DIR PREFIX INCLUDEDIR CMAKEDIR PKGCONFIGDIR DOCDIR)
  if(NOT DEFINED ${_var} OR "${${_var}}" STREQUAL "")
    message(FATAL_ERROR "install_prefix.cmake: ${_var} is not set")
  endif()
endforeach()

file(REMOVE_RECURSE "${PREFIX}")
set(_install "${CMAKE_COMMAND}" --install "${BUILD_DIR}" --prefix "${PREFIX}")
if(CONFIG)
  list(APPEND _install --config "${CONFIG}")
endif()
execute_process(COMMAND ${_install} RESULT_VARIABLE _result OUTPUT_VARIABLE _out ERROR_VARIABLE _out)
message("${_out}")
if(NOT _result EQUAL 0)
  message(FATAL_ERROR "cmake --install failed (${_result})")
endif()

set(_missing "")
foreach(_file IN ITEMS
    "${INCLUDEDIR}/performer/performer.hpp"
    "${INCLUDEDIR}/performer/version.hpp"
    "${CMAKEDIR}/performerConfig.cmake"
    "${CMAKEDIR}/performerConfigVersion.cmake"
    "${CMAKEDIR}/performerTargets.cmake"
    "${PKGCONFIGDIR}/performer.pc"
    "${DOCDIR}/LICENSE")
  if(NOT EXISTS "${PREFIX}/${_file}")
    list(APPEND _missing "${_file}")
  endif()
endforeach()
if(_missing)
  message(FATAL_ERROR "not installed into ${PREFIX}: ${_missing}")
endif()

file(READ "${PREFIX}/${PKGCONFIGDIR}/performer.pc" _pc)
if(NOT _pc MATCHES "(^|\n)prefix=${PREFIX}\n")
  message(FATAL_ERROR "performer.pc does not name the install prefix ${PREFIX}:\n${_pc}")
endif()
message(STATUS "performer installed into ${PREFIX}")
