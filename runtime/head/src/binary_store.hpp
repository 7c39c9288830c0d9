// BinaryStore: job binaries under <session>/binaries/<content hash>, which
// node managers fetch to start actor hosts (docs/protocol.md, flow 3).
//
// Contract: a stored binary's name is the content hash of its bytes and it
// is never rewritten; a hash that is not a valid hash name is refused with
// Errc::invalid_argument, a missing binary with Errc::not_found.
#pragma once

#include <filesystem>
#include <string>

#include "head_context.hpp"

namespace troupe::head {

class BinaryStore {
 public:
  explicit BinaryStore(HeadContext& context) : context_(context) {}

  std::filesystem::path path(const std::string& hash) const;
  // Present and matching its hash.
  bool has(const std::string& hash) const;
  // Stores `data` as `hash` unless present (the caller checked the hash).
  // Throws troupe::Error (Errc::invalid_argument) for a bad hash name.
  void store(const std::string& hash, kj::ArrayPtr<const kj::byte> data);

  void on_upload_binary(const std::string& identity, std::uint64_t request_id, wire::UploadBinary::Reader upload);
  void on_fetch_binary(const std::string& identity, std::uint64_t request_id, wire::FetchBinary::Reader fetch);

 private:
  HeadContext& context_;
};

}  // namespace troupe::head
