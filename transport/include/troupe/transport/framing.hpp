// Cap'n Proto messages over ZeroMQ: one message per frame, the standard
// Cap'n Proto stream encoding (segment table, then segments).
//
// Every read is bounded: the frame size is checked before parsing, the whole
// message is validated against FramingLimits when it is received, and
// ReceivedMessage::root<T>() validates it against T's schema before handing
// out a reader. Anything malformed surfaces as Error(Errc::protocol); no
// KJ exception escapes this header's functions.
//
// Sockets are not thread-safe: call these only from the thread that owns the
// socket. Nothing here starts threads or holds locks.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include <capnp/message.h>
#include <capnp/schema.h>
#include <zmq.hpp>

#include "troupe/transport/error.hpp"

namespace troupe::transport {

// Bounds on what a peer can make a reader do. The defaults suit the control
// and call planes; bulk data goes over UCX, not through these frames.
struct FramingLimits {
  // Words a reader may traverse, counting repeated visits of shared data, so
  // a small message cannot make a reader do unbounded work.
  std::uint64_t traversal_limit_words = std::uint64_t{64} << 20;  // 512 MiB
  // Struct/list nesting depth, which bounds the recursion of any reader.
  int nesting_limit = 64;
  // Frames above this are rejected before parsing.
  std::size_t max_frame_bytes = std::size_t{256} << 20;

  capnp::ReaderOptions reader_options() const noexcept {
    capnp::ReaderOptions options;
    options.traversalLimitInWords = traversal_limit_words;
    options.nestingLimit = nesting_limit;
    return options;
  }
};

// Makes ZeroMQ itself drop frames above limits.max_frame_bytes (ZMQ_MAXMSGSIZE:
// the peer is disconnected before the frame is buffered). Applies to
// connections made after the call, so call it before bind/connect.
void apply_socket_limits(zmq::socket_t& socket, const FramingLimits& limits);

// A received message. It owns the frame's bytes, reading them in place when
// they are 8-byte aligned and copying them into aligned words otherwise.
// Moving it does not move the bytes, so readers taken from it stay valid for
// its lifetime.
class ReceivedMessage {
 public:
  // Takes the frame and checks it: throws Error(Errc::protocol) when it is
  // larger than limits.max_frame_bytes, not a whole number of words, not
  // exactly one Cap'n Proto message, or beyond the traversal/nesting limits.
  explicit ReceivedMessage(zmq::message_t frame, const FramingLimits& limits = {});

  // Same checks on bytes that did not come from ZeroMQ; they are copied.
  static ReceivedMessage copy_of(const void* data, std::size_t size,
                                 const FramingLimits& limits = {});

  ReceivedMessage(ReceivedMessage&&) noexcept;
  ReceivedMessage& operator=(ReceivedMessage&&) noexcept;
  ~ReceivedMessage();

  // The root as a T, after validating every field against T's schema (text
  // is NUL-terminated, pointers have the kinds T expects), so accessors on
  // the result do not throw. Validation runs once per T.
  // Throws Error(Errc::protocol).
  // TODO(perf): validation walks the message through the dynamic API, a few
  // hundred ns for a typical call; skip it for trusted in-process peers.
  template <typename T>
  typename T::Reader root() {
    validate_as(capnp::Schema::from<T>());
    return reader().getRoot<T>();
  }

  // The raw reader. Structure, limits and bounds are already checked; typed
  // access through it may still throw kj::Exception on a schema mismatch,
  // which root<T>() rules out.
  capnp::MessageReader& reader() noexcept;

  std::size_t size_bytes() const noexcept;
  // Whether the frame had to be copied because it was not 8-byte aligned.
  bool was_copied() const noexcept;

 private:
  struct State;
  explicit ReceivedMessage(std::unique_ptr<State> state);
  void validate_as(capnp::StructSchema schema);

  std::unique_ptr<State> state_;
};

// Serializes `message` into one frame and sends it. A send that would block
// (dontwait, or ZMQ_SNDTIMEO expired) throws Error(Errc::timeout); other
// socket failures throw Error(Errc::transport). The builder is unchanged.
void send_message(zmq::socket_t& socket, capnp::MessageBuilder& message,
                  zmq::send_flags flags = zmq::send_flags::none);

// Waits at most `timeout` for one single-frame message; nullopt when none
// arrived in time. A multipart message is consumed whole and rejected with
// Error(Errc::protocol), leaving the socket in step for the next message.
[[nodiscard]] std::optional<ReceivedMessage> recv_message(
    zmq::socket_t& socket, std::chrono::milliseconds timeout,
    const FramingLimits& limits = {});

// ROUTER sockets: the peer's routing identity, then the message.
struct RoutedMessage {
  std::string identity;
  ReceivedMessage message;
};

// Sends [identity][message] on a ROUTER socket. An unknown identity is
// dropped silently unless the socket has ZMQ_ROUTER_MANDATORY, in which case
// it throws Error(Errc::transport).
void send_routed(zmq::socket_t& socket, std::string_view identity,
                 capnp::MessageBuilder& message,
                 zmq::send_flags flags = zmq::send_flags::none);

// Waits at most `timeout` for one [identity][message] pair from a DEALER
// peer; nullopt when none arrived in time. Any other frame count is consumed
// whole and rejected with Error(Errc::protocol).
[[nodiscard]] std::optional<RoutedMessage> recv_routed(
    zmq::socket_t& socket, std::chrono::milliseconds timeout,
    const FramingLimits& limits = {});

}  // namespace troupe::transport
