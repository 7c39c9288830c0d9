// The CUDA work of the data plane: device allocation, small synchronous
// copies, and the pinned host slots and asynchronous copies that stage CUDA
// buffers when UCX cannot touch device memory itself. Implemented in
// ucx_cuda.cpp, which has a body only in builds with TROUPE_HAVE_CUDA (the
// transport library then links CUDA::cudart privately); elsewhere create()
// returns null and the data plane answers CUDA requests with `unsupported`.
//
// Every method runs on the worker's progress thread. Completions of
// asynchronous copies arrive through `post` (cudaLaunchHostFunc callbacks
// only post, they never touch UCX or the data plane).
#pragma once

#include <cstddef>
#include <exception>
#include <functional>
#include <memory>

#include "troupe/transport/ucx.hpp"

namespace troupe::transport::detail {

class CudaSupport {
 public:
  using Post = std::function<void(std::function<void()>)>;
  using Done = std::function<void(std::exception_ptr error)>;

  // Null when this build has no CUDA or the process sees no CUDA device.
  // `slots` pinned host buffers of `chunk_bytes` each are allocated on first
  // use of acquire_slot().
  static std::unique_ptr<CudaSupport> create(Post post, std::size_t chunk_bytes, int slots);
  virtual ~CudaSupport() = default;

  virtual std::size_t chunk_bytes() const noexcept = 0;
  // A free pinned host slot of chunk_bytes(), or null when all are in use.
  virtual void* acquire_slot() = 0;
  virtual void release_slot(void* slot) = 0;

  // Asynchronous copies on the stream of the device that owns `device`;
  // `done` is posted to the progress thread when the copy finished.
  virtual void device_to_host(void* host, const void* device, std::size_t size, Done done) = 0;
  virtual void host_to_device(void* device, const void* host, std::size_t size, Done done) = 0;
  // Synchronous copy of a small block (an eager message) into device memory.
  virtual void copy_to_device(void* device, const void* host, std::size_t size) = 0;
  // cudaMalloc on the current device; freed with cudaFree when the last
  // copy of the buffer goes.
  virtual ObjectBuffer allocate_device(std::size_t size) = 0;
};

}  // namespace troupe::transport::detail
