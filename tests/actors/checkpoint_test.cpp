// Checkpoint files (troupe/actors/checkpoint.hpp): a round trip keeps every
// byte; a torn, corrupt, other-version or other-kind file is refused with a
// reason naming it; the store keeps the newest few, falls back past a bad
// newest file and knows a restart from a first start.
#include "troupe/actors/checkpoint.hpp"

#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "troupe/runtime/error.hpp"
#include "troupe/runtime/tensor.hpp"

namespace {

namespace fs = std::filesystem;
using troupe::DType;
using troupe::Tensor;
using troupe::actors::CheckpointData;
using troupe::actors::CheckpointSpec;
using troupe::actors::CheckpointStore;

class CheckpointFiles : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = (fs::temp_directory_path() / "troupe-checkpoint-test-XXXXXX").string();
    dir_ = ::mkdtemp(pattern.data());
  }
  void TearDown() override {
    std::error_code error;
    fs::remove_all(dir_, error);
  }
  fs::path dir_;
};

CheckpointData sample(std::int64_t step) {
  CheckpointData data;
  data.kind = "Sample";
  data.step = step;
  data.tensors.push_back(Tensor::from_vector(std::vector<float>{1.5f, -2.0f, 3.25f, static_cast<float>(step)}, {2, 2}));
  data.tensors.push_back(Tensor::from_vector(std::vector<std::int64_t>{7, 8, 9}));
  data.tensors.push_back(Tensor::empty({0, 3}, DType::f32));
  return data;
}

std::string error_of(const std::function<void()>& fn, troupe::Errc* code = nullptr) {
  try {
    fn();
  } catch (const troupe::Error& e) {
    if (code != nullptr) *code = e.code();
    return e.message();
  }
  return "";
}

void overwrite(const fs::path& file, std::size_t offset, char byte) {
  std::fstream out(file, std::ios::in | std::ios::out | std::ios::binary);
  out.seekp(static_cast<std::streamoff>(offset));
  out.put(byte);
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

TEST_F(CheckpointFiles, ARoundTripKeepsEveryTensorBitForBit) {
  troupe::actors::write_checkpoint(dir_, sample(40));
  EXPECT_EQ(troupe::actors::list_checkpoints(dir_), std::vector<std::int64_t>{40});
  const CheckpointData back = troupe::actors::read_checkpoint(troupe::actors::checkpoint_path(dir_, 40), "Sample");
  const CheckpointData want = sample(40);
  EXPECT_EQ(back.step, 40);
  ASSERT_EQ(back.tensors.size(), want.tensors.size());
  for (std::size_t i = 0; i < want.tensors.size(); ++i) EXPECT_TRUE(troupe::equal(back.tensors[i], want.tensors[i]));
  // No temporary file is left behind.
  int files = 0;
  for ([[maybe_unused]] const auto& entry : fs::directory_iterator(dir_)) ++files;
  EXPECT_EQ(files, 1);
}

TEST_F(CheckpointFiles, ATornFileIsRefusedNamingItAndTheReason) {
  troupe::actors::write_checkpoint(dir_, sample(3));
  const fs::path file = troupe::actors::checkpoint_path(dir_, 3);
  fs::resize_file(file, fs::file_size(file) - 5);
  troupe::Errc code{};
  const std::string error = error_of([&] { (void)troupe::actors::read_checkpoint(file, "Sample"); }, &code);
  EXPECT_EQ(code, troupe::Errc::serialization);
  EXPECT_TRUE(contains(error, file.string())) << error;
  EXPECT_TRUE(contains(error, "torn or truncated")) << error;
  fs::resize_file(file, 10);
  EXPECT_TRUE(contains(error_of([&] { (void)troupe::actors::read_checkpoint(file, "Sample"); }), "shorter than the header"));
}

TEST_F(CheckpointFiles, AFlippedByteFailsTheChecksum) {
  troupe::actors::write_checkpoint(dir_, sample(3));
  const fs::path file = troupe::actors::checkpoint_path(dir_, 3);
  overwrite(file, fs::file_size(file) - 2, 'x');
  EXPECT_TRUE(contains(error_of([&] { (void)troupe::actors::read_checkpoint(file, "Sample"); }), "checksum mismatch"));
}

TEST_F(CheckpointFiles, AnotherVersionOrKindIsRefused) {
  troupe::actors::write_checkpoint(dir_, sample(3));
  const fs::path file = troupe::actors::checkpoint_path(dir_, 3);
  EXPECT_TRUE(contains(error_of([&] { (void)troupe::actors::read_checkpoint(file, "Other"); }),
                       "holds a Sample, not a Other"));
  overwrite(file, 8, 2);  // the version's low byte
  EXPECT_TRUE(contains(error_of([&] { (void)troupe::actors::read_checkpoint(file, "Sample"); }),
                       "format version 2; this build reads version 1"));
  overwrite(file, 0, 'X');
  EXPECT_TRUE(contains(error_of([&] { (void)troupe::actors::read_checkpoint(file, "Sample"); }), "bad magic"));
  troupe::Errc code{};
  (void)error_of([&] { (void)troupe::actors::read_checkpoint(dir_ / "nothing.ckpt", "Sample"); }, &code);
  EXPECT_EQ(code, troupe::Errc::not_found);
}

TEST_F(CheckpointFiles, TheStoreKeepsTheNewestFewAndForgetsTheFutureOnRequest) {
  CheckpointStore store({.directory = dir_.string(), .every = 2, .keep = 3}, "Sample");
  EXPECT_FALSE(store.due(0));
  EXPECT_FALSE(store.due(3));
  EXPECT_TRUE(store.due(4));
  for (std::int64_t step = 2; step <= 12; step += 2) store.save(step, sample(step).tensors);
  EXPECT_EQ(store.available(), (std::vector<std::int64_t>{8, 10, 12}));
  store.forget_after(9);
  EXPECT_EQ(store.available(), std::vector<std::int64_t>{8});
  EXPECT_TRUE(troupe::equal(store.load(8).tensors[0], sample(8).tensors[0]));
}

TEST_F(CheckpointFiles, TheNewestWholeCheckpointIsUsedAndABadNewerOneSetAside) {
  CheckpointStore store({.directory = dir_.string(), .every = 1, .keep = 5}, "Sample");
  for (std::int64_t step = 1; step <= 3; ++step) store.save(step, sample(step).tensors);
  const fs::path newest = troupe::actors::checkpoint_path(dir_, 3);
  overwrite(newest, fs::file_size(newest) - 1, 'x');
  std::string note;
  const auto loaded = store.load_newest(&note);
  ASSERT_TRUE(loaded.has_value());
  EXPECT_EQ(loaded->step, 2);
  EXPECT_TRUE(contains(note, "checksum mismatch")) << note;
  EXPECT_TRUE(contains(note, newest.string())) << note;
  EXPECT_TRUE(fs::exists(newest.string() + ".corrupt"));
  EXPECT_EQ(store.available(), (std::vector<std::int64_t>{1, 2}));
}

TEST_F(CheckpointFiles, TheStartedMarkTellsARestartFromAFirstStart) {
  CheckpointStore store({.directory = (dir_ / "actor").string(), .every = 1}, "Sample");
  EXPECT_FALSE(store.mark_started());
  EXPECT_TRUE(store.mark_started());
  CheckpointStore off;
  EXPECT_FALSE(off.enabled());
  EXPECT_FALSE(off.mark_started());
  EXPECT_TRUE(contains(error_of([] { CheckpointStore bad({.directory = "", .every = 3}, "Sample"); }),
                       "need a directory"));
}

}  // namespace
