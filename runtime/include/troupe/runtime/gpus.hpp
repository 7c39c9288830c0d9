// The GPUs of this machine as the scheduler sees them.
#pragma once

#include <vector>

#include "troupe/scheduler/resources.hpp"

namespace troupe {

// Every CUDA device this process can see, as scheduler::GpuInfo (model,
// memory, SMs, compute capability, peer access); empty without a device.
std::vector<scheduler::GpuInfo> detected_gpus();

}  // namespace troupe
