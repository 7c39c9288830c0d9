// DataPlane: fetch / push / publish of objects over UCX active messages:
// setup, teardown, the tick and the public face (ucx_data_plane_impl.hpp
// lists the other files).
#include "ucx_data_plane_impl.hpp"

#include <future>

#include "ucx_tick.hpp"

namespace troupe::transport {

// --- setup and teardown ------------------------------------------------------

DataPlane::Impl::Impl(std::shared_ptr<UcxWorker> worker, DataPlaneOptions options)
    : worker_(std::move(worker)), address_(worker_->address()), options_(std::move(options)) {
  std::random_device random;
  next_push_id_ = (static_cast<std::uint64_t>(random()) << 32 ^ random()) & ~std::uint64_t{0xffff};
  if (options_.staging_chunk_bytes == 0) options_.staging_chunk_bytes = std::size_t{4} << 20;
  options_.staging_slots = std::max(options_.staging_slots, 2);
  host_pool_ = std::make_shared<HostPool>(options_.host_cache_bytes);
  options_.max_parked_requests = std::max<std::size_t>(options_.max_parked_requests, 1);
  options_.max_endpoints = std::max<std::size_t>(options_.max_endpoints, 1);
  options_.max_incoming_pushes = std::max<std::size_t>(options_.max_incoming_pushes, 1);
  options_.max_message_streams = std::max<std::size_t>(options_.max_message_streams, 2);
  options_.max_held_messages = std::max<std::size_t>(options_.max_held_messages, 1);
  if (auto secret = membership()) mac_.emplace(secret->data_mac_key());
}

void DataPlane::Impl::refuse(const char* what, bool unauthenticated) {
  if (unauthenticated) ++stats_.unauthenticated_refused;
  else ++stats_.malformed_refused;
  const auto now = Clock::now();
  if (now - last_refusal_log_ < std::chrono::seconds(1)) return;
  last_refusal_log_ = now;
  log()->warn("data plane: refused a {} ({} unauthenticated, {} malformed so far)", what,
              stats_.unauthenticated_refused, stats_.malformed_refused);
}

void DataPlane::Impl::start() {
  ucp_worker_ = worker_->handle();
  for (unsigned id : {kRequestAm, kDataAm, kMessageAm}) {
    ucp_am_handler_param_t handler{};
    handler.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_FLAGS |
                         UCP_AM_HANDLER_PARAM_FIELD_CB | UCP_AM_HANDLER_PARAM_FIELD_ARG;
    handler.id = id;
    handler.flags = UCP_AM_FLAG_WHOLE_MSG;
    handler.cb = id == kRequestAm ? &Impl::on_request_am : id == kDataAm ? &Impl::on_data_am : &Impl::on_message_am;
    handler.arg = this;
    if (ucs_status_t status = ucp_worker_set_am_recv_handler(ucp_worker_, &handler); status != UCS_OK)
      throw_from_ucs(status, "ucp_worker_set_am_recv_handler");
  }
  worker_->set_tick([this] { return tick(); });
}

void DataPlane::Impl::close() {
  closed_ = true;
  // No handler may reference this object once it is gone.
  for (unsigned id : {kRequestAm, kDataAm, kMessageAm}) {
    ucp_am_handler_param_t handler{};
    handler.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_CB;
    handler.id = id;
    handler.cb = nullptr;
    ucp_worker_set_am_recv_handler(ucp_worker_, &handler);
  }
  auto cancelled = [](const char* what) { return make_error(Errc::cancelled, what); };
  while (!fetches_.empty()) {
    complete_fetch(fetches_.begin()->first, {}, cancelled("the data plane shut down before the fetch completed"));
  }
  parked_.clear();
  parked_count_ = 0;
  for (auto& [address, cached] : endpoints_) close_endpoint(*cached.ep);
  endpoints_.clear();
  endpoint_lru_.clear();
  for (auto& ep : failed_endpoints_) close_endpoint(*ep);
  failed_endpoints_.clear();
  for (auto& [id, transfer] : pushes_in_) {
    for (auto& waiting : transfer->waiting) ucp_am_data_release(ucp_worker_, waiting.descriptor);
    transfer->waiting.clear();
  }
  pushes_in_.clear();
  for (auto& waiters : slot_waiters_) waiters.clear();
  inbox_.clear();
  inbox_order_.clear();
  inbox_bytes_ = 0;
  streams_.clear();
  stream_lru_.clear();
  message_handlers_ = {};
}

std::size_t DataPlane::Impl::drain_outstanding() {
  deferred_.clear();  // nothing new starts after close()
  while (ucp_worker_progress(ucp_worker_) != 0) {
  }
  if (outstanding_ == 0) worker_->set_tick(nullptr);
  return outstanding_;
}

// --- the tick: deferred work and deadlines --------------------------------------

Clock::time_point DataPlane::Impl::tick() {
  if (!deferred_.empty()) {
    auto work = std::move(deferred_);
    deferred_.clear();
    for (auto& task : work) task();
  }
  if (!failed_endpoints_.empty()) handle_failed_endpoints();
  const auto now = Clock::now();
  auto next = Clock::time_point::max();
  if (messages_pending_ > 0) {
    if (now >= next_stuck_scan_) {
      fail_stuck_messages(now);
      next_stuck_scan_ = now + kStuckScan;
    }
    next = std::min(next, next_stuck_scan_);
  }

  while (!fetch_deadlines_.empty() && fetch_deadlines_.begin()->first <= now) {
    const auto request_id = fetch_deadlines_.begin()->second;
    auto it = fetches_.find(request_id);
    if (it == fetches_.end()) {
      fetch_deadlines_.erase(fetch_deadlines_.begin());
      continue;
    }
    std::string what = it == fetches_.end() ? std::string() : "fetching object " + hex(it->second.key);
    complete_fetch(request_id, {}, make_error(Errc::timeout, what + ": no answer before the deadline"));
  }
  if (!fetch_deadlines_.empty()) next = std::min(next, fetch_deadlines_.begin()->first);

  if (next_parked_deadline_ <= now) {
    next_parked_deadline_ = Clock::time_point::max();
    for (auto it = parked_.begin(); it != parked_.end();) {
      auto& list = it->second;
      for (auto p = list.begin(); p != list.end();) {
        if (p->deadline <= now) {
          std::exception_ptr error;
          if (p->push) {
          } else if (auto ep = endpoint(p->address, error)) {
            reply_status(ep, p->request_id, it->first, kNotFound);
          }
          p = list.erase(p);
          --parked_count_;
        } else {
          next_parked_deadline_ = std::min(next_parked_deadline_, p->deadline);
          ++p;
        }
      }
      it = list.empty() ? parked_.erase(it) : std::next(it);
    }
  }
  next = std::min(next, next_parked_deadline_);

  while (!inbox_order_.empty() && inbox_order_.front().first <= now) {
    const auto [expires, key] = inbox_order_.front();
    inbox_order_.pop_front();
    auto it = inbox_.find(key);
    if (it != inbox_.end() && it->second.expires == expires) {
      inbox_bytes_ -= it->second.buffer.size;
      inbox_.erase(it);
    }
  }
  if (!inbox_order_.empty()) next = std::min(next, inbox_order_.front().first);
  if (!pushes_in_.empty()) {
    if (now >= next_stall_scan_) {
      drop_stalled_pushes(now);
      next_stall_scan_ = now + std::chrono::seconds(1);
    }
    if (!pushes_in_.empty()) next = std::min(next, next_stall_scan_);
  }
  // Rendezvous and fragmented transfers move only while both sides
  // progress: keep polling while any is in flight (see UcxWorker::Tick).
  if (outstanding_ > 0) return Clock::time_point::min();
  // Messages (calls and replies) come in bursts: keep polling a little
  // after the last one, so that the answer to a call just sent, or the
  // next call of a busy caller, costs no wake-up.
  if (now - last_message_ < options_.message_poll_window) return kPollWhileIdle;
  return next;
}

// Pushes whose next message has not come for inbox_ttl (a pusher that died
// or lied about the size) give back their inbox place.
void DataPlane::Impl::drop_stalled_pushes(Clock::time_point now) {
  std::vector<TransferPtr> stalled;
  for (auto& [id, t] : pushes_in_)
    if (t->in_flight == 0 && now - t->last_message > options_.inbox_ttl) stalled.push_back(t);
  for (auto& t : stalled) {
    if (t->refused) pushes_in_.erase(t->id);
    else transfer_failed(t, make_error(Errc::timeout, "a push stalled"));
  }
}

// --- DataPlane: the public face ------------------------------------------------------

namespace {
// Runs `fn` on the progress thread and waits for its result.
template <class Fn>
auto run_on(UcxWorker& worker, Fn fn) -> decltype(fn()) {
  std::packaged_task<decltype(fn())()> task(std::move(fn));
  auto result = task.get_future();
  if (worker.on_progress_thread()) {
    task();
  } else {
    worker.post([&task] { task(); });
  }
  return result.get();
}
}  // namespace

DataPlane::DataPlane(std::shared_ptr<UcxWorker> worker, DataPlaneOptions options) {
  if (!worker) throw_error(Errc::invalid_argument, "DataPlane: no worker");
  impl_ = std::make_shared<Impl>(std::move(worker), std::move(options));
  run_on(*impl_->worker_, [impl = impl_.get()] { impl->start(); });
}

DataPlane::~DataPlane() {
  auto& worker = *impl_->worker_;
  run_on(worker, [impl = impl_.get()] { impl->close(); });
  // Buffers lent to UCX (receives, sends, staging copies) come back through
  // callbacks that reference impl_: wait for all of them.
  const auto deadline = Clock::now() + std::chrono::seconds(10);
  for (;;) {
    const std::size_t left = run_on(worker, [impl = impl_.get()] { return impl->drain_outstanding(); });
    if (left == 0) return;
    if (Clock::now() > deadline) {
      // Never free what a callback may still touch: leak it instead.
      std::fprintf(stderr, "troupe: DataPlane closed with %zu UCX operations still pending; leaking its state\n", left);
      new std::shared_ptr<Impl>(impl_);
      return;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

const std::string& DataPlane::address() const noexcept { return impl_->address_; }

void DataPlane::enable_messages(std::string name, MessageHandlers handlers) {
  run_on(*impl_->worker_, [impl = impl_.get(), &name, &handlers] {
    impl->enable_messages(std::move(name), std::move(handlers));
  });
}

void DataPlane::send_message(std::string_view peer, ObjectBuffer bytes, PushCallback done) {
  impl_->worker_->post([impl = impl_.get(), peer = std::string(peer), bytes = std::move(bytes),
                        done = std::move(done)]() mutable {
    impl->start_send_message(std::move(peer), std::move(bytes), std::move(done));
  });
}
const std::shared_ptr<UcxWorker>& DataPlane::worker() const noexcept { return impl_->worker_; }

void DataPlane::publish(ObjectId id, ObjectBuffer buffer) { impl_->publish(id, std::move(buffer)); }
bool DataPlane::unpublish(ObjectId id) { return impl_->unpublish(id); }
std::size_t DataPlane::published_count() const { return impl_->published_count(); }

void DataPlane::fetch(std::string_view peer, ObjectId id, FetchOptions options, FetchCallback done) {
  impl_->worker_->post([impl = impl_.get(), peer = std::string(peer), id, options, done = std::move(done)]() mutable {
    impl->start_fetch(std::move(peer), id, options, std::move(done));
  });
}

std::future<ObjectBuffer> DataPlane::fetch(std::string_view peer, ObjectId id, FetchOptions options) {
  auto promise = std::make_shared<std::promise<ObjectBuffer>>();
  auto future = promise->get_future();
  fetch(peer, id, options, [promise](ObjectBuffer buffer, std::exception_ptr error) {
    if (error) promise->set_exception(error);
    else promise->set_value(std::move(buffer));
  });
  return future;
}

void DataPlane::push(std::string_view peer, ObjectId id, ObjectBuffer buffer, PushCallback done) {
  impl_->worker_->post([impl = impl_.get(), peer = std::string(peer), id, buffer = std::move(buffer),
                        done = std::move(done)]() mutable {
    impl->start_push(std::move(peer), id, std::move(buffer), std::move(done));
  });
}

std::future<void> DataPlane::push(std::string_view peer, ObjectId id, ObjectBuffer buffer) {
  auto promise = std::make_shared<std::promise<void>>();
  auto future = promise->get_future();
  push(peer, id, std::move(buffer), [promise](std::exception_ptr error) {
    if (error) promise->set_exception(error);
    else promise->set_value();
  });
  return future;
}

void DataPlane::request_push(std::string_view holder, ObjectId id, std::string_view consumer,
                             std::chrono::milliseconds wait) {
  impl_->worker_->post([impl = impl_.get(), holder = std::string(holder), id, consumer = std::string(consumer), wait] {
    impl->start_push_request(holder, id, consumer, wait);
  });
}

std::future<std::string> DataPlane::peer_transports(std::string_view peer) {
  auto promise = std::make_shared<std::promise<std::string>>();
  auto future = promise->get_future();
  impl_->worker_->post([impl = impl_.get(), peer = std::string(peer), promise] {
    try {
      promise->set_value(impl->peer_transports(peer));
    } catch (...) {
      promise->set_exception(std::current_exception());
    }
  });
  return future;
}

std::future<DataPlane::Stats> DataPlane::stats() {
  auto promise = std::make_shared<std::promise<Stats>>();
  auto future = promise->get_future();
  impl_->worker_->post([impl = impl_.get(), promise] { promise->set_value(impl->stats()); });
  return future;
}


}  // namespace troupe::transport
