#include "binary_store.hpp"

#include "troupe/node/files.hpp"
#include "troupe/transport/content_hash.hpp"

namespace troupe::head {

std::filesystem::path BinaryStore::path(const std::string& hash) const {
  return context_.config.session_dir / "binaries" / hash;
}

bool BinaryStore::has(const std::string& hash) const { return node::file_matches_hash(path(hash), hash); }

void BinaryStore::store(const std::string& hash, kj::ArrayPtr<const kj::byte> data) {
  if (!transport::valid_hash_name(hash)) throw Error(Errc::invalid_argument, "bad binary hash \"" + hash + "\"");
  auto file = path(hash);
  // A file already there is kept only if it is what its name says (a file
  // planted or damaged in the cache is replaced).
  if (node::file_matches_hash(file, hash)) return;
  node::write_file_atomic(file, std::string(reinterpret_cast<const char*>(data.begin()), data.size()), 0755);
}

void BinaryStore::on_upload_binary(const std::string& identity, std::uint64_t request_id,
                                   wire::UploadBinary::Reader upload) {
  const std::string hash = upload.getBinaryHash().cStr();
  if (!transport::valid_hash_name(hash)) throw Error(Errc::invalid_argument, "bad binary hash \"" + hash + "\"");
  if (!has(hash)) {
    auto data = upload.getBinary();
    if (transport::content_hash(std::string_view(reinterpret_cast<const char*>(data.begin()), data.size())) != hash)
      throw Error(Errc::invalid_argument, "binary does not match its hash " + hash);
    store(hash, data);
  }
  context_.reply_ack(identity, request_id);
}

void BinaryStore::on_fetch_binary(const std::string& identity, std::uint64_t request_id,
                                  wire::FetchBinary::Reader fetch) {
  std::string hash = fetch.getBinaryHash().cStr();
  if (!transport::valid_hash_name(hash)) throw Error(Errc::invalid_argument, "bad binary hash \"" + hash + "\"");
  auto data = node::read_file(path(hash));
  if (!data) throw Error(Errc::not_found, "the head has no binary " + hash);
  if (transport::content_hash(*data) != hash)
    throw Error(Errc::not_found, "the head's copy of binary " + hash + " does not match its hash");
  capnp::MallocMessageBuilder message;
  auto root = message.initRoot<wire::ControlMessage>();
  root.setRequestId(request_id);
  auto reply = root.initBinaryData();
  reply.setBinaryHash(hash);
  reply.setBinary(kj::arrayPtr(reinterpret_cast<const kj::byte*>(data->data()), data->size()));
  context_.send_to(identity, message);
}

}  // namespace troupe::head
