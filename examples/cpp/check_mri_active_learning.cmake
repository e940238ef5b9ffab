# ctest driver of `mri_active_learning --quick`: runs it, then checks that a Dice figure was printed for
# every round, that the certified auto-labelling was reported and that the PNG overlays exist and are
# PNG files. Exit status 77 of the program
# (mricron-data not installed) prints "skipped: ...", which ctest reports as a skipped test.
file(REMOVE_RECURSE "${OUT}")
execute_process(COMMAND "${EXE}" --quick --threads 2 --out "${OUT}"
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
message("${out}${err}")
if(rc EQUAL 77)
  message("skipped: mricron-data is not installed")  # SKIP_REGULAR_EXPRESSION of the test
  return()
endif()
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "mri_active_learning --quick failed with status ${rc}")
endif()
string(REGEX MATCHALL "round [0-9]+: [^\n]*Dice [0-9.]+" rounds "${out}")
list(LENGTH rounds n)
if(n LESS 2)
  message(FATAL_ERROR "expected a Dice figure for every round, found ${n}")
endif()
if(NOT out MATCHES "auto-label the [0-9]+ unlabelled pool slices \\([0-9]+ voxels\\), [0-9]+ calibration clicks")
  message(FATAL_ERROR "expected the certified auto-labelling line")
endif()
foreach(name image ground_truth prediction bald_per_image_scale balentacq_per_image_scale overview)
  set(png "${OUT}/${name}.png")
  if(NOT EXISTS "${png}")
    message(FATAL_ERROR "missing ${png}")
  endif()
  file(READ "${png}" head LIMIT 8 HEX)
  if(NOT head STREQUAL "89504e470d0a1a0a")
    message(FATAL_ERROR "${png} is not a PNG file (starts with ${head})")
  endif()
endforeach()
message("checked: ${n} rounds with Dice, 6 PNG files")
