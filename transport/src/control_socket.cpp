#include "troupe/transport/internal/control_socket.hpp"

#include <cerrno>

#include <capnp/serialize.h>
#include <zmq.hpp>

#include "troupe/transport/internal/zmq_security.hpp"
#include "troupe/transport/internal/zmq_socket.hpp"

namespace troupe::transport {
namespace {

ReceivedMessage round_trip(capnp::MessageBuilder& message) {
  auto words = capnp::messageToFlatArray(message);
  auto bytes = words.asBytes();
  return ReceivedMessage::copy_of(bytes.begin(), bytes.size());
}

}  // namespace

// --- ZmqControlServer -----------------------------------------------------------

struct ZmqControlServer::Impl {
  zmq::socket_t router{zmq_context(), zmq::socket_type::router};
  std::string address;
};

ZmqControlServer::ZmqControlServer(const std::string& ip, int port) : impl_(std::make_unique<Impl>()) {
  auto& router = impl_->router;
  router.set(zmq::sockopt::linger, 0);
  router.set(zmq::sockopt::router_handover, 1);
  apply_socket_limits(router, {});
  secure_server(router);  // CURVE + ZAP when this process is a member (before bind)
  std::string endpoint = "tcp://" + ip + ":" + std::to_string(port);
  try {
    router.bind(endpoint);
  } catch (const zmq::error_t& error) {
    if (error.num() == EADDRINUSE) throw AddressInUseError(Errc::transport, error.what());
    throw Error(Errc::transport, error.what());
  }
  std::string last = router.get(zmq::sockopt::last_endpoint);
  impl_->address = ip + ":" + last.substr(last.rfind(':') + 1);
}

ZmqControlServer::~ZmqControlServer() = default;

std::optional<RoutedMessage> ZmqControlServer::receive(std::chrono::milliseconds timeout) {
  return recv_routed(impl_->router, timeout);
}

void ZmqControlServer::send_to(const std::string& identity, capnp::MessageBuilder& message) {
  send_routed(impl_->router, identity, message, zmq::send_flags::dontwait);
}

std::string ZmqControlServer::address() const { return impl_->address; }

// --- InProcessControlServer -------------------------------------------------------

void InProcessControlServer::deliver(const std::string& identity, capnp::MessageBuilder& message) {
  RoutedMessage routed{identity, round_trip(message)};
  {
    std::lock_guard lock(mutex_);
    inbound_.push_back(std::move(routed));
  }
  arrived_.notify_one();
}

std::vector<InProcessControlServer::Sent> InProcessControlServer::take_sent() {
  std::lock_guard lock(mutex_);
  std::vector<Sent> sent;
  sent.swap(outbound_);
  return sent;
}

std::optional<RoutedMessage> InProcessControlServer::receive(std::chrono::milliseconds timeout) {
  std::unique_lock lock(mutex_);
  if (!arrived_.wait_for(lock, timeout, [&] { return !inbound_.empty(); })) return std::nullopt;
  RoutedMessage routed = std::move(inbound_.front());
  inbound_.pop_front();
  return routed;
}

void InProcessControlServer::send_to(const std::string& identity, capnp::MessageBuilder& message) {
  Sent sent{identity, round_trip(message)};
  std::lock_guard lock(mutex_);
  outbound_.push_back(std::move(sent));
}

// --- ControlDealer -------------------------------------------------------------------

struct ControlDealer::Impl {
  zmq::socket_t socket{zmq_context(), zmq::socket_type::dealer};
  std::optional<HandshakeWatch> watch;  // after `socket`: stops watching before it closes
  std::string endpoint;
};

ControlDealer::ControlDealer(const std::string& identity, const std::string& address, Options options)
    : impl_(std::make_unique<Impl>()) {
  auto& socket = impl_->socket;
  socket.set(zmq::sockopt::linger, 0);
  socket.set(zmq::sockopt::routing_id, identity);
  if (options.immediate) socket.set(zmq::sockopt::immediate, 1);
  apply_socket_limits(socket, {});
  secure_client(socket);  // CURVE when this process is a member
  impl_->watch.emplace(socket);
  impl_->endpoint = to_endpoint(address);
  try {
    socket.connect(impl_->endpoint);
  } catch (const zmq::error_t& error) {
    throw Error(Errc::invalid_argument, error.what());
  }
}

ControlDealer::~ControlDealer() = default;

void ControlDealer::send(capnp::MessageBuilder& message) {
  send_message(impl_->socket, message, zmq::send_flags::dontwait);
}

std::optional<ReceivedMessage> ControlDealer::receive(std::chrono::milliseconds timeout) {
  auto message = recv_message(impl_->socket, timeout);
  if (message) return message;
  impl_->watch->poll();
  if (auto failure = impl_->watch->take_unreported_failure(); !failure.empty())
    throw Error(Errc::permission_denied, handshake_refused_message(impl_->endpoint, failure));
  return message;
}

}  // namespace troupe::transport
