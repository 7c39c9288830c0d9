#include "troupe/transport/zmq_util.hpp"

namespace troupe::transport {

zmq::context_t& zmq_context() {
  static zmq::context_t context(1);
  return context;
}

std::string tcp_endpoint(const std::string& address) {
  if (address.find("://") != std::string::npos) return address;
  return "tcp://" + address;
}

}  // namespace troupe::transport
