// ZeroMQ helpers shared by every socket troupe opens (internal: not
// installed). One ZeroMQ context per process, created on first use and
// never destroyed (sockets may outlive static destructors' order).
#pragma once

#include <string>

#include <zmq.hpp>

namespace troupe::transport {

// The process's ZeroMQ context (one I/O thread, at most kMaxZmqSockets
// sockets). Thread-safe.
constexpr int kMaxZmqSockets = 8192;
zmq::context_t& zmq_context();

// "127.0.0.1:6380" -> "tcp://127.0.0.1:6380" (an endpoint stays as it is).
std::string to_endpoint(const std::string& address);
// The local IP this host uses to reach `host` (for binding and advertising);
// "127.0.0.1" when `host` is not an IPv4 address or has no route.
std::string local_ip_for(const std::string& host);

}  // namespace troupe::transport
