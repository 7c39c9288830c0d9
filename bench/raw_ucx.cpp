#include "raw_ucx.hpp"

namespace troupe::bench {

void check_ucs(ucs_status_t status, const char* what) {
  if (status != UCS_OK) throw UcxError(std::string(what) + ": " + ucs_status_string(status));
}

void RawUcx::open(std::uint64_t features, const std::vector<std::pair<std::string, std::string>>& settings) {
  ucp_config_t* config = nullptr;
  check_ucs(ucp_config_read(nullptr, nullptr, &config), "ucp_config_read");
  for (const auto& [name, value] : settings) {
    const ucs_status_t status = ucp_config_modify(config, name.c_str(), value.c_str());
    if (status != UCS_OK) {
      ucp_config_release(config);
      check_ucs(status, ("ucp_config_modify " + name).c_str());
    }
  }
  ucp_params_t params{};
  params.field_mask = UCP_PARAM_FIELD_FEATURES;
  params.features = features;
  const ucs_status_t status = ucp_init(&params, config, &context);
  ucp_config_release(config);
  check_ucs(status, "ucp_init");
  ucp_worker_params_t worker_params{};
  worker_params.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
  worker_params.thread_mode = UCS_THREAD_MODE_SINGLE;
  check_ucs(ucp_worker_create(context, &worker_params, &worker), "ucp_worker_create");
}

std::string RawUcx::address() const {
  ucp_address_t* address = nullptr;
  size_t length = 0;
  check_ucs(ucp_worker_get_address(worker, &address, &length), "ucp_worker_get_address");
  std::string out(reinterpret_cast<const char*>(address), length);
  ucp_worker_release_address(worker, address);
  return out;
}

void RawUcx::connect(const std::string& peer, ucp_err_handling_mode_t mode) {
  ucp_ep_params_t params{};
  params.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE;
  params.address = reinterpret_cast<const ucp_address_t*>(peer.data());
  params.err_mode = mode;
  check_ucs(ucp_ep_create(worker, &params, &ep), "ucp_ep_create");
}

void RawUcx::set_handler(unsigned id, ucp_am_recv_callback_t callback, void* arg, std::uint32_t flags) {
  ucp_am_handler_param_t handler{};
  handler.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_CB | UCP_AM_HANDLER_PARAM_FIELD_ARG |
                       UCP_AM_HANDLER_PARAM_FIELD_FLAGS;
  handler.id = id;
  handler.cb = callback;
  handler.arg = arg;
  handler.flags = flags;
  check_ucs(ucp_worker_set_am_recv_handler(worker, &handler), "ucp_worker_set_am_recv_handler");
}

void RawUcx::close() {
  if (ep) {
    ucp_request_param_t param{};
    param.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
    param.flags = UCP_EP_CLOSE_FLAG_FORCE;
    ucs_status_ptr_t request = ucp_ep_close_nbx(ep, &param);
    if (request != nullptr && !UCS_PTR_IS_ERR(request)) {
      for (int i = 0; i < 100000 && ucp_request_check_status(request) == UCS_INPROGRESS; ++i)
        ucp_worker_progress(worker);
      ucp_request_free(request);
    }
    ep = nullptr;
  }
  if (worker) ucp_worker_destroy(worker), worker = nullptr;
  if (context) ucp_cleanup(context), context = nullptr;
}

}  // namespace troupe::bench
