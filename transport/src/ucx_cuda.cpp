// CudaSupport: the data plane's CUDA allocation, copies and pinned staging.
// Without TROUPE_HAVE_CUDA this file only defines the null factory.
#include "ucx_cuda.hpp"

#if defined(TROUPE_HAVE_CUDA)

#include <cuda_runtime_api.h>

#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "troupe/transport/error.hpp"

namespace troupe::transport::detail {
namespace {

// The one place in the transport a cudaError_t becomes a troupe::Error (the
// runtime's cuda::to_error is the other side's; the transport cannot link it).
Error cuda_error(cudaError_t error, std::string_view context) {
  return Error(Errc::cuda, std::string(context) + ": " + cudaGetErrorName(error) + " (" + cudaGetErrorString(error) + ")");
}
void check(cudaError_t error, std::string_view context) {
  if (error != cudaSuccess) throw cuda_error(error, context);
}

// What a stream callback needs to report a finished copy.
struct Completion {
  CudaSupport::Post post;
  CudaSupport::Done done;
};

// Runs on a CUDA driver thread: only posts. cudaStreamAddCallback (not
// cudaLaunchHostFunc) because it is also called when the stream failed, so
// no completion is ever lost.
void CUDART_CB on_stream_done(cudaStream_t, cudaError_t status, void* arg) {
  auto* completion = static_cast<Completion*>(arg);
  std::exception_ptr error;
  if (status != cudaSuccess) error = std::make_exception_ptr(cuda_error(status, "staging copy"));
  completion->post([done = std::move(completion->done), error] { done(error); });
  delete completion;
}

class CudaSupportImpl final : public CudaSupport {
 public:
  CudaSupportImpl(Post post, std::size_t chunk_bytes, int slots)
      : post_(std::move(post)), chunk_bytes_(chunk_bytes), slot_count_(slots > 0 ? slots : 1) {}

  ~CudaSupportImpl() override {
    for (auto& [device, stream] : streams_) {
      cudaSetDevice(device);
      cudaStreamSynchronize(stream);
      cudaStreamDestroy(stream);
    }
    for (void* slot : all_slots_) cudaFreeHost(slot);
  }

  std::size_t chunk_bytes() const noexcept override { return chunk_bytes_; }

  void* acquire_slot() override {
    if (all_slots_.empty()) {
      for (int i = 0; i < slot_count_; ++i) {
        void* slot = nullptr;
        check(cudaHostAlloc(&slot, chunk_bytes_, cudaHostAllocPortable), "cudaHostAlloc for a staging slot");
        all_slots_.push_back(slot);
        free_slots_.push_back(slot);
      }
    }
    if (free_slots_.empty()) return nullptr;
    void* slot = free_slots_.back();
    free_slots_.pop_back();
    return slot;
  }

  void release_slot(void* slot) override { free_slots_.push_back(slot); }

  void device_to_host(void* host, const void* device, std::size_t size, Done done) override {
    copy_async(host, device, size, cudaMemcpyDeviceToHost, device, std::move(done));
  }
  void host_to_device(void* device, const void* host, std::size_t size, Done done) override {
    copy_async(device, host, size, cudaMemcpyHostToDevice, device, std::move(done));
  }

  void copy_to_device(void* device, const void* host, std::size_t size) override {
    if (size == 0) return;
    select_device_of(device);
    check(cudaMemcpy(device, host, size, cudaMemcpyHostToDevice), "cudaMemcpy to the device");
  }

  ObjectBuffer allocate_device(std::size_t size) override {
    ObjectBuffer buffer;
    buffer.memory = MemoryType::cuda;
    buffer.size = size;
    if (size == 0) return buffer;
    void* data = nullptr;
    check(cudaMalloc(&data, size), "cudaMalloc for a fetched object");
    buffer.data = data;
    buffer.keepalive = std::shared_ptr<const void>(data, [](const void* p) { cudaFree(const_cast<void*>(p)); });
    return buffer;
  }

 private:
  int select_device_of(const void* device_pointer) {
    cudaPointerAttributes attributes{};
    int device = 0;
    if (cudaPointerGetAttributes(&attributes, device_pointer) == cudaSuccess &&
        attributes.type == cudaMemoryTypeDevice) {
      device = attributes.device;
    } else {
      cudaGetLastError();  // clear it: the current device is used instead
      check(cudaGetDevice(&device), "cudaGetDevice");
    }
    check(cudaSetDevice(device), "cudaSetDevice");
    return device;
  }

  cudaStream_t stream_for(int device) {
    auto it = streams_.find(device);
    if (it != streams_.end()) return it->second;
    cudaStream_t stream = nullptr;
    check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate for staging");
    streams_.emplace(device, stream);
    return stream;
  }

  // One stream per device serialises the copies, so chunk i+1 is copied
  // while chunk i is on the wire (the data plane sends a chunk as soon as its
  // copy completes and copies the next one into the slot a send freed).
  void copy_async(void* destination, const void* source, std::size_t size, cudaMemcpyKind kind,
                  const void* device_pointer, Done done) {
    try {
      const cudaStream_t stream = stream_for(select_device_of(device_pointer));
      check(cudaMemcpyAsync(destination, source, size, kind, stream), "cudaMemcpyAsync while staging");
      auto* completion = new Completion{post_, std::move(done)};
      if (cudaError_t error = cudaStreamAddCallback(stream, &on_stream_done, completion, 0); error != cudaSuccess) {
        done = std::move(completion->done);
        delete completion;
        throw cuda_error(error, "cudaStreamAddCallback");
      }
    } catch (...) {
      post_([done = std::move(done), error = std::current_exception()] { done(error); });
    }
  }

  Post post_;
  std::size_t chunk_bytes_;
  int slot_count_;
  std::vector<void*> all_slots_;
  std::vector<void*> free_slots_;
  std::unordered_map<int, cudaStream_t> streams_;
};

}  // namespace

std::unique_ptr<CudaSupport> CudaSupport::create(Post post, std::size_t chunk_bytes, int slots) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    cudaGetLastError();
    return nullptr;
  }
  return std::make_unique<CudaSupportImpl>(std::move(post), chunk_bytes, slots);
}

}  // namespace troupe::transport::detail

#else  // !TROUPE_HAVE_CUDA

namespace troupe::transport::detail {

std::unique_ptr<CudaSupport> CudaSupport::create(Post, std::size_t, int) { return nullptr; }

}  // namespace troupe::transport::detail

#endif
