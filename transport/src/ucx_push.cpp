// DataPlane: pushes ahead of the fetch and push requests.
#include "ucx_data_plane_impl.hpp"

namespace troupe::transport {

// --- push -------------------------------------------------------------------------

void DataPlane::Impl::start_push(std::string peer, ObjectId id, ObjectBuffer buffer, PushCallback done) {
  if (closed_) return done(make_error(Errc::cancelled, "the data plane is shut down"));
  if (buffer.meta.size() > kMaxMetaBytes)
    return done(make_error(Errc::invalid_argument, "object meta of " + std::to_string(buffer.meta.size()) + " bytes (at most " +
                                                       std::to_string(kMaxMetaBytes) + ")"));
  std::exception_ptr error;
  auto ep = endpoint(peer, error);
  if (!ep) return done(error);
  auto out = std::make_shared<Outgoing>();
  out->ep = ep;
  out->buffer = std::move(buffer);
  out->push = true;
  out->done = std::move(done);
  out->header.kind = kPush;
  out->header.transfer_id = next_push_id_++;
  out->header.id_hi = id.hi();
  out->header.id_lo = id.lo();
  start_send(out);
}

void DataPlane::Impl::start_push_request(std::string holder, ObjectId id, std::string consumer,
                                         std::chrono::milliseconds wait) {
  if (closed_) return;
  if (consumer.size() < kMinAddressBytes || consumer.size() > kMaxAddressBytes) return;
  std::exception_ptr error;
  auto ep = endpoint(holder, error);
  if (!ep || ep->ep == nullptr) return;  // the consumer pulls instead
  auto* op = new RequestOp{this, 0, {}, std::move(consumer), ep};
  op->header.magic = kPushRequestMagic;
  op->header.id_hi = id.hi();
  op->header.id_lo = id.lo();
  op->header.wait_ms = static_cast<std::uint32_t>(std::clamp<std::int64_t>(wait.count(), 0, 0xffffffff));
  op->wire = encode_request(op->header, op->address, key());
  ucp_request_param_t param{};
  param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_MEMORY_TYPE;
  param.cb.send = &Impl::on_request_sent;  // request id 0: no fetch to fail
  param.user_data = op;
  param.memory_type = UCS_MEMORY_TYPE_HOST;
  send_request_am(ep->ep, op, param);
}

// Sends a request's header and the asker's address as one active message;
// on_request_sent runs when it left (at once when it left inline or failed).
void DataPlane::Impl::send_request_am(ucp_ep_h ep, RequestOp* op, const ucp_request_param_t& param) {
  ucs_status_ptr_t request = ucp_am_send_nbx(ep, kRequestAm, op->wire.bytes.data(), op->wire.size,
                                             op->address.data(), op->address.size(), &param);
  if (request == nullptr) {
    on_request_sent(nullptr, UCS_OK, op);
  } else if (UCS_PTR_IS_ERR(request)) {
    on_request_sent(nullptr, UCS_PTR_STATUS(request), op);
  } else {
    ++outstanding_;
  }
}

}  // namespace troupe::transport
