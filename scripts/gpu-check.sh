#!/usr/bin/env bash
# Builds troupe with CUDA on a machine with a GPU and runs every GPU test
# (tensors on the device, CUDA kernels vs the host, UCX transfers of device
# memory), then prints a summary. On a GPU machine a skipped GPU test is a
# failure: it means the device was not usable.
#
#   scripts/gpu-check.sh               # dependencies, CUDA build, GPU tests, GPU benchmarks (quick)
#   scripts/gpu-check.sh --skip-deps   # do not run scripts/install-deps.sh
#   scripts/gpu-check.sh --no-bench    # tests only
#
# Environment: BUILD_DIR (default build-gpu), JOBS (nproc). Exit status 0
# only when every GPU test ran and passed. The last line says PASS or FAIL.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export BUILD_DIR="${BUILD_DIR:-$ROOT/build-gpu}"
export TROUPE_CUDA=ON
export BUILD_TYPE="${BUILD_TYPE:-RelWithDebInfo}"

build_args=()
bench=1
while (($#)); do
  case "$1" in
    --skip-deps) build_args+=(--skip-deps) ;;
    --no-bench) bench=0 ;;
    -h | --help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "gpu-check.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

echo "gpu-check.sh: devices:"
if command -v nvidia-smi > /dev/null; then
  nvidia-smi -L || true
else
  echo "  (no nvidia-smi on PATH)"
fi

start=$SECONDS
if ! "$ROOT/scripts/configure-build.sh" "${build_args[@]}"; then
  echo "gpu-check.sh: FAIL (CUDA build failed after $((SECONDS - start)) s)"
  exit 1
fi

# GPU tests are the ones whose suite or name says Cuda (CudaDevice, TensorCuda,
# KernelsCuda, TransformerKernelsCuda, UcxCudaTransfer, ...).
pattern='Cuda|CUDA'
log="$BUILD_DIR/gpu-tests.log"
set +e
(cd "$BUILD_DIR" && ctest -R "$pattern" --output-on-failure --no-tests=error -j "$(nproc)" --timeout 600) 2>&1 |
  tee "$log"
status=${PIPESTATUS[0]}
set -e

passed=$(grep -cE 'Test +#[0-9]+: .* +Passed' "$log" || true)
skipped=$(grep -cE 'Test +#[0-9]+: .* +\*\*\*Skipped|Skipped +[0-9.]+ sec' "$log" || true)
failed=$(grep -cE 'Test +#[0-9]+: .* +\*\*\*(Failed|Timeout|Exception)' "$log" || true)
echo "gpu-check.sh: GPU tests: $passed passed, $skipped skipped, $failed failed"
if ((skipped > 0)); then
  echo "gpu-check.sh: skipped GPU tests (no usable device?):"
  grep -E 'Skipped' "$log" | sed 's/^/  /' || true
fi

if ((bench)) && ((status == 0)); then
  for name in kernels ucx_transfer; do
    exe="$BUILD_DIR/bench/${name}_bench"
    [[ -x $exe ]] || continue
    echo "gpu-check.sh: $name benchmark (quick)"
    "$exe" --quick || echo "gpu-check.sh: $name benchmark failed (exit $?)"
  done
fi

if ((status == 0 && skipped == 0 && passed > 0)); then
  echo "gpu-check.sh: PASS ($passed GPU tests; $((SECONDS - start)) s)"
  exit 0
fi
echo "gpu-check.sh: FAIL (ctest exit $status, $passed passed, $skipped skipped, $failed failed; log $log)"
exit 1
