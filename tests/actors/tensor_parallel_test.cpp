// Tensor-parallel Linear (troupe/actors/tensor_parallel.hpp) in local mode:
// 2 and 4 shards, split by columns and by rows, forward and backward against
// the unsplit kernels::Linear of the same seed; the collectives are wired
// actor to actor without waiting in the caller.
// TROUPE_TEST_LABELS: fast
#include "troupe/actors/tensor_parallel.hpp"

#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <tuple>
#include <vector>

#include "actors/kernel_testing.hpp"
#include "troupe/troupe.hpp"

namespace {

using namespace std::chrono_literals;
using namespace kernel_testing;
namespace kernels = troupe::kernels;
using troupe::ObjectRef;
using troupe::actors::Split;
using troupe::actors::TensorParallelLinear;

constexpr double kTolerance = 1e-5;  // relative, over the whole tensor
constexpr auto kWait = 60s;

// Uneven on purpose: 4 shards of 18 columns are 5, 5, 4, 4 wide.
constexpr std::int64_t kIn = 30;
constexpr std::int64_t kOut = 18;
constexpr std::int64_t kBatch = 7;
constexpr std::uint32_t kSeed = 1234;

class LocalRuntime : public ::testing::Test {
 protected:
  void SetUp() override { troupe::init({.num_threads = 4}); }
  void TearDown() override { troupe::shutdown(); }
};

double error_of(const Tensor& got, const Tensor& want) { return relative_error(values_of(got), values_of(want)); }

// ---- the split / shards x layer matrix -----------------------------------------------------

class TensorParallelMatrix : public ::testing::TestWithParam<std::tuple<int, Split>> {
 protected:
  void SetUp() override { troupe::init({.num_threads = 4}); }
  void TearDown() override { troupe::shutdown(); }
  int shards() const { return std::get<0>(GetParam()); }
  Split split() const { return std::get<1>(GetParam()); }
};

TEST_P(TensorParallelMatrix, ShardsTogetherHoldExactlyTheUnsplitLayersParameters) {
  const kernels::Linear reference(kIn, kOut, kSeed);
  const TensorParallelLinear layer(kIn, kOut, shards(), split(), kSeed);
  EXPECT_TRUE(troupe::equal(layer.weight().get(kWait), reference.weight));
  EXPECT_TRUE(troupe::equal(layer.bias().get(kWait), reference.bias));
}

TEST_P(TensorParallelMatrix, ForwardMatchesTheUnsplitLinear) {
  kernels::Linear reference(kIn, kOut, kSeed);
  const TensorParallelLinear layer(kIn, kOut, shards(), split(), kSeed);
  const Tensor x = random_tensor({kBatch, kIn}, 7);
  const Tensor want = reference.forward(x);

  const Tensor got = layer.forward(x).get(kWait);
  ASSERT_EQ(got.shape(), want.shape());
  EXPECT_LE(error_of(got, want), kTolerance);

  // The same through a ref, and per shard.
  const std::vector<ObjectRef<Tensor>> per_shard = layer.forward_shards(troupe::make_ready(x));
  ASSERT_EQ(per_shard.size(), static_cast<std::size_t>(shards()));
  if (split() == Split::rows) {
    // All-reduced: every shard holds all of y, bit for bit the same.
    const Tensor first = per_shard.front().get(kWait);
    EXPECT_LE(error_of(first, want), kTolerance);
    for (const auto& copy : per_shard) EXPECT_TRUE(troupe::equal(copy.get(kWait), first));
  } else {
    // Blocks of output columns, in shard order.
    std::int64_t column = 0;
    for (int k = 0; k < shards(); ++k) {
      const Tensor block = per_shard[static_cast<std::size_t>(k)].get(kWait);
      const auto [begin, end] = troupe::actors::shard_range(kOut, k, shards());
      EXPECT_EQ(begin, column);
      EXPECT_EQ(block.shape(), (Tensor::Shape{kBatch, end - begin}));
      EXPECT_LE(error_of(block, troupe::actors::copy_columns(want, begin, end)), kTolerance);
      column = end;
    }
    EXPECT_EQ(column, kOut);
  }
}

TEST_P(TensorParallelMatrix, BackwardMatchesTheUnsplitLinearAndAccumulates) {
  kernels::Linear reference(kIn, kOut, kSeed);
  const TensorParallelLinear layer(kIn, kOut, shards(), split(), kSeed);
  // Two micro-batches, so the gradients must accumulate across backward calls.
  for (std::uint32_t step = 0; step < 2; ++step) {
    const Tensor x = random_tensor({kBatch, kIn}, 10 + step);
    const Tensor dy = random_tensor({kBatch, kOut}, 20 + step);
    (void)reference.forward(x);
    const Tensor want_dx = reference.backward(dy);

    (void)layer.forward(x);
    const Tensor dx = layer.backward(dy).get(kWait);
    ASSERT_EQ(dx.shape(), want_dx.shape());
    EXPECT_LE(error_of(dx, want_dx), kTolerance) << "step " << step;
  }
  EXPECT_LE(error_of(layer.weight_grad().get(kWait), reference.weight_grad), kTolerance);
  EXPECT_LE(error_of(layer.bias_grad().get(kWait), reference.bias_grad), kTolerance);

  // One SGD step on both, then the layers still agree.
  reference.sgd_step(0.1f);
  layer.sgd_step(0.1f).get(kWait);
  EXPECT_LE(error_of(layer.weight().get(kWait), reference.weight), kTolerance);
  EXPECT_LE(error_of(layer.bias().get(kWait), reference.bias), kTolerance);
  layer.zero_grad().get(kWait);
  EXPECT_EQ(error_of(layer.weight_grad().get(kWait), kernels::zeros_like(reference.weight)), 0.0);
}

TEST_P(TensorParallelMatrix, ForwardAndBackwardReturnBeforeTheirInputsExist) {
  // The collectives are calls chained on refs: nothing waits in the caller,
  // so forward() and backward() on inputs nobody has produced yet return at
  // once, and the results appear when the inputs do.
  kernels::Linear reference(kIn, kOut, kSeed);
  const TensorParallelLinear layer(kIn, kOut, shards(), split(), kSeed);
  troupe::Promise<Tensor> x_later;
  troupe::Promise<Tensor> dy_later;
  const auto start = std::chrono::steady_clock::now();
  const ObjectRef<Tensor> y = layer.forward(x_later.ref());
  const ObjectRef<Tensor> dx = layer.backward(dy_later.ref());
  EXPECT_LT(std::chrono::steady_clock::now() - start, 5s);
  EXPECT_FALSE(y.wait_for(50ms));
  EXPECT_FALSE(dx.is_ready());

  const Tensor x = random_tensor({kBatch, kIn}, 31);
  const Tensor dy = random_tensor({kBatch, kOut}, 32);
  x_later.set_value(x);
  EXPECT_LE(error_of(y.get(kWait), reference.forward(x)), kTolerance);
  EXPECT_FALSE(dx.is_ready());
  dy_later.set_value(dy);
  EXPECT_LE(error_of(dx.get(kWait), reference.backward(dy)), kTolerance);
}

INSTANTIATE_TEST_SUITE_P(TwoAndFourShards, TensorParallelMatrix,
                         ::testing::Combine(::testing::Values(2, 4), ::testing::Values(Split::columns, Split::rows)),
                         [](const auto& info) {
                           return std::to_string(std::get<0>(info.param)) + "Shards" +
                                  (std::get<1>(info.param) == Split::columns ? "ByColumns" : "ByRows");
                         });

// ---- other shapes of the same machinery ---------------------------------------------------------

TEST_F(LocalRuntime, ThreeShardsAllReduceAlongAChainAndEveryShardHoldsTheSum) {
  kernels::Linear reference(kIn, kOut, kSeed);
  const TensorParallelLinear layer(kIn, kOut, 3, Split::rows, kSeed);
  const Tensor x = random_tensor({kBatch, kIn}, 41);
  const Tensor want = reference.forward(x);
  const auto copies = layer.forward_shards(x);
  ASSERT_EQ(copies.size(), 3u);
  const Tensor first = copies[0].get(kWait);
  EXPECT_LE(error_of(first, want), kTolerance);
  for (const auto& copy : copies) EXPECT_TRUE(troupe::equal(copy.get(kWait), first));
  const Tensor dy = random_tensor({kBatch, kOut}, 42);
  EXPECT_LE(error_of(layer.backward(dy).get(kWait), reference.backward(dy)), kTolerance);
}

TEST_F(LocalRuntime, OneShardIsThePlainLayer) {
  kernels::Linear reference(kIn, kOut, kSeed);
  for (Split split : {Split::columns, Split::rows}) {
    const TensorParallelLinear layer(kIn, kOut, 1, split, kSeed);
    const Tensor x = random_tensor({kBatch, kIn}, 51);
    EXPECT_TRUE(troupe::equal(layer.forward(x).get(kWait), reference.forward(x)));
  }
}

TEST_F(LocalRuntime, AColumnSplitLayerFeedsARowSplitLayerBlockByBlock) {
  // Megatron's MLP: the column-split layer's output blocks go straight into
  // the row-split layer's shards, with no gather in between.
  const std::int64_t hidden = 16;
  kernels::Linear first(kIn, hidden, 1);
  kernels::Linear second(hidden, kOut, 2);
  const TensorParallelLinear up(kIn, hidden, 4, Split::columns, 1);
  const TensorParallelLinear down(hidden, kOut, 4, Split::rows, 2);
  const Tensor x = random_tensor({kBatch, kIn}, 61);
  const Tensor want = second.forward(first.forward(x));
  const auto copies = down.forward_blocks(up.forward_shards(x));
  EXPECT_LE(error_of(copies.front().get(kWait), want), kTolerance);
  EXPECT_EQ(troupe::actors::to_string(down.split()), "rows");
}

TEST_F(LocalRuntime, EachShardGetsItsOwnOptions) {
  troupe::shutdown();
  troupe::init({.num_threads = 4, .resources = {{"shard-slot", 2}}});
  std::vector<troupe::ActorOptions> options;
  for (int k = 0; k < 2; ++k) options.push_back({.name = "tp-" + std::to_string(k), .resources = {{"shard-slot", 1}}});
  const TensorParallelLinear layer(kIn, kOut, 2, Split::columns, kSeed, options);
  (void)layer.weight().get(kWait);  // both shards were placed
  EXPECT_EQ(troupe::available_resources()["shard-slot"], 0.0);
  EXPECT_EQ(troupe::get_actor<troupe::actors::LinearShard>("tp-1").call<&troupe::actors::LinearShard::device>().get(kWait),
            "cpu");
  EXPECT_EQ(layer.shards()[1].call<&troupe::actors::LinearShard::spec>().get(kWait).index, 1);
}

TEST_F(LocalRuntime, BadShapesAndCountsAreInvalidArguments) {
  EXPECT_EQ(error_code_of([] { TensorParallelLinear(kIn, kOut, 19, Split::columns, 1); }), Errc::invalid_argument);
  EXPECT_EQ(error_code_of([] { TensorParallelLinear(kIn, kOut, 0, Split::rows, 1); }), Errc::invalid_argument);
  EXPECT_EQ(error_code_of([] {
              TensorParallelLinear(kIn, kOut, 3, Split::rows, 1, std::vector<troupe::ActorOptions>(2));
            }),
            Errc::invalid_argument);
  const TensorParallelLinear layer(kIn, kOut, 2, Split::columns, kSeed);
  EXPECT_EQ(error_code_of([&] { (void)layer.forward_blocks({}); }), Errc::invalid_argument);
  // A wrong width fails in the shard: the error arrives in the ref.
  try {
    (void)layer.forward(random_tensor({kBatch, kIn + 1}, 1)).get(kWait);
    ADD_FAILURE() << "a [7, 31] input was accepted by Linear(30 -> 18)";
  } catch (const troupe::TaskError& e) {
    EXPECT_NE(std::string(e.what()).find("columns"), std::string::npos) << e.what();
  }
}

// ---- the helpers -------------------------------------------------------------------------

TEST(ShardRange, SplitsFeaturesIntoBlocksThatDifferByAtMostOne) {
  std::int64_t next = 0;
  for (int k = 0; k < 4; ++k) {
    const auto [begin, end] = troupe::actors::shard_range(18, k, 4);
    EXPECT_EQ(begin, next);
    EXPECT_EQ(end - begin, k < 2 ? 5 : 4);
    next = end;
  }
  EXPECT_EQ(next, 18);
  EXPECT_EQ(error_code_of([] { (void)troupe::actors::shard_range(3, 0, 4); }), Errc::invalid_argument);
  EXPECT_EQ(error_code_of([] { (void)troupe::actors::shard_range(8, 4, 4); }), Errc::invalid_argument);
}

TEST(ColumnHelpers, CopyColumnsAndConcatAreInverse) {
  const Tensor x = random_tensor({5, 9}, 3);
  const Tensor left = troupe::actors::copy_columns(x, 0, 4);
  const Tensor right = troupe::actors::copy_columns(x, 4, 9);
  EXPECT_EQ(left.shape(), (Tensor::Shape{5, 4}));
  EXPECT_TRUE(troupe::equal(troupe::actors::concat(left, right, 1), x));
  EXPECT_TRUE(troupe::equal(troupe::actors::concat(x.slice(0, 2), x.slice(2, 5), 0), x));
  const Tensor v = random_tensor({6}, 4);
  EXPECT_TRUE(troupe::equal(troupe::actors::concat(v.slice(0, 1), v.slice(1, 6), 0), v));
  EXPECT_EQ(error_code_of([&] { (void)troupe::actors::copy_columns(x, 3, 10); }), Errc::invalid_argument);
  EXPECT_EQ(error_code_of([&] { (void)troupe::actors::concat(x, random_tensor({4, 9}, 5), 1); }),
            Errc::invalid_argument);
}

// ---- on a GPU ---------------------------------------------------------------------------

TEST_F(LocalRuntime, ShardsOnAGpuMatchTheHostLayer) {
  SKIP_WITHOUT_GPU();
  for (Split split : {Split::columns, Split::rows}) {
    SCOPED_TRACE(std::string(troupe::actors::to_string(split)));
    kernels::Linear reference(kIn, kOut, kSeed);
    // Four shards sharing GPU 0.
    const TensorParallelLinear layer(kIn, kOut, 4, split, kSeed, {{.resources = {{"GPU", 0.25}}}});
    EXPECT_EQ(layer.shards()[0].call<&troupe::actors::LinearShard::device>().get(kWait), "cuda:0");
    const Tensor x = random_tensor({kBatch, kIn}, 71);
    const Tensor dy = random_tensor({kBatch, kOut}, 72);
    const Tensor y = layer.forward(x).get(kWait);
    EXPECT_TRUE(y.device().is_cuda());
    EXPECT_LE(error_of(y, reference.forward(x)), kTolerance);
    EXPECT_LE(error_of(layer.backward(dy).get(kWait), reference.backward(dy)), kTolerance);
    EXPECT_LE(error_of(layer.weight_grad().get(kWait), reference.weight_grad), kTolerance);
    reference.zero_grad();
  }
}

}  // namespace
