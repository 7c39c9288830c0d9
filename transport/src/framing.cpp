#include "troupe/transport/framing.hpp"
#include "troupe/transport/upload_limit.hpp"

#include <algorithm>
#include <cstring>
#include <string>
#include <utility>

#include <capnp/any.h>
#include <capnp/dynamic.h>
#include <capnp/serialize.h>
#include <kj/array.h>
#include <kj/exception.h>
#include <kj/io.h>

namespace troupe::transport {

static_assert(kMaxBinaryBytes + (std::size_t{1} << 20) == FramingLimits{}.max_frame_bytes,
              "upload_limit.hpp's kMaxBinaryBytes must follow the frame bound");
namespace {

using Clock = std::chrono::steady_clock;

[[noreturn]] void protocol_error(std::string message) {
  throw_error(Errc::protocol, std::move(message));
}

// Walks every pointer field reachable from `value` through T's schema, so
// that each lazy check capnp would make on access (pointer kind, list element
// size, NUL-terminated text) happens now. Lists of primitives are checked as
// a whole by reading the list pointer; their elements need no visit.
void validate_value(const capnp::DynamicValue::Reader& value);

void validate_struct(const capnp::DynamicStruct::Reader& record) {
  for (auto field : record.getSchema().getNonUnionFields()) {
    if (!field.getType().isStruct() && !field.getType().isList() &&
        !field.getType().isText() && !field.getType().isData()) {
      continue;
    }
    validate_value(record.get(field));
  }
  KJ_IF_MAYBE(active, record.which()) {
    validate_value(record.get(*active));
  }
}

void validate_value(const capnp::DynamicValue::Reader& value) {
  switch (value.getType()) {
    case capnp::DynamicValue::STRUCT:
      validate_struct(value.as<capnp::DynamicStruct>());
      break;
    case capnp::DynamicValue::LIST: {
      auto list = value.as<capnp::DynamicList>();
      const auto element = list.getSchema().getElementType();
      if (!element.isStruct() && !element.isList() && !element.isText() && !element.isData()) {
        break;
      }
      // Struct elements share one wire layout. Without pointers they hold
      // nothing to check, and skipping them keeps a list of millions of
      // empty structs (a few bytes on the wire) from costing millions of
      // visits. With pointers, each element takes a word, so the loop is
      // bounded by the message size.
      if (element.isStruct() &&
          (list.size() == 0 ||
           list[0].as<capnp::DynamicStruct>().as<capnp::AnyStruct>().getPointerSection().size() ==
               0)) {
        break;
      }
      for (auto item : list) validate_value(item);
      break;
    }
    default:
      // Text and Data were checked when read from their parent; primitives,
      // enums and (unused) AnyPointer fields need nothing more.
      break;
  }
}

// Drops the remaining frames of a multipart message so that the socket is at
// a message boundary again. ZeroMQ delivers multipart messages atomically,
// so the parts are already here.
void discard_remaining_parts(zmq::socket_t& socket) {
  try {
    while (socket.get(zmq::sockopt::rcvmore)) {
      zmq::message_t part;
      if (!socket.recv(part, zmq::recv_flags::dontwait)) break;
    }
  } catch (const zmq::error_t& error) {
    throw_from_zmq(error, "discarding a message's remaining parts");
  }
}

// Receives the first frame of the next message, waiting at most `timeout`.
std::optional<zmq::message_t> recv_first_frame(zmq::socket_t& socket,
                                               std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + std::max(timeout, std::chrono::milliseconds::zero());
  for (;;) {
    try {
      zmq::message_t frame;
      if (socket.recv(frame, zmq::recv_flags::dontwait)) return frame;
      const auto remaining = deadline - Clock::now();
      if (remaining <= Clock::duration::zero()) return std::nullopt;
      zmq::pollitem_t item{socket.handle(), 0, ZMQ_POLLIN, 0};
      // Rounded up: a poll of 0 ms before the deadline would spin.
      zmq::poll(&item, 1, std::chrono::ceil<std::chrono::milliseconds>(remaining));
    } catch (const zmq::error_t& error) {
      if (error.num() == EINTR) continue;  // a signal; the deadline still holds
      throw_from_zmq(error, "receiving a message");
    }
  }
}

// Receives the next part of a multipart message whose first part arrived.
zmq::message_t recv_next_part(zmq::socket_t& socket) {
  zmq::message_t part;
  try {
    if (!socket.recv(part, zmq::recv_flags::dontwait)) {
      throw_error(Errc::transport, "multipart message ended early");
    }
  } catch (const zmq::error_t& error) {
    throw_from_zmq(error, "receiving a message part");
  }
  return part;
}

zmq::message_t to_frame(capnp::MessageBuilder& message) {
  try {
    const auto segments = message.getSegmentsForOutput();
    // Written straight into ZeroMQ's buffer: the only copy of the segments.
    zmq::message_t frame(capnp::computeSerializedSizeInWords(segments) * sizeof(capnp::word));
    kj::ArrayOutputStream out(kj::arrayPtr(frame.data<kj::byte>(), frame.size()));
    capnp::writeMessage(out, segments);
    return frame;
  } catch (const kj::Exception& error) {
    throw_from_kj(error, "encoding a message");
  }
}

void send_frame(zmq::socket_t& socket, zmq::message_t& frame, zmq::send_flags flags,
                const char* context) {
  try {
    if (!socket.send(frame, flags)) {
      throw_error(Errc::timeout,
                           std::string(context) + ": the socket would block");
    }
  } catch (const zmq::error_t& error) {
    throw_from_zmq(error, context);
  }
}

}  // namespace

void apply_socket_limits(zmq::socket_t& socket, const FramingLimits& limits) {
  try {
    socket.set(zmq::sockopt::maxmsgsize, static_cast<std::int64_t>(limits.max_frame_bytes));
  } catch (const zmq::error_t& error) {
    throw_from_zmq(error, "setting ZMQ_MAXMSGSIZE");
  }
}

// --- ReceivedMessage ----------------------------------------------------------

struct ReceivedMessage::State {
  zmq::message_t frame;             // owns the bytes when they are read in place
  kj::Array<capnp::word> copy;      // owns them when the frame was unaligned
  kj::ArrayPtr<const capnp::word> words;
  capnp::ReaderOptions options;
  std::optional<capnp::FlatArrayMessageReader> reader;
  std::uint64_t validated_schema_id = 0;  // schema ids are never 0

  // Points `words` at the `size` bytes at `data` (owned by `frame`, or
  // copied), then parses and checks the message. The bytes are copied when
  // they are unaligned or when `always_copy` is set.
  void open(const void* data, std::size_t size, const FramingLimits& limits, bool always_copy);
};

ReceivedMessage::ReceivedMessage(zmq::message_t frame, const FramingLimits& limits)
    : state_(std::make_unique<State>()) {
  state_->frame = std::move(frame);
  // The frame's bytes are stable from here on: State is never moved.
  state_->open(state_->frame.data(), state_->frame.size(), limits, false);
}

ReceivedMessage ReceivedMessage::copy_of(const void* data, std::size_t size,
                                         const FramingLimits& limits) {
  ReceivedMessage message(std::make_unique<State>());
  message.state_->open(data, size, limits, true);
  return message;
}

ReceivedMessage::ReceivedMessage(std::unique_ptr<State> state) : state_(std::move(state)) {}
ReceivedMessage::ReceivedMessage(ReceivedMessage&&) noexcept = default;
ReceivedMessage& ReceivedMessage::operator=(ReceivedMessage&&) noexcept = default;
ReceivedMessage::~ReceivedMessage() = default;

capnp::MessageReader& ReceivedMessage::reader() noexcept { return *state_->reader; }

std::size_t ReceivedMessage::size_bytes() const noexcept {
  return state_->words.size() * sizeof(capnp::word);
}

bool ReceivedMessage::was_copied() const noexcept { return state_->copy != nullptr; }

void ReceivedMessage::validate_as(capnp::StructSchema schema) {
  if (state_->validated_schema_id == schema.getProto().getId()) return;
  try {
    // A scratch reader, so that validation does not spend the traversal
    // budget of the reader the caller gets.
    capnp::FlatArrayMessageReader scratch(state_->words, state_->options);
    validate_struct(scratch.getRoot<capnp::DynamicStruct>(schema));
  } catch (const kj::Exception& error) {
    throw_from_kj(error, "decoding a message");
  }
  state_->validated_schema_id = schema.getProto().getId();
}

void ReceivedMessage::State::open(const void* data, std::size_t size,
                                  const FramingLimits& limits, bool always_copy) {
  if (size > limits.max_frame_bytes) {
    protocol_error("frame of " + std::to_string(size) + " bytes exceeds max_frame_bytes " +
                   std::to_string(limits.max_frame_bytes));
  }
  if (size == 0) protocol_error("empty frame");
  if (size % sizeof(capnp::word) != 0) {
    protocol_error("message must be a whole number of words (got " + std::to_string(size) +
                   " bytes)");
  }
  const std::size_t word_count = size / sizeof(capnp::word);
  if (always_copy || reinterpret_cast<std::uintptr_t>(data) % alignof(capnp::word) != 0) {
    copy = kj::heapArray<capnp::word>(word_count);
    std::memcpy(copy.begin(), data, size);
    words = copy.asPtr();
  } else {
    words = kj::arrayPtr(static_cast<const capnp::word*>(data), word_count);
  }
  options = limits.reader_options();

  try {
    reader.emplace(words, options);
    if (reader->getEnd() != words.end()) {
      protocol_error("frame holds bytes after the end of the message");
    }
    // Walks every pointer once on a scratch reader: bounds, nesting and
    // traversal limits are enforced here, not on the caller's first access.
    capnp::FlatArrayMessageReader scratch(words, options);
    const auto total = scratch.getRoot<capnp::AnyPointer>().targetSize();
    if (total.wordCount > limits.traversal_limit_words) {
      protocol_error("message traverses " + std::to_string(total.wordCount) +
                     " words, over traversal_limit_words " +
                     std::to_string(limits.traversal_limit_words));
    }
    if (total.capCount != 0) protocol_error("message holds capabilities");
  } catch (const kj::Exception& error) {
    throw_from_kj(error, "decoding a message");
  }
}

// --- sending and receiving ----------------------------------------------------

void send_message(zmq::socket_t& socket, capnp::MessageBuilder& message,
                  zmq::send_flags flags) {
  auto frame = to_frame(message);
  send_frame(socket, frame, flags, "sending a message");
}

std::optional<ReceivedMessage> recv_message(zmq::socket_t& socket,
                                            std::chrono::milliseconds timeout,
                                            const FramingLimits& limits) {
  auto frame = recv_first_frame(socket, timeout);
  if (!frame) return std::nullopt;
  if (frame->more()) {
    discard_remaining_parts(socket);
    protocol_error("expected a single-frame message, got a multipart one");
  }
  return ReceivedMessage(std::move(*frame), limits);
}

void send_routed(zmq::socket_t& socket, std::string_view identity,
                 capnp::MessageBuilder& message, zmq::send_flags flags) {
  auto frame = to_frame(message);  // before the identity: a failed encoding sends nothing
  zmq::message_t head(identity.data(), identity.size());
  send_frame(socket, head, flags | zmq::send_flags::sndmore, "sending a routing identity");
  send_frame(socket, frame, flags, "sending a message");
}

std::optional<RoutedMessage> recv_routed(zmq::socket_t& socket,
                                         std::chrono::milliseconds timeout,
                                         const FramingLimits& limits) {
  auto head = recv_first_frame(socket, timeout);
  if (!head) return std::nullopt;
  if (!head->more()) protocol_error("expected [identity][message], got a single frame");
  auto body = recv_next_part(socket);
  if (body.more()) {
    discard_remaining_parts(socket);
    protocol_error("expected [identity][message], got more than two frames");
  }
  return RoutedMessage{head->to_string(), ReceivedMessage(std::move(body), limits)};
}

}  // namespace troupe::transport
