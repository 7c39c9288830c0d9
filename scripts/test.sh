#!/usr/bin/env bash
# Builds troupe and runs its test suite; exits with ctest's status, or the fuzz run's.
#
#   scripts/test.sh                # dependencies, build, every test
#   scripts/test.sh --fast         # only tests labelled "fast" (no fuzzing)
#   scripts/test.sh --label slow   # only tests with this ctest label (repeatable)
#   scripts/test.sh --skip-deps    # do not run scripts/install-deps.sh
#   scripts/test.sh --no-fuzz      # skip the short fuzz run
#   scripts/test.sh --no-chaos     # skip the short chaos run
#   scripts/test.sh --tsan         # ThreadSanitizer build (build-tsan/), runtime,
#                                  # head and cluster tests (no fuzzing)
#   scripts/test.sh --asan         # AddressSanitizer+UBSan build (build-asan/),
#                                  # every test but the slow ones (no fuzzing)
#   scripts/test.sh -- -R actor    # anything after -- goes to ctest
#
# After ctest, unless --fast or --no-fuzz, a short fuzz run checks every
# libFuzzer target: `scripts/fuzz.sh --runs 2000` (its own clang build in
# build-fuzz/, then 2,000 inputs per target; a few minutes on 2 cores).
# Its failure fails the suite. Then, unless --fast, --no-chaos, a label,
# a sanitizer run or ctest arguments narrow the run, `scripts/chaos.sh
# --short` trains pipeline_mnist on a local cluster while killing a stage's
# host and a worker daemon (35 s to a minute on 2 cores); its failure fails
# the suite too.
#
# Environment: BUILD_DIR (default build), BUILD_TYPE, TROUPE_CUDA, JOBS (see
# scripts/configure-build.sh), CTEST_JOBS (default 2), CTEST_TIMEOUT (default 600 s).
# The ctest log is kept in BUILD_DIR/ctest.log. The last line printed says
# PASS or FAIL.
#
# Sanitizer runs build without CUDA and benchmarks, set the sanitizer's
# options (halt on the first report, tests/sanitizers/*.supp for the
# uninstrumented C libraries) and give each test twice the time; a report
# in any process (driver, daemon, actor host) fails its test.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR_SET=${BUILD_DIR:+1}
BUILD_DIR="${BUILD_DIR:-build}"
[[ $BUILD_DIR == /* ]] || BUILD_DIR="$ROOT/$BUILD_DIR"
export BUILD_DIR
CTEST_JOBS="${CTEST_JOBS:-2}"
CTEST_TIMEOUT="${CTEST_TIMEOUT:-600}"

build_args=()
ctest_args=()
what="all tests"
fuzz=1
chaos=1
sanitize=""
while (($#)); do
  case "$1" in
    --tsan) sanitize=thread; fuzz=0; chaos=0 ;;
    --asan) sanitize=address; fuzz=0; chaos=0 ;;
    --fast) ctest_args+=(-L fast); what="label fast"; fuzz=0; chaos=0 ;;
    --no-fuzz) fuzz=0 ;;
    --no-chaos) chaos=0 ;;
    --label) ctest_args+=(-L "${2:?--label needs a label}"); what="label $2"; chaos=0; shift ;;
    --skip-deps) build_args+=(--skip-deps) ;;
    --) shift; ctest_args+=("$@"); chaos=0; break ;;
    -h | --help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "test.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

if [[ -n $sanitize ]]; then
  short=${sanitize/thread/tsan}; short=${short/address/asan}
  [[ -n ${BUILD_DIR_SET:-} ]] || BUILD_DIR="$ROOT/build-$short"
  export BUILD_DIR TROUPE_CUDA=OFF
  export CMAKE_ARGS="${CMAKE_ARGS:-} -DTROUPE_SANITIZE=$sanitize -DTROUPE_BUILD_BENCH=OFF"
  supp="$ROOT/tests/sanitizers"
  export TSAN_OPTIONS="halt_on_error=1 exitcode=66 second_deadlock_stack=1 suppressions=$supp/tsan.supp ${TSAN_OPTIONS:-}"
  export ASAN_OPTIONS="detect_leaks=1 abort_on_error=0 ${ASAN_OPTIONS:-}"
  export LSAN_OPTIONS="suppressions=$supp/lsan.supp ${LSAN_OPTIONS:-}"
  export UBSAN_OPTIONS="print_stacktrace=1 halt_on_error=1 ${UBSAN_OPTIONS:-}"
  # UCX's memory hooks fight the sanitizers' allocators.
  export UCX_MEM_MALLOC_HOOKS=no UCX_MEM_MMAP_HOOK_MODE=none
  # OpenBLAS's thread pool synchronises in ways ThreadSanitizer cannot see,
  # and it cannot be ignored as a library (tests/sanitizers/tsan.supp).
  export OPENBLAS_NUM_THREADS=1
  CTEST_TIMEOUT=$((CTEST_TIMEOUT * 2))
  if ((${#ctest_args[@]} == 0)); then
    if [[ $sanitize == thread ]]; then
      ctest_args+=(-L 'runtime|head|cluster' -LE slow); what="runtime, head and cluster tests under ThreadSanitizer"
    else
      ctest_args+=(-LE slow); what="all but slow tests under AddressSanitizer"
    fi
  fi
fi

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
if ((fuzz)); then
  fuzz_start=$SECONDS
  echo "test.sh: short fuzz run (scripts/fuzz.sh --runs 2000)"
  fuzz_status=0
  "$ROOT/scripts/fuzz.sh" --runs 2000 || fuzz_status=$?
  times="$times, fuzz $((SECONDS - fuzz_start)) s"
  if ((fuzz_status != 0)); then
    summary="${summary:-no summary}; the fuzz run FAILED"
    ((status != 0)) || status=$fuzz_status
  fi
fi
if ((chaos)); then
  chaos_start=$SECONDS
  echo "test.sh: short chaos run (scripts/chaos.sh --short)"
  chaos_status=0
  "$ROOT/scripts/chaos.sh" --short || chaos_status=$?
  times="$times, chaos $((SECONDS - chaos_start)) s"
  if ((chaos_status != 0)); then
    summary="${summary:-no summary}; the chaos run FAILED"
    ((status != 0)) || status=$chaos_status
  fi
fi
if ((status == 0)); then
  echo "test.sh: PASS ($what: ${summary:-no summary}; $times)"
else
  echo "test.sh: FAIL (ctest exit $status; $what: ${summary:-no summary}; $times; log $log)"
fi
exit "$status"
