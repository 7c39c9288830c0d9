#include "ucx_am_baseline.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <ucp/api/ucp.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "bench_util.hpp"
#include "raw_ucx.hpp"

namespace troupe::bench {
namespace {

constexpr unsigned kDataId = 0;  // a request (client -> server) or a reply (server -> client)
constexpr unsigned kDoneId = 1;  // client -> server: the measurement is over, stop polling

enum Op : std::int32_t { kQuit = 0, kLatency = 1, kThroughput = 2 };
struct Command {
  std::int32_t op = kQuit;
  std::int32_t n = 0;
};
struct Result {
  std::int32_t ok = 0;
  double p50 = 0, p99 = 0, mean = 0, rate = 0;
};

// One side of the connection: context, worker, endpoint to the peer, and
// counters bumped by the receive handlers.
struct Side : RawUcx {
  std::uint64_t received = 0;  // kDataId messages
  bool done = false;           // kDoneId seen

  static ucs_status_t on_data(void* arg, const void*, size_t, void*, size_t, const ucp_am_recv_param_t*) {
    ++static_cast<Side*>(arg)->received;
    return UCS_OK;  // the data is not kept
  }
  static ucs_status_t on_done(void* arg, const void*, size_t, void*, size_t, const ucp_am_recv_param_t*) {
    static_cast<Side*>(arg)->done = true;
    return UCS_OK;
  }

  // Sets up the worker, swaps worker addresses with the peer over `peer_fd`
  // (the server sends first) and connects.
  void open(int peer_fd, bool server) {
    RawUcx::open(UCP_FEATURE_AM);
    set_handler(kDataId, &Side::on_data, this);
    set_handler(kDoneId, &Side::on_done, this);
    const std::string mine = address();
    std::string theirs;
    bool ok = server ? write_blob(peer_fd, mine.data(), mine.size()) && read_blob(peer_fd, theirs, 30000)
                     : read_blob(peer_fd, theirs, 30000) && write_blob(peer_fd, mine.data(), mine.size());
    if (!ok) throw UcxError("exchanging UCX worker addresses failed");
    connect(theirs);
  }

  // Non-blocking send from a buffer that outlives the request.
  void send(unsigned id, const void* buffer, std::size_t size) {
    ucp_request_param_t param{};
    ucs_status_ptr_t request = ucp_am_send_nbx(ep, id, nullptr, 0, buffer, size, &param);
    if (UCS_PTR_IS_ERR(request)) check_ucs(UCS_PTR_STATUS(request), "ucp_am_send_nbx");
    if (request != nullptr) ucp_request_free(request);  // completes on its own; nothing to learn from it
  }

  // Sends and polls until the send completed (for the end-of-phase marker).
  void send_and_flush(unsigned id, const void* buffer, std::size_t size) {
    ucp_request_param_t param{};
    ucs_status_ptr_t request = ucp_am_send_nbx(ep, id, nullptr, 0, buffer, size, &param);
    if (UCS_PTR_IS_ERR(request)) check_ucs(UCS_PTR_STATUS(request), "ucp_am_send_nbx");
    if (request == nullptr) return;
    while (ucp_request_check_status(request) == UCS_INPROGRESS) ucp_worker_progress(worker);
    ucp_request_free(request);
  }
};

// "lane[0]:  8:posix/memory.0 md[4] -> md[4]/posix/sysdev[255] am am_bw#0" -> a
// short summary of which transport carries which operations.
std::string describe_endpoint(ucp_ep_h ep) {
  char* text = nullptr;
  size_t size = 0;
  FILE* stream = ::open_memstream(&text, &size);
  if (!stream) return "unknown";
  ucp_ep_print_info(ep, stream);
  std::fclose(stream);
  std::string info(text, size);
  std::free(text);
  std::string out;
  std::size_t pos = 0;
  while (pos < info.size()) {
    std::size_t end = info.find('\n', pos);
    if (end == std::string::npos) end = info.size();
    std::string line = info.substr(pos, end - pos);
    pos = end + 1;
    auto lane = line.find("lane[");
    if (lane == std::string::npos) continue;
    // The transport/device is the first "name/device" token after "N:".
    auto colon = line.find(':', lane);
    if (colon == std::string::npos) continue;
    std::size_t start = line.find_first_not_of(" 0123456789:", colon);
    if (start == std::string::npos) continue;
    std::size_t stop = line.find(' ', start);
    std::string tl = line.substr(start, stop == std::string::npos ? std::string::npos : stop - start);
    auto dot = tl.rfind('.');
    if (dot != std::string::npos && dot > tl.find('/')) tl = tl.substr(0, dot);  // "posix/memory.0" -> "posix/memory"
    // Operations are the tokens after the "->" destination.
    std::string ops;
    auto arrow = line.find("->");
    if (arrow != std::string::npos) {
      auto dest_end = line.find(' ', line.find_first_not_of(' ', arrow + 2));
      if (dest_end != std::string::npos) {
        ops = line.substr(dest_end + 1);
        while (!ops.empty() && ops.back() == ' ') ops.pop_back();
        auto first = ops.find_first_not_of(' ');
        ops = first == std::string::npos ? std::string() : ops.substr(first);
      }
    }
    if (!out.empty()) out += ", ";
    out += tl + (ops.empty() ? "" : " [" + ops + "]");
  }
  return out.empty() ? "unknown" : out;
}

[[noreturn]] void run_server(int peer_fd, std::size_t reply_bytes) {
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  Side side;
  int code = 0;
  try {
    side.open(peer_fd, /*server=*/true);
    const std::string reply(reply_bytes, '\x5a');
    std::uint64_t answered = 0;
    for (;;) {
      char go = 0;
      if (!read_all(peer_fd, &go, 1)) break;  // the client is gone
      side.done = false;
      while (!side.done) {
        ucp_worker_progress(side.worker);
        while (answered < side.received) {
          side.send(kDataId, reply.data(), reply.size());
          ++answered;
        }
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ucx echo server: %s\n", e.what());
    code = 1;
  }
  side.close();
  std::fflush(nullptr);
  ::_exit(code);
}

[[noreturn]] void run_client(int peer_fd, int control_fd, std::size_t request_bytes) {
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  Side side;
  const std::string request(request_bytes, '\x3c');
  const char marker = 0;
  auto begin_phase = [&] {
    const char go = 'G';
    if (!write_all(peer_fd, &go, 1)) throw UcxError("the UCX echo server is gone");
  };
  auto end_phase = [&] { side.send_and_flush(kDoneId, &marker, sizeof marker); };
  auto round_trip = [&] {
    const std::uint64_t before = side.received;
    side.send(kDataId, request.data(), request.size());
    while (side.received == before) ucp_worker_progress(side.worker);
  };
  int code = 0;
  try {
    side.open(peer_fd, /*server=*/false);
    begin_phase();
    for (int i = 0; i < 2000; ++i) round_trip();  // wire-up and warm-up
    end_phase();
    std::string info = describe_endpoint(side.ep) + "; UCX " + ucp_get_version_string();
    if (const char* tls = std::getenv("UCX_TLS"); tls && *tls) info += ", UCX_TLS=" + std::string(tls);
    const std::int32_t ok = 1;
    write_all(control_fd, &ok, sizeof ok);
    write_blob(control_fd, info.data(), info.size());
    for (;;) {
      Command command;
      if (!read_all(control_fd, &command, sizeof command) || command.op == kQuit) break;
      Result result;
      begin_phase();
      if (command.op == kLatency) {
        for (int i = 0; i < 200; ++i) round_trip();
        Samples samples;
        samples.reserve(static_cast<std::size_t>(command.n));
        for (int i = 0; i < command.n; ++i) {
          const auto start = Clock::now();
          round_trip();
          samples.add(micros_since(start));
        }
        result.p50 = samples.p50();
        result.p99 = samples.p99();
        result.mean = samples.mean();
      } else {
        const std::uint64_t target = side.received + static_cast<std::uint64_t>(command.n);
        const auto start = Clock::now();
        for (int i = 0; i < command.n; ++i) side.send(kDataId, request.data(), request.size());
        while (side.received < target) ucp_worker_progress(side.worker);
        result.rate = command.n / seconds_since(start);
      }
      end_phase();
      result.ok = 1;
      if (!write_all(control_fd, &result, sizeof result)) break;
    }
  } catch (const std::exception& e) {
    const std::int32_t failed = 0;
    std::string what = e.what();
    write_all(control_fd, &failed, sizeof failed);
    write_blob(control_fd, what.data(), what.size());
    code = 1;
  }
  side.close();
  std::fflush(nullptr);
  ::_exit(code);
}

}  // namespace

UcxAmBaseline::UcxAmBaseline(std::size_t request_bytes, std::size_t reply_bytes) {
  int peer[2], control[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, peer) != 0 ||
      ::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, control) != 0)
    throw std::runtime_error("ucx baseline: socketpair failed");
  std::fflush(nullptr);
  server_ = ::fork();
  if (server_ < 0) throw std::runtime_error("ucx baseline: fork failed");
  if (server_ == 0) {
    ::close(peer[1]);
    ::close(control[0]);
    ::close(control[1]);
    run_server(peer[0], reply_bytes);
  }
  client_ = ::fork();
  if (client_ < 0) {
    ::close(peer[0]), ::close(peer[1]), ::close(control[0]), ::close(control[1]);
    stop();
    throw std::runtime_error("ucx baseline: fork failed");
  }
  if (client_ == 0) {
    ::close(peer[0]);
    ::close(control[0]);
    run_client(peer[1], control[1], request_bytes);
  }
  ::close(peer[0]);
  ::close(peer[1]);
  ::close(control[1]);
  control_fd_ = control[0];
  std::int32_t ok = 0;
  std::string text;
  if (!read_all(control_fd_, &ok, sizeof ok, 60000) || !read_blob(control_fd_, text, 5000)) {
    stop();
    throw std::runtime_error("the UCX baseline processes did not start");
  }
  if (!ok) {
    stop();
    throw std::runtime_error("UCX: " + text);
  }
  transport_ = std::move(text);
}

UcxAmBaseline::~UcxAmBaseline() { stop(); }

UcxAmBaseline::Latency UcxAmBaseline::latency(int iterations) {
  Command command{kLatency, iterations};
  Result result;
  if (control_fd_ < 0 || !write_all(control_fd_, &command, sizeof command) ||
      !read_all(control_fd_, &result, sizeof result, 120000) || !result.ok)
    throw std::runtime_error("the UCX baseline client failed");
  return {result.p50, result.p99, result.mean};
}

double UcxAmBaseline::throughput(int n) {
  Command command{kThroughput, n};
  Result result;
  if (control_fd_ < 0 || !write_all(control_fd_, &command, sizeof command) ||
      !read_all(control_fd_, &result, sizeof result, 120000) || !result.ok)
    throw std::runtime_error("the UCX baseline client failed");
  return result.rate;
}

void UcxAmBaseline::stop() {
  if (control_fd_ >= 0) {
    Command quit{kQuit, 0};
    write_all(control_fd_, &quit, sizeof quit);
    ::close(control_fd_);
    control_fd_ = -1;
  }
  for (pid_t* pid : {&client_, &server_}) {
    if (*pid <= 0) continue;
    bool exited = false;
    for (int i = 0; i < 200 && !exited; ++i) {
      if (::waitpid(*pid, nullptr, WNOHANG) == *pid) exited = true;
      else std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    if (!exited) {
      ::kill(*pid, SIGKILL);
      ::waitpid(*pid, nullptr, 0);
    }
    *pid = -1;
  }
}

}  // namespace troupe::bench
