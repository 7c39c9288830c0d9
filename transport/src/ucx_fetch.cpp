// DataPlane, consumer side: fetches, and receiving replies and pushes.
#include "ucx_data_plane_impl.hpp"

namespace troupe::transport {

// --- consumer side: fetch ----------------------------------------------------------

void DataPlane::Impl::start_fetch(std::string peer, ObjectId id, FetchOptions options, FetchCallback done) {
  if (closed_) return done({}, make_error(Errc::cancelled, "the data plane is shut down"));
  if (options.destination == MemoryType::cuda && !options_.allocator && cuda() == nullptr)
    return done({}, make_error(Errc::unsupported, "fetch into CUDA memory, but this build or process has no CUDA"));
  if (auto it = inbox_.find(id); it != inbox_.end()) {
    ObjectBuffer buffer = std::move(it->second.buffer);
    inbox_bytes_ -= buffer.size;
    inbox_.erase(it);  // its inbox_order_ entry expires harmlessly
    if (buffer.memory == destination_for(options.destination, options.follow_source, buffer.memory) ||
        buffer.size == 0) {
      ++stats_.fetches_from_inbox;
      return done(std::move(buffer), nullptr);
    }
    // Pushed in the other memory type: fetch it from the holder instead.
  }
  std::exception_ptr error;
  auto ep = endpoint(peer, error);
  if (!ep) return done({}, error);
  const std::uint64_t request_id = next_request_id_++;
  const auto timeout = std::max(options.timeout, std::chrono::milliseconds(0));
  Fetch fetch;
  fetch.key = id;
  fetch.done = std::move(done);
  fetch.deadline = Clock::now() + timeout;
  fetch.destination = options.destination;
  fetch.follow_source = options.follow_source;
  fetch.ep = ep;
  fetch.wait_ms = options.wait_for_publish
                      ? static_cast<std::uint32_t>(std::min<std::int64_t>(timeout.count(), 0xffffffff))
                      : 0;
  // A push of this object already arriving (one the holder was asked for)
  // completes the fetch: asking the holder too would send the bytes twice.
  for (const auto& [transfer_id, t] : pushes_in_) {
    if (t->key == id && !t->refused && !t->finished && !t->error &&
        (destination_for(options.destination, options.follow_source, t->destination) == t->destination || t->total == 0)) {
      fetch.awaiting_push = true;
      break;
    }
  }
  const bool awaiting_push = fetch.awaiting_push;
  fetch_deadlines_.emplace(fetch.deadline, request_id);
  fetches_by_key_.emplace(id, request_id);
  fetches_.emplace(request_id, std::move(fetch));
  if (!awaiting_push) send_request(request_id);
}

void DataPlane::Impl::send_request(std::uint64_t request_id) {
  const Fetch& fetch = fetches_.at(request_id);
  const ObjectId id = fetch.key;
  auto* op = new RequestOp{this, request_id, {}, address_, fetch.ep};
  op->header.request_id = request_id;
  op->header.id_hi = id.hi();
  op->header.id_lo = id.lo();
  op->header.wait_ms = fetch.wait_ms;
  op->wire = encode_request(op->header, op->address, key());
  ucp_request_param_t param{};
  param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_MEMORY_TYPE;
  param.cb.send = &Impl::on_request_sent;
  param.user_data = op;
  param.memory_type = UCS_MEMORY_TYPE_HOST;
  if (fetch.ep->ep == nullptr || fetch.ep->failed) {
    const auto status = fetch.ep->failed ? fetch.ep->failure : UCS_ERR_CANCELED;
    return on_request_sent(nullptr, status, op);
  }
  send_request_am(fetch.ep->ep, op, param);
}

void DataPlane::Impl::on_request_sent(void* request, ucs_status_t status, void* user_data) {
  guarded("on_request_sent", [&] {
    std::unique_ptr<RequestOp> op(static_cast<RequestOp*>(user_data));
    Impl* self = op->plane;
    if (request != nullptr) {
      --self->outstanding_;
      ucp_request_free(request);
    }
    if (status != UCS_OK) {
      const ObjectId key{op->header.id_hi, op->header.id_lo};
      self->complete_fetch(op->request_id, {}, make_error_from_ucs(status, "asking the holder for object " + hex(key)));
    }
  });
}

void DataPlane::Impl::erase_fetch(std::unordered_map<std::uint64_t, Fetch>::iterator it) {
  fetch_deadlines_.erase({it->second.deadline, it->first});
  auto [begin, end] = fetches_by_key_.equal_range(it->second.key);
  for (auto k = begin; k != end; ++k) {
    if (k->second == it->first) {
      fetches_by_key_.erase(k);
      break;
    }
  }
  fetches_.erase(it);
}

void DataPlane::Impl::note_fetched(ObjectId key) {
  const auto now = Clock::now();
  while (!recently_fetched_order_.empty() &&
         (recently_fetched_order_.front().first + options_.inbox_ttl <= now || recently_fetched_order_.size() >= 4096)) {
    auto [when, old] = recently_fetched_order_.front();
    recently_fetched_order_.pop_front();
    if (auto f = recently_fetched_.find(old); f != recently_fetched_.end() && f->second == when) recently_fetched_.erase(f);
  }
  recently_fetched_[key] = now;
  recently_fetched_order_.emplace_back(now, key);
}

void DataPlane::Impl::unwait_push(ObjectId key) {
  std::vector<std::uint64_t> waiting;
  auto [begin, end] = fetches_by_key_.equal_range(key);
  for (auto it = begin; it != end; ++it) {
    auto fetch = fetches_.find(it->second);
    if (fetch != fetches_.end() && fetch->second.awaiting_push) {
      fetch->second.awaiting_push = false;
      waiting.push_back(it->second);
    }
  }
  for (auto request_id : waiting) send_request(request_id);
}

void DataPlane::Impl::complete_fetch(std::uint64_t request_id, ObjectBuffer buffer, std::exception_ptr error) {
  auto it = fetches_.find(request_id);
  if (it == fetches_.end()) return;
  if (!error) note_fetched(it->second.key);
  auto done = std::move(it->second.done);
  auto transfer = std::move(it->second.transfer);
  erase_fetch(it);
  if (transfer && error) {
    // Rendezvous messages still waiting for a staging slot are dropped.
    for (auto& waiting : transfer->waiting) ucp_am_data_release(ucp_worker_, waiting.descriptor);
    transfer->waiting.clear();
    transfer->finished = true;
  }
  guarded("a fetch callback", [&] { done(std::move(buffer), std::move(error)); });
}

// --- consumer side: receiving ----------------------------------------------------

ucs_status_t DataPlane::Impl::on_data_am(void* arg, const void* header, size_t header_length, void* data,
                                         size_t length, const ucp_am_recv_param_t* param) {
  auto* self = static_cast<Impl*>(arg);
  const bool rndv = (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) != 0;
  // No exception may cross UCX's C frames. A refused rendezvous message is
  // released by UCX when we return anything but UCS_INPROGRESS.
  try {
    if (self->closed_) return UCS_OK;
    // For rendezvous, `length` is the announced size (the bytes are not here yet).
    const auto parsed = parse_data(std::span(static_cast<const std::byte*>(header), header_length), length, self->key());
    if (parsed.error != nullptr) {
      self->refuse(parsed.error, parsed.unauthenticated);
      return rndv ? UCS_ERR_REJECTED : UCS_OK;
    }
    return self->on_data(parsed.header, parsed.meta, data, length, rndv);
  } catch (const std::exception& e) {
    log()->warn("data plane: receiving a message failed: {}", e.what());
    return rndv ? UCS_ERR_REJECTED : UCS_OK;
  }
}

MemoryType DataPlane::Impl::destination_for(MemoryType asked, bool follow_source, MemoryType source) {
  if (!follow_source) return asked;
  return source == MemoryType::cuda && (options_.allocator || cuda() != nullptr) ? MemoryType::cuda : asked;
}

ucs_status_t DataPlane::Impl::on_data(const DataHeader& header, std::string_view meta, void* data, std::size_t length,
                                      bool rndv) {
  const ObjectId key{header.id_hi, header.id_lo};
  if (closed_) return UCS_OK;
  TransferPtr t;
  if (header.kind == kReply) {
    auto it = fetches_.find(header.transfer_id);
    if (it == fetches_.end()) return UCS_OK;  // timed out, or a push answered it: drop
    if (header.status != kOk) {
      if (header.status == kNotFound && it->second.wait_ms > 0) {
        // The holder parked the request and its wait ran out: for the
        // consumer that is its own deadline passing (the two timers race).
        complete_fetch(header.transfer_id, {},
                       make_error(Errc::timeout, "fetching object " + hex(key) + ": not published within " +
                                                              std::to_string(it->second.wait_ms) + " ms"));
        return UCS_OK;
      }
      const auto code = header.status == kNotFound  ? Errc::not_found
                        : header.status == kBusy    ? Errc::transport
                                                    : Errc::unsupported;
      const char* why = header.status == kNotFound ? ": the holder has no such object"
                        : header.status == kBusy
                            ? ": the holder has too many requests waiting for objects (busy); try again"
                            : ": the holder cannot read its memory (no CUDA there)";
      complete_fetch(header.transfer_id, {}, make_error(code, "fetching object " + hex(key) + why));
      return UCS_OK;
    }
    if (!it->second.transfer) {
      // A push of this object is already arriving (the holder was asked to
      // push it here): the reply is dropped before its bytes move (a
      // rendezvous reply's bytes never leave the holder), and the fetch
      // waits for the push (asking again if the push fails). One message
      // replies only: a staged reply's later chunks would find no transfer.
      if (header.offset == 0 && length == header.total) {
        for (const auto& [transfer_id, push] : pushes_in_) {
          if (push->key == key && !push->refused && !push->finished && !push->error &&
              push->destination == destination_for(it->second.destination, it->second.follow_source, push->destination)) {
            it->second.awaiting_push = true;
            return UCS_OK;
          }
        }
      }
      t = std::make_shared<Transfer>();
      t->id = header.transfer_id;
      t->key = key;
      t->destination = destination_for(it->second.destination, it->second.follow_source,
                                       static_cast<MemoryType>(header.memory));
      it->second.transfer = t;
    } else {
      t = it->second.transfer;
    }
  } else if (header.kind == kPush) {
    auto it = pushes_in_.find(header.transfer_id);
    if (it != pushes_in_.end()) {
      t = it->second;
    } else if (pushes_in_.size() >= options_.max_incoming_pushes) {
      ++stats_.pushes_refused;  // untracked: its later messages are dropped as unknown
      return rndv ? UCS_ERR_EXCEEDS_LIMIT : UCS_OK;
    } else {
      t = std::make_shared<Transfer>();
      t->id = header.transfer_id;
      t->push = true;
      t->key = key;
      t->total = header.total;
      const auto source = static_cast<MemoryType>(header.memory);
      t->destination = source == MemoryType::cuda && (options_.allocator || cuda() != nullptr) ? MemoryType::cuda
                                                                                               : MemoryType::host;
      bool reply_arriving = false;  // a fetch of it whose reply's bytes are already coming
      auto [begin, end] = fetches_by_key_.equal_range(key);
      for (auto f = begin; f != end; ++f) {
        auto fetch = fetches_.find(f->second);
        reply_arriving = reply_arriving || (fetch != fetches_.end() && fetch->second.transfer != nullptr);
      }
      if (reply_arriving) {
        t->refused = true;  // the same bytes are on their way as the reply
        ++stats_.pushes_refused;
      } else if (fetches_by_key_.count(key) == 0) {
        if (recently_fetched_.count(key) != 0) {
          t->refused = true;  // it crossed the reply that brought the object
          ++stats_.pushes_refused;
        } else if (!inbox_has_room(header.total)) {
          t->refused = true;
          ++stats_.pushes_refused;
        } else {
          t->counted = true;
          t->reserved = header.total;
          inbox_reserved_ += t->reserved;
          ++pushes_accepted_in_flight_;
        }
      }
      pushes_in_.emplace(t->id, t);
    }
    t->last_message = Clock::now();
    if (t->refused) {
      t->seen += length;
      if (t->seen >= t->total) pushes_in_.erase(t->id);
      // A rendezvous push learns of the refusal: its send completes with this.
      return rndv ? UCS_ERR_EXCEEDS_LIMIT : UCS_OK;
    }
  } else {
    return UCS_OK;
  }

  if (t->finished || t->error) return UCS_OK;
  if (header.total != (t->allocated ? t->total : header.total) || header.offset > header.total ||
      length > header.total - header.offset) {
    transfer_failed(t, make_error(Errc::protocol, "object " + hex(key) + ": a message outside the object"));
    return UCS_OK;
  }
  t->seen += length;
  if (!meta.empty()) t->meta.assign(meta);
  if (!t->allocated) {
    t->total = header.total;
    try {
      t->buffer = allocate(static_cast<std::size_t>(t->total), t->destination);
    } catch (...) {
      transfer_failed(t, std::current_exception());
      return rndv ? UCS_ERR_NO_MEMORY : UCS_OK;
    }
    t->allocated = true;
    t->staged = t->destination == MemoryType::cuda && !worker_->context()->cuda_native();
    if (t->destination == MemoryType::cuda && cuda() == nullptr) {
      // A user allocator gave device memory, but nothing here can copy into it.
      transfer_failed(t, make_error(Errc::unsupported, "no CUDA in this build or process to receive into device memory"));
      return rndv ? UCS_ERR_UNSUPPORTED : UCS_OK;
    }
  }
  if (rndv) {
    if (t->staged) {
      t->waiting.push_back({data, header.offset, length});
      start_waiting_receives(t);
    } else {
      receive_rndv(t, data, header.offset, length, nullptr);
    }
    return UCS_INPROGRESS;  // the descriptor is ours (received now or when a slot frees)
  }
  // Eager: the bytes are in UCX's buffer until we return; one copy.
  if (length > 0) {
    char* destination = static_cast<char*>(t->buffer.data) + header.offset;
    if (t->destination == MemoryType::cuda) {
      try {
        cuda()->copy_to_device(destination, data, length);  // not null: checked at allocation
      } catch (...) {
        transfer_failed(t, std::current_exception());
        return UCS_OK;
      }
    } else {
      std::memcpy(destination, data, length);
    }
  }
  landed(t, length);
  return UCS_OK;
}

void DataPlane::Impl::receive_rndv(const TransferPtr& t, void* descriptor, std::uint64_t offset, std::size_t length,
                                   void* slot) {
  auto* op = new RecvOp{this, t, offset, length, slot};
  void* destination = static_cast<char*>(t->buffer.data) + offset;
  MemoryType memory = t->destination;
  if (slot != nullptr) {  // staged: into pinned host memory first
    destination = slot;
    memory = MemoryType::host;
  }
  ucp_request_param_t param{};
  param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_MEMORY_TYPE;
  param.cb.recv_am = &Impl::on_recv_done;
  param.user_data = op;
  param.memory_type = ucs_memory(memory);
  ++t->in_flight;
  ucs_status_ptr_t request = ucp_am_recv_data_nbx(ucp_worker_, descriptor, destination, length, &param);
  if (request == nullptr) {
    on_recv_done(nullptr, UCS_OK, length, op);
  } else if (UCS_PTR_IS_ERR(request)) {
    on_recv_done(nullptr, UCS_PTR_STATUS(request), 0, op);
  } else {
    ++outstanding_;
  }
}

void DataPlane::Impl::start_waiting_receives(const TransferPtr& t) {
  while (!t->waiting.empty() && !t->finished && !t->error) {
    void* slot = take_slot(SlotUse::receive);
    if (slot == nullptr) {
      if (!t->waiting_for_slot) {
        t->waiting_for_slot = true;
        wait_for_slot(SlotUse::receive, [this, t] {
          t->waiting_for_slot = false;
          start_waiting_receives(t);
        });
      }
      return;
    }
    const auto next = t->waiting.front();
    t->waiting.pop_front();
    receive_rndv(t, next.descriptor, next.offset, next.length, slot);
  }
}

void* DataPlane::Impl::take_slot(SlotUse use) {
  const int sends = std::max(1, options_.staging_slots / 2);
  const int quota = use == SlotUse::send ? sends : options_.staging_slots - sends;
  auto& used = slots_used_[static_cast<int>(use)];
  if (used >= quota) return nullptr;
  void* slot = cuda()->acquire_slot();
  if (slot != nullptr) ++used;
  return slot;
}

void DataPlane::Impl::give_slot(void* slot, SlotUse use) {
  cuda()->release_slot(slot);
  --slots_used_[static_cast<int>(use)];
  // Resume waiters until one takes the slot (a waiter whose transfer ended
  // meanwhile takes nothing); one that still lacks slots queues itself again.
  auto& waiters = slot_waiters_[static_cast<int>(use)];
  const int before = slots_used_[static_cast<int>(use)];
  while (!waiters.empty() && slots_used_[static_cast<int>(use)] == before) {
    auto resume = std::move(waiters.front());
    waiters.pop_front();
    resume();
  }
}

void DataPlane::Impl::wait_for_slot(SlotUse use, std::function<void()> resume) {
  slot_waiters_[static_cast<int>(use)].push_back(std::move(resume));
}

void DataPlane::Impl::on_recv_done(void* request, ucs_status_t status, size_t, void* user_data) {
  guarded("on_recv_done", [&] {
    std::unique_ptr<RecvOp> op(static_cast<RecvOp*>(user_data));
    Impl* self = op->plane;
    if (request != nullptr) {
      --self->outstanding_;
      ucp_request_free(request);
    }
    const TransferPtr t = op->transfer;
    if (status != UCS_OK) {
      --t->in_flight;
      if (op->slot != nullptr) self->give_slot(op->slot, SlotUse::receive);
      self->transfer_failed(t, make_error_from_ucs(status, "receiving object " + hex(t->key)));
      return;
    }
    if (op->slot == nullptr) {
      --t->in_flight;
      self->landed(t, op->length);
      return;
    }
    // Staged: pinned slot -> device, then the slot takes the next message.
    void* slot = op->slot;
    const std::size_t length = op->length;
    ++self->outstanding_;
    self->cuda()->host_to_device(static_cast<char*>(t->buffer.data) + op->offset, slot, length,
                                 [self, t, slot, length](std::exception_ptr error) {
                                   --self->outstanding_;
                                   --t->in_flight;
                                   self->give_slot(slot, SlotUse::receive);  // resumes a waiting receive
                                   if (error) return self->transfer_failed(t, error);
                                   self->landed(t, length);
                                 });
  });
}

void DataPlane::Impl::landed(const TransferPtr& t, std::size_t length) {
  t->landed += length;
  maybe_finish(t);
}

void DataPlane::Impl::maybe_finish(const TransferPtr& t) {
  if (t->finished || t->error || t->landed < t->total || t->in_flight > 0) return;
  t->finished = true;
  t->buffer.meta = std::move(t->meta);
  if (!t->push) return complete_fetch(t->id, std::move(t->buffer), nullptr);

  pushes_in_.erase(t->id);
  const bool reserved = t->counted;  // accepted with an inbox place (no fetch was waiting then)
  release_inbox_place(*t);
  ++stats_.pushes_received;
  // Fetches of this id (into this memory type) that are waiting for the
  // holder's reply take it now; the reply, when it comes, is dropped.
  std::vector<std::uint64_t> waiting;
  auto [begin, end] = fetches_by_key_.equal_range(t->key);
  for (auto it = begin; it != end; ++it) {
    auto fetch = fetches_.find(it->second);
    if (fetch != fetches_.end() &&
        (destination_for(fetch->second.destination, fetch->second.follow_source, t->buffer.memory) ==
             t->buffer.memory ||
         t->total == 0))
      waiting.push_back(it->second);
  }
  if (!waiting.empty()) {
    for (auto request_id : waiting) complete_fetch(request_id, t->buffer, nullptr);
    unwait_push(t->key);  // any left wanted another memory type
    return;
  }
  unwait_push(t->key);
  if (closed_) return;
  // Accepted for a fetch that the holder's reply completed meanwhile (the
  // two crossed), or without an inbox place: nobody will claim it, and it
  // must not hold memory beyond the inbox's bounds.
  if (recently_fetched_.count(t->key) != 0 || (!reserved && !inbox_has_room(t->buffer.size))) {
    ++stats_.pushes_refused;
    return;
  }
  const auto expires = Clock::now() + options_.inbox_ttl;
  auto& entry = inbox_[t->key];
  inbox_bytes_ -= entry.buffer.size;  // a second push of the same id replaces the first
  entry = InboxEntry{std::move(t->buffer), expires};
  inbox_bytes_ += entry.buffer.size;
  inbox_order_.emplace_back(expires, t->key);
}

void DataPlane::Impl::transfer_failed(const TransferPtr& t, std::exception_ptr error) {
  if (t->finished) return;
  if (!t->error) t->error = error;
  for (auto& waiting : t->waiting) ucp_am_data_release(ucp_worker_, waiting.descriptor);
  t->waiting.clear();
  if (t->push) {
    pushes_in_.erase(t->id);
    release_inbox_place(*t);
    t->finished = true;
    if (!closed_) unwait_push(t->key);  // fetches that counted on it ask the holder
    return;
  }
  t->finished = true;
  complete_fetch(t->id, {}, t->error);
}

void DataPlane::Impl::release_inbox_place(Transfer& t) {
  if (!t.counted) return;
  t.counted = false;
  inbox_reserved_ -= t.reserved;
  t.reserved = 0;
  --pushes_accepted_in_flight_;
}

bool DataPlane::Impl::inbox_has_room(std::size_t bytes) const {
  return inbox_.size() + pushes_accepted_in_flight_ < options_.inbox_max_objects &&
         inbox_bytes_ + inbox_reserved_ + bytes <= options_.inbox_max_bytes;
}

ObjectBuffer DataPlane::Impl::allocate(std::size_t size, MemoryType memory) {
  ObjectBuffer buffer;
  if (options_.allocator) {
    buffer = options_.allocator(size, memory);
  } else if (memory == MemoryType::cuda) {
    if (cuda() == nullptr) throw_error(Errc::unsupported, "no CUDA to allocate device memory");
    buffer = cuda()->allocate_device(size);
  } else {
    buffer = host_pool_->allocate(size);
  }
  if (buffer.size < size || buffer.memory != memory || (size > 0 && buffer.data == nullptr))
    throw_error(Errc::invalid_argument, "the allocator returned a buffer of the wrong size or memory type");
  buffer.size = size;
  return buffer;
}

detail::CudaSupport* DataPlane::Impl::cuda() {
  if (!cuda_tried_) {
    cuda_tried_ = true;
    cuda_ = detail::CudaSupport::create([worker = worker_.get()](std::function<void()> task) { worker->post(std::move(task)); },
                                        options_.staging_chunk_bytes, options_.staging_slots);
  }
  return cuda_.get();
}

}  // namespace troupe::transport
