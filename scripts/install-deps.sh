#!/usr/bin/env bash
# Installs everything troupe needs to build, test and run, from Debian's
# packages only. Idempotent and non-interactive: a second run does nothing
# but check. Needs root (or sudo) only when something is missing.
set -euo pipefail

PACKAGES=(
  build-essential cmake ninja-build pkg-config git
  libucx-dev ucx-utils                 # data plane (shm, tcp; verbs where present)
  capnproto libcapnp-dev               # wire schemas
  libzmq3-dev cppzmq-dev               # control and call plane
  libboost-dev libboost-system-dev     # Asio
  libspdlog-dev libfmt-dev             # logging
  libgtest-dev libgmock-dev            # tests
  nlohmann-json3-dev                   # JSON (CLI output, bench output, planner files)
  libcli11-dev                         # command-line parsing
  libcereal-dev                        # serialization of user types
  libopenblas-dev                      # CPU BLAS for kernels
  libsodium-dev                        # cluster secret, authenticators, binary hashes
  libsqlite3-dev                       # the head's state store (WAL)
  redis-server libhiredis-dev          # the head's external state store (standby heads)
  clang libclang-rt-dev                # libFuzzer targets (scripts/fuzz.sh)
  dataset-fashion-mnist                # data for the pipeline example
  zlib1g-dev                           # reads that data (gzipped IDX files)
  bible-kjv bible-kjv-text             # text for the GPT example (examples/gpt_kjv)
  iproute2 procps                      # network namespaces, process tools in tests
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if ((${#missing[@]} == 0)); then
  echo "install-deps: all ${#PACKAGES[@]} packages present"
  exit 0
fi

SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
echo "install-deps: done"
