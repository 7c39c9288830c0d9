#include "troupe/runtime/gpus.hpp"

#include "troupe/runtime/cuda.hpp"

namespace troupe {

std::vector<scheduler::GpuInfo> detected_gpus() {
  std::vector<scheduler::GpuInfo> gpus;
  for (const auto& device : cuda::devices()) {
    scheduler::GpuInfo gpu;
    gpu.index = device.index;
    gpu.model = device.name;
    gpu.memory_bytes = device.total_memory;
    gpu.sm_count = device.sm_count;
    gpu.cc_major = device.cc_major;
    gpu.cc_minor = device.cc_minor;
    gpu.peers = device.peers;
    gpus.push_back(std::move(gpu));
  }
  return gpus;
}

}  // namespace troupe
