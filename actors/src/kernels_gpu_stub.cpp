// kernels_gpu.hpp in a build without CUDA. No CUDA tensor can exist there
// (Tensor::empty on a CUDA device throws), so these are unreachable in
// practice; they keep the dispatch in kernels.cpp free of #if.
#if !TROUPE_HAVE_CUDA

#include <string>

#include "kernels_gpu.hpp"
#include "troupe/runtime/cuda.hpp"
#include "troupe/runtime/error.hpp"

namespace troupe::kernels::gpu {

namespace {
[[noreturn]] void unavailable() {
  throw Error(Errc::cuda, "troupe::kernels: a CUDA tensor needs CUDA: " + cuda::unavailable_reason());
}
}  // namespace

void gemm(int, bool, bool, std::int64_t, std::int64_t, std::int64_t, const float*, std::int64_t, const float*,
          std::int64_t, float, float*) {
  unavailable();
}
void add_bias(int, float*, const float*, std::int64_t, std::int64_t) { unavailable(); }
void bias_grad(int, const float*, float*, std::int64_t, std::int64_t, bool) { unavailable(); }
void relu(int, const float*, float*, std::int64_t) { unavailable(); }
void relu_backward(int, const float*, const float*, float*, std::int64_t) { unavailable(); }
void gelu(int, const float*, float*, std::int64_t) { unavailable(); }
void gelu_backward(int, const float*, const float*, float*, std::int64_t) { unavailable(); }
void softmax_cross_entropy(int, const float*, const void*, bool, std::int64_t, std::int64_t, float, float*,
                           std::vector<float>&, std::int64_t&) {
  unavailable();
}
void argmax(int, const float*, std::int64_t, std::int64_t, std::int64_t*) { unavailable(); }
void sgd(int, float*, const float*, float*, std::int64_t, float, float, float) { unavailable(); }
void adam(int, float*, const float*, float*, float*, std::int64_t, float, float, float, float, float, float) {
  unavailable();
}
void fill(int, float*, float, std::int64_t) { unavailable(); }
void axpy(int, float*, const float*, float, std::int64_t) { unavailable(); }
void scale(int, float*, float, std::int64_t) { unavailable(); }
void synchronize(int) { unavailable(); }

}  // namespace troupe::kernels::gpu

#endif  // !TROUPE_HAVE_CUDA
