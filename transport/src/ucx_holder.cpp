// DataPlane, holder side: published objects, requests (parked until
// published), and sending replies and pushes.
#include "ucx_data_plane_impl.hpp"

namespace troupe::transport {

// --- holder side -------------------------------------------------------------------

void DataPlane::Impl::publish(ObjectId id, ObjectBuffer buffer) {
  if (buffer.meta.size() > kMaxMetaBytes)
    throw_error(Errc::invalid_argument, "object meta of " + std::to_string(buffer.meta.size()) + " bytes (at most " +
                                            std::to_string(kMaxMetaBytes) + ")");
  bool wake;
  {
    std::lock_guard lock(served_mutex_);
    served_[id] = std::move(buffer);
    wake = parked_count_.load() > 0;
  }
  if (wake) worker_->post([this, id] { wake_parked(id); });
}

bool DataPlane::Impl::unpublish(ObjectId id) {
  std::lock_guard lock(served_mutex_);
  return served_.erase(id) > 0;
}

std::size_t DataPlane::Impl::published_count() const {
  std::lock_guard lock(served_mutex_);
  return served_.size();
}

ucs_status_t DataPlane::Impl::on_request_am(void* arg, const void* header, size_t header_length, void* data,
                                            size_t length, const ucp_am_recv_param_t* param) {
  auto* self = static_cast<Impl*>(arg);
  // No exception may cross UCX's C frames.
  try {
    if (self->closed_) return UCS_OK;
    if ((param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) != 0) {
      // A request is small; a rendezvous one is not ours (UCX releases it).
      self->refuse("request sent by rendezvous", false);
      return UCS_OK;
    }
    const auto parsed = parse_request(std::span(static_cast<const std::byte*>(header), header_length),
                                      std::span(static_cast<const std::byte*>(data), length), self->key());
    if (parsed.error != nullptr) {
      self->refuse(parsed.error, parsed.unauthenticated);
      return UCS_OK;
    }
    // Connecting to the requester may need UCX calls not allowed inside a
    // callback: answer in the tick right after this progress call.
    self->deferred_.push_back([self, request = parsed.header, address = std::string(parsed.requester),
                               push = parsed.push] { self->handle_request(request, address, push); });
  } catch (const std::exception& e) {
    log()->warn("data plane: a request failed: {}", e.what());
  }
  return UCS_OK;
}

void DataPlane::Impl::handle_request(RequestHeader request, std::string address, bool push) {
  std::exception_ptr error;
  auto ep = endpoint(address, error);
  if (!ep) return;  // cannot answer; the requester times out or sees our failure
  const ObjectId key{request.id_hi, request.id_lo};
  ObjectBuffer buffer;
  bool found = false;
  bool busy = false;
  {
    std::lock_guard lock(served_mutex_);
    auto it = served_.find(key);
    if (it != served_.end()) {
      buffer = it->second;
      found = true;
    } else if (request.wait_ms > 0 && parked_count_.load() >= options_.max_parked_requests) {
      busy = true;  // bounded: answered at once instead of parked
    } else if (request.wait_ms > 0) {
      // Counted under the lock, so a publish() racing with this sees it.
      ++parked_count_;
      const auto wait = std::min<std::chrono::milliseconds>(std::chrono::milliseconds(request.wait_ms),
                                                             options_.max_park_wait);
      const auto deadline = Clock::now() + wait;
      parked_[key].push_back(Parked{request.request_id, address, deadline, push});
      next_parked_deadline_ = std::min(next_parked_deadline_, deadline);
      return;
    }
  }
  if (busy) {
    ++stats_.requests_busy;
    if (push) return;  // the consumer pulls instead
    return reply_status(ep, request.request_id, key, kBusy);
  }
  if (push) {
    // Pushed to the consumer the moment it exists (now, or when published);
    // nothing answers a push request: a consumer whose push does not come
    // fetches as usual.
    if (!found) return;
    ++stats_.pushes_requested;
    // Its failure (refused by a consumer that has the object already, or
    // whose inbox is full) needs no action here: the consumer pulls.
    return start_push(address, key, std::move(buffer), [](std::exception_ptr) {});
  }
  if (!found) return reply_status(ep, request.request_id, key, kNotFound);
  if (buffer.memory == MemoryType::cuda && !worker_->context()->cuda_native() && cuda() == nullptr)
    return reply_status(ep, request.request_id, key, kUnsupported);
  auto out = std::make_shared<Outgoing>();
  out->ep = ep;
  out->buffer = std::move(buffer);
  out->header.kind = kReply;
  out->header.transfer_id = request.request_id;
  out->header.id_hi = key.hi();
  out->header.id_lo = key.lo();
  ++stats_.fetches_served;
  start_send(out);
}

void DataPlane::Impl::wake_parked(ObjectId id) {
  auto it = parked_.find(id);
  if (it == parked_.end()) return;
  auto list = std::move(it->second);
  parked_.erase(it);
  parked_count_ -= list.size();
  for (auto& p : list) {
    // A consumer that asked for the object itself gets the reply; the push
    // to it would carry the same bytes a second time.
    if (p.push && std::any_of(list.begin(), list.end(), [&](const Parked& o) { return !o.push && o.address == p.address; }))
      continue;
    RequestHeader request;
    request.request_id = p.request_id;
    request.id_hi = id.hi();
    request.id_lo = id.lo();
    request.wait_ms = 0;  // published now; if unpublished again meanwhile: not_found
    handle_request(request, p.address, p.push);
  }
}

void DataPlane::Impl::reply_status(const std::shared_ptr<Endpoint>& ep, std::uint64_t request_id, ObjectId key,
                                   Status status) {
  auto out = std::make_shared<Outgoing>();
  out->ep = ep;
  out->header.kind = kReply;
  out->header.status = status;
  out->header.transfer_id = request_id;
  out->header.id_hi = key.hi();
  out->header.id_lo = key.lo();
  start_send(out);
}

// --- sending -------------------------------------------------------------------------

void DataPlane::Impl::start_send(const OutgoingPtr& out) {
  out->header.total = out->buffer.size;
  out->header.memory = static_cast<std::uint8_t>(out->buffer.memory);
  const bool device = out->buffer.memory == MemoryType::cuda && out->buffer.size > 0;
  if (device && !worker_->context()->cuda_native()) {
    if (cuda() == nullptr) {
      out->error = make_error(Errc::unsupported, "CUDA memory, but this build or process has no CUDA");
      return send_finished(out);
    }
    out->staged = true;
    return pump_staged(out);
  }
  out->next_offset = out->buffer.size;
  send_message(out, 0, out->buffer.size, out->buffer.data,
               out->buffer.size == 0 ? MemoryType::host : out->buffer.memory, nullptr);
}

// Staging a CUDA source: each free pinned slot takes the next chunk
// (device -> host copy on the stream); a chunk is sent as soon as its copy
// finished, and its slot takes the next chunk once that send completed.
void DataPlane::Impl::pump_staged(const OutgoingPtr& out) {
  auto* staging = cuda();
  if (closed_ && !out->error) out->error = make_error(Errc::cancelled, "the data plane shut down");
  while (!out->error && out->next_offset < out->buffer.size) {
    void* slot = take_slot(SlotUse::send);
    if (slot == nullptr) {
      if (!out->waiting_for_slot) {
        out->waiting_for_slot = true;
        wait_for_slot(SlotUse::send, [this, out] {
          out->waiting_for_slot = false;
          pump_staged(out);
        });
      }
      return;
    }
    const std::uint64_t offset = out->next_offset;
    const std::size_t length =
        static_cast<std::size_t>(std::min<std::uint64_t>(staging->chunk_bytes(), out->buffer.size - offset));
    out->next_offset += length;
    ++out->in_flight;
    ++outstanding_;
    staging->device_to_host(slot, static_cast<const char*>(out->buffer.data) + offset, length,
                            [this, out, slot, offset, length](std::exception_ptr error) {
                              --outstanding_;
                              --out->in_flight;
                              if (error || closed_) {
                                give_slot(slot, SlotUse::send);
                                if (!out->error) out->error = error ? error : make_error(Errc::cancelled, "shut down");
                                if (out->in_flight == 0) send_finished(out);
                                return;
                              }
                              send_message(out, offset, length, slot, MemoryType::host, slot);
                            });
  }
}

void DataPlane::Impl::send_message(const OutgoingPtr& out, std::uint64_t offset, std::size_t length,
                                   const void* data, MemoryType memory, void* slot) {
  if (out->ep->ep == nullptr || out->ep->failed) {
    if (slot != nullptr) give_slot(slot, SlotUse::send);
    if (!out->error)
      out->error = out->ep->failed ? make_error_from_ucs(out->ep->failure, "sending an object")
                                   : make_error(Errc::cancelled, "the endpoint was closed");
    if (out->in_flight == 0) send_finished(out);
    return;
  }
  auto* op = new SendOp{this, out, out->header, slot};
  op->header.offset = offset;
  op->wire = encode_data(op->header, key(), offset == 0 ? std::string_view(out->buffer.meta) : std::string_view());
  ucp_request_param_t param{};
  param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_FLAGS |
                       UCP_OP_ATTR_FIELD_MEMORY_TYPE;
  param.cb.send = &Impl::on_send_done;
  param.user_data = op;
  param.flags = length >= options_.rndv_threshold ? UCP_AM_SEND_FLAG_RNDV : 0;
  param.memory_type = ucs_memory(memory);
  ++out->in_flight;
  ucs_status_ptr_t request =
      ucp_am_send_nbx(out->ep->ep, kDataAm, op->wire.bytes.data(), op->wire.size, data, length, &param);
  if (request == nullptr) {
    on_send_done(nullptr, UCS_OK, op);
  } else if (UCS_PTR_IS_ERR(request)) {
    on_send_done(nullptr, UCS_PTR_STATUS(request), op);
  } else {
    ++outstanding_;
  }
}

void DataPlane::Impl::on_send_done(void* request, ucs_status_t status, void* user_data) {
  guarded("on_send_done", [&] {
    std::unique_ptr<SendOp> op(static_cast<SendOp*>(user_data));
    Impl* self = op->plane;
    if (request != nullptr) {
      --self->outstanding_;
      ucp_request_free(request);
    }
    auto& out = op->out;
    --out->in_flight;
    if (status != UCS_OK && !out->error)
      out->error = make_error_from_ucs(status, (out->push ? "pushing object " : "sending object ") +
                                                   hex(ObjectId{out->header.id_hi, out->header.id_lo}));
    if (op->slot != nullptr) self->give_slot(op->slot, SlotUse::send);  // resumes a staged send
    if (out->in_flight == 0 && (out->error || out->next_offset >= out->buffer.size)) self->send_finished(out);
  });
}

void DataPlane::Impl::send_finished(const OutgoingPtr& out) {
  if (out->finished) return;
  out->finished = true;
  if (out->done) guarded("a push callback", [&] { out->done(out->error); });
  out->buffer = {};  // the sender's reference goes as soon as UCX is done with it
}

}  // namespace troupe::transport
