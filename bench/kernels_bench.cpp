// f32 matmul throughput of troupe::kernels::matmul_into on the host (OpenBLAS
// cblas_sgemm) for square matrices of 256, 512 and 1024, beside a baseline of
// a naive triple loop (i-k-j order, the cache-friendly naive one) measured in
// the same run. Where a CUDA device exists the cuBLAS path is reported too
// (no baseline). GFLOP/s counts 2 n^3 flops per product; each figure is the
// median over repeats, and troupe and baseline repeats alternate.
#include "bench_util.hpp"

#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "troupe/actors/kernels.hpp"
#include "troupe/runtime/cuda.hpp"
#include "troupe/runtime/tensor.hpp"

namespace {

using troupe::Device;
using troupe::DType;
using troupe::Tensor;
using troupe::bench::Better;
using troupe::bench::Clock;
using troupe::bench::seconds_since;
namespace kernels = troupe::kernels;

// C = A B for row-major n x n matrices.
void naive_matmul(const float* a, const float* b, float* c, std::int64_t n) {
  for (std::int64_t i = 0; i < n * n; ++i) c[i] = 0.0f;
  for (std::int64_t i = 0; i < n; ++i) {
    for (std::int64_t k = 0; k < n; ++k) {
      const float aik = a[i * n + k];
      for (std::int64_t j = 0; j < n; ++j) c[i * n + j] += aik * b[k * n + j];
    }
  }
}

// GFLOP/s of `run` (one n x n product per call), repeated for at least
// `min_seconds` after one warm-up call.
template <class Run>
double gflops(std::int64_t n, double min_seconds, Run&& run) {
  run();
  int calls = 0;
  const auto start = Clock::now();
  double elapsed = 0.0;
  do {
    run();
    ++calls;
    elapsed = seconds_since(start);
  } while (elapsed < min_seconds);
  return 2.0 * static_cast<double>(n) * n * n * calls / elapsed / 1e9;
}

}  // namespace

int main(int argc, char** argv) {
  int max_size = 1024;
  troupe::bench::Cli cli("kernels", "f32 matmul GFLOP/s: OpenBLAS (and cuBLAS) vs a naive triple loop");
  cli.add_int("--max-size", &max_size, "largest square size measured (256, 512, 1024); --quick: 256");
  const auto options = cli.parse(argc, argv);
  if (options.quick && max_size == 1024) max_size = 256;
  const int repeats = options.repeats_or(3, 1);
  const double min_seconds = options.quick ? 0.05 : 0.3;

  troupe::bench::Reporter report("kernels", options);
  report.set_labels("troupe", "naive loop");
  for (const std::int64_t n : {256, 512, 1024}) {
    if (n > max_size) continue;
    const Tensor a = Tensor::empty({n, n}, DType::f32);
    const Tensor b = Tensor::empty({n, n}, DType::f32);
    kernels::uniform_(a, 1.0f, std::uint32_t{1});
    kernels::uniform_(b, 1.0f, std::uint32_t{2});
    const Tensor c = Tensor::empty({n, n}, DType::f32);
    std::vector<double> troupe_figures;
    std::vector<double> naive_figures;
    auto measure_troupe = [&] { return gflops(n, min_seconds, [&] { kernels::matmul_into(a, b, c); }); };
    auto measure_naive = [&] {
      return gflops(n, min_seconds, [&] {
        naive_matmul(a.data<float>(), b.data<float>(), c.data<float>(), n);
        troupe::bench::do_not_optimize(c.data<float>()[0]);
      });
    };
    for (int r = 0; r < repeats; ++r) {
      if (r % 2 == 0) troupe_figures.push_back(measure_troupe()), naive_figures.push_back(measure_naive());
      else naive_figures.push_back(measure_naive()), troupe_figures.push_back(measure_troupe());
    }
    report.add("sgemm_host_" + std::to_string(n), troupe::bench::median(troupe_figures), "GFLOP/s", Better::higher,
               troupe::bench::median(naive_figures));
    if (troupe::cuda::available()) {
      const Tensor da = a.to(Device::cuda(0));
      const Tensor db = b.to(Device::cuda(0));
      const Tensor dc = Tensor::empty({n, n}, DType::f32, Device::cuda(0));
      std::vector<double> cuda_figures;
      for (int r = 0; r < repeats; ++r) {
        cuda_figures.push_back(gflops(n, min_seconds, [&] {
          kernels::matmul_into(da, db, dc);
          kernels::synchronize(Device::cuda(0));
        }));
      }
      report.add("sgemm_cuda_" + std::to_string(n), troupe::bench::median(cuda_figures), "GFLOP/s", Better::higher);
    }
  }
  const char* threads = std::getenv("OPENBLAS_NUM_THREADS");
  report.note(std::string("host: OpenBLAS cblas_sgemm, threads: ") +
              (threads != nullptr ? threads : "OpenBLAS default (all cores)") +
              "; baseline: naive i-k-j triple loop, one thread, same binary and flags");
  if (!troupe::cuda::available()) report.note("cuda: skipped (" + troupe::cuda::unavailable_reason() + ")");
  else report.note("cuda: cuBLAS sgemm on cuda:0, FP32 math, synchronized per product");
  report.print_table();
  return 0;
}
