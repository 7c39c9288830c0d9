// Bare UCX for the benchmarks' raw baselines: one context, worker and
// endpoint, set up with UCX's own API and no troupe code, so a bench can
// compare troupe against UCX itself. Single-threaded: the owner progresses
// the worker.
#pragma once

#include <ucp/api/ucp.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace troupe::bench {

struct UcxError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Throws UcxError("what: <UCX's status string>") unless `status` is UCS_OK.
void check_ucs(ucs_status_t status, const char* what);

struct RawUcx {
  ucp_context_h context = nullptr;
  ucp_worker_h worker = nullptr;
  ucp_ep_h ep = nullptr;

  RawUcx() = default;
  RawUcx(const RawUcx&) = delete;
  RawUcx& operator=(const RawUcx&) = delete;
  ~RawUcx() { close(); }

  // Context with `features` (UCP_FEATURE_*) and a single-threaded worker.
  // `settings` override UCX configuration ({"TLS", "tcp"}) on top of the
  // UCX_* environment.
  void open(std::uint64_t features, const std::vector<std::pair<std::string, std::string>>& settings = {});
  // This worker's address, for the peer's connect().
  std::string address() const;
  void connect(const std::string& peer, ucp_err_handling_mode_t mode = UCP_ERR_HANDLING_MODE_NONE);
  void set_handler(unsigned id, ucp_am_recv_callback_t callback, void* arg, std::uint32_t flags = 0);
  // Force-closes the endpoint, then destroys the worker and the context.
  void close();
};

}  // namespace troupe::bench
