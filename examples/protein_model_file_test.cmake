# example.protein_encoder_model_file: protein_encoder --save-model writes its FAVOR+ encoder as a
# model file and checks, in the same run, that the reloaded model encodes every chain bit for bit
# as the in-memory stack; protein_encoder --model then runs the file and must print the same
# fingerprints (64-bit hashes of each chain's encoding). -DPROGRAM, -DFASTA, -DMODEL.
set(_common "${FASTA}" --concat 0 --layers 1 --max 3)
execute_process(COMMAND "${PROGRAM}" ${_common} --save-model "${MODEL}"
                RESULT_VARIABLE _rc OUTPUT_VARIABLE _saved ERROR_VARIABLE _err)
message(STATUS "--save-model run:\n${_saved}${_err}")
if(NOT _rc EQUAL 0 OR NOT _saved MATCHES "every encoding bit-identical")
  message(FATAL_ERROR "--save-model failed (${_rc})")
endif()
execute_process(COMMAND "${PROGRAM}" ${_common} --model "${MODEL}"
                RESULT_VARIABLE _rc OUTPUT_VARIABLE _loaded ERROR_VARIABLE _err)
message(STATUS "--model run:\n${_loaded}${_err}")
if(NOT _rc EQUAL 0)
  message(FATAL_ERROR "--model failed (${_rc})")
endif()
string(REGEX MATCHALL "fingerprint [^\n]*" _a "${_saved}")
string(REGEX MATCHALL "fingerprint [^\n]*" _b "${_loaded}")
list(LENGTH _a _count)
if(NOT _count EQUAL 3 OR NOT _a STREQUAL _b)
  message(FATAL_ERROR "fingerprints differ or are missing:\n  saved:  ${_a}\n  loaded: ${_b}")
endif()
message(STATUS "the same ${_count} fingerprints both ways")
