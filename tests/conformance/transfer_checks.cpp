// Tensors produced by one actor and consumed by another, in both modes
// (issue 14): in a cluster each crosses the UCX data plane in one trip
// (envelope in the reply's header, bytes inline below 64 KiB or by
// rendezvous above), pushed by its producer to the consumer's host when the
// call that needs it was sent before it existed, pulled otherwise. The
// checks hold the bytes exact at every size on either side of the data
// plane's thresholds, and in a three-stage chain.
#include <gtest/gtest.h>

#include <chrono>
#include <thread>
#include <vector>

#include "conformance/conformance.hpp"
#include "troupe/runtime/tensor.hpp"

namespace conformance_transfer {

class TensorStage {
 public:
  // n floats, element i = seed + i, after `delay_ms` (a producer still
  // running when the consumer's call is sent).
  troupe::Tensor make(long n, double seed, long delay_ms) {
    if (delay_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
    std::vector<float> values(static_cast<std::size_t>(n));
    for (long i = 0; i < n; ++i) values[static_cast<std::size_t>(i)] = static_cast<float>(seed + static_cast<double>(i % 1000));
    return troupe::Tensor::from_vector(std::move(values));
  }
  // Sum of the elements (exact for these patterns in double).
  double checksum(troupe::Tensor t) {
    double total = 0;
    const float* data = t.data<float>();
    for (std::int64_t i = 0; i < t.numel(); ++i) total += data[i];
    return total;
  }
  // The input plus one, element-wise: a pipeline stage.
  troupe::Tensor add_one(troupe::Tensor t) {
    auto out = troupe::Tensor::empty(t.shape(), t.dtype());
    const float* in = t.data<float>();
    float* o = out.data<float>();
    for (std::int64_t i = 0; i < t.numel(); ++i) o[i] = in[i] + 1.0f;
    return out;
  }
};

double expected_checksum(long n, double seed) {
  double total = 0;
  for (long i = 0; i < n; ++i) total += static_cast<float>(seed + static_cast<double>(i % 1000));
  return total;
}

}  // namespace conformance_transfer

TROUPE_ACTOR(conformance_transfer::TensorStage, (), make, checksum, add_one);

namespace {

using conformance_transfer::expected_checksum;
using conformance_transfer::TensorStage;
using namespace troupe::conformance;

// 64 B, 8 KiB (inline), 64 KiB (the rendezvous threshold), 1 MiB.
constexpr long kFloats[] = {16, 2048, 16384, 262144};

TEST(ConformanceTransfer, ATensorReachesTheNextActorIntactAtEverySize) {
  auto producer = troupe::actor<TensorStage>();
  auto consumer = troupe::actor<TensorStage>();
  for (long n : kFloats) {
    auto made = producer.call<&TensorStage::make>(n, 3.0, 0L);
    (void)made.get(kWait);  // produced before the consumer's call: pulled (or pushed at once)
    auto sum = consumer.call<&TensorStage::checksum>(made);
    EXPECT_EQ(sum.get(kWait), expected_checksum(n, 3.0)) << n << " floats, " << mode_name();
    // The driver reads it too: the same bytes.
    auto local = made.get(kWait);
    ASSERT_EQ(local.numel(), n);
    EXPECT_EQ(local.data<float>()[n - 1], static_cast<float>(3.0 + static_cast<double>((n - 1) % 1000)));
  }
}

TEST(ConformanceTransfer, AnArgumentStillBeingProducedIsDeliveredWhenItExists) {
  auto producer = troupe::actor<TensorStage>();
  auto consumer = troupe::actor<TensorStage>();
  for (long n : kFloats) {
    // Sent while the producer still runs: its host pushes the value to the
    // consumer's the moment it exists.
    auto made = producer.call<&TensorStage::make>(n, 5.0, 30L);
    auto sum = consumer.call<&TensorStage::checksum>(made);
    EXPECT_EQ(sum.get(kWait), expected_checksum(n, 5.0)) << n << " floats, " << mode_name();
  }
}

TEST(ConformanceTransfer, ATensorFlowsThroughAThreeStageChainOfActors) {
  auto first = troupe::actor<TensorStage>();
  auto second = troupe::actor<TensorStage>();
  auto third = troupe::actor<TensorStage>();
  std::vector<troupe::ObjectRef<double>> sums;
  for (int micro_batch = 0; micro_batch < 4; ++micro_batch) {
    auto a = first.call<&TensorStage::make>(262144L, 1.0 * micro_batch, 0L);
    auto b = second.call<&TensorStage::add_one>(a);
    sums.push_back(third.call<&TensorStage::checksum>(b));
  }
  for (int micro_batch = 0; micro_batch < 4; ++micro_batch)
    EXPECT_EQ(sums[micro_batch].get(kWait), expected_checksum(262144L, 1.0 * micro_batch + 1.0)) << mode_name();
}

}  // namespace
