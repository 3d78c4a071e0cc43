# cmake -DFUZZER=<exe> -DSEEDS=<seed corpus dir> -DWORK=<scratch dir> -DSECONDS=<n> -P run_smoke.cmake
#
# Copies the seed corpus into WORK/corpus (fresh each run), fuzzes it for SECONDS seconds in one
# process with a fixed mutation seed (so that CI explores the same inputs on every run, up to
# how far it gets in the time), and fails if the fuzzer reports a crash, a sanitizer error or a contract violation.
# Crash inputs land in WORK/artifacts/.
foreach(_var FUZZER SEEDS WORK SECONDS)
  if(NOT DEFINED ${_var})
    message(FATAL_ERROR "run_smoke.cmake: -D${_var}=... is required")
  endif()
endforeach()

file(REMOVE_RECURSE "${WORK}")
file(MAKE_DIRECTORY "${WORK}/corpus" "${WORK}/artifacts")
file(GLOB _seeds "${SEEDS}/*")
if(NOT _seeds)
  message(FATAL_ERROR "run_smoke.cmake: no seed inputs in ${SEEDS}")
endif()
file(COPY ${_seeds} DESTINATION "${WORK}/corpus")

execute_process(
  COMMAND "${FUZZER}" "${WORK}/corpus"
          -seed=1 -max_total_time=${SECONDS} -timeout=30 -rss_limit_mb=2048
          -print_final_stats=1 "-artifact_prefix=${WORK}/artifacts/"
  RESULT_VARIABLE _rc)
if(NOT _rc EQUAL 0)
  file(GLOB _crashes "${WORK}/artifacts/*")
  message(FATAL_ERROR "fuzz.smoke: the fuzzer exited with ${_rc}; reproducer(s): ${_crashes}")
endif()
message(STATUS "fuzz.smoke: no crash in ${SECONDS} s")
