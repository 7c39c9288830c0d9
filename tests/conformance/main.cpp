// The API conformance suite: one set of behaviour checks that runs in both
// modes. `api_conformance` initialises troupe first (local mode, or a
// cluster when TROUPE_ADDRESS / --troupe-address= is given; in an actor
// host init() serves and never returns) and then runs the gtest checks of
// tests/conformance/*_checks.cpp.
//
//   ctest -L conformance                         # local mode, one process per check
//   build/tests/cluster_conformance_test         # the same binary as a job on a real cluster
//
// A check must pass in both modes with the same expectations: where the
// modes may differ by design, the check says so and docs/errors.md or the
// README says why.
#include <gtest/gtest.h>

#include <troupe/troupe.hpp>

int main(int argc, char** argv) {
  troupe::init(argc, argv);
  ::testing::InitGoogleTest(&argc, argv);
  const int rc = RUN_ALL_TESTS();
  troupe::shutdown();
  return rc;
}
