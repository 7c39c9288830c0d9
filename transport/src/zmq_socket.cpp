#include "troupe/transport/internal/zmq_socket.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

namespace troupe::transport {

zmq::context_t& zmq_context() {
  static zmq::context_t& context = [] () -> zmq::context_t& {
    // Never destroyed (sockets may outlive static destructors' order).
    auto* made = new zmq::context_t(1);
    // ZeroMQ's default is 1023 sockets. A socket closed with a linger (an
    // evicted call-plane DEALER) keeps its slot until the reaper frees it,
    // which can lag behind a flood of new peers: headroom for that.
    made->set(zmq::ctxopt::max_sockets, kMaxZmqSockets);
    return *made;
  }();
  return context;
}

std::string to_endpoint(const std::string& address) {
  if (address.rfind("tcp://", 0) == 0 || address.rfind("ipc://", 0) == 0 || address.rfind("inproc://", 0) == 0)
    return address;
  return "tcp://" + address;
}

std::string local_ip_for(const std::string& host) {
  int fd = ::socket(AF_INET, SOCK_DGRAM, 0);
  if (fd < 0) return "127.0.0.1";
  sockaddr_in peer{};
  peer.sin_family = AF_INET;
  peer.sin_port = htons(9);
  std::string result = "127.0.0.1";
  if (::inet_pton(AF_INET, host.c_str(), &peer.sin_addr) == 1 &&
      ::connect(fd, reinterpret_cast<sockaddr*>(&peer), sizeof peer) == 0) {
    sockaddr_in local{};
    socklen_t len = sizeof local;
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&local), &len) == 0) {
      char buffer[INET_ADDRSTRLEN];
      if (::inet_ntop(AF_INET, &local.sin_addr, buffer, sizeof buffer)) result = buffer;
    }
  }
  ::close(fd);
  return result;
}

}  // namespace troupe::transport
