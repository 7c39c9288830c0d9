// Helpers every part of cluster mode uses to read and write the wire
// schemas (transport/schema/*.capnp): errors and byte fields; and reading
// a whole file (specs, binaries).
// Stateless; any thread.
#pragma once

#include <cstdint>
#include <exception>
#include <string>
#include <string_view>

#include <capnp/common.h>
#include <capnp/blob.h>

#include "troupe/runtime/ids.hpp"
#include "troupe/transport/schema/common.capnp.h"

namespace troupe::detail {

// A call message is a few hundred bytes: start small instead of capnp's
// default 8 KiB first segment (calloc'd per message); it grows as needed.
inline constexpr unsigned kFirstSegmentWords = 128;

// Ids travel with troupe::to_wire / troupe::from_wire<Id> (troupe/runtime/ids.hpp).

// Bytes as a capnp Data field, and back.
inline capnp::Data::Reader as_data(std::string_view bytes) {
  return capnp::Data::Reader(reinterpret_cast<const capnp::byte*>(bytes.data()), bytes.size());
}
inline std::string from_data(capnp::Data::Reader data) {
  return std::string(reinterpret_cast<const char*>(data.begin()), data.size());
}

// The bytes of the file at `path` (an actor spec, a job binary). Throws
// Error(invalid_argument) when it cannot be read.
std::string read_whole_file(const std::string& path);

void fill_error(wire::ErrorInfo::Builder builder, const std::exception_ptr& error);
// The error a peer sent, rebuilt; a code this build does not know, or `ok`,
// becomes protocol. Reads text fields: a kj::Exception if they are malformed.
std::exception_ptr to_exception(wire::ErrorInfo::Reader error);

// Longest call-plane address a peer may name (returnTo, an owner address).
inline constexpr std::size_t kMaxPeerAddressBytes = 255;
// Empty when `address` can be a call-plane address ("tcp://host:port", at
// most kMaxPeerAddressBytes of printable ASCII); else why not. Checked on
// every address a peer gives before anything connects to it.
std::string check_peer_address(std::string_view address);
}  // namespace troupe::detail
