# Helpers for the cluster tests (included by tests/CMakeLists.txt after the
# per-file test executables exist): fixture binaries the tests submit as jobs
# or run as actor hosts, and the dependencies that make `ninja cluster_*`
# build the `troupe` executable the tests start.
add_executable(cluster_hello_job ${CMAKE_CURRENT_LIST_DIR}/fixtures/hello_job.cpp)
add_executable(cluster_fake_actor_host ${CMAKE_CURRENT_LIST_DIR}/fixtures/fake_actor_host.cpp)
target_link_libraries(cluster_fake_actor_host PRIVATE troupe_transport)
target_include_directories(cluster_fake_actor_host PRIVATE ${CMAKE_CURRENT_LIST_DIR}/..)

file(GLOB _cluster_tests CONFIGURE_DEPENDS ${CMAKE_CURRENT_LIST_DIR}/*_test.cpp)
foreach(_src ${_cluster_tests})
  get_filename_component(_name ${_src} NAME_WE)
  set(_exe cluster_${_name})
  add_dependencies(${_exe} troupe_cli cluster_hello_job cluster_fake_actor_host cluster_job plan_job calls_job api_conformance)
  target_compile_definitions(${_exe} PRIVATE
    TROUPE_CLI_PATH="$<TARGET_FILE:troupe_cli>"
    TROUPE_HELLO_JOB="$<TARGET_FILE:cluster_hello_job>"
    TROUPE_FAKE_ACTOR_HOST="$<TARGET_FILE:cluster_fake_actor_host>"
    TROUPE_CLUSTER_JOB="$<TARGET_FILE:cluster_job>"
    TROUPE_PLAN_JOB="$<TARGET_FILE:plan_job>"
    TROUPE_CALLS_JOB="$<TARGET_FILE:calls_job>"
    TROUPE_API_CONFORMANCE="$<TARGET_FILE:api_conformance>")
  if(TARGET example_pipeline_serving)
    add_dependencies(${_exe} example_pipeline_serving)
  endif()
  if(TARGET example_pipeline_custom_stage)
    add_dependencies(${_exe} example_pipeline_custom_stage)
  endif()
endforeach()
