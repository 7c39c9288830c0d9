// What this process can see of CUDA, and the one place a cudaError_t becomes
// a troupe::Error.
//
// Everything here compiles and links with and without TROUPE_HAVE_CUDA. In a
// build without CUDA, or on a machine without a driver or device, there are
// simply no devices: device_count() is 0 and unavailable_reason() says why.
// Any CUDA failure while probing (an old driver answers "CUDA driver version
// is insufficient", not "no device") counts as "no GPU here".
//
// One rule for callers: needing a CUDA device where there is none (no driver,
// no device, or a build without CUDA) raises Error(Errc::cuda) whose message
// ends with unavailable_reason(); a CUDA call that fails raises Error(Errc::cuda)
// naming the call.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "troupe/runtime/error.hpp"

#if TROUPE_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

namespace troupe::cuda {

// Number of CUDA devices visible to this process (after CUDA_VISIBLE_DEVICES).
// 0 when built without CUDA, when there is no driver, or on any probe error.
// Probed once per process; never throws.
int device_count() noexcept;

// device_count() > 0.
bool available() noexcept;

// Why there is no device, e.g. "built without CUDA (TROUPE_HAVE_CUDA is off)"
// or "cudaGetDeviceCount failed: CUDA driver version is insufficient for CUDA
// runtime version (cudaErrorInsufficientDriver)". Empty when available().
std::string unavailable_reason();

struct DeviceProperties {
  int index = 0;                // CUDA runtime ordinal in this process
  std::string name;             // e.g. "NVIDIA H100 80GB HBM3"
  std::uint64_t total_memory = 0;  // bytes of global memory
  int sm_count = 0;             // streaming multiprocessors
  int cc_major = 0;             // compute capability
  int cc_minor = 0;
  std::vector<int> peers;       // other devices this one can access directly (P2P / NVLink)
};

// One entry per device, index 0..device_count()-1; empty when !available().
// Throws Error(Errc::cuda) if a device that was counted cannot be queried.
std::vector<DeviceProperties> devices();

// The current CUDA device of the calling thread. Throws Error(Errc::cuda) when
// there is no device.
int current_device();

// Makes `index` the calling thread's current device for the guard's lifetime
// and restores the previous one after. Throws like current_device(), and
// Error(Errc::invalid_argument) for an index outside [0, device_count()).
class DeviceGuard {
 public:
  explicit DeviceGuard(int index);
  ~DeviceGuard();
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = -1;
  bool switched_ = false;
};

#if TROUPE_HAVE_CUDA

// The one conversion of a CUDA runtime status into troupe's vocabulary:
// Error(Errc::cuda, "<call> failed: <description> (<cudaErrorName>)").
// `call` names the failed call, e.g. "cudaMalloc(4096 bytes on cuda:0)".
Error to_error(cudaError_t status, std::string_view call);

// Throws to_error(status, call) unless status is cudaSuccess. Also clears the
// thread's last-error slot so the failure does not resurface in a later call.
inline void check(cudaError_t status, std::string_view call) {
  if (status != cudaSuccess) {
    (void)cudaGetLastError();
    throw to_error(status, call);
  }
}

namespace detail {
// Fills `count` elements of `element_size` (1, 2, 4 or 8) bytes at device
// pointer `dst` with the low bytes of `pattern`, on the legacy default
// stream (runtime/src/cuda_kernels.cu). Returns the launch status.
cudaError_t launch_fill(void* dst, std::uint64_t count, std::uint64_t pattern, std::size_t element_size) noexcept;
}  // namespace detail

#endif  // TROUPE_HAVE_CUDA

}  // namespace troupe::cuda

#if TROUPE_HAVE_CUDA
// TROUPE_CUDA_CHECK(cudaMemset(p, 0, n)): throws Error(Errc::cuda) naming the call.
#define TROUPE_CUDA_CHECK(expr) ::troupe::cuda::check((expr), #expr)
#endif
