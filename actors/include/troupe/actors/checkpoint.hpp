// Checkpoints of an actor's training state on disk, for actors that must
// survive a restart: PipelineStage and LinearShard write one every N
// optimizer steps, and a restarted one (the runtime re-runs its constructor
// with the same arguments) reads the newest back.
//
//   CheckpointStore store({.directory = "/ckpt/stage-1", .every = 50}, "PipelineStage");
//   if (store.due(step)) store.save(step, tensors);          // atomic; prunes old ones
//   std::optional<CheckpointData> newest = store.load_newest(&note);
//
// Files. One file per step, `<directory>/step-<20 digits>.ckpt`, so a driver
// can roll every actor back to a step they all have; the newest `keep` are
// kept. A file is written as `.tmp-<pid>-<n>`, fsync'ed, renamed over its
// final name and the directory fsync'ed, so a reader sees a whole file or
// none. Format (little-endian):
//
//   "TROUPECK"  u32 version (1)  u32 0  u64 payload bytes  u64 FNV-1a-64 of the payload
//   payload: u32 kind length, kind, i64 step, u32 tensor count,
//            per tensor: u8 dtype, u8 rank, i64 extents..., the bytes
//
// A file that is short (torn), fails its checksum, has another version or
// another kind, or whose sizes disagree is refused with Error(serialization)
// naming the file and the reason; load_newest renames such a file to
// `.corrupt` (kept for a person to look at, never read again) and goes on to
// the previous one.
//
// A directory is meant for one actor (one stage, one shard). In a cluster it
// must be one every node that may run the actor can reach (the same machine,
// or a shared file system). `started` in it marks that an actor has been
// constructed there before: a constructor that finds it is a restart.
//
// Threads: a CheckpointStore is the state of one actor and used from it only.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "troupe/runtime/tensor.hpp"

namespace troupe::actors {

// Where and how often an actor checkpoints; part of its constructor argument
// (StageSpec, ShardSpec), so a restarted actor finds the same directory.
struct CheckpointSpec {
  std::string directory{}; // "" = no checkpoints
  std::int64_t every = 0;  // a checkpoint after every `every`-th optimizer step; 0 = none
  int keep = 3;            // newest checkpoint files kept (>= 1)

  bool enabled() const noexcept { return !directory.empty() && every > 0; }

  template <class Archive>
  void serialize(Archive& ar) {
    ar(directory, every, keep);
  }
};

// What a checkpointing actor says about itself (its checkpoint_info method).
struct CheckpointInfo {
  std::int64_t step = 0;  // optimizer steps its state has taken
  // The actor was constructed again over a directory it had used (a restart)
  // and restored `restored_from` (0: the initial state, no file was usable).
  // It refuses training calls until the driver calls restore(step), so it
  // never trains on from a state the others do not share.
  bool awaiting_restore = false;
  std::int64_t restored_from = -1;  // -1: a fresh start
  std::vector<std::int64_t> available;  // steps with a checkpoint file, ascending (step 0 needs none)
  std::string note;  // why a file was refused, if one was
  std::string kind;

  template <class Archive>
  void serialize(Archive& ar) {
    ar(step, awaiting_restore, restored_from, available, note, kind);
  }
};

// One checkpoint: an actor's tensors after `step` optimizer steps.
struct CheckpointData {
  std::string kind;  // the actor class; a file of another kind is refused
  std::int64_t step = 0;
  std::vector<Tensor> tensors;  // host memory when read back
};

inline constexpr std::uint32_t kCheckpointVersion = 1;

// `<directory>/step-<20 digits>.ckpt`.
std::filesystem::path checkpoint_path(const std::filesystem::path& directory, std::int64_t step);
// Writes `data` as checkpoint_path(directory, data.step), atomically (see
// above); creates the directory. Error(invalid_argument) for a negative step
// or an undefined tensor; Error(internal) naming the path and errno for I/O.
void write_checkpoint(const std::filesystem::path& directory, const CheckpointData& data);
// Reads and checks one file; Error(serialization) for a torn, corrupt, other
// version or other kind file, Error(not_found) for a missing one.
CheckpointData read_checkpoint(const std::filesystem::path& file, std::string_view kind);
// Steps of the complete checkpoint files in `directory` (temporary and
// .corrupt files are not), ascending; empty when there is no directory.
std::vector<std::int64_t> list_checkpoints(const std::filesystem::path& directory);

// The checkpoints of one actor.
class CheckpointStore {
 public:
  CheckpointStore() = default;
  CheckpointStore(CheckpointSpec spec, std::string kind);

  bool enabled() const noexcept { return spec_.enabled(); }
  const CheckpointSpec& spec() const noexcept { return spec_; }
  // True when `step` is one to checkpoint after.
  bool due(std::int64_t step) const noexcept { return enabled() && step > 0 && step % spec_.every == 0; }

  // For the constructor: creates the directory and the `started` marker;
  // true when the marker was there already (the actor is a restart).
  bool mark_started();
  // The newest checkpoint that reads back whole, walking back over refused
  // files (renamed .corrupt, their reasons appended to *note); none when no
  // file is usable.
  std::optional<CheckpointData> load_newest(std::string* note);
  // The checkpoint of `step` exactly; a refused file is renamed .corrupt and
  // its Error(serialization) thrown.
  CheckpointData load(std::int64_t step);
  // Writes the checkpoint of `step`, then deletes all but the newest `keep`.
  void save(std::int64_t step, std::vector<Tensor> tensors);
  // Deletes the checkpoints after `step` (a rollback: that future is replayed).
  void forget_after(std::int64_t step);
  std::vector<std::int64_t> available() const;

 private:
  void quarantine(std::int64_t step) const;

  CheckpointSpec spec_;
  std::string kind_;
};

}  // namespace troupe::actors
