// A GPU as the control schema carries it (node registration, cluster
// state) turned into the scheduler's GpuInfo. Header-only and not installed:
// the scheduler's public surface does not depend on the transport, so this
// glue lives in scheduler/wire/, which only in-tree code that speaks the
// control protocol sees, by linking the CMake target troupe_scheduler_wire
// (the head, and troupe::nodes() in the runtime).
#pragma once

#include "troupe/scheduler/gpu_spec.hpp"
#include "troupe/transport/schema/control.capnp.h"

namespace troupe::scheduler {

inline GpuInfo gpu_from_wire(wire::GpuInfo::Reader gpu) {
  GpuInfo info;
  info.index = static_cast<int>(gpu.getIndex());
  info.model = gpu.getModel().cStr();
  info.memory_bytes = gpu.getMemoryBytes();
  info.sm_count = static_cast<int>(gpu.getSmCount());
  info.cc_major = gpu.getCcMajor();
  info.cc_minor = gpu.getCcMinor();
  info.declared = gpu.getDeclared();
  for (auto peer : gpu.getPeers()) info.peers.push_back(static_cast<int>(peer));
  return info;
}

}  // namespace troupe::scheduler
