#include "control_client.hpp"

#include "cli_error.hpp"
#include "ids.hpp"

namespace troupe::cli {

zmq::context_t& zmq_context() {
  static zmq::context_t context(1);
  return context;
}

std::string tcp_endpoint(const std::string& address) {
  if (address.find("://") != std::string::npos) return address;
  return "tcp://" + address;
}

ControlClient::ControlClient(std::string head_address, std::chrono::milliseconds timeout)
    : head_address_(std::move(head_address)), timeout_(timeout),
      socket_(zmq_context(), zmq::socket_type::dealer) {
  socket_.set(zmq::sockopt::linger, 0);
  socket_.set(zmq::sockopt::routing_id, "cli-" + Id128::random().hex());
  transport::apply_socket_limits(socket_, {});
  try {
    socket_.connect(tcp_endpoint(head_address_));
  } catch (const zmq::error_t& error) {
    throw CliError("bad head address \"" + head_address_ + "\": " + error.what());
  }
}

transport::ReceivedMessage ControlClient::request(capnp::MallocMessageBuilder& message) {
  auto root = message.getRoot<wire::ControlMessage>();
  std::uint64_t id = next_request_id_++;
  root.setRequestId(id);
  try {
    transport::send_message(socket_, message, zmq::send_flags::dontwait);
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
      reply = transport::recv_message(socket_, left);
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
