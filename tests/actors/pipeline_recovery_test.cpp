// Checkpointed stages and the Pipeline's recovery, in local mode: a stage's
// checkpoint restores it bit for bit (Adam moments and step included); a
// restarted stage refuses training until the driver restores it; a stage
// killed in the middle of training (max_restarts) is rolled back with the
// others and the batches replayed, and the run ends with exactly the
// losses and weights of a run without the fault; a stage that stays dead
// ends the training with a clear error; a tensor-parallel shard checkpoints
// too.
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <mutex>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "troupe/actors/kernels.hpp"
#include "troupe/actors/pipeline.hpp"
#include "troupe/actors/tensor_parallel.hpp"
#include "troupe/troupe.hpp"

namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using troupe::DType;
using troupe::Tensor;
using troupe::actors::OptimizerSpec;
using troupe::actors::Pipeline;
using troupe::actors::PipelineOptions;
using troupe::actors::PipelineStage;
using troupe::actors::RecoveryEvent;
using troupe::actors::Schedule;
using troupe::actors::StageSpec;
namespace kernels = troupe::kernels;

const std::vector<std::int64_t> kSizes = {20, 32, 24, 16, 5};

Tensor random_inputs(std::int64_t rows, std::int64_t cols, std::uint32_t seed) {
  Tensor x = Tensor::empty({rows, cols}, DType::f32);
  kernels::uniform_(x, 1.0f, seed);
  return x;
}

Tensor random_labels(std::int64_t rows, std::int64_t classes, std::uint32_t seed) {
  std::vector<std::int64_t> labels(static_cast<std::size_t>(rows));
  std::uint32_t state = seed;
  for (auto& label : labels) {
    state = state * 1664525u + 1013904223u;
    label = static_cast<std::int64_t>((state >> 8) % static_cast<std::uint32_t>(classes));
  }
  return Tensor::from_vector(labels);
}

struct Batch {
  Tensor x, labels;
};

std::vector<Batch> batches(int count) {
  std::vector<Batch> out;
  for (int i = 0; i < count; ++i) {
    out.push_back({random_inputs(12, kSizes.front(), 100 + i), random_labels(12, kSizes.back(), 200 + i)});
  }
  return out;
}

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const troupe::Error& e) {
    return e.message();
  }
  return "";
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

bool same(const std::vector<std::vector<Tensor>>& a, const std::vector<std::vector<Tensor>>& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t k = 0; k < a.size(); ++k) {
    if (a[k].size() != b[k].size()) return false;
    for (std::size_t i = 0; i < a[k].size(); ++i) {
      if (!troupe::equal(a[k][i], b[k][i])) return false;
    }
  }
  return true;
}

StageSpec common_spec() {
  StageSpec common;
  common.seed = 5;
  common.optimizer = OptimizerSpec::make_adam(0.01f);
  common.host_math_threads = 1;  // one OpenBLAS thread: the same sums every run
  return common;
}

class PipelineRecovery : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = (fs::temp_directory_path() / "troupe-recovery-test-XXXXXX").string();
    dir_ = ::mkdtemp(pattern.data());
    troupe::InitOptions options;
    options.num_threads = 4;
    troupe::init(options);
  }
  void TearDown() override {
    troupe::shutdown();
    std::error_code error;
    fs::remove_all(dir_, error);
  }
  PipelineOptions fault_tolerance(const std::string& name, std::int64_t every) {
    PipelineOptions options;
    options.checkpoint_directory = (dir_ / name).string();
    options.checkpoint_every = every;
    options.restart_timeout = 60s;
    options.on_recovery = [this](const RecoveryEvent& event) {
      std::lock_guard lock(mutex_);
      events_.push_back(event);
    };
    return options;
  }
  std::vector<troupe::ActorOptions> restartable(int restarts = 3) {
    return std::vector<troupe::ActorOptions>(4, troupe::ActorOptions{.max_restarts = restarts});
  }
  std::vector<RecoveryEvent> events() {
    std::lock_guard lock(mutex_);
    return events_;
  }

  fs::path dir_;
  std::mutex mutex_;
  std::vector<RecoveryEvent> events_;
};

// The losses and final parameters of `batches` trained without any fault.
struct TrainingRun {
  std::vector<float> losses;
  std::vector<std::vector<Tensor>> parameters;
};

TrainingRun unfaulted(const std::vector<Batch>& data) {
  Pipeline pipeline(troupe::actors::split_mlp(kSizes, 4, common_spec()));
  TrainingRun run;
  for (const Batch& b : data) run.losses.push_back(pipeline.train_batch(b.x, b.labels, 3, Schedule::one_f_one_b));
  run.parameters = pipeline.parameters();
  return run;
}

// ---- one stage ---------------------------------------------------------------------------

TEST_F(PipelineRecovery, ARestartedStageRestoresItsNewestCheckpointAndTrainsOnBitForBit) {
  StageSpec spec = troupe::actors::split_mlp(kSizes, 1, common_spec()).front();
  spec.checkpoint = {.directory = (dir_ / "stage").string(), .every = 2, .keep = 2};
  const std::vector<Batch> data = batches(8);
  auto train = [&](PipelineStage& stage, const Batch& b, std::int64_t id) {
    const float loss = stage.forward_loss(id, b.x, b.labels, b.x.size(0));
    (void)stage.backward_loss(id);
    EXPECT_EQ(stage.step(1), id + 1);
    return loss;
  };
  PipelineStage first(spec);
  EXPECT_FALSE(first.checkpoint_info().awaiting_restore);
  for (std::int64_t i = 0; i < 5; ++i) (void)train(first, data[i], i);
  EXPECT_EQ(first.checkpoint_info().available, (std::vector<std::int64_t>{2, 4}));

  // The same spec again, as the runtime does on a restart.
  PipelineStage restarted(spec);
  const auto info = restarted.checkpoint_info();
  EXPECT_TRUE(info.awaiting_restore);
  EXPECT_EQ(info.restored_from, 4);
  EXPECT_EQ(info.step, 4);
  Tensor x = data[5].x;
  EXPECT_TRUE(contains(error_of([&] { (void)restarted.forward_loss(9, x, data[5].labels, 12); }),
                       "restored its checkpoint of step 4"));
  EXPECT_TRUE(contains(error_of([&] { (void)restarted.get_parameters(); }), "restore(step)"));
  EXPECT_EQ(restarted.restore(4), 4);
  // The first stage goes back to step 4 too; from there both train the same
  // batches to the same bits (parameters, Adam moments and step count).
  EXPECT_EQ(first.restore(4), 4);
  EXPECT_EQ(first.checkpoint_info().available, (std::vector<std::int64_t>{2, 4}));
  for (std::int64_t i = 4; i < 8; ++i) EXPECT_EQ(train(first, data[i], i), train(restarted, data[i], i)) << i;
  const auto a = first.get_parameters();
  const auto b = restarted.get_parameters();
  for (std::size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(troupe::equal(a[i], b[i])) << i;
  // Step 0 is the seed's initial state, no file needed.
  EXPECT_EQ(first.restore(0), 0);
  const auto initial = PipelineStage(troupe::actors::split_mlp(kSizes, 1, common_spec()).front()).get_parameters();
  for (std::size_t i = 0; i < initial.size(); ++i) EXPECT_TRUE(troupe::equal(first.get_parameters()[i], initial[i]));
  EXPECT_TRUE(contains(error_of([&] { (void)first.restore(6); }), "does not exist"));
}

TEST_F(PipelineRecovery, ACorruptNewestCheckpointIsRefusedAndThePreviousOneUsed) {
  StageSpec spec = troupe::actors::split_mlp(kSizes, 1, common_spec()).front();
  spec.checkpoint = {.directory = (dir_ / "stage").string(), .every = 1, .keep = 3};
  const std::vector<Batch> data = batches(3);
  {
    PipelineStage stage(spec);
    for (std::int64_t i = 0; i < 3; ++i) {
      (void)stage.forward_loss(i, data[i].x, data[i].labels, 12);
      (void)stage.backward_loss(i);
      (void)stage.step(1);
    }
  }
  const fs::path newest = troupe::actors::checkpoint_path(spec.checkpoint.directory, 3);
  fs::resize_file(newest, fs::file_size(newest) / 2);  // torn
  PipelineStage restarted(spec);
  const auto info = restarted.checkpoint_info();
  EXPECT_EQ(info.restored_from, 2);
  EXPECT_TRUE(contains(info.note, newest.string() + " refused")) << info.note;
  EXPECT_TRUE(contains(info.note, "torn or truncated")) << info.note;
  EXPECT_EQ(info.available, (std::vector<std::int64_t>{1, 2}));
}

TEST_F(PipelineRecovery, ATensorParallelShardCheckpointsAndRestores) {
  troupe::actors::ShardSpec spec{.in_features = 6, .out_features = 4, .seed = 3,
                                 .split = troupe::actors::Split::rows, .index = 0, .count = 2, .use_gpu = false};
  spec.checkpoint = {.directory = (dir_ / "shard").string(), .every = 2};
  troupe::actors::LinearShard shard(spec);
  const Tensor x = random_inputs(5, 6, 1);
  Tensor weight_after_two, bias_after_two;
  for (int i = 0; i < 3; ++i) {
    (void)shard.forward(x);
    (void)shard.backward(random_inputs(5, 4, 10 + i));
    shard.sgd_step(0.1f);
    if (i == 1) {
      weight_after_two = shard.weight();
      bias_after_two = shard.bias();  // row shard 0 holds the bias
    }
  }
  troupe::actors::LinearShard restarted(spec);
  EXPECT_TRUE(restarted.checkpoint_info().awaiting_restore);
  EXPECT_TRUE(contains(error_of([&] { (void)restarted.forward(x); }), "restore(step)"));
  EXPECT_EQ(restarted.restore(2), 2);
  EXPECT_TRUE(troupe::equal(restarted.weight(), weight_after_two));
  EXPECT_TRUE(troupe::equal(restarted.bias(), bias_after_two));
  EXPECT_FALSE(troupe::equal(shard.weight(), weight_after_two));  // the third step moved it
  EXPECT_EQ(restarted.checkpoint_info().step, 2);
}

// ---- the Pipeline --------------------------------------------------------------------------

TEST_F(PipelineRecovery, AStageKilledMidTrainingIsRestoredAndTheRunEndsAsIfNothingHappened) {
  const std::vector<Batch> data = batches(16);
  const TrainingRun want = unfaulted(data);

  Pipeline pipeline(troupe::actors::split_mlp(kSizes, 4, common_spec()), restartable(),
                    fault_tolerance("killed", 3));
  EXPECT_EQ(pipeline.resume_step(), 0);
  std::vector<troupe::ObjectRef<float>> refs;
  std::vector<float> got;
  for (std::size_t i = 0; i < data.size(); ++i) {
    refs.push_back(pipeline.submit_batch(data[i].x, data[i].labels, 3, Schedule::one_f_one_b));
    if (i == 7) {
      got.push_back(refs[0].get());  // some batches done, more in flight
      troupe::kill(pipeline.stages()[2], /*no_restart=*/false);
    }
  }
  got.clear();
  for (const auto& ref : refs) got.push_back(ref.get());
  EXPECT_EQ(got, want.losses);
  EXPECT_TRUE(same(pipeline.parameters(), want.parameters));
  const auto stats = pipeline.recovery_stats();
  EXPECT_GE(stats.recoveries, 1);
  EXPECT_EQ(stats.replay_mismatches, 0);
  EXPECT_EQ(stats.committed_steps, 16);
  const auto seen = events();
  ASSERT_FALSE(seen.empty());
  EXPECT_EQ(seen.front().stages, std::vector<int>{2});
  EXPECT_TRUE(contains(seen.front().reason, "stage 2")) << seen.front().reason;
  EXPECT_EQ(seen.front().restored_step % 3, 0);
  EXPECT_EQ(pipeline.stages()[2].restarts(), 1);
}

TEST_F(PipelineRecovery, AStageThatRestartedWhileIdleIsRolledBackBeforeTheNextBatch) {
  const std::vector<Batch> data = batches(10);
  const TrainingRun want = unfaulted(data);
  Pipeline pipeline(troupe::actors::split_mlp(kSizes, 4, common_spec()), restartable(),
                    fault_tolerance("idle", 4));
  std::vector<float> got;
  for (std::size_t i = 0; i < 6; ++i) got.push_back(pipeline.train_batch(data[i].x, data[i].labels, 3, Schedule::one_f_one_b));
  troupe::kill(pipeline.stages()[0], /*no_restart=*/false);  // between batches: no call fails
  for (std::size_t i = 6; i < data.size(); ++i) {
    got.push_back(pipeline.train_batch(data[i].x, data[i].labels, 3, Schedule::one_f_one_b));
  }
  EXPECT_EQ(got, want.losses);
  EXPECT_TRUE(same(pipeline.parameters(), want.parameters));
  ASSERT_FALSE(events().empty());
  EXPECT_EQ(events().front().restored_step, 4);
  EXPECT_EQ(events().front().stages, std::vector<int>{0});
}

TEST_F(PipelineRecovery, TwoStagesLostBeforeTheFirstCheckpointStartOverFromTheSeed) {
  const std::vector<Batch> data = batches(6);
  Pipeline pipeline(troupe::actors::split_mlp(kSizes, 4, common_spec()), restartable(),
                    fault_tolerance("early", 100));
  ASSERT_EQ(pipeline.resume_step(), 0);  // every stage is up: a kill now restarts it
  std::vector<troupe::ObjectRef<float>> refs;
  for (std::size_t i = 0; i < data.size(); ++i) {
    refs.push_back(pipeline.submit_batch(data[i].x, data[i].labels, 2, Schedule::gpipe));
    if (i == 2) {
      troupe::kill(pipeline.stages()[1], false);
      troupe::kill(pipeline.stages()[3], false);
    }
  }
  std::vector<float> got;
  for (const auto& ref : refs) got.push_back(ref.get());
  Pipeline reference(troupe::actors::split_mlp(kSizes, 4, common_spec()));
  std::vector<float> expected;
  for (const Batch& b : data) expected.push_back(reference.train_batch(b.x, b.labels, 2, Schedule::gpipe));
  EXPECT_EQ(got, expected);
  EXPECT_TRUE(same(pipeline.parameters(), reference.parameters()));
  ASSERT_FALSE(events().empty());
  EXPECT_EQ(events().front().restored_step, 0);
}

TEST_F(PipelineRecovery, AStageWithNoRestartsLeftEndsTheTrainingWithAClearError) {
  const std::vector<Batch> data = batches(4);
  Pipeline pipeline(troupe::actors::split_mlp(kSizes, 4, common_spec()), restartable(0),
                    fault_tolerance("dead", 2));
  EXPECT_GT(pipeline.train_batch(data[0].x, data[0].labels, 3, Schedule::one_f_one_b), 0.0f);
  troupe::kill(pipeline.stages()[1], /*no_restart=*/false);  // no restarts left: dead
  const std::string error = error_of([&] { (void)pipeline.train_batch(data[1].x, data[1].labels, 3, Schedule::one_f_one_b); });
  EXPECT_TRUE(contains(error, "stage 1 is dead and will not restart")) << error;
  EXPECT_TRUE(contains(error, "training stopped")) << error;
  // Later batches fail at once with the same reason.
  EXPECT_TRUE(contains(error_of([&] { (void)pipeline.train_batch(data[2].x, data[2].labels, 3, Schedule::one_f_one_b); }),
                       "stage 1 is dead"));
}

TEST_F(PipelineRecovery, ABadBatchFailsAloneAndTheOthersTrainAsIfItHadNeverBeenSent) {
  std::vector<Batch> data = batches(8);
  std::vector<Batch> good = data;
  good.erase(good.begin() + 3);
  const TrainingRun want = unfaulted(good);
  std::vector<std::int64_t> bad(12, 1);
  bad[5] = 99;  // out of range: the last stage's forward_loss throws
  data[3].labels = Tensor::from_vector(bad);
  Pipeline pipeline(troupe::actors::split_mlp(kSizes, 4, common_spec()), restartable(),
                    fault_tolerance("bad", 2));
  std::vector<troupe::ObjectRef<float>> refs;
  for (const Batch& b : data) refs.push_back(pipeline.submit_batch(b.x, b.labels, 3, Schedule::one_f_one_b));
  std::vector<float> got;
  for (std::size_t i = 0; i < refs.size(); ++i) {
    if (i == 3) {
      EXPECT_TRUE(contains(error_of([&] { (void)refs[i].get(); }), "label")) << i;
    } else {
      got.push_back(refs[i].get());
    }
  }
  EXPECT_EQ(got, want.losses);
  EXPECT_TRUE(same(pipeline.parameters(), want.parameters));
}

TEST_F(PipelineRecovery, PredictsAndQueriesAfterARecoverySeeTheRestoredModel) {
  const std::vector<Batch> data = batches(6);
  const TrainingRun want = unfaulted(data);
  Pipeline pipeline(troupe::actors::split_mlp(kSizes, 4, common_spec()), restartable(),
                    fault_tolerance("predict", 2));
  ASSERT_EQ(pipeline.resume_step(), 0);
  std::vector<troupe::ObjectRef<float>> refs;
  for (const Batch& b : data) refs.push_back(pipeline.submit_batch(b.x, b.labels, 3, Schedule::one_f_one_b));
  troupe::kill(pipeline.stages()[3], false);
  const auto logits = pipeline.predict(data[0].x);
  Pipeline reference(troupe::actors::split_mlp(kSizes, 4, common_spec()));
  for (const Batch& b : data) (void)reference.train_batch(b.x, b.labels, 3, Schedule::one_f_one_b);
  EXPECT_TRUE(troupe::equal(logits.get(), reference.predict(data[0].x).get()));
  for (std::size_t i = 0; i < refs.size(); ++i) EXPECT_EQ(refs[i].get(), want.losses[i]) << i;
  EXPECT_EQ(pipeline.stats().size(), 4u);
}

TEST_F(PipelineRecovery, ANewPipelineOverAnEarlierRunsCheckpointsResumesFromTheNewestCommonStep) {
  const std::vector<Batch> data = batches(9);
  const TrainingRun want = unfaulted(data);
  std::vector<float> got;
  {
    Pipeline first(troupe::actors::split_mlp(kSizes, 4, common_spec()), {}, fault_tolerance("resume", 3));
    for (std::size_t i = 0; i < 7; ++i) got.push_back(first.train_batch(data[i].x, data[i].labels, 3, Schedule::one_f_one_b));
  }
  Pipeline second(troupe::actors::split_mlp(kSizes, 4, common_spec()), {}, fault_tolerance("resume", 3));
  ASSERT_EQ(second.resume_step(), 6);
  got.resize(6);
  for (std::size_t i = 6; i < data.size(); ++i) {
    got.push_back(second.train_batch(data[i].x, data[i].labels, 3, Schedule::one_f_one_b));
  }
  EXPECT_EQ(got, want.losses);
  EXPECT_TRUE(same(second.parameters(), want.parameters));
}

}  // namespace
