# example.train_protein_resume: a run of 12 steps saved at the end, against a run of 6 steps
# saved and resumed to 12 (--resume): the two checkpoints (model, AdamW state and metadata) must
# be the same bytes. -DPROGRAM, -DFASTA, -DDIR.
set(_common "${FASTA}" --window 48 --batch 4 --layers 1 --d-model 32 --heads 2 --features 16)
file(REMOVE_RECURSE "${DIR}")
file(MAKE_DIRECTORY "${DIR}")
function(run what)
  execute_process(COMMAND "${PROGRAM}" ${_common} ${ARGN}
                  RESULT_VARIABLE _rc OUTPUT_VARIABLE _out ERROR_VARIABLE _err)
  message(STATUS "${what}:\n${_out}${_err}")
  if(NOT _rc EQUAL 0)
    message(FATAL_ERROR "${what} failed (${_rc})")
  endif()
endfunction()
run("12 steps" --steps 12 --save "${DIR}/straight.safetensors")
run("6 steps" --steps 6 --save "${DIR}/half.safetensors")
run("resumed to 12" --steps 12 --resume "${DIR}/half.safetensors" --save "${DIR}/resumed.safetensors")
execute_process(COMMAND "${CMAKE_COMMAND}" -E compare_files "${DIR}/straight.safetensors"
                        "${DIR}/resumed.safetensors" RESULT_VARIABLE _differ)
if(NOT _differ EQUAL 0)
  message(FATAL_ERROR "the resumed run's checkpoint differs from the unbroken run's")
endif()
message(STATUS "the resumed run's checkpoint is the unbroken run's, byte for byte")
