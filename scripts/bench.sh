#!/usr/bin/env bash
# Builds the benchmarks in Release (in build-release/, apart from the debug
# build) and runs one of them, or all of them in turn.
#
#   scripts/bench.sh                      # every benchmark, tables
#   scripts/bench.sh local_call --json    # one benchmark, JSON lines
#   scripts/bench.sh --quick              # every benchmark, smoke-sized
#   scripts/bench.sh --help               # lists the benchmarks
#
# Extra arguments go to each benchmark unchanged (--json, --quick,
# --iterations N, --repeats N, and the benchmark's own flags).
# BUILD_DIR overrides the build directory.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${BUILD_DIR:-$ROOT/build-release}"

list_benches() {
  local src
  for src in "$ROOT"/bench/*_bench.cpp; do
    [[ -e "$src" ]] || continue
    src="$(basename "$src")"
    echo "${src%_bench.cpp}"
  done
}

usage() {
  cat <<EOF
usage: scripts/bench.sh [NAME] [ARGS...]

Builds the benchmarks (Release, in ${BUILD_DIR#"$ROOT"/}/) and runs bench/NAME_bench,
or every benchmark when NAME is omitted, passing ARGS through.

benchmarks:
$(list_benches | sed 's/^/  /')

common ARGS: --json (one JSON object per metric per line), --quick (CI smoke
run), --iterations N, --repeats N; 'scripts/bench.sh NAME --help' shows a
benchmark's own flags.
EOF
}

names=()
if [[ $# -gt 0 && "$1" != -* ]]; then
  name="${1%_bench}"
  shift
  if [[ ! -e "$ROOT/bench/${name}_bench.cpp" ]]; then
    echo "bench.sh: no benchmark '$name'" >&2
    usage >&2
    exit 2
  fi
  names=("$name")
elif [[ $# -gt 0 && ( "$1" == "--help" || "$1" == "-h" ) ]]; then
  usage
  exit 0
else
  mapfile -t names < <(list_benches)
fi
if ((${#names[@]} == 0)); then
  echo "bench.sh: no benchmarks in bench/" >&2
  exit 1
fi

# Progress goes to stderr so that --json output on stdout stays clean.
{
  "$ROOT/scripts/install-deps.sh"
  if [[ ! -f "$BUILD_DIR/build.ninja" ]]; then
    cmake -S "$ROOT" -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release \
      -DTROUPE_BUILD_TESTS=OFF -DTROUPE_BUILD_EXAMPLES=OFF
  fi
  targets=()
  for name in "${names[@]}"; do targets+=("${name}_bench"); done
  ninja -C "$BUILD_DIR" "${targets[@]}"
} 1>&2

status=0
for name in "${names[@]}"; do
  exe="$BUILD_DIR/bench/${name}_bench"
  if ! "$exe" "$@"; then
    echo "bench.sh: ${name}_bench failed" >&2
    status=1
  fi
done
exit "$status"
