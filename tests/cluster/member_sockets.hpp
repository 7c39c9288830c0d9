// Raw ZeroMQ sockets that speak to a cluster as a member (or, with another
// secret or none, as a stranger) for tests that send hand-made messages:
// CURVE options set from a ClusterSecret the way troupe's own sockets set
// them (docs/security.md).
#pragma once

#include <optional>

#include <zmq.hpp>

#include "troupe/transport/internal/membership.hpp"

namespace troupe::testing {

// A client (DEALER) that presents `secret`'s member keys; plain when none.
inline void as_member_client(zmq::socket_t& socket, const std::optional<transport::ClusterSecret>& secret) {
  if (!secret) return;
  auto server = secret->curve_server_public();
  auto pub = secret->curve_client_public();
  auto sec = secret->curve_client_secret();
  socket.set(zmq::sockopt::curve_serverkey, zmq::const_buffer(server.data(), server.size()));
  socket.set(zmq::sockopt::curve_publickey, zmq::const_buffer(pub.data(), pub.size()));
  socket.set(zmq::sockopt::curve_secretkey, zmq::const_buffer(sec.data(), sec.size()));
}

// A server (ROUTER) with `secret`'s member server keys; plain when none.
// Set before bind. (Its context has no ZAP handler: it admits any client
// that knows the server key, which is all a test's own inbox needs.)
inline void as_member_server(zmq::socket_t& socket, const std::optional<transport::ClusterSecret>& secret) {
  if (!secret) return;
  auto sec = secret->curve_server_secret();
  socket.set(zmq::sockopt::curve_server, 1);
  socket.set(zmq::sockopt::curve_secretkey, zmq::const_buffer(sec.data(), sec.size()));
}

}  // namespace troupe::testing
