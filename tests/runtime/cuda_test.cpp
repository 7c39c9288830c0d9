// troupe::cuda on machines with and without GPUs: probing never throws, the
// reason for "no GPU" is always given, and GPU-only checks skip with it.
#include "troupe/runtime/cuda.hpp"

#include <gtest/gtest.h>

#include <string>

namespace {

using troupe::Errc;
namespace cuda = troupe::cuda;

template <class F>
Errc error_code_of(F&& f) {
  try {
    f();
  } catch (const troupe::Error& e) {
    return e.code();
  }
  return Errc::ok;
}

#define SKIP_WITHOUT_GPU() \
  if (!cuda::available()) GTEST_SKIP() << "no CUDA device: " << cuda::unavailable_reason()

TEST(CudaProbe, DeviceCountNeverThrowsAndIsStable) {
  int first = -1;
  EXPECT_NO_THROW(first = cuda::device_count());
  EXPECT_GE(first, 0);
  EXPECT_EQ(cuda::device_count(), first);
  EXPECT_EQ(cuda::available(), first > 0);
}

TEST(CudaProbe, ExplainsWhyThereIsNoDevice) {
  if (cuda::available()) {
    EXPECT_TRUE(cuda::unavailable_reason().empty()) << cuda::unavailable_reason();
  } else {
    EXPECT_EQ(cuda::device_count(), 0);
    EXPECT_FALSE(cuda::unavailable_reason().empty());
  }
}

#if !TROUPE_HAVE_CUDA
TEST(CudaProbe, SaysTheBuildHasNoCuda) {
  EXPECT_EQ(cuda::device_count(), 0);
  EXPECT_NE(cuda::unavailable_reason().find("built without CUDA"), std::string::npos);
}
#endif

TEST(CudaProbe, DevicesMatchTheCount) {
  const auto devices = cuda::devices();
  ASSERT_EQ(static_cast<int>(devices.size()), cuda::device_count());
  for (std::size_t i = 0; i < devices.size(); ++i) {
    const auto& device = devices[i];
    EXPECT_EQ(device.index, static_cast<int>(i));
    EXPECT_FALSE(device.name.empty());
    EXPECT_GT(device.total_memory, 0u);
    EXPECT_GT(device.sm_count, 0);
    EXPECT_GE(device.cc_major, 3);
    for (const int peer : device.peers) {
      EXPECT_NE(peer, device.index) << "a device is not its own peer";
      EXPECT_GE(peer, 0);
      EXPECT_LT(peer, cuda::device_count());
    }
  }
}

TEST(CudaDevice, WithoutADeviceSelectingOneIsACudaError) {
  if (cuda::available()) GTEST_SKIP() << "this machine has a CUDA device";
  EXPECT_EQ(error_code_of([] { (void)cuda::current_device(); }), Errc::cuda);
  EXPECT_EQ(error_code_of([] { cuda::DeviceGuard guard(0); }), Errc::cuda);
  try {
    cuda::DeviceGuard guard(0);
  } catch (const troupe::Error& e) {
    EXPECT_NE(e.message().find(cuda::unavailable_reason()), std::string::npos) << e.message();
  }
}

TEST(CudaDevice, GuardSwitchesAndRestoresTheCurrentDevice) {
  SKIP_WITHOUT_GPU();
  const int before = cuda::current_device();
  const int other = cuda::device_count() - 1;
  {
    cuda::DeviceGuard guard(other);
    EXPECT_EQ(cuda::current_device(), other);
  }
  EXPECT_EQ(cuda::current_device(), before);
}

TEST(CudaDevice, GuardRejectsAnIndexThatDoesNotExist) {
  SKIP_WITHOUT_GPU();
  EXPECT_EQ(error_code_of([] { cuda::DeviceGuard guard(cuda::device_count()); }), Errc::invalid_argument);
  EXPECT_EQ(error_code_of([] { cuda::DeviceGuard guard(-1); }), Errc::invalid_argument);
}

#if TROUPE_HAVE_CUDA
TEST(CudaError, NamesTheFailedCallAndTheCudaError) {
  const troupe::Error error = cuda::to_error(cudaErrorInvalidValue, "cudaMalloc(64 bytes on cuda:0)");
  EXPECT_EQ(error.code(), Errc::cuda);
  EXPECT_NE(error.message().find("cudaMalloc(64 bytes on cuda:0)"), std::string::npos) << error.message();
  EXPECT_NE(error.message().find("cudaErrorInvalidValue"), std::string::npos) << error.message();
  EXPECT_NE(std::string(error.what()).find("cuda: "), std::string::npos) << error.what();
}

TEST(CudaError, CheckPassesSuccessAndThrowsFailures) {
  EXPECT_NO_THROW(cuda::check(cudaSuccess, "nothing"));
  EXPECT_EQ(error_code_of([] { TROUPE_CUDA_CHECK(cudaErrorMemoryAllocation); }), Errc::cuda);
}

TEST(CudaError, AFailedCallWithoutADriverBecomesACudaError) {
  if (cuda::available()) GTEST_SKIP() << "this machine has a CUDA device";
  void* pointer = nullptr;
  try {
    TROUPE_CUDA_CHECK(cudaMalloc(&pointer, 64));
    FAIL() << "cudaMalloc succeeded without a device";
  } catch (const troupe::Error& e) {
    EXPECT_EQ(e.code(), Errc::cuda);
    EXPECT_NE(e.message().find("cudaMalloc"), std::string::npos) << e.message();
  }
}
#endif

}  // namespace
