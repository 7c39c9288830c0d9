# troupe_library(NAME <folder>) builds troupe_<folder> from <folder>/src/*.cpp
# (and *.cu when CUDA is on) with public headers in <folder>/include, and
# installs both into the troupeTargets export set as troupe::<folder>. Every
# header under include/ is installed and is public: private headers live in
# src/ (or, when other in-tree targets share them, in a folder that is not
# installed). Each public header is compiled alone (TroupeCheckHeaders.cmake).
function(troupe_library folder)
  file(GLOB_RECURSE _cpp CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/src/*.cpp)
  set(_cu "")
  if(TROUPE_HAVE_CUDA)
    file(GLOB_RECURSE _cu CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/src/*.cu)
  endif()
  set(_target troupe_${folder})
  add_library(${_target} ${_cpp} ${_cu} ${ARGN})
  add_library(troupe::${folder} ALIAS ${_target})
  set_target_properties(${_target} PROPERTIES EXPORT_NAME ${folder} OUTPUT_NAME troupe_${folder})
  target_include_directories(${_target} PUBLIC
    $<BUILD_INTERFACE:${CMAKE_CURRENT_SOURCE_DIR}/include>
    $<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}>
    PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/src)
  target_compile_features(${_target} PUBLIC cxx_std_20)
  if(TROUPE_HAVE_CUDA)
    target_compile_definitions(${_target} PUBLIC TROUPE_HAVE_CUDA=1)
    set_target_properties(${_target} PROPERTIES CUDA_SEPARABLE_COMPILATION OFF)
  endif()
  install(TARGETS ${_target} EXPORT troupeTargets
    LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
    ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
    RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
  if(EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/include)  # git keeps no empty folders
    install(DIRECTORY ${CMAKE_CURRENT_SOURCE_DIR}/include/ DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
  endif()
  troupe_check_headers(${_target})
endfunction()
