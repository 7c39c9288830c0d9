#include "control_client.hpp"

#include "troupe/runtime/error.hpp"
#include "troupe/runtime/ids.hpp"

namespace troupe::cli {

ControlClient::ControlClient(std::string head_address, std::chrono::milliseconds timeout)
    : head_address_(std::move(head_address)), timeout_(timeout) {
  try {
    // Any name unique among the head's peers will do; a random worker id is one.
    connection_ = std::make_unique<transport::ControlDealer>("cli-" + WorkerId::random().hex(), head_address_);
  } catch (const Error& error) {
    throw_error(error.code(), "bad head address \"" + head_address_ + "\": " + error.message());
  }
}

transport::ReceivedMessage ControlClient::request(capnp::MallocMessageBuilder& message, std::string_view refusal) {
  auto root = message.getRoot<wire::ControlMessage>();
  std::uint64_t id = next_request_id_++;
  root.setRequestId(id);
  try {
    connection_->send(message);
  } catch (const Error& error) {
    throw_error(error.code(), "cannot send to the head at " + head_address_ + ": " + error.message());
  }
  auto deadline = std::chrono::steady_clock::now() + timeout_;
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      throw TimeoutError("no answer from the head at " + head_address_ + " within " +
                         std::to_string(timeout_.count() / 1000.0).substr(0, 4) +
                         " s (is the cluster running? `troupe start --head`)");
    }
    std::optional<transport::ReceivedMessage> reply;
    try {
      reply = connection_->receive(left);
    } catch (const Error& error) {
      throw_error(error.code(), "bad reply from the head at " + head_address_ + ": " + error.message());
    }
    if (!reply) continue;
    auto reader = reply->root<wire::ControlMessage>();
    if (reader.getRequestId() != id) continue;
    if (reader.isError()) {
      auto error = reader.getError();
      std::string text = error.getMessage().cStr();
      throw_error(errc_from_wire(error.getCode()), refusal.empty() ? text : std::string(refusal) + ": " + text);
    }
    return std::move(*reply);
  }
}

}  // namespace troupe::cli
