#include "binary_store.hpp"

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "state_store.hpp"
#include "troupe/node/files.hpp"
#include "troupe/runtime/logging.hpp"
#include "troupe/transport/content_hash.hpp"

namespace troupe::head {

BinaryStore::BinaryStore(HeadContext& context) : context_(context), worker_([this] { run_worker(); }) {}

BinaryStore::~BinaryStore() {
  {
    std::lock_guard lock(mutex_);
    stop_ = true;
  }
  wake_.notify_all();
  worker_.join();
}

std::filesystem::path BinaryStore::path(const std::string& hash) const {
  if (auto it = index_.find(hash); it != index_.end()) return it->second;
  return context_.config.session_dir / "binaries" / hash;
}

void BinaryStore::store(const std::string& hash, kj::ArrayPtr<const kj::byte> data) {
  if (!transport::valid_hash_name(hash)) throw Error(Errc::invalid_argument, "bad binary hash \"" + hash + "\"");
  auto file = path(hash);
  // A file already there is kept only if it is what its name says (a file
  // planted or damaged in the cache is replaced).
  if (!node::file_matches_hash(file, hash)) {
    node::write_file_atomic(file, std::string(reinterpret_cast<const char*>(data.begin()), data.size()), 0755);
  }
  index_[hash] = file;
  context_.touch('b', hash);
}

void BinaryStore::post(std::function<void()> work) {
  {
    std::lock_guard lock(mutex_);
    work_.push_back(std::move(work));
  }
  wake_.notify_all();
}

void BinaryStore::complete(std::function<void()> answer) {
  std::lock_guard lock(mutex_);
  answers_.push_back(std::move(answer));
  --busy_;
  wake_.notify_all();
}

void BinaryStore::run_worker() {
  for (;;) {
    std::function<void()> work;
    {
      std::unique_lock lock(mutex_);
      wake_.wait(lock, [&] { return stop_ || !work_.empty(); });
      if (stop_) return;
      work = std::move(work_.front());
      work_.pop_front();
      ++busy_;
    }
    work();  // ends with complete()
  }
}

bool BinaryStore::poll() {
  std::deque<std::function<void()>> answers;
  {
    std::lock_guard lock(mutex_);
    answers.swap(answers_);
  }
  for (auto& answer : answers) answer();
  return !answers.empty();
}

bool BinaryStore::wait_idle(std::chrono::milliseconds timeout) {
  std::unique_lock lock(mutex_);
  return wake_.wait_for(lock, timeout, [&] { return work_.empty() && busy_ == 0; });
}

void BinaryStore::on_upload_binary(const std::string& identity, std::uint64_t request_id,
                                   wire::UploadBinary::Reader upload) {
  const std::string hash = upload.getBinaryHash().cStr();
  if (!transport::valid_hash_name(hash)) throw Error(Errc::invalid_argument, "bad binary hash \"" + hash + "\"");
  if (has(hash)) {
    context_.reply_ack(identity, request_id);
    return;
  }
  auto data = upload.getBinary();
  // One copy on the loop (the message is gone once we return); the hash and
  // the write are the worker's.
  auto bytes = std::make_shared<std::string>(reinterpret_cast<const char*>(data.begin()), data.size());
  auto file = path(hash);
  post([this, identity, request_id, hash, bytes, file] {
    std::optional<Error> failure;
    try {
      if (transport::content_hash(*bytes) != hash) {
        failure = Error(Errc::invalid_argument, "binary does not match its hash " + hash);
      } else if (!node::file_matches_hash(file, hash)) {
        node::write_file_atomic(file, *bytes, 0755);
      }
    } catch (const Error& error) {
      failure = error;
    } catch (const std::exception& error) {
      failure = Error(Errc::internal, error.what());
    }
    complete([this, identity, request_id, hash, file, failure] {
      if (failure) {
        context_.reply_error(identity, request_id, failure->code(), failure->message());
        return;
      }
      index_[hash] = file;
      context_.touch('b', hash);
      context_.reply_ack(identity, request_id);
    });
  });
}

void BinaryStore::prepare(const std::string& hash, std::shared_ptr<std::string> bytes,
                          std::function<void(std::optional<Error>)> done) {
  auto file = path(hash);
  post([this, hash, bytes, file, done = std::move(done)]() mutable {
    std::optional<Error> failure;
    try {
      if (bytes && transport::content_hash(*bytes) != hash) {
        failure = Error(Errc::invalid_argument, "binary does not match its hash " + hash);
      } else if (!node::file_matches_hash(file, hash)) {
        if (bytes) {
          node::write_file_atomic(file, *bytes, 0755);
        } else {
          failure = Error(Errc::permission_denied,
                          "the stored binary " + hash + " does not match its hash; send it again");
        }
      }
    } catch (const Error& error) {
      failure = error;
    } catch (const std::exception& error) {
      failure = Error(Errc::internal, error.what());
    }
    bytes.reset();
    complete([this, hash, file, failure, done = std::move(done)] {
      if (!failure) {
        index_[hash] = file;
        context_.touch('b', hash);
      }
      done(failure);
    });
  });
}

void BinaryStore::on_fetch_binary(const std::string& identity, std::uint64_t request_id,
                                  wire::FetchBinary::Reader fetch) {
  std::string hash = fetch.getBinaryHash().cStr();
  if (!transport::valid_hash_name(hash)) throw Error(Errc::invalid_argument, "bad binary hash \"" + hash + "\"");
  const std::uint64_t offset = fetch.getOffset();
  const std::uint32_t max_bytes = fetch.getMaxBytes();  // 0: the whole binary
  auto file = path(hash);
  post([this, identity, request_id, hash, file, offset, max_bytes] {
    // The bytes asked for, and the binary's size. The first chunk (or the
    // whole binary) checks the stored copy against its hash first.
    auto data = std::make_shared<std::string>();
    std::uint64_t total = 0;
    std::string problem;
    try {
      std::error_code error;
      total = std::filesystem::file_size(file, error);
      if (error) {
        problem = "the head has no binary " + hash;
      } else if (offset == 0 && !node::file_matches_hash(file, hash)) {
        problem = "the head's copy of binary " + hash + " does not match its hash";
      } else if (offset > total || (offset == total && total > 0)) {
        problem = "binary " + hash + " has " + std::to_string(total) + " bytes: no chunk at offset " +
                  std::to_string(offset);
      } else {
        const std::uint64_t length = max_bytes == 0 ? total - offset : std::min<std::uint64_t>(max_bytes, total - offset);
        std::ifstream in(file, std::ios::binary);
        data->resize(length);
        if (!in.seekg(static_cast<std::streamoff>(offset)) ||
            !in.read(data->data(), static_cast<std::streamsize>(length))) {
          problem = "cannot read binary " + hash;
        }
      }
    } catch (const std::exception& e) {
      problem = std::string("cannot read binary ") + hash + ": " + e.what();
    }
    complete([this, identity, request_id, hash, data, problem, offset, total] {
      if (!problem.empty()) {
        context_.reply_error(identity, request_id, Errc::not_found, problem);
        return;
      }
      capnp::MallocMessageBuilder message;
      auto root = message.initRoot<wire::ControlMessage>();
      root.setRequestId(request_id);
      auto reply = root.initBinaryData();
      reply.setBinaryHash(hash);
      reply.setOffset(offset);
      reply.setTotalBytes(total);
      reply.setBinary(kj::arrayPtr(reinterpret_cast<const kj::byte*>(data->data()), data->size()));
      context_.send_to(identity, message);
    });
  });
}

std::optional<std::string> BinaryStore::encode(const std::string& hash) {
  auto it = index_.find(hash);
  if (it == index_.end()) return std::nullopt;
  return RecordWriter().str(it->second.string()).take();
}

void BinaryStore::restore(const std::string& hash, const std::string& value) {
  RecordReader in(value);
  index_[hash] = in.str();
}

}  // namespace troupe::head
