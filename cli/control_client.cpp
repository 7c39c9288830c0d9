#include "control_client.hpp"

#include "cli_error.hpp"
#include "troupe/node/ids.hpp"

namespace troupe::cli {

// The daemons' 128-bit ids (troupe/node/ids.hpp).
using node::Id128;
using node::id_of;
using node::set_id;

ControlClient::ControlClient(std::string head_address, std::chrono::milliseconds timeout)
    : head_address_(std::move(head_address)), timeout_(timeout) {
  try {
    connection_ = std::make_unique<transport::ControlDealer>("cli-" + Id128::random().hex(), head_address_);
  } catch (const transport::TransportError& error) {
    throw CliError("bad head address \"" + head_address_ + "\": " + error.message());
  }
}

transport::ReceivedMessage ControlClient::request(capnp::MallocMessageBuilder& message) {
  auto root = message.getRoot<wire::ControlMessage>();
  std::uint64_t id = next_request_id_++;
  root.setRequestId(id);
  try {
    connection_->send(message);
  } catch (const transport::TransportError& error) {
    throw CliError("cannot send to the head at " + head_address_ + ": " + error.message());
  }
  auto deadline = std::chrono::steady_clock::now() + timeout_;
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      throw CliError("no answer from the head at " + head_address_ + " within " +
                     std::to_string(timeout_.count() / 1000.0).substr(0, 4) +
                     " s (is the cluster running? `troupe start --head`)");
    }
    std::optional<transport::ReceivedMessage> reply;
    try {
      reply = connection_->receive(left);
    } catch (const transport::TransportError& error) {
      throw CliError("bad reply from the head at " + head_address_ + ": " + error.message());
    }
    if (!reply) continue;
    auto reader = reply->root<wire::ControlMessage>();
    if (reader.getRequestId() != id) continue;
    if (reader.isError()) {
      auto error = reader.getError();
      throw RemoteError(error.getCode(), error.getMessage().cStr());
    }
    return std::move(*reply);
  }
}

}  // namespace troupe::cli
