# Tests that are not GoogleTest executables. Included by tests/CMakeLists.txt.

# The CLI starts and prints its help.
add_test(NAME cli.help COMMAND troupe_cli --help)
set_tests_properties(cli.help PROPERTIES LABELS fast TIMEOUT 60)

# `cmake --install` gives a package that an out-of-tree project consumes with
# find_package(troupe) (tests/install/consumer). Needs the whole tree built.
add_test(NAME install.find_package_consumer
  COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/install/run_install_test.sh
          ${CMAKE_BINARY_DIR} ${CMAKE_CXX_COMPILER} $<IF:$<BOOL:$<CONFIG>>,$<CONFIG>,RelWithDebInfo>)
set_tests_properties(install.find_package_consumer PROPERTIES
  LABELS slow TIMEOUT 600
  ENVIRONMENT "CMAKE=${CMAKE_COMMAND}")
