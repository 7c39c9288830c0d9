// The UCX data plane's message headers (internal: not installed): their
// layout, the message authenticator of a secure cluster, and the one parser
// every received header goes through (pure: bytes in, parsed header or the
// reason it was refused out; no UCX), so that fuzz targets and tests can
// call it directly. docs/protocol.md describes the wire format.
//
// Two active messages (all integers in host byte order: both ends are
// troupe of the same build on the same architecture):
//   request (AM 116)  header = RequestHeader [+ tag]; data = the requester's
//                     UCX worker address (the holder answers there).
//   data    (AM 117)  header = DataHeader, then meta_length bytes of the
//                     object's meta (the runtime's envelope, at most
//                     kMaxMetaBytes, on the message at offset 0 only)
//                     [+ tag]; data = the bytes [offset, offset + length)
//                     of the object. Meta rides in the header so that a
//                     fetch is one trip: envelope and payload together,
//                     the payload by rendezvous when large.
//   message (AM 118)  header = MessageHeader, then name_length bytes of the
//                     sender's name (a hello only) [+ tag]; data = a hello's
//                     sender worker address, or a message's bytes (the
//                     runtime's call plane: one Cap'n Proto CallMessage).
//                     Sent eager only. Each sending endpoint is a stream
//                     (random id): a hello at seq 0, then messages at 1, 2,
//                     ...; the receiver delivers a stream's in seq order (UCX
//                     does not promise order for active messages).
//                     A message's tag covers its data too (unlike objects').
// In a secure cluster every header is followed by a 32-byte tag: keyed
// BLAKE2b-256 (libsodium crypto_generichash_blake2b with a key: a MAC, RFC
// 7693), keyed by ClusterSecret::data_mac_key(), over the header bytes
// (a data header's meta included) and, for a request, the requester address. (HMAC-SHA512-256 cost about 9 us a
// fetch here, keyed BLAKE2b about a third of it.) The object's bytes are not covered (bandwidth):
// the data plane authenticates who asks and what they are told, but does
// not encrypt or authenticate payloads (docs/security.md). An insecure
// plane sends no tag and accepts none.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string_view>

#include <sodium.h>

#include "troupe/transport/internal/membership.hpp"

namespace troupe::transport::ucx_wire {

constexpr unsigned kRequestAm = 116;
constexpr unsigned kDataAm = 117;
constexpr std::uint32_t kRequestMagic = 0x54525131;  // "TRQ1"
// A push request: "push this object to the worker whose address is the
// data, as soon as it is published" (DataPlane::request_push); never answered.
constexpr std::uint32_t kPushRequestMagic = 0x54525031;  // "TRP1"
constexpr std::uint32_t kDataMagic = 0x54524432;     // "TRD2" (meta after the header)

constexpr unsigned kMessageAm = 118;
constexpr std::uint32_t kMessageMagic = 0x54524d31;  // "TRM1"

enum Kind : std::uint8_t { kReply = 1, kPush = 2 };
enum MessageKind : std::uint8_t { kHello = 1, kMessage = 2 };
// kBusy: the holder has too many parked requests to park this one.
enum Status : std::uint8_t { kOk = 0, kNotFound = 1, kUnsupported = 2, kBusy = 3 };

struct RequestHeader {
  std::uint32_t magic = kRequestMagic;
  std::uint32_t wait_ms = 0;  // park up to this long if not published yet (the holder caps it)
  std::uint64_t request_id = 0;
  std::uint64_t id_hi = 0, id_lo = 0;
};

struct DataHeader {
  std::uint32_t magic = kDataMagic;
  std::uint8_t kind = kReply;
  std::uint8_t status = kOk;
  std::uint8_t memory = 0;  // the source's MemoryType (pushes land in it when possible)
  std::uint8_t reserved = 0;
  std::uint64_t transfer_id = 0;  // the request id of a reply; the pusher's id of a push
  std::uint64_t id_hi = 0, id_lo = 0;
  std::uint64_t total = 0;   // object size
  std::uint64_t offset = 0;  // of this message's bytes in the object
  std::uint32_t meta_length = 0;  // meta bytes after this header (offset 0 only)
  std::uint32_t reserved2 = 0;
};

// A stream's first message (kHello, seq 0) names its sender: `name` (the
// sender's call-plane address) is reached at the worker address in its
// data. Every later one (kMessage, seq 1, 2, ...) carries one message.
struct MessageHeader {
  std::uint32_t magic = kMessageMagic;
  std::uint8_t kind = kMessage;
  std::uint8_t reserved[3] = {0, 0, 0};
  std::uint64_t stream = 0;  // the sending endpoint's stream id (random, never 0)
  std::uint64_t seq = 0;
  std::uint32_t name_length = 0;  // hello only
  std::uint32_t reserved2 = 0;
};

static_assert(sizeof(RequestHeader) == 32 && sizeof(DataHeader) == 56 && sizeof(MessageHeader) == 32,
              "wire layout");

// A hello's name: at most this many bytes. A message's bytes: at most
// kMaxMessageBytes (the call plane's frame limit).
constexpr std::size_t kMaxNameBytes = 512;
constexpr std::size_t kMaxMessageBytes = std::size_t{256} << 20;

// An object's meta (ObjectBuffer::meta) travels in the data header: at most
// this many bytes (transport::kMaxObjectMetaBytes).
constexpr std::size_t kMaxMetaBytes = 1024;

constexpr std::size_t kTagBytes = 32;
using Tag = std::array<std::uint8_t, kTagBytes>;

// Requester addresses outside these bounds are refused before UCX sees
// them (ucp_worker_get_address gives ~100-300 bytes; more devices, more).
constexpr std::size_t kMinAddressBytes = 16;
constexpr std::size_t kMaxAddressBytes = 8192;

// The largest header on the wire (a tagged data header with full meta).
constexpr std::size_t kMaxHeaderBytes = sizeof(DataHeader) + kMaxMetaBytes + kTagBytes;

// Keyed BLAKE2b-256 with the data plane's key. The keyed state is computed
// once, so a tag costs one BLAKE2b block for a header. Thread-safe (const).
class MessageKey {
 public:
  explicit MessageKey(const ClusterSecret::Key& key);
  Tag sign(std::span<const std::byte> header, std::span<const std::byte> extra = {}) const;
  // Constant time (libsodium crypto_verify_32).
  bool verify(std::span<const std::byte> header, std::span<const std::byte> extra,
              std::span<const std::byte> tag) const;

 private:
  crypto_generichash_blake2b_state keyed_{};
};

// A request's header bytes on the wire: the header, then its tag when `key`.
struct EncodedHeader {
  std::array<std::byte, kMaxHeaderBytes> bytes{};
  std::size_t size = 0;
};
EncodedHeader encode_request(const RequestHeader& header, std::string_view requester, const MessageKey* key);
// `meta` (at most kMaxMetaBytes) follows the header; header.meta_length is
// set from it.
EncodedHeader encode_data(const DataHeader& header, const MessageKey* key, std::string_view meta = {});

// A message's header bytes: the header, a hello's name, then the tag over
// both and `data` when `key`.
EncodedHeader encode_message(const MessageHeader& header, std::string_view name, std::span<const std::byte> data,
                             const MessageKey* key);

// What a receiver acts on, or why the message is refused (`error` set,
// a static string). `unauthenticated`: the tag was missing or wrong (a
// stranger, or a member of another cluster), as opposed to malformed.
struct ParsedRequest {
  RequestHeader header;
  std::string_view requester;  // points into `data`; a push request: the consumer to push to
  bool push = false;            // a push request (kPushRequestMagic)
  const char* error = nullptr;
  bool unauthenticated = false;
};
struct ParsedData {
  DataHeader header;
  std::string_view meta;  // points into the header bytes
  const char* error = nullptr;
  bool unauthenticated = false;
};

// `header`/`data`: what UCX delivered (an active message's header and
// data). `key`: the plane's key (secure) or null (insecure). Checks, in
// this order: the header's length (with or without a tag, as `key` says),
// the tag (before anything else is read), the magic, the requester
// address's length bounds.
ParsedRequest parse_request(std::span<const std::byte> header, std::span<const std::byte> data,
                            const MessageKey* key);
// `payload_length`: the bytes that came with this header. Checks the
// length (header, at most kMaxMetaBytes of meta, the tag), the tag, the
// magic, that meta_length is the meta's length and meta rides only on an
// ok message at offset 0, kind/status/memory values, and that
// [offset, offset + payload_length) lies inside [0, total).
ParsedData parse_data(std::span<const std::byte> header, std::size_t payload_length, const MessageKey* key);

struct ParsedMessage {
  MessageHeader header;
  std::string_view name;  // a hello's; points into the header bytes
  const char* error = nullptr;
  bool unauthenticated = false;
};
// Checks the length, the tag (over header, name and data), the magic, the
// kind, a hello's seq 0, name and address bounds, a message's size bound
// and that only a hello has a name.
ParsedMessage parse_message(std::span<const std::byte> header, std::span<const std::byte> data,
                            const MessageKey* key);

}  // namespace troupe::transport::ucx_wire
