#!/usr/bin/env bash
# Builds troupe and runs its demonstration job.
#
#   scripts/demo.sh                  # dependencies, build, run the demo
#   scripts/demo.sh --skip-deps      # do not run scripts/install-deps.sh
#   scripts/demo.sh -- ARGS...       # ARGS go to the demo program
#
# DEMO_MODE picks how the job runs:
#   cluster  (default) starts a local cluster (a head and one worker daemon,
#            with declared GPUs), submits the example with `troupe submit`
#            (each pipeline stage is an actor host process), shows
#            `troupe status`, and stops the cluster again.
#   local    the example runs in one process, actors in local mode.
# DEMO_PORT is the head's port (default 6390).
# DEMO_EXAMPLE names the example (examples/NAME.cpp or examples/NAME/); by
# default the first of PREFERRED_EXAMPLES that exists (pipeline_mnist: an MLP
# trained on Fashion-MNIST as 4 pipeline-stage actors, to >= 88% test
# accuracy), else the first examples/*.cpp. DEMO_EXAMPLE=pipeline_local runs
# the earlier forward-only pipeline example.
# Without ARGS, pipeline_mnist in cluster mode gets --gpu-stages: each stage
# asks for one of the cluster's (declared) GPUs, so the scheduler spreads the
# 4 stages over the head's H100s and the worker's T4s.
# DEMO_EXAMPLE=gpt_kjv trains a character-level GPT on the King James Bible
# (Debian's bible-kjv) as 4 pipeline stages of 2 tensor-parallel shards,
# planned and placed over the cluster's GPUs; its cluster is a head and a
# worker with 4 declared T4s each, and it trains for 15 minutes unless ARGS
# say otherwise (e.g. -- --minutes 5, or -- --tp 1).
# DEMO_HEAD_GPUS / DEMO_WORKER_GPUS override the declared GPUs of the head
# and the worker (defaults: H100-80GB:2 / T4-16GB:2; T4-16GB:4 each for gpt_kjv).
# DEMO_TIMEOUT (seconds, default 900; 1500 for gpt_kjv) stops a demo that
# hangs (exit 124).
# BUILD_DIR, BUILD_TYPE, TROUPE_CUDA, JOBS as in scripts/configure-build.sh.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${BUILD_DIR:-build}"
[[ $BUILD_DIR == /* ]] || BUILD_DIR="$ROOT/$BUILD_DIR"
export BUILD_DIR
DEMO_MODE="${DEMO_MODE:-cluster}"
PREFERRED_EXAMPLES=(pipeline_mnist pipeline_local)

build_args=()
demo_args=()
while (($#)); do
  case "$1" in
    --skip-deps) build_args+=(--skip-deps) ;;
    --) shift; demo_args=("$@"); break ;;
    -h | --help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "demo.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

# An example is examples/NAME.cpp or a folder examples/NAME/ of .cpp files.
example_exists() {
  [[ -f $ROOT/examples/$1.cpp ]] || compgen -G "$ROOT/examples/$1/*.cpp" > /dev/null
}

pick_example() {
  local name src
  if [[ -n ${DEMO_EXAMPLE:-} ]]; then
    example_exists "$DEMO_EXAMPLE" || {
      echo "demo.sh: no examples/$DEMO_EXAMPLE.cpp or examples/$DEMO_EXAMPLE/" >&2; return 1; }
    echo "$DEMO_EXAMPLE"; return
  fi
  for name in "${PREFERRED_EXAMPLES[@]}"; do
    if example_exists "$name"; then echo "$name"; return; fi
  done
  for src in "$ROOT"/examples/*.cpp; do
    [[ -f $src ]] || continue
    src=$(basename "$src"); echo "${src%.cpp}"; return
  done
  echo "demo.sh: no examples/*.cpp to run" >&2
  return 1
}

run_local() {
  local exe=$1
  shift
  echo "demo.sh: running ${exe#"$ROOT"/} (local mode)"
  timeout --foreground -k 10 "$DEMO_TIMEOUT" "$exe" "$@"
}

run_cluster() {
  local exe=$1
  shift
  TROUPE_BIN="$BUILD_DIR/cli/troupe"
  local troupe="$TROUPE_BIN"
  local port="${DEMO_PORT:-6390}"
  DEMO_SESSION=$(mktemp -d /tmp/troupe-demo-XXXXXX)
  local session="$DEMO_SESSION"
  export TROUPE_TEMP_DIR="$session"
  trap '"$TROUPE_BIN" stop --force > /dev/null 2>&1 || true; rm -rf "$DEMO_SESSION"' EXIT
  echo "demo.sh: starting a local cluster (session under $session)"
  "$troupe" start --head --port "$port" --gpus "$DEMO_HEAD_GPUS" || return
  "$troupe" start --address "127.0.0.1:$port" --gpus "$DEMO_WORKER_GPUS" || return
  echo "demo.sh: submitting ${exe#"$ROOT"/}"
  local status=0
  # A long answer timeout: storing the job binary (70-80 MB) stalls a loaded 2-core head.
  timeout --foreground -k 10 "$DEMO_TIMEOUT" "$troupe" submit --timeout 120 --name demo -- "$exe" "$@" || status=$?
  "$troupe" status || true
  return "$status"
}

example=$(pick_example)
if [[ $example == gpt_kjv ]]; then
  DEMO_TIMEOUT="${DEMO_TIMEOUT:-1500}"
  DEMO_HEAD_GPUS="${DEMO_HEAD_GPUS:-T4-16GB:4}"
  DEMO_WORKER_GPUS="${DEMO_WORKER_GPUS:-T4-16GB:4}"
fi
DEMO_TIMEOUT="${DEMO_TIMEOUT:-900}"
DEMO_HEAD_GPUS="${DEMO_HEAD_GPUS:-H100-80GB:2}"
DEMO_WORKER_GPUS="${DEMO_WORKER_GPUS:-T4-16GB:2}"
targets=(--target "example_$example")
[[ $DEMO_MODE == cluster ]] && targets+=(--target troupe_cli)
"$ROOT/scripts/configure-build.sh" "${build_args[@]}" "${targets[@]}"

exe="$BUILD_DIR/examples/$example"
if ((${#demo_args[@]} == 0)) && [[ $example == pipeline_mnist && $DEMO_MODE == cluster ]]; then
  demo_args=(--gpu-stages)
fi
start=$SECONDS
set +e
case "$DEMO_MODE" in
  local) run_local "$exe" "${demo_args[@]}" ;;
  cluster) run_cluster "$exe" "${demo_args[@]}" ;;
  *) echo "demo.sh: DEMO_MODE must be local or cluster, not '$DEMO_MODE'" >&2; exit 2 ;;
esac
status=$?
set -e
if ((status == 0)); then
  echo "demo.sh: PASS ($example, $DEMO_MODE mode, $((SECONDS - start)) s)"
else
  why="exit $status"
  ((status == 124)) && why="no result after ${DEMO_TIMEOUT} s"
  echo "demo.sh: FAIL ($example, $DEMO_MODE mode, $why)"
fi
exit "$status"
