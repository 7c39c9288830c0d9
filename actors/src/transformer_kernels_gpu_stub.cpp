// transformer_kernels_gpu.hpp in a build without CUDA: unreachable in practice
// (no CUDA tensor can exist there), as kernels_gpu_stub.cpp.
#if !TROUPE_HAVE_CUDA

#include <string>

#include "transformer_kernels_gpu.hpp"
#include "troupe/runtime/cuda.hpp"
#include "troupe/runtime/error.hpp"

namespace troupe::kernels::gpu {

namespace {
[[noreturn]] void unavailable() {
  throw Error(Errc::cuda, "troupe::kernels: a CUDA tensor needs CUDA: " + cuda::unavailable_reason());
}
}  // namespace

std::int64_t embedding(int, const void*, bool, const float*, const float*, float*, std::int64_t, std::int64_t,
                       std::int64_t, std::int64_t) {
  unavailable();
}
void embedding_backward(int, const void*, bool, const float*, float*, float*, std::int64_t, std::int64_t,
                        std::int64_t, std::int64_t) {
  unavailable();
}
void layer_norm(int, const float*, const float*, const float*, float*, float*, float*, std::int64_t, std::int64_t,
                float) {
  unavailable();
}
void layer_norm_backward(int, const float*, const float*, const float*, const float*, const float*, float*, float*,
                         float*, std::int64_t, std::int64_t) {
  unavailable();
}
void causal_attention(int, const float*, float*, float*, std::int64_t, std::int64_t, std::int64_t, std::int64_t) {
  unavailable();
}
void causal_attention_backward(int, const float*, const float*, const float*, const float*, float*, std::int64_t,
                               std::int64_t, std::int64_t, std::int64_t) {
  unavailable();
}
double sum_of_squares(int, const float*, std::int64_t) { unavailable(); }

}  // namespace troupe::kernels::gpu

#endif  // !TROUPE_HAVE_CUDA
