// BinaryStore: job binaries under <session>/binaries/<content hash>, which
// node managers fetch to start actor hosts (docs/protocol.md, flow 3).
//
// Contract: a stored binary's name is the content hash of its bytes and it
// is never rewritten; a hash that is not a valid hash name is refused with
// Errc::invalid_argument, a missing binary with Errc::not_found.
//
// issue 12 (persist): hashing, writing and reading binaries (tens of MB)
// happen on the store's own worker thread, never on the head's loop, so an
// upload cannot delay heartbeats; the answer is sent when the work is done,
// from the loop thread (poll()). The index of stored binaries (hash -> file)
// is part of the head's stored state, so a head restarted in a new session
// still serves the binaries the previous one stored.
#pragma once

#include <condition_variable>
#include <deque>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "head_context.hpp"

namespace troupe::head {

class BinaryStore {
 public:
  explicit BinaryStore(HeadContext& context);
  ~BinaryStore();
  BinaryStore(const BinaryStore&) = delete;
  BinaryStore& operator=(const BinaryStore&) = delete;

  // Where binary `hash` is (or would be) kept.
  std::filesystem::path path(const std::string& hash) const;
  // Stored by this head (or a previous one on the same state) after its hash was checked.
  bool has(const std::string& hash) const { return index_.count(hash) != 0; }
  // Stores `data` as `hash` unless present (the caller checked the hash), on
  // the calling thread. Throws troupe::Error (Errc::invalid_argument) for a
  // bad hash name.
  void store(const std::string& hash, kj::ArrayPtr<const kj::byte> data);

  // On the worker: checks `bytes` against `hash` and stores them (when
  // given), then checks the stored file against its hash (before it is
  // run); then, on the loop thread (poll()), records it and calls `done`
  // with nothing, or with the error (invalid_argument: the bytes do not
  // match; permission_denied: the stored file does not).
  void prepare(const std::string& hash, std::shared_ptr<std::string> bytes,
               std::function<void(std::optional<Error>)> done);

  void on_upload_binary(const std::string& identity, std::uint64_t request_id, wire::UploadBinary::Reader upload);
  void on_fetch_binary(const std::string& identity, std::uint64_t request_id, wire::FetchBinary::Reader fetch);

  // Runs, on the loop thread, the answers of work the worker finished.
  // Returns whether any ran.
  bool poll();
  // Waits (real time, at most `timeout`) until no work is queued or running; for tests.
  bool wait_idle(std::chrono::milliseconds timeout);

  // The stored form of binary `hash` (its file), nullopt when not stored.
  std::optional<std::string> encode(const std::string& hash);
  void restore(const std::string& hash, const std::string& value);

 private:
  void post(std::function<void()> work);
  void complete(std::function<void()> answer);
  void run_worker();

  HeadContext& context_;
  std::map<std::string, std::filesystem::path> index_;  // loop thread only
  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::function<void()>> work_;
  std::deque<std::function<void()>> answers_;
  int busy_ = 0;  // work taken by the worker, not yet answered
  bool stop_ = false;
  std::thread worker_;
};

}  // namespace troupe::head
