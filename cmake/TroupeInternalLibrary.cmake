# troupe_internal_library(<folder>) builds the static library troupe_<folder>
# (alias troupe::<folder>) from <folder>/src/*.cpp with headers in
# <folder>/include, for code the troupe executable and the tests link but
# users never see (the daemons): nothing is installed or exported.
function(troupe_internal_library folder)
  file(GLOB_RECURSE _cpp CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/src/*.cpp)
  set(_target troupe_${folder})
  add_library(${_target} STATIC ${_cpp})
  add_library(troupe::${folder} ALIAS ${_target})
  target_include_directories(${_target}
    PUBLIC ${CMAKE_CURRENT_SOURCE_DIR}/include
    PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/src)
  target_compile_features(${_target} PUBLIC cxx_std_20)
endfunction()
