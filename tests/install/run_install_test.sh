#!/usr/bin/env bash
# Installs a built troupe tree into a throw-away prefix, then builds and runs
# tests/install/consumer against it the way a user would:
#   find_package(troupe REQUIRED) + target_link_libraries(app PRIVATE troupe::troupe),
# and a second program that links troupe::transport alone.
#
# usage: run_install_test.sh BUILD_DIR [CXX_COMPILER] [BUILD_TYPE]
#   (ctest passes these; CMAKE=... picks the cmake binary, KEEP_TMP=1 keeps
#    the prefix and consumer build for a post-mortem)
set -euo pipefail

build_dir=$(cd "${1:?usage: run_install_test.sh BUILD_DIR [CXX_COMPILER] [BUILD_TYPE]}" && pwd)
cxx=${2:-}
build_type=${3:-RelWithDebInfo}
cmake=${CMAKE:-cmake}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

tmp=$(mktemp -d "${TMPDIR:-/tmp}/troupe-install-test.XXXXXX")
cleanup() {
  if [[ ${KEEP_TMP:-0} == 1 ]]; then echo "install-test: kept $tmp"; else rm -rf "$tmp"; fi
}
trap cleanup EXIT

prefix=$tmp/prefix
consumer_build=$tmp/consumer-build

fail() { echo "install-test: FAIL: $*" >&2; exit 1; }

echo "install-test: installing $build_dir into $prefix"
"$cmake" --install "$build_dir" --prefix "$prefix" > "$tmp/install.log" || {
  cat "$tmp/install.log"; fail "cmake --install failed"; }

# The package has what a consumer needs, and nothing private.
libdir=
for d in lib lib64 lib/x86_64-linux-gnu; do
  [[ -f $prefix/$d/cmake/troupe/troupeConfig.cmake ]] && libdir=$prefix/$d
done
[[ -n $libdir ]] || fail "no troupeConfig.cmake under $prefix/lib*/cmake/troupe"
for f in cmake/troupe/troupeConfigVersion.cmake cmake/troupe/troupeTargets.cmake \
         libtroupe_runtime.a libtroupe_actors.a libtroupe_scheduler.a libtroupe_transport.a; do
  [[ -f $libdir/$f ]] || fail "missing ${libdir#"$prefix"/}/$f"
done
for f in troupe/troupe.hpp troupe/runtime/actor.hpp troupe/transport/framing.hpp \
         troupe/scheduler/placement.hpp; do
  [[ -f $prefix/include/$f ]] || fail "missing include/$f"
done
shopt -s nullglob
schemas=("$prefix"/include/troupe/transport/schema/*.capnp.h)
shopt -u nullglob
((${#schemas[@]} > 0)) || fail "no generated include/troupe/transport/schema/*.capnp.h"
[[ -x $prefix/bin/troupe ]] || fail "missing bin/troupe"
private=$(find "$prefix/include" -path "*/src/*" -o -name "*.cpp")
[[ -z $private ]] || fail "private files installed: $private"
# Internal headers stay out of the package.
for f in troupe/runtime/asio.hpp troupe/scheduler/wire_gpu.hpp; do
  [[ ! -e $prefix/include/$f ]] || fail "internal header installed: include/$f"
done

generator=()
if command -v ninja > /dev/null; then generator=(-G Ninja); fi
configure=("$cmake" -S "$here/consumer" -B "$consumer_build" "${generator[@]}"
           -DCMAKE_BUILD_TYPE="$build_type" -DCMAKE_PREFIX_PATH="$prefix")
[[ -n $cxx ]] && configure+=(-DCMAKE_CXX_COMPILER="$cxx")

echo "install-test: configuring the consumer"
"${configure[@]}" > "$tmp/configure.log" 2>&1 || {
  cat "$tmp/configure.log"; fail "consumer configure failed"; }
echo "install-test: building the consumer"
"$cmake" --build "$consumer_build" -j2 > "$tmp/build.log" 2>&1 || {
  cat "$tmp/build.log"; fail "consumer build failed"; }

echo "install-test: running the consumer"
set +e
output=$("$consumer_build/consumer" 2>&1)
status=$?
set -e
echo "$output"
((status == 0)) || fail "consumer exited with $status"
grep -qx 'consumer: total=82' <<< "$output" || fail "consumer printed the wrong result"
grep -qx 'consumer: OK' <<< "$output" || fail "consumer did not report OK"

echo "install-test: running the transport consumer"
set +e
output=$("$consumer_build/transport_consumer" 2>&1)
status=$?
set -e
echo "$output"
((status == 0)) || fail "transport_consumer exited with $status"
grep -qx 'transport_consumer: OK' <<< "$output" || fail "transport_consumer did not report OK"
echo "install-test: PASS"
