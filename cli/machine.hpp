// What the CLI reports about the machine it runs on: the resources local
// mode sees, the GPUs (declared or detected) and what UCX offers.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "troupe/scheduler/resources.hpp"

namespace troupe::cli {

struct LocalGpus {
  std::vector<scheduler::GpuInfo> gpus;
  // "declared" (from TROUPE_GPUS), "detected" (through CUDA) or "none".
  std::string source;
  // With source "none": why CUDA shows no device (troupe::cuda::unavailable_reason()).
  std::string unavailable_reason;
};

// The GPUs local mode schedules on: those declared in TROUPE_GPUS when it is
// set (exactly as troupe::init reads it), else those troupe::cuda::devices()
// finds. Throws UsageError for a malformed TROUPE_GPUS.
LocalGpus local_gpus();

// Resources of the local node (CPU, memory, GPU, ...) as troupe::init() in
// local mode computes them. Starts and stops a local runtime of one thread.
std::map<std::string, double> local_resources();

struct UcxInfo {
  std::string version;                  // ucp_get_version_string() of the loaded library
  bool initialized = false;             // ucp_init succeeded
  std::string error;                    // why it did not
  std::vector<std::string> transports;  // "tcp/eth0", "posix/memory", ... as UCP reports them
  bool cuda_memory = false;             // UCP can send from/to CUDA memory
};

// Opens a UCP context (~50 ms), reads its transports and memory types, and
// closes it. Never throws: a failure is reported in `error`.
UcxInfo probe_ucx();

}  // namespace troupe::cli
