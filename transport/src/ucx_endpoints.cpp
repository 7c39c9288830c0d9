// DataPlane: cached endpoints to peer workers and their failures.
#include "ucx_data_plane_impl.hpp"

#include <cstdio>
#include <cstdlib>

namespace troupe::transport {

// --- endpoints -----------------------------------------------------------------

std::shared_ptr<Endpoint> DataPlane::Impl::endpoint(const std::string& address, std::exception_ptr& error) {
  auto it = endpoints_.find(address);
  if (it != endpoints_.end() && !it->second.ep->failed) {
    endpoint_lru_.splice(endpoint_lru_.begin(), endpoint_lru_, it->second.lru);
    return it->second.ep;
  }
  if (auto failed = recently_failed_.find(address); failed != recently_failed_.end()) {
    if (Clock::now() - failed->second < kReconnectHoldoff) {
      error = make_error(Errc::object_lost, "the peer worker's endpoint failed less than a second ago");
      return nullptr;
    }
    recently_failed_.erase(failed);
  }
  // UCX trusts a worker address's contents; its length at least is checked
  // here (a request's was checked by parse_request, after its tag).
  if (address.size() < kMinAddressBytes || address.size() > kMaxAddressBytes) {
    error = make_error(Errc::invalid_argument, "a UCX worker address of " + std::to_string(address.size()) +
                                                   " bytes (expected " + std::to_string(kMinAddressBytes) + " to " +
                                                   std::to_string(kMaxAddressBytes) + ")");
    return nullptr;
  }
  auto ep = std::make_shared<Endpoint>(worker_, address);
  ep->plane = this;
  ucp_ep_params_t params{};
  params.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                      UCP_EP_PARAM_FIELD_ERR_HANDLER;
  params.address = reinterpret_cast<const ucp_address_t*>(address.data());
  // A dead peer fails this endpoint's operations (on_ep_error) instead of
  // leaving them pending until their deadlines.
  params.err_mode = worker_->context()->options().detect_peer_failure ? UCP_ERR_HANDLING_MODE_PEER
                                                                      : UCP_ERR_HANDLING_MODE_NONE;
  params.err_handler.cb = &Impl::on_ep_error;
  params.err_handler.arg = ep.get();
  if (ucs_status_t status = ucp_ep_create(ucp_worker_, &params, &ep->ep); status != UCS_OK) {
    error = make_error_from_ucs(status, "connecting to a peer worker");
    return nullptr;
  }
  if (it != endpoints_.end()) {  // a failed one: replaced
    endpoint_lru_.erase(it->second.lru);
    endpoints_.erase(it);
  }
  endpoint_lru_.push_front(address);
  endpoints_[address] = CachedEndpoint{ep, endpoint_lru_.begin()};
  if (endpoints_.size() > options_.max_endpoints) evict_idle_endpoints();
  return ep;
}

// Closes the least recently used endpoints that no operation holds until the
// cache is back within its bound (in-use ones stay: they are few, since
// fetches, parked requests and pushes are bounded).
void DataPlane::Impl::evict_idle_endpoints() {
  for (auto lru = endpoint_lru_.end(); lru != endpoint_lru_.begin() && endpoints_.size() > options_.max_endpoints;) {
    --lru;
    auto it = endpoints_.find(*lru);
    if (it == endpoints_.end() || it->second.ep.use_count() > 1) continue;
    close_endpoint(*it->second.ep);
    endpoints_.erase(it);
    lru = endpoint_lru_.erase(lru);
  }
}

void DataPlane::Impl::close_endpoint(Endpoint& ep) {
  if (ep.ep == nullptr) return;
  ucp_request_param_t param{};
  param.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
  param.flags = UCP_EP_CLOSE_FLAG_FORCE;  // pending operations complete with an error now
  ucs_status_ptr_t request = ucp_ep_close_nbx(ep.ep, &param);
  if (request != nullptr && !UCS_PTR_IS_ERR(request)) ucp_request_free(request);  // completes on its own
  ep.ep = nullptr;
}

void DataPlane::Impl::on_ep_error(void* arg, ucp_ep_h, ucs_status_t status) {
  guarded("on_ep_error", [&] {
    auto* ep = static_cast<Endpoint*>(arg);
    if (ep->failed) return;
    ep->failed = true;
    ep->failure = status;
    auto* self = ep->plane;
    if (!self->closed_) self->note_failed_peer(ep->address);
    auto it = self->endpoints_.find(ep->address);
    if (it != self->endpoints_.end() && it->second.ep.get() == ep) {
      self->failed_endpoints_.push_back(it->second.ep);
      self->endpoint_lru_.erase(it->second.lru);
      self->endpoints_.erase(it);
    }
  });
}

void DataPlane::Impl::note_failed_peer(const std::string& address) {
  const auto now = Clock::now();
  if (recently_failed_.size() >= 4096) {
    for (auto it = recently_failed_.begin(); it != recently_failed_.end();)
      it = now - it->second >= kReconnectHoldoff ? recently_failed_.erase(it) : std::next(it);
    if (recently_failed_.size() >= 4096) recently_failed_.erase(recently_failed_.begin());
  }
  recently_failed_[address] = now;
}

void DataPlane::Impl::handle_failed_endpoints() {
  auto failed = std::move(failed_endpoints_);
  failed_endpoints_.clear();
  for (auto& ep : failed) {
    std::vector<std::uint64_t> doomed;
    for (auto& [request_id, fetch] : fetches_)
      if (fetch.ep == ep) doomed.push_back(request_id);
    for (auto request_id : doomed) {
      auto it = fetches_.find(request_id);
      complete_fetch(request_id, {},
                     make_error_from_ucs(ep->failure, "fetching object " + hex(it->second.key) + ": the holder"));
    }
    close_endpoint(*ep);
  }
}

// Transport names of an endpoint's lanes from ucp_ep_print_info, e.g.
// "lane[0]:  4:posix/memory.0 md[3] ..." -> "posix"; each once, in lane order.
std::string data_plane_detail::lane_transports(ucp_ep_h ep) {
  char* text = nullptr;
  std::size_t size = 0;
  FILE* stream = ::open_memstream(&text, &size);
  if (stream == nullptr) return {};
  ucp_ep_print_info(ep, stream);
  std::fclose(stream);
  const std::string info(text != nullptr ? text : "", size);
  std::free(text);
  std::vector<std::string> names;
  std::size_t pos = 0;
  while ((pos = info.find("lane[", pos)) != std::string::npos) {
    const auto colon = info.find(':', pos);
    pos += 5;
    if (colon == std::string::npos) break;
    const auto start = info.find_first_not_of(" 0123456789:", colon);
    const auto slash = start == std::string::npos ? std::string::npos : info.find('/', start);
    if (slash == std::string::npos) continue;
    std::string name = info.substr(start, slash - start);
    bool seen = false;
    for (const auto& n : names) seen = seen || n == name;
    if (!seen) names.push_back(std::move(name));
  }
  std::string out;
  for (const auto& name : names) out += (out.empty() ? "" : ",") + name;
  return out;
}

std::string DataPlane::Impl::peer_transports(const std::string& peer) {
  std::exception_ptr error;
  auto ep = endpoint(peer, error);
  if (!ep) std::rethrow_exception(error);
  return lane_transports(ep->ep);
}

DataPlane::Stats DataPlane::Impl::stats() const {
  Stats stats = stats_;
  stats.inbox_objects = inbox_.size();
  stats.inbox_bytes = inbox_bytes_;
  stats.endpoints = endpoints_.size();
  stats.message_streams = streams_.size();
  return stats;
}

}  // namespace troupe::transport
