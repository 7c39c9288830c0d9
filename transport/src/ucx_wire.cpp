#include "troupe/transport/internal/ucx_wire.hpp"

#include "sodium_util.hpp"

#include <cstring>

#include "troupe/runtime/error.hpp"

namespace troupe::transport::ucx_wire {
namespace {

const unsigned char* bytes_of(std::span<const std::byte> span) {
  return reinterpret_cast<const unsigned char*>(span.data());
}

}  // namespace

MessageKey::MessageKey(const ClusterSecret::Key& key) {
  detail::ensure_sodium();
  static_assert(crypto_generichash_blake2b_KEYBYTES_MAX >= 32 && kTagBytes <= crypto_generichash_blake2b_BYTES_MAX);
  ::crypto_generichash_blake2b_init(&keyed_, key.data(), key.size(), kTagBytes);
}

Tag MessageKey::sign(std::span<const std::byte> header, std::span<const std::byte> extra) const {
  crypto_generichash_blake2b_state state = keyed_;
  ::crypto_generichash_blake2b_update(&state, bytes_of(header), header.size());
  if (!extra.empty()) ::crypto_generichash_blake2b_update(&state, bytes_of(extra), extra.size());
  Tag tag{};
  ::crypto_generichash_blake2b_final(&state, tag.data(), tag.size());
  ::sodium_memzero(&state, sizeof state);
  return tag;
}

bool MessageKey::verify(std::span<const std::byte> header, std::span<const std::byte> extra,
                        std::span<const std::byte> tag) const {
  if (tag.size() != kTagBytes) return false;
  const Tag expected = sign(header, extra);
  return ::crypto_verify_32(expected.data(), bytes_of(tag)) == 0;
}

EncodedHeader encode_request(const RequestHeader& header, std::string_view requester, const MessageKey* key) {
  EncodedHeader out;
  std::memcpy(out.bytes.data(), &header, sizeof header);
  out.size = sizeof header;
  if (key != nullptr) {
    const Tag tag = key->sign(std::span(out.bytes.data(), sizeof header), std::as_bytes(std::span(requester)));
    std::memcpy(out.bytes.data() + out.size, tag.data(), tag.size());
    out.size += tag.size();
  }
  return out;
}

EncodedHeader encode_data(const DataHeader& header, const MessageKey* key, std::string_view meta) {
  EncodedHeader out;
  if (meta.size() > kMaxMetaBytes) throw_error(Errc::invalid_argument, "object meta over the data plane's limit");
  DataHeader copy = header;
  copy.meta_length = static_cast<std::uint32_t>(meta.size());
  std::memcpy(out.bytes.data(), &copy, sizeof copy);
  if (!meta.empty()) std::memcpy(out.bytes.data() + sizeof copy, meta.data(), meta.size());
  out.size = sizeof copy + meta.size();
  if (key != nullptr) {
    const Tag tag = key->sign(std::span(out.bytes.data(), out.size));
    std::memcpy(out.bytes.data() + out.size, tag.data(), tag.size());
    out.size += tag.size();
  }
  return out;
}

ParsedRequest parse_request(std::span<const std::byte> header, std::span<const std::byte> data,
                            const MessageKey* key) {
  ParsedRequest parsed;
  const std::size_t expected = sizeof(RequestHeader) + (key != nullptr ? kTagBytes : 0);
  if (header.size() != expected) {
    parsed.unauthenticated = key != nullptr;
    parsed.error = key != nullptr ? "request header without a valid authenticator (wrong length)"
                                  : "request header of the wrong length (an authenticated request to an "
                                    "insecure data plane?)";
    return parsed;
  }
  if (key != nullptr &&
      !key->verify(header.first(sizeof(RequestHeader)), data, header.subspan(sizeof(RequestHeader)))) {
    parsed.unauthenticated = true;
    parsed.error = "request with a wrong authenticator (not a member of this cluster)";
    return parsed;
  }
  std::memcpy(&parsed.header, header.data(), sizeof(RequestHeader));
  parsed.push = parsed.header.magic == kPushRequestMagic;
  if (parsed.header.magic != kRequestMagic && !parsed.push) {
    parsed.error = "request with a wrong magic number";
    return parsed;
  }
  if (data.size() < kMinAddressBytes || data.size() > kMaxAddressBytes) {
    parsed.error = "request whose requester address is too short or too long";
    return parsed;
  }
  parsed.requester = std::string_view(reinterpret_cast<const char*>(data.data()), data.size());
  return parsed;
}

ParsedData parse_data(std::span<const std::byte> header, std::size_t payload_length, const MessageKey* key) {
  ParsedData parsed;
  const std::size_t tag_bytes = key != nullptr ? kTagBytes : 0;
  if (header.size() < sizeof(DataHeader) + tag_bytes || header.size() > sizeof(DataHeader) + kMaxMetaBytes + tag_bytes) {
    parsed.unauthenticated = key != nullptr;
    parsed.error = key != nullptr ? "data header without a valid authenticator (wrong length)"
                                  : "data header of the wrong length (an authenticated message to an insecure "
                                    "data plane?)";
    return parsed;
  }
  const std::size_t signed_bytes = header.size() - tag_bytes;
  if (key != nullptr && !key->verify(header.first(signed_bytes), {}, header.subspan(signed_bytes))) {
    parsed.unauthenticated = true;
    parsed.error = "data message with a wrong authenticator (not a member of this cluster)";
    return parsed;
  }
  DataHeader& h = parsed.header;
  std::memcpy(&h, header.data(), sizeof h);
  const std::size_t meta_bytes = signed_bytes - sizeof(DataHeader);
  if (h.magic != kDataMagic) {
    parsed.error = "data message with a wrong magic number";
  } else if (h.kind != kReply && h.kind != kPush) {
    parsed.error = "data message of an unknown kind";
  } else if (h.status > kBusy || (h.kind == kPush && h.status != kOk)) {
    parsed.error = "data message with an unknown status";
  } else if (h.memory > 1) {
    parsed.error = "data message with an unknown memory type";
  } else if (h.status != kOk && (h.total != 0 || payload_length != 0)) {
    parsed.error = "a status reply that carries bytes";
  } else if (h.offset > h.total || payload_length > h.total - h.offset) {
    parsed.error = "data message with bytes outside its object";
  } else if (h.meta_length != meta_bytes) {
    parsed.error = "data header whose meta length does not match its size";
  } else if (meta_bytes != 0 && (h.status != kOk || h.offset != 0)) {
    parsed.error = "meta on a status reply or on a message past offset 0";
  } else {
    parsed.meta = std::string_view(reinterpret_cast<const char*>(header.data()) + sizeof(DataHeader), meta_bytes);
  }
  return parsed;
}

EncodedHeader encode_message(const MessageHeader& header, std::string_view name, std::span<const std::byte> data,
                             const MessageKey* key) {
  EncodedHeader out;
  if (name.size() > kMaxNameBytes) throw_error(Errc::invalid_argument, "a message stream's name over its limit");
  MessageHeader copy = header;
  copy.name_length = static_cast<std::uint32_t>(name.size());
  std::memcpy(out.bytes.data(), &copy, sizeof copy);
  if (!name.empty()) std::memcpy(out.bytes.data() + sizeof copy, name.data(), name.size());
  out.size = sizeof copy + name.size();
  if (key != nullptr) {
    const Tag tag = key->sign(std::span(out.bytes.data(), out.size), data);
    std::memcpy(out.bytes.data() + out.size, tag.data(), tag.size());
    out.size += tag.size();
  }
  return out;
}

ParsedMessage parse_message(std::span<const std::byte> header, std::span<const std::byte> data,
                            const MessageKey* key) {
  ParsedMessage parsed;
  const std::size_t tag_bytes = key != nullptr ? kTagBytes : 0;
  if (header.size() < sizeof(MessageHeader) + tag_bytes ||
      header.size() > sizeof(MessageHeader) + kMaxNameBytes + tag_bytes) {
    parsed.unauthenticated = key != nullptr;
    parsed.error = key != nullptr ? "message header without a valid authenticator (wrong length)"
                                  : "message header of the wrong length (an authenticated message to an "
                                    "insecure plane?)";
    return parsed;
  }
  const std::size_t signed_bytes = header.size() - tag_bytes;
  if (key != nullptr && !key->verify(header.first(signed_bytes), data, header.subspan(signed_bytes))) {
    parsed.unauthenticated = true;
    parsed.error = "message with a wrong authenticator (not a member of this cluster)";
    return parsed;
  }
  MessageHeader& h = parsed.header;
  std::memcpy(&h, header.data(), sizeof h);
  const std::size_t name_bytes = signed_bytes - sizeof(MessageHeader);
  if (h.magic != kMessageMagic) {
    parsed.error = "message with a wrong magic number";
  } else if (h.kind != kHello && h.kind != kMessage) {
    parsed.error = "message of an unknown kind";
  } else if (h.name_length != name_bytes) {
    parsed.error = "message header whose name length does not match its size";
  } else if (h.stream == 0) {
    parsed.error = "message of stream 0";
  } else if (h.kind == kHello && (h.seq != 0 || name_bytes == 0 || data.size() < kMinAddressBytes ||
                                  data.size() > kMaxAddressBytes)) {
    parsed.error = "hello that is not its stream's first, has no name or a bad address";
  } else if (h.kind == kMessage && (h.seq == 0 || name_bytes != 0 || data.size() > kMaxMessageBytes)) {
    parsed.error = "message at seq 0, with a name, or too large";
  } else {
    parsed.name = std::string_view(reinterpret_cast<const char*>(header.data()) + sizeof(MessageHeader), name_bytes);
  }
  return parsed;
}

}  // namespace troupe::transport::ucx_wire
