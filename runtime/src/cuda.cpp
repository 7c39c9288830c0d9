#include "troupe/runtime/cuda.hpp"

#include <string>
#include <utility>

namespace troupe::cuda {

namespace {

// Result of the one-time probe of the CUDA runtime.
struct Probe {
  int count = 0;
  std::string reason;  // empty when count > 0
};

Probe run_probe() noexcept {
  Probe probe;
#if TROUPE_HAVE_CUDA
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess) {
    (void)cudaGetLastError();
    // Without a driver this is cudaErrorInsufficientDriver or
    // cudaErrorNoDevice; either way there is no GPU here.
    probe.reason = std::string("cudaGetDeviceCount failed: ") + cudaGetErrorString(status) + " (" +
                   cudaGetErrorName(status) + ")";
    return probe;
  }
  probe.count = count;
  if (count == 0) probe.reason = "no CUDA device visible (cudaGetDeviceCount returned 0)";
#else
  probe.reason = "built without CUDA (TROUPE_HAVE_CUDA is off)";
#endif
  return probe;
}

const Probe& probe() noexcept {
  static const Probe result = run_probe();
  return result;
}

}  // namespace

int device_count() noexcept { return probe().count; }

bool available() noexcept { return probe().count > 0; }

std::string unavailable_reason() { return probe().reason; }

#if TROUPE_HAVE_CUDA

Error to_error(cudaError_t status, std::string_view call) {
  std::string message(call);
  message += " failed: ";
  message += cudaGetErrorString(status);
  message += " (";
  message += cudaGetErrorName(status);
  message += ")";
  return Error(Errc::cuda, std::move(message));
}

std::vector<DeviceProperties> devices() {
  const int count = device_count();
  std::vector<DeviceProperties> out;
  out.reserve(static_cast<std::size_t>(count));
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp prop{};
    check(cudaGetDeviceProperties(&prop, i), "cudaGetDeviceProperties(device " + std::to_string(i) + ")");
    DeviceProperties dev;
    dev.index = i;
    dev.name = prop.name;
    dev.total_memory = static_cast<std::uint64_t>(prop.totalGlobalMem);
    dev.sm_count = prop.multiProcessorCount;
    dev.cc_major = prop.major;
    dev.cc_minor = prop.minor;
    for (int j = 0; j < count; ++j) {
      if (j == i) continue;
      int can_access = 0;
      check(cudaDeviceCanAccessPeer(&can_access, i, j),
            "cudaDeviceCanAccessPeer(" + std::to_string(i) + ", " + std::to_string(j) + ")");
      if (can_access) dev.peers.push_back(j);
    }
    out.push_back(std::move(dev));
  }
  return out;
}

int current_device() {
  if (!available()) throw Error(Errc::cuda, "no CUDA device: " + unavailable_reason());
  int index = 0;
  check(cudaGetDevice(&index), "cudaGetDevice");
  return index;
}

DeviceGuard::DeviceGuard(int index) {
  const int count = device_count();
  if (count == 0) throw Error(Errc::cuda, "no CUDA device: " + unavailable_reason());
  if (index < 0 || index >= count) {
    throw Error(Errc::invalid_argument, "CUDA device " + std::to_string(index) + " does not exist (" +
                                            std::to_string(count) + " visible)");
  }
  previous_ = current_device();
  if (previous_ != index) {
    check(cudaSetDevice(index), "cudaSetDevice(" + std::to_string(index) + ")");
    switched_ = true;
  }
}

DeviceGuard::~DeviceGuard() {
  if (switched_) (void)cudaSetDevice(previous_);  // restoring a device that worked cannot fail
}

#else  // !TROUPE_HAVE_CUDA

std::vector<DeviceProperties> devices() { return {}; }

int current_device() { throw Error(Errc::cuda, "no CUDA device: " + unavailable_reason()); }

DeviceGuard::DeviceGuard(int index) {
  throw Error(Errc::cuda,
              "cannot select CUDA device " + std::to_string(index) + ": no CUDA device: " + unavailable_reason());
}

DeviceGuard::~DeviceGuard() = default;

#endif  // TROUPE_HAVE_CUDA

}  // namespace troupe::cuda
