#!/usr/bin/env bash
# Builds troupe and runs its test suite; exits with ctest's status.
#
#   scripts/test.sh                # dependencies, build, every test
#   scripts/test.sh --fast         # only tests labelled "fast"
#   scripts/test.sh --label slow   # only tests with this ctest label (repeatable)
#   scripts/test.sh --skip-deps    # do not run scripts/install-deps.sh
#   scripts/test.sh -- -R actor    # anything after -- goes to ctest
#
# Environment: BUILD_DIR (default build), BUILD_TYPE, TROUPE_CUDA, JOBS (see
# scripts/configure-build.sh), CTEST_JOBS (default 2), CTEST_TIMEOUT (default 600 s).
# The ctest log is kept in BUILD_DIR/ctest.log. The last line printed says
# PASS or FAIL.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${BUILD_DIR:-build}"
[[ $BUILD_DIR == /* ]] || BUILD_DIR="$ROOT/$BUILD_DIR"
export BUILD_DIR
CTEST_JOBS="${CTEST_JOBS:-2}"
CTEST_TIMEOUT="${CTEST_TIMEOUT:-600}"

build_args=()
ctest_args=()
what="all tests"
while (($#)); do
  case "$1" in
    --fast) ctest_args+=(-L fast); what="label fast" ;;
    --label) ctest_args+=(-L "${2:?--label needs a label}"); what="label $2"; shift ;;
    --skip-deps) build_args+=(--skip-deps) ;;
    --) shift; ctest_args+=("$@"); break ;;
    -h | --help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "test.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

start=$SECONDS
if ! "$ROOT/scripts/configure-build.sh" "${build_args[@]}"; then
  echo "test.sh: FAIL (build failed after $((SECONDS - start)) s)"
  exit 1
fi
built=$SECONDS

log="$BUILD_DIR/ctest.log"
echo "test.sh: running $what (ctest -j$CTEST_JOBS, timeout ${CTEST_TIMEOUT}s per test)"
set +e
(cd "$BUILD_DIR" && ctest --output-on-failure --no-tests=error -j "$CTEST_JOBS" \
   --timeout "$CTEST_TIMEOUT" "${ctest_args[@]}") 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e

summary=$(grep -E '^[0-9]+% tests passed' "$log" | tail -1 || true)
times="build $((built - start)) s, tests $((SECONDS - built)) s"
if ((status == 0)); then
  echo "test.sh: PASS ($what: ${summary:-no summary}; $times)"
else
  echo "test.sh: FAIL (ctest exit $status; $what: ${summary:-no summary}; $times; log $log)"
fi
exit "$status"
