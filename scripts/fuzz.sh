#!/usr/bin/env bash
# Builds troupe's libFuzzer targets (tests/fuzz/fuzz_*.cpp) with clang,
# AddressSanitizer and UBSan, and runs each on its seed corpus
# (tests/fuzz/corpus/<name>/) for a number of inputs. Fails on any crash,
# leak, timeout or oversized allocation; prints per-target figures.
#
#   scripts/fuzz.sh                      # every target, 10000 inputs each
#   scripts/fuzz.sh --runs 1000000       # inputs per target
#   scripts/fuzz.sh --time 600           # seconds per target (with --runs: whichever ends first)
#   scripts/fuzz.sh --target head        # only this target (repeatable; name without fuzz_)
#   scripts/fuzz.sh --jobs 2             # targets run side by side (default 1)
#   scripts/fuzz.sh --skip-build         # run what build-fuzz/ has
#   scripts/fuzz.sh --build-only         # configure and build, run nothing
#   scripts/fuzz.sh --write-seeds        # rewrite tests/fuzz/corpus/ from the runtime's encoders
#
# Targets: arguments (cereal decoding of method arguments), envelope (data
# plane object envelopes), call_server (call-plane messages into an actor
# host, in process), head (control messages into the head, in process),
# data_request (UCX data-plane headers: ucx_wire::parse_request/parse_data).
# The build lives in build-fuzz/ (CUDA, tests, benchmarks and examples off;
# ccache used when installed). What a run discovers is kept in
# build-fuzz/corpus/<name>/ and used by later runs; a crashing input is
# saved as build-fuzz/artifacts/<name>/crash-* (rerun it with
# build-fuzz/tests/fuzz/fuzz_<name> <file>). Each input runs under
# -timeout=10 s, -rss_limit_mb=2048 and -malloc_limit_mb=512 (a single
# allocation over 512 MiB is a finding: it is how a length bomb shows).
# Environment: FUZZ_BUILD_DIR (default build-fuzz), CXX_FUZZ (clang++),
# CC_FUZZ (clang), JOBS (build parallelism, default nproc).
# Needs clang and libFuzzer (Debian: clang, libclang-rt-dev; listed in
# scripts/install-deps.sh). The last line printed says PASS or FAIL.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${FUZZ_BUILD_DIR:-build-fuzz}"
[[ $BUILD_DIR == /* ]] || BUILD_DIR="$ROOT/$BUILD_DIR"
CXX_FUZZ="${CXX_FUZZ:-clang++}"
CC_FUZZ="${CC_FUZZ:-clang}"
JOBS="${JOBS:-$(nproc 2> /dev/null || echo 2)}"

runs=10000
runs_given=0
seconds=0
parallel=1
build=1
run=1
write_seeds=0
targets=()
while (($#)); do
  case "$1" in
    --runs) runs="${2:?--runs needs a count}"; runs_given=1; shift ;;
    --time) seconds="${2:?--time needs seconds}"; shift ;;
    --target) targets+=("${2:?--target needs a name}"); shift ;;
    --jobs) parallel="${2:?--jobs needs a count}"; shift ;;
    --skip-build) build=0 ;;
    --build-only) run=0 ;;
    --write-seeds) write_seeds=1 ;;
    -h | --help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "fuzz.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
# --time alone: as many inputs as fit.
if ((seconds > 0 && !runs_given)); then runs=-1; fi

start=$SECONDS
if ((build)); then
  if ! command -v "$CXX_FUZZ" > /dev/null; then
    echo "fuzz.sh: FAIL ($CXX_FUZZ not found: install clang and libclang-rt-dev, see scripts/install-deps.sh)"
    exit 1
  fi
  generator="Unix Makefiles"
  if command -v ninja > /dev/null; then generator="Ninja"; fi
  launcher=()
  if command -v ccache > /dev/null; then launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_C_COMPILER_LAUNCHER=ccache); fi
  echo "fuzz.sh: configuring $BUILD_DIR ($CXX_FUZZ, ASan + UBSan + libFuzzer)"
  mkdir -p "$BUILD_DIR"
  cmake -S "$ROOT" -B "$BUILD_DIR" -G "$generator" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_CXX_COMPILER="$CXX_FUZZ" -DCMAKE_C_COMPILER="$CC_FUZZ" "${launcher[@]}" \
    -DTROUPE_FUZZ=ON -DTROUPE_CUDA=OFF -DTROUPE_BUILD_TESTS=OFF -DTROUPE_BUILD_BENCH=OFF \
    -DTROUPE_BUILD_EXAMPLES=OFF > "$BUILD_DIR/configure.log" 2>&1 ||
    { cat "$BUILD_DIR/configure.log"; echo "fuzz.sh: FAIL (configure)"; exit 1; }
  echo "fuzz.sh: building the fuzz targets with -j$JOBS"
  if ! cmake --build "$BUILD_DIR" -j "$JOBS" --target fuzz_targets; then
    echo "fuzz.sh: FAIL (build failed after $((SECONDS - start)) s)"
    exit 1
  fi
fi
built=$SECONDS

if ((write_seeds)); then
  "$BUILD_DIR/tests/fuzz/fuzz_seed_writer" "$ROOT/tests/fuzz/corpus"
fi
if ((!run)); then
  echo "fuzz.sh: PASS (built in $((built - start)) s; nothing run)"
  exit 0
fi

if ((${#targets[@]} == 0)); then
  for exe in "$BUILD_DIR"/tests/fuzz/fuzz_*; do
    name=$(basename "$exe")
    [[ -x $exe && $name != fuzz_seed_writer ]] && targets+=("${name#fuzz_}")
  done
fi
if ((${#targets[@]} == 0)); then
  echo "fuzz.sh: FAIL (no fuzz targets in $BUILD_DIR/tests/fuzz; build first)"
  exit 1
fi

# Runs one target; its log is $BUILD_DIR/logs/<name>.log.
fuzz_one() {
  local name=$1
  local exe="$BUILD_DIR/tests/fuzz/fuzz_$name"
  local work="$BUILD_DIR/corpus/$name" artifacts="$BUILD_DIR/artifacts/$name/"
  local seeds="$ROOT/tests/fuzz/corpus/$name"
  mkdir -p "$work" "$artifacts" "$BUILD_DIR/logs"
  local args=(-runs="$runs" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=512 -max_len=65536
              -print_final_stats=1 -artifact_prefix="$artifacts" "$work")
  if ((seconds > 0)); then args+=(-max_total_time="$seconds"); fi
  [[ -d $seeds ]] && args+=("$seeds")
  local t0=$SECONDS status=0
  # Malloc limits apply to the one allocating thread; leaks are checked at exit.
  ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=0}" \
  UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}" \
    "$exe" "${args[@]}" > "$BUILD_DIR/logs/$name.log" 2>&1 || status=$?
  echo "$status $((SECONDS - t0))" > "$BUILD_DIR/logs/$name.status"
}

echo "fuzz.sh: running ${targets[*]} ($( ((runs < 0)) && echo "for ${seconds} s" || echo "$runs inputs")$( ((seconds > 0 && runs >= 0)) && echo ", at most ${seconds} s") each)"
pids=()
for name in "${targets[@]}"; do
  if [[ ! -x "$BUILD_DIR/tests/fuzz/fuzz_$name" ]]; then
    echo "fuzz.sh: FAIL (no target fuzz_$name)"
    exit 1
  fi
  fuzz_one "$name" &
  pids+=($!)
  while (($(jobs -rp | wc -l) >= parallel)); do wait -n || true; done
done
wait || true

failed=0
printf '%-12s %10s %9s %8s %8s %8s %7s  %s\n' target inputs exec/s cov ft rss_mb secs result
for name in "${targets[@]}"; do
  log="$BUILD_DIR/logs/$name.log"
  read -r status secs < "$BUILD_DIR/logs/$name.status"
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  # libFuzzer says 0 exec/s for runs under a second: work it out.
  if [[ ${speed:-0} == 0 && -n $execs && $secs -gt 0 ]]; then speed=$((execs / secs)); fi
  rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log" | tail -1)
  cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1 | cut -d' ' -f2)
  ft=$(grep -oE 'ft: [0-9]+' "$log" | tail -1 | cut -d' ' -f2)
  result=ok
  if ((status != 0)); then
    failed=1
    result="FAILED (exit $status): $(grep -m1 -E '^==[0-9]+==ERROR|runtime error|ERROR: libFuzzer|deadly signal' "$log" || echo 'see log')"
  fi
  printf '%-12s %10s %9s %8s %8s %8s %7s  %s\n' "$name" "${execs:-?}" "${speed:-?}" "${cov:-?}" "${ft:-?}" \
    "${rss:-?}" "$secs" "$result"
done

times="build $((built - start)) s, fuzzing $((SECONDS - built)) s"
if ((failed)); then
  echo "fuzz.sh: FAIL (a target found a crash, leak or timeout: logs in $BUILD_DIR/logs, inputs in $BUILD_DIR/artifacts; $times)"
  exit 1
fi
echo "fuzz.sh: PASS (${#targets[@]} targets; $times)"
