// Device kernels behind troupe's CUDA code paths. Only built with CUDA.
#include "troupe/runtime/cuda.hpp"

#include <cstdint>

namespace troupe::cuda::detail {

namespace {

template <class Word>
__global__ void fill_kernel(Word* dst, std::uint64_t count, Word value) {
  const std::uint64_t stride = static_cast<std::uint64_t>(gridDim.x) * blockDim.x;
  for (std::uint64_t i = static_cast<std::uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += stride) {
    dst[i] = value;
  }
}

template <class Word>
cudaError_t launch(void* dst, std::uint64_t count, std::uint64_t pattern) {
  constexpr unsigned threads = 256;
  // A grid-stride loop: enough blocks to fill the GPU, no more.
  const std::uint64_t wanted = (count + threads - 1) / threads;
  const unsigned blocks = static_cast<unsigned>(wanted < 4096 ? wanted : 4096);
  fill_kernel<Word><<<blocks, threads>>>(static_cast<Word*>(dst), count, static_cast<Word>(pattern));
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_fill(void* dst, std::uint64_t count, std::uint64_t pattern,
                        std::size_t element_size) noexcept {
  if (count == 0) return cudaSuccess;
  switch (element_size) {
    case 1: return launch<std::uint8_t>(dst, count, pattern);
    case 2: return launch<std::uint16_t>(dst, count, pattern);
    case 4: return launch<std::uint32_t>(dst, count, pattern);
    case 8: return launch<std::uint64_t>(dst, count, pattern);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace troupe::cuda::detail
