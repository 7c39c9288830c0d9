#include "zmq_echo_baseline.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <thread>

#include "bench_util.hpp"

namespace troupe::bench {
namespace {

[[noreturn]] void serve(int control_fd, int report_fd, std::size_t reply_bytes) {
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  try {
    zmq::context_t context(1);
    zmq::socket_t router(context, zmq::socket_type::router);
    router.set(zmq::sockopt::linger, 0);
    router.set(zmq::sockopt::sndhwm, 0);
    router.set(zmq::sockopt::rcvhwm, 0);
    router.bind("tcp://127.0.0.1:*");
    const std::string endpoint = router.get(zmq::sockopt::last_endpoint);
    const std::uint32_t length = static_cast<std::uint32_t>(endpoint.size());
    write_all(report_fd, &length, sizeof length);
    write_all(report_fd, endpoint.data(), endpoint.size());
    ::close(report_fd);
    const std::string reply(reply_bytes, '\x5a');
    for (;;) {
      zmq::pollitem_t items[] = {{router.handle(), 0, ZMQ_POLLIN, 0}, {nullptr, control_fd, ZMQ_POLLIN, 0}};
      zmq::poll(items, 2, std::chrono::milliseconds(-1));
      if (items[1].revents) break;  // the parent closed its end (or died)
      // Edge-triggered: drain everything that is queued.
      for (;;) {
        zmq::message_t identity;
        if (!router.recv(identity, zmq::recv_flags::dontwait)) break;
        zmq::message_t body;
        (void)router.recv(body, zmq::recv_flags::none);
        router.send(identity, zmq::send_flags::sndmore);
        router.send(zmq::buffer(reply), zmq::send_flags::none);
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "zmq echo server: %s\n", e.what());
    std::fflush(stderr);
    ::_exit(1);
  }
  ::_exit(0);
}

}  // namespace

ZmqEchoServer::ZmqEchoServer(std::size_t reply_bytes) {
  int control[2], report[2];
  if (::pipe2(control, O_CLOEXEC) != 0 || ::pipe2(report, O_CLOEXEC) != 0)
    throw std::runtime_error("zmq echo server: pipe failed");
  std::fflush(nullptr);
  pid_ = ::fork();
  if (pid_ < 0) throw std::runtime_error("zmq echo server: fork failed");
  if (pid_ == 0) {
    ::close(control[1]);
    ::close(report[0]);
    serve(control[0], report[1], reply_bytes);
  }
  ::close(control[0]);
  ::close(report[1]);
  control_fd_ = control[1];
  std::uint32_t length = 0;
  bool ok = read_all(report[0], &length, sizeof length) && length < 256;
  if (ok) {
    endpoint_.resize(length);
    ok = read_all(report[0], endpoint_.data(), length);
  }
  ::close(report[0]);
  if (!ok) {
    stop();
    throw std::runtime_error("zmq echo server did not start");
  }
}

ZmqEchoServer::~ZmqEchoServer() { stop(); }

void ZmqEchoServer::stop() {
  if (control_fd_ >= 0) {
    ::close(control_fd_);
    control_fd_ = -1;
  }
  if (pid_ > 0) {
    // It exits when it sees the pipe close; do not wait for long.
    for (int i = 0; i < 200; ++i) {
      if (::waitpid(pid_, nullptr, WNOHANG) == pid_) {
        pid_ = -1;
        return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }
}

ZmqEchoClient::ZmqEchoClient(zmq::context_t& context, const std::string& endpoint, std::size_t request_bytes)
    : socket_(context, zmq::socket_type::dealer), request_(request_bytes, '\x3c') {
  socket_.set(zmq::sockopt::linger, 0);
  socket_.set(zmq::sockopt::sndhwm, 0);
  socket_.set(zmq::sockopt::rcvhwm, 0);
  socket_.connect(endpoint);
}

void ZmqEchoClient::round_trip() {
  socket_.send(zmq::buffer(request_), zmq::send_flags::none);
  zmq::message_t reply;
  (void)socket_.recv(reply, zmq::recv_flags::none);
}

void ZmqEchoClient::pipelined(int n) {
  for (int i = 0; i < n; ++i) socket_.send(zmq::buffer(request_), zmq::send_flags::none);
  for (int i = 0; i < n; ++i) {
    zmq::message_t reply;
    (void)socket_.recv(reply, zmq::recv_flags::none);
  }
}

}  // namespace troupe::bench
