// DataPlane: ordered byte messages (the runtime's call plane over UCX).
//
// UCX does not promise that active messages on one endpoint arrive in the
// order they were sent (the UCP design notes: "RMA, AMO, AM - no order, tag
// matching - order guaranteed"; in practice one lane keeps order, several
// lanes or a mix of protocols may not). The call plane needs per-caller
// order, so order is ours: every endpoint that sends messages is a stream
// (a random 64-bit id), its first message a hello (seq 0) naming the sender
// and its worker address, then messages 1, 2, ... The receiver delivers a
// stream's messages in seq order, holding the few that arrive early, and
// drops a duplicate. A new endpoint to the same peer (after a failure or
// an eviction) is a new stream.
#include "ucx_data_plane_impl.hpp"

namespace troupe::transport {

void DataPlane::Impl::enable_messages(std::string name, MessageHandlers handlers) {
  if (name.empty() || name.size() > kMaxNameBytes)
    throw_error(Errc::invalid_argument, "a message plane's name must be 1 to " + std::to_string(kMaxNameBytes) +
                                            " bytes");
  message_name_ = std::move(name);
  message_handlers_ = std::move(handlers);
  messages_enabled_ = true;
}

void DataPlane::Impl::start_send_message(std::string peer, ObjectBuffer bytes, PushCallback done) {
  if (closed_) return done(make_error(Errc::cancelled, "the data plane is shut down"));
  if (!messages_enabled_)
    return done(make_error(Errc::invalid_argument, "messages are not enabled on this data plane"));
  if (bytes.memory != MemoryType::host || bytes.size > kMaxMessageBytes || (bytes.size > 0 && bytes.data == nullptr))
    return done(make_error(Errc::invalid_argument, "a message must be at most " + std::to_string(kMaxMessageBytes) +
                                                       " bytes of host memory"));
  std::exception_ptr error;
  auto ep = endpoint(peer, error);
  if (!ep) return done(error);
  last_message_ = Clock::now();
  if (ep->stream == 0) {
    // A new stream: its hello first, so that the receiver knows where to
    // answer before it reads the first message.
    do {
      ep->stream = stream_ids_();
    } while (ep->stream == 0);
    ep->next_seq = 1;
    MessageHeader hello;
    hello.kind = kHello;
    hello.stream = ep->stream;
    hello.seq = 0;
    send_message_am(ep, hello, message_name_, ObjectBuffer::copy_of(address_), nullptr);
  }
  MessageHeader header;
  header.kind = kMessage;
  header.stream = ep->stream;
  header.seq = ep->next_seq++;
  send_message_am(ep, header, {}, std::move(bytes), std::move(done));
}

void DataPlane::Impl::send_message_am(const std::shared_ptr<Endpoint>& ep, const MessageHeader& header,
                                      std::string_view name, ObjectBuffer bytes, PushCallback done) {
  auto op = std::make_unique<MessageOp>();
  op->plane = this;
  op->ep = ep;
  op->bytes = std::move(bytes);
  op->done = std::move(done);
  op->wire = encode_message(header, name, op->bytes.bytes(), key());
  if (ep->ep == nullptr || ep->failed) {
    auto status = ep->failed ? ep->failure : UCS_ERR_CANCELED;
    on_message_sent(nullptr, status == UCS_OK ? UCS_ERR_CANCELED : status, op.release());
    return;
  }
  ucp_request_param_t param{};
  param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_FLAGS;
  // Eager only: the receiver checks the tag over the bytes in its handler,
  // before anything is delivered (a rendezvous message's bytes would come
  // later); UCX fragments large messages and reassembles them.
  param.flags = UCP_AM_SEND_FLAG_EAGER;
  param.cb.send = &Impl::on_message_sent;
  param.user_data = op.get();
  auto* raw = op.release();
  ucs_status_ptr_t request = ucp_am_send_nbx(ep->ep, kMessageAm, raw->wire.bytes.data(), raw->wire.size,
                                             raw->bytes.data, raw->bytes.size, &param);
  if (request == nullptr) {
    on_message_sent(nullptr, UCS_OK, raw);
  } else if (UCS_PTR_IS_ERR(request)) {
    on_message_sent(nullptr, UCS_PTR_STATUS(request), raw);
  } else {
    ++outstanding_;
    ++messages_pending_;
    if (ep->messages_pending++ == 0) ep->messages_progress = Clock::now();
  }
}

// An endpoint whose pending messages saw no completion for
// message_send_timeout will not send them: the peer stopped reading (a
// stopped process, one whose shared-memory FIFO is stuck), or the endpoint
// never finished connecting (its wire-up reply cannot reach this process).
// A peer that is only slow completes some now and then, and keeps its
// backlog (bounded by the call plane's queue per peer). A stuck endpoint
// fails as if UCX had reported an error: closed with force, so that what
// is pending on it completes now, with `timeout`.
void DataPlane::Impl::fail_stuck_messages(Clock::time_point now) {
  std::vector<std::shared_ptr<Endpoint>> stuck;
  for (auto& [address, cached] : endpoints_) {
    const auto& ep = cached.ep;
    if (!ep->failed && ep->messages_pending > 0 && now - ep->messages_progress >= options_.message_send_timeout)
      stuck.push_back(ep);
  }
  for (auto& ep : stuck) {
    log()->warn("data plane: a message to a peer has been pending for {} ms; failing its endpoint",
                options_.message_send_timeout.count());
    on_ep_error(ep.get(), ep->ep, UCS_ERR_TIMED_OUT);
    if (std::find(failed_endpoints_.begin(), failed_endpoints_.end(), ep) == failed_endpoints_.end())
      failed_endpoints_.push_back(ep);  // an endpoint no longer in the cache
  }
  if (!stuck.empty()) handle_failed_endpoints();
}

void DataPlane::Impl::on_message_sent(void* request, ucs_status_t status, void* user_data) {
  guarded("on_message_sent", [&] {
    std::unique_ptr<MessageOp> op(static_cast<MessageOp*>(user_data));
    Impl* self = op->plane;
    if (request != nullptr) {
      --self->outstanding_;
      ucp_request_free(request);
      --self->messages_pending_;
      --op->ep->messages_pending;
      op->ep->messages_progress = Clock::now();
    }
    std::exception_ptr error;
    if (status == UCS_OK) {
      ++self->stats_.messages_sent;
    } else {
      // An endpoint failed for being stuck says so (UCX reports its forced
      // close as a cancellation).
      if (op->ep->failed && op->ep->failure == UCS_ERR_TIMED_OUT) status = UCS_ERR_TIMED_OUT;
      error = make_error_from_ucs(status, "sending a message to a peer worker");
      // The rest of this stream is lost with the endpoint: the next send
      // opens a new one (a new stream; endpoint() replaces a failed one)
      // rather than leave a gap the receiver would wait on. The endpoint
      // tables are not touched here: this callback may run inside a loop
      // over them (a forced close completes pending sends at once); the
      // tick closes it.
      if (!op->ep->failed && !self->closed_) {
        op->ep->failed = true;
        op->ep->failure = status;
        self->failed_endpoints_.push_back(op->ep);
        self->note_failed_peer(op->ep->address);
      }
    }
    op->bytes = {};
    if (op->done) guarded("a message callback", [&] { op->done(error); });
  });
}

ucs_status_t DataPlane::Impl::on_message_am(void* arg, const void* header, size_t header_length, void* data,
                                            size_t length, const ucp_am_recv_param_t* param) {
  auto* self = static_cast<Impl*>(arg);
  // No exception may cross UCX's C frames.
  try {
    if (self->closed_) return UCS_OK;
    if ((param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) != 0) {
      // Ours are sent eager; a rendezvous one is not (UCX releases it).
      self->refuse("message sent by rendezvous", false);
      return UCS_ERR_REJECTED;
    }
    const auto bytes = std::span(static_cast<const std::byte*>(data), length);
    const auto parsed = parse_message(std::span(static_cast<const std::byte*>(header), header_length), bytes,
                                      self->key());
    if (parsed.error != nullptr) {
      self->refuse(parsed.error, parsed.unauthenticated);
      return UCS_OK;
    }
    if (!self->messages_enabled_) return UCS_OK;
    self->last_message_ = Clock::now();
    // One copy out of UCX's buffer, into aligned memory the message owns
    // (Cap'n Proto reads it in place).
    ObjectBuffer copy = ObjectBuffer::allocate_host(length);
    if (length > 0) std::memcpy(copy.data, data, length);
    self->receive_message(parsed.header, parsed.name, std::move(copy));
  } catch (const std::exception& e) {
    log()->warn("data plane: receiving a message failed: {}", e.what());
  }
  return UCS_OK;
}

void DataPlane::Impl::receive_message(const MessageHeader& header, std::string_view name, ObjectBuffer bytes) {
  auto [it, fresh] = streams_.try_emplace(header.stream);
  IncomingStream& stream = it->second;
  if (fresh) {
    stream_lru_.push_front(header.stream);
    stream.lru = stream_lru_.begin();
    while (streams_.size() > options_.max_message_streams) {
      streams_.erase(stream_lru_.back());
      stream_lru_.pop_back();
    }
  } else {
    stream_lru_.splice(stream_lru_.begin(), stream_lru_, stream.lru);
  }
  if (header.seq < stream.next_seq || stream.held.count(header.seq) != 0) {
    refuse("duplicate message", false);
    return;
  }
  if (header.seq > stream.next_seq) {
    if (stream.held.size() >= options_.max_held_messages) {
      log()->error("data plane: message stream {:x} lost message {} ({} held after it); dropping the stream",
                   header.stream, stream.next_seq, stream.held.size());
      stream_lru_.erase(stream.lru);
      streams_.erase(it);
      return;
    }
    stream.held.emplace(header.seq, HeldMessage{header.kind, std::string(name), std::move(bytes)});
    return;
  }
  const std::uint64_t id = header.stream;
  ++stream.next_seq;
  deliver_message(header.kind, std::string(name), std::move(bytes));
  // Delivering may not touch streams_ (handlers only post), but look the
  // stream up again anyway.
  for (;;) {
    auto found = streams_.find(id);
    if (found == streams_.end()) return;
    auto next = found->second.held.find(found->second.next_seq);
    if (next == found->second.held.end()) return;
    HeldMessage held = std::move(next->second);
    found->second.held.erase(next);
    ++found->second.next_seq;
    deliver_message(held.kind, std::move(held.name), std::move(held.bytes));
  }
}

void DataPlane::Impl::deliver_message(std::uint8_t kind, std::string name, ObjectBuffer bytes) {
  if (kind == kHello) {
    if (message_handlers_.on_peer)
      guarded("a peer handler", [&] { message_handlers_.on_peer(std::move(name), std::string(bytes.view())); });
    return;
  }
  ++stats_.messages_received;
  if (message_handlers_.on_message)
    guarded("a message handler", [&] { message_handlers_.on_message(std::move(bytes)); });
}

}  // namespace troupe::transport
