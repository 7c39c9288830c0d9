#!/usr/bin/env bash
# Installs the dependencies (Debian packages, scripts/install-deps.sh), then
# configures and builds troupe. Shared by scripts/test.sh and scripts/demo.sh.
#
#   scripts/configure-build.sh                    # everything
#   scripts/configure-build.sh --target NAME ...  # only these targets
#   scripts/configure-build.sh --skip-deps        # do not run install-deps.sh
#
# Environment: BUILD_DIR (default build), BUILD_TYPE (RelWithDebInfo),
# TROUPE_CUDA (AUTO), JOBS (nproc), CMAKE_ARGS (extra configure flags).
# Safe to rerun: an existing build directory is reused, unless it was made
# for another source tree or generator, in which case its cache is dropped.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${BUILD_DIR:-build}"
[[ $BUILD_DIR == /* ]] || BUILD_DIR="$ROOT/$BUILD_DIR"
BUILD_TYPE="${BUILD_TYPE:-RelWithDebInfo}"
TROUPE_CUDA="${TROUPE_CUDA:-AUTO}"
JOBS="${JOBS:-$(nproc 2> /dev/null || echo 2)}"

skip_deps=0
targets=()
while (($#)); do
  case "$1" in
    --skip-deps) skip_deps=1 ;;
    --target) targets+=(--target "${2:?--target needs a name}"); shift ;;
    -h | --help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "configure-build.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

if ((!skip_deps)); then
  "$ROOT/scripts/install-deps.sh"
fi

generator="Unix Makefiles"
if command -v ninja > /dev/null; then generator="Ninja"; fi

cache="$BUILD_DIR/CMakeCache.txt"
if [[ -f $cache ]]; then
  cached_home=$(sed -n 's/^CMAKE_HOME_DIRECTORY:INTERNAL=//p' "$cache")
  cached_generator=$(sed -n 's/^CMAKE_GENERATOR:INTERNAL=//p' "$cache")
  if [[ $cached_home != "$ROOT" || $cached_generator != "$generator" ]]; then
    echo "configure-build.sh: $BUILD_DIR was configured for '$cached_home' ($cached_generator); reconfiguring"
    rm -rf "$cache" "$BUILD_DIR/CMakeFiles"
  fi
fi

echo "configure-build.sh: configuring $BUILD_DIR ($generator, $BUILD_TYPE, TROUPE_CUDA=$TROUPE_CUDA)"
# shellcheck disable=SC2086  # CMAKE_ARGS is a list of flags
cmake -S "$ROOT" -B "$BUILD_DIR" -G "$generator" \
  -DCMAKE_BUILD_TYPE="$BUILD_TYPE" -DTROUPE_CUDA="$TROUPE_CUDA" ${CMAKE_ARGS:-}

echo "configure-build.sh: building with -j$JOBS ${targets[*]}"
cmake --build "$BUILD_DIR" -j "$JOBS" "${targets[@]}"
