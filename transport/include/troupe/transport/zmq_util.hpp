// The process's ZeroMQ context and endpoint spelling, shared by every socket
// the transport opens for the control plane (the head's ROUTER, the control
// clients' DEALERs). Only transport code includes this header.
#pragma once

#include <string>

#include <zmq.hpp>

namespace troupe::transport {

// The process's one ZeroMQ context for control sockets, created on first use
// (thread-safe) and never destroyed before exit.
// TODO(cleanup): runtime/src/cluster/net.cpp keeps its own copy of this and
// of tcp_endpoint; it should use these once it lives in transport.
zmq::context_t& zmq_context();

// "IP:PORT" -> "tcp://IP:PORT"; an address that already has a scheme is kept.
std::string tcp_endpoint(const std::string& address);

}  // namespace troupe::transport
