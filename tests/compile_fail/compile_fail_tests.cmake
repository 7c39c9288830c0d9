# Compile-failure tests: each tests/compile_fail/*.cpp is compiled, as a user
# of the installed package would compile it (only troupe's public include
# directories, the build's compiler and C++ standard), by check_compile.cmake.
# A source that says `// expect-error: TEXT` must FAIL to compile and the
# compiler's output must contain every such TEXT (the message naming the
# fix); a source that says `// expect-success` must compile cleanly with the
# flags it lists in `// flags:` (e.g. -Wall -Wextra -Werror). Syntax-only
# compiles, a few seconds each. Included by tests/CMakeLists.txt.

# A target that is never built: it only gathers troupe::troupe's usage
# requirements (include directories, definitions), transitively.
add_library(troupe_compile_fail_probe OBJECT EXCLUDE_FROM_ALL ${CMAKE_CURRENT_LIST_DIR}/probe.cpp)
target_link_libraries(troupe_compile_fail_probe PRIVATE troupe::troupe)
set(_cf_includes "$<TARGET_PROPERTY:troupe_compile_fail_probe,INCLUDE_DIRECTORIES>")
set(_cf_defines "$<TARGET_PROPERTY:troupe_compile_fail_probe,COMPILE_DEFINITIONS>")
set(_cf_flags_file ${CMAKE_CURRENT_BINARY_DIR}/compile_fail_flags.cmake)
file(GENERATE OUTPUT ${_cf_flags_file} CONTENT
  "set(CF_INCLUDES \"$<JOIN:$<REMOVE_DUPLICATES:${_cf_includes}>,;>\")\nset(CF_DEFINES \"$<JOIN:$<REMOVE_DUPLICATES:${_cf_defines}>,;>\")\n")

set(_cf_std ${CMAKE_CXX20_STANDARD_COMPILE_OPTION})
if(NOT _cf_std)
  set(_cf_std -std=c++20)
endif()
file(GLOB _cf_sources CONFIGURE_DEPENDS ${CMAKE_CURRENT_LIST_DIR}/*.cpp)
list(REMOVE_ITEM _cf_sources ${CMAKE_CURRENT_LIST_DIR}/probe.cpp)
foreach(_cf_src ${_cf_sources})
  get_filename_component(_cf_name ${_cf_src} NAME_WE)
  add_test(NAME compile_fail.${_cf_name}
    COMMAND ${CMAKE_COMMAND} -DCXX=${CMAKE_CXX_COMPILER} "-DCXX_FLAGS=${CMAKE_CXX_FLAGS} ${_cf_std}"
            -DFLAGS_FILE=${_cf_flags_file} -DSOURCE=${_cf_src}
            -P ${CMAKE_CURRENT_LIST_DIR}/check_compile.cmake)
  set_tests_properties(compile_fail.${_cf_name} PROPERTIES LABELS "fast;compile_fail" TIMEOUT 120)
endforeach()
