// Never compiled: the target troupe_compile_fail_probe only gathers
// troupe::troupe's include directories for compile_fail_tests.cmake.
#include <troupe/troupe.hpp>
