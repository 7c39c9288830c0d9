// The raw ZeroMQ baseline of cluster_call_bench: a DEALER in this process
// talks to a ROUTER echo server in a forked child over tcp://127.0.0.1, the
// same socket pattern, transport and frame sizes as troupe's call plane.
//
// Fork the servers before this process starts any thread (fork() copies only
// the calling thread) and before it creates any ZeroMQ context.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <memory>
#include <string>

#include <zmq.hpp>

namespace troupe::bench {

// A ROUTER bound on tcp://127.0.0.1:* in a child process. Each request frame
// it receives is answered at once with one frame of `reply_bytes` (to the
// sender's identity). The child sleeps in zmq_poll while idle, and exits when
// this object goes (or when this process dies).
class ZmqEchoServer {
 public:
  explicit ZmqEchoServer(std::size_t reply_bytes);
  ~ZmqEchoServer();
  ZmqEchoServer(const ZmqEchoServer&) = delete;
  ZmqEchoServer& operator=(const ZmqEchoServer&) = delete;

  const std::string& endpoint() const noexcept { return endpoint_; }
  void stop();

 private:
  pid_t pid_ = -1;
  int control_fd_ = -1;  // the child exits when this closes
  std::string endpoint_;
};

// One DEALER connected to one echo server; used by one thread at a time.
class ZmqEchoClient {
 public:
  ZmqEchoClient(zmq::context_t& context, const std::string& endpoint, std::size_t request_bytes);

  // One request, then wait for its reply.
  void round_trip();
  // Sends n requests, then receives the n replies.
  void pipelined(int n);

 private:
  zmq::socket_t socket_;
  std::string request_;
};

}  // namespace troupe::bench
