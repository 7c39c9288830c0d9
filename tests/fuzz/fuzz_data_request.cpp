// Fuzz target: the UCX data plane's header parser (ucx_wire::parse_request,
// parse_data), which every request and push a peer sends goes through before
// anything else, in a secure plane (tag checked) and an insecure one.
// Input: byte 0 picks the parser and the mode, bytes 1-2 the header's length,
// the rest is the header then the active message's data. Valid tagged
// headers are also built from the input so the code past the tag check runs.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>

#include "troupe/transport/internal/membership.hpp"
#include "troupe/transport/internal/ucx_wire.hpp"

namespace wire = troupe::transport::ucx_wire;

namespace {
const wire::MessageKey& key() {
  static const wire::MessageKey k(
      troupe::transport::ClusterSecret::parse(std::string(64, 'a')).data_mac_key());
  return k;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 3) return 0;
  const std::uint8_t mode = data[0];
  std::size_t header_len = (static_cast<std::size_t>(data[1]) << 8) | data[2];
  data += 3;
  size -= 3;
  header_len = std::min(header_len, size);
  std::span<const std::byte> header(reinterpret_cast<const std::byte*>(data), header_len);
  std::span<const std::byte> rest(reinterpret_cast<const std::byte*>(data) + header_len, size - header_len);
  const wire::MessageKey* k = (mode & 1) ? &key() : nullptr;

  switch ((mode >> 1) % 4) {
    case 0: {  // raw bytes as a request
      auto parsed = wire::parse_request(header, rest, k);
      if (!parsed.error) {
        volatile std::size_t n = parsed.requester.size();
        (void)n;
      }
      break;
    }
    case 1: {  // raw bytes as a data header
      (void)wire::parse_data(header, rest.size(), k);
      break;
    }
    case 2: {  // a well-formed, correctly tagged request made from the input
      wire::RequestHeader h;
      std::memcpy(&h, data, std::min(sizeof h, size));
      h.magic = wire::kRequestMagic;
      std::string_view requester(reinterpret_cast<const char*>(rest.data()), rest.size());
      auto encoded = wire::encode_request(h, requester, k);
      (void)wire::parse_request(std::span<const std::byte>(encoded.bytes.data(), encoded.size), rest, k);
      break;
    }
    case 3: {  // a well-formed, correctly tagged data header made from the input
      wire::DataHeader h;
      std::memcpy(&h, data, std::min(sizeof h, size));
      h.magic = wire::kDataMagic;
      // Meta (a tensor's envelope) from the input, within its limit.
      std::string_view meta(reinterpret_cast<const char*>(rest.data()), std::min(rest.size(), wire::kMaxMetaBytes));
      auto encoded = wire::encode_data(h, k, meta);
      (void)wire::parse_data(std::span<const std::byte>(encoded.bytes.data(), encoded.size), rest.size(), k);
      break;
    }
  }
  return 0;
}
