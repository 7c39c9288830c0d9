# Every dependency comes from Debian's packages (scripts/install-deps.sh).
find_package(Threads REQUIRED)
find_package(Boost 1.74 REQUIRED)
find_package(CapnProto REQUIRED)
find_package(cppzmq REQUIRED)
find_package(ucx REQUIRED)
find_package(spdlog REQUIRED)
find_package(fmt REQUIRED)
find_package(nlohmann_json 3 REQUIRED)
find_package(CLI11 REQUIRED)
find_package(cereal REQUIRED)
find_package(BLAS REQUIRED)
# libsodium (cluster secret, key derivation, data-plane authenticators,
# binary hashes) has no CMake package in Debian; pkg-config finds it.
find_package(PkgConfig REQUIRED)
pkg_check_modules(sodium REQUIRED IMPORTED_TARGET GLOBAL libsodium)
if(TROUPE_BUILD_TESTS)
  find_package(GTest REQUIRED)
endif()
