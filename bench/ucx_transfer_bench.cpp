// Bandwidth and latency of troupe's UCX data plane (DataPlane::fetch between
// two processes) beside a raw UCX program doing the same exchange, measured
// in the same run with the same UCX_TLS and endpoint error-handling mode:
//
//   troupe:  DataPlane::fetch(holder, id).get() in a loop; the holder is a
//            forked process with the objects published. Main rows: the
//            default allocator (troupe's host block cache); "reused" rows:
//            an allocator handing out one reused buffer, as the raw client
//            receives into one.
//   raw UCX: a request AM to a forked server, which answers with
//            ucp_am_send_nbx of the same-sized buffer (UCP_AM_SEND_FLAG_RNDV
//            at >= 64 KiB, as troupe does); the client's AM handler calls
//            ucp_am_recv_data_nbx into a preallocated buffer. During a
//            measurement both raw processes follow troupe's progress policy:
//            poll while a send or receive is in flight (yielding the CPU),
//            otherwise arm the worker and sleep on its event fd
//            (--raw-busy-poll 1: spin always; on a small shared machine
//            spinning processes lose their time slices and measure the
//            scheduler). Between measurements the raw server sleeps in read().
//
// Per transport (shm = posix,sysv,cma; tcp over loopback; or only UCX_TLS
// from the environment when it is set), per size 64 KiB .. 64 MiB:
// bandwidth = size / median time of one fetch (troupe and raw fetches
// alternate, one each in turn, so both see the same background load), and
// size / fastest fetch ("peak"). Small-object (64 B) fetch latency p50 too.
//
// Secure beside insecure, same run, same sizes: a second holder and a
// consumer made with a cluster secret (membership set), whose requests and
// replies carry message authenticators (keyed BLAKE2b-256 over each header);
// its fetches alternate with the others. Rows *_secure_* give its figures
// with the insecure troupe figure as reference, and the ratios
// (bandwidth secure/insecure from 1 MiB up, 64 B latency p50 secure/insecure;
// targets >= 0.95 and <= 1.15).
//
// Every child is forked before this process initialises UCX.
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <ucp/api/ucp.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "bench_util.hpp"
#include "raw_ucx.hpp"
#include "troupe/transport/error.hpp"
#include "troupe/transport/internal/membership.hpp"
#include "troupe/transport/ucx.hpp"

namespace {

using troupe::bench::Better;
using troupe::bench::Clock;
using troupe::bench::check_ucs;
using namespace troupe::transport;
using troupe::ObjectId;

constexpr std::size_t KiB = 1024, MiB = 1024 * 1024;
constexpr std::size_t kSizes[] = {64 * KiB, 256 * KiB, 1 * MiB, 4 * MiB, 16 * MiB, 64 * MiB};
constexpr std::size_t kSmall = 64;
constexpr std::size_t kRndvThreshold = 64 * KiB;  // DataPlaneOptions' default; the raw server uses it too

struct Transport {
  std::string name;
  std::string tls;
};

using troupe::bench::read_all;
using troupe::bench::read_blob;
using troupe::bench::write_all;
using troupe::bench::write_blob;

ObjectId key_of(std::size_t size) { return ObjectId{0xbe, size}; }
// A tensor as the runtime publishes it: one object whose meta is the
// envelope (one trip), or, as before, the envelope and the bytes as two
// objects fetched one after the other (two trips).
ObjectId tensor_key(std::size_t size) { return ObjectId{0xbf, size}; }
ObjectId envelope_key(std::size_t size) { return ObjectId{0xc0, size}; }
constexpr std::size_t kEnvelopeBytes = 27;  // a 2-d float tensor's envelope
constexpr std::size_t kTensorSizes[] = {64, std::size_t{1} << 20};

UcxOptions ucx_options(const Transport& transport, bool detect_peer_failure, int busy_poll_us) {
  UcxOptions options;
  options.tls = transport.tls;  // empty: UCX_TLS from the environment
  options.detect_peer_failure = detect_peer_failure;
  options.busy_poll = std::chrono::microseconds(busy_poll_us);
  return options;
}

// --- the troupe holder (a child) ---------------------------------------------------------

[[noreturn]] void run_troupe_holder(int fd, const Transport& transport, bool detect, int busy_poll_us,
                                    const std::optional<ClusterSecret>& secret) {
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  int code = 0;
  try {
    set_membership(secret);  // a secure holder: its plane requires and sends tags
    auto context = UcxContext::create(ucx_options(transport, detect, busy_poll_us));
    auto worker = UcxWorker::create(context);
    DataPlane plane(worker);
    std::vector<std::size_t> sizes(std::begin(kSizes), std::end(kSizes));
    sizes.push_back(kSmall);
    for (std::size_t size : sizes) {
      auto buffer = ObjectBuffer::allocate_host(size);
      std::memset(buffer.data, 0x5a, size);
      plane.publish(key_of(size), buffer);
    }
    for (std::size_t size : kTensorSizes) {
      auto buffer = ObjectBuffer::allocate_host(size);
      std::memset(buffer.data, 0x5a, size);
      plane.publish(key_of(size), buffer);
      buffer.meta.assign(kEnvelopeBytes, 'e');
      plane.publish(tensor_key(size), buffer);
      plane.publish(envelope_key(size), ObjectBuffer::copy_of(std::string(kEnvelopeBytes, 'e')));
    }
    if (!write_blob(fd, plane.address())) throw std::runtime_error("cannot reach the parent");
    char byte;
    while (::read(fd, &byte, 1) > 0) {
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "troupe holder: %s\n", e.what());
    write_blob(fd, "");
    code = 1;
  }
  std::fflush(nullptr);
  ::_exit(code);
}

// --- the raw UCX side (server child and client in this process) ---------------------------

constexpr unsigned kRawRequest = 0;  // header: std::uint64_t size
constexpr unsigned kRawReply = 1;
constexpr unsigned kRawDone = 2;

struct RawSide : troupe::bench::RawUcx {
  int event_fd = -1;
  bool busy = false;  // busy-poll instead of sleeping on event_fd
  int in_flight = 0;  // sends and receives not completed
  Clock::time_point last_activity{};
  // server
  std::vector<std::uint64_t> pending;  // sizes asked for
  bool done = false;
  // client
  char* destination = nullptr;
  bool received = false;
  bool failed = false;

  void open(const Transport& transport, bool detect) {
    // The same UCX setup troupe's UcxContext makes (see UcxOptions).
    std::vector<std::pair<std::string, std::string>> settings;
    if (!transport.tls.empty()) settings.emplace_back("TLS", transport.tls);
    if (std::getenv("UCX_KEEPALIVE_INTERVAL") == nullptr) settings.emplace_back("KEEPALIVE_INTERVAL", "1s");
    if (detect && transport.tls.find("tcp") == std::string::npos) settings.emplace_back("MM_ERROR_HANDLING", "y");
    RawUcx::open(UCP_FEATURE_AM | UCP_FEATURE_WAKEUP, settings);
    set_handler(kRawRequest, &RawSide::on_request, this, UCP_AM_FLAG_WHOLE_MSG);
    set_handler(kRawReply, &RawSide::on_reply, this, UCP_AM_FLAG_WHOLE_MSG);
    set_handler(kRawDone, &RawSide::on_done, this, UCP_AM_FLAG_WHOLE_MSG);
    check_ucs(ucp_worker_get_efd(worker, &event_fd), "ucp_worker_get_efd");
  }

  // One step of waiting for something to arrive: progress; then spin
  // (busy), or keep polling while a send or receive is in flight and UCX
  // made progress within 5 ms, or else arm the worker and sleep on its event
  // fd: the policy of troupe's progress thread.
  void wait_step() {
    const auto now = Clock::now();
    if (ucp_worker_progress(worker) != 0) {
      last_activity = now;
      return;
    }
    if (busy) return;
    if (in_flight > 0 && now - last_activity < std::chrono::milliseconds(5)) {
      sched_yield();
      return;
    }
    if (ucp_worker_arm(worker) != UCS_OK) return;
    pollfd item{event_fd, POLLIN, 0};
    ::poll(&item, 1, in_flight > 0 ? 1 : 100);
  }

  void connect(const std::string& peer, bool detect) {
    RawUcx::connect(peer, detect ? UCP_ERR_HANDLING_MODE_PEER : UCP_ERR_HANDLING_MODE_NONE);
  }

  static ucs_status_t on_request(void* arg, const void* header, size_t, void*, size_t, const ucp_am_recv_param_t*) {
    std::uint64_t size;
    std::memcpy(&size, header, sizeof size);
    static_cast<RawSide*>(arg)->pending.push_back(size);
    return UCS_OK;
  }
  static ucs_status_t on_done(void* arg, const void*, size_t, void*, size_t, const ucp_am_recv_param_t*) {
    static_cast<RawSide*>(arg)->done = true;
    return UCS_OK;
  }
  static void on_received(void* request, ucs_status_t status, size_t, void* user_data) {
    auto* self = static_cast<RawSide*>(user_data);
    --self->in_flight;
    self->failed = self->failed || status != UCS_OK;
    self->received = true;
    ucp_request_free(request);
  }
  static ucs_status_t on_reply(void* arg, const void*, size_t, void* data, size_t length,
                               const ucp_am_recv_param_t* param) {
    auto* self = static_cast<RawSide*>(arg);
    if ((param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) == 0) {
      std::memcpy(self->destination, data, length);
      self->received = true;
      return UCS_OK;
    }
    ucp_request_param_t recv{};
    recv.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_MEMORY_TYPE;
    recv.cb.recv_am = &RawSide::on_received;
    recv.user_data = self;
    recv.memory_type = UCS_MEMORY_TYPE_HOST;
    ucs_status_ptr_t request = ucp_am_recv_data_nbx(self->worker, data, self->destination, length, &recv);
    if (request == nullptr) {
      self->received = true;
    } else if (UCS_PTR_IS_ERR(request)) {
      self->failed = true;
      self->received = true;
    } else {
      ++self->in_flight;
    }
    return UCS_INPROGRESS;
  }

  void send(unsigned id, const void* header, std::size_t header_length, const void* data, std::size_t size,
            bool wait) {
    ucp_request_param_t param{};
    param.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS | UCP_OP_ATTR_FIELD_MEMORY_TYPE | UCP_OP_ATTR_FIELD_CALLBACK |
                         UCP_OP_ATTR_FIELD_USER_DATA;
    param.flags = size >= kRndvThreshold ? UCP_AM_SEND_FLAG_RNDV : 0;
    param.memory_type = UCS_MEMORY_TYPE_HOST;
    param.cb.send = [](void* request, ucs_status_t, void* user_data) {
      --static_cast<RawSide*>(user_data)->in_flight;
      ucp_request_free(request);
    };
    param.user_data = this;
    ucs_status_ptr_t request = ucp_am_send_nbx(ep, id, header, header_length, data, size, &param);
    if (UCS_PTR_IS_ERR(request)) check_ucs(UCS_PTR_STATUS(request), "ucp_am_send_nbx");
    if (request == nullptr) return;
    const int before = in_flight++;
    if (wait)
      while (in_flight > before) ucp_worker_progress(worker);  // the callback frees the request
  }

  // Client: one fetch of `size` bytes into `destination`.
  void fetch(std::uint64_t size) {
    received = false;
    send(kRawRequest, &size, sizeof size, nullptr, 0, false);
    while (!received) wait_step();
    if (failed) throw std::runtime_error("raw UCX receive failed");
  }
};

[[noreturn]] void run_raw_server(int fd, const Transport& transport, bool detect, bool busy) {
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  int code = 0;
  try {
    RawSide side;
    side.busy = busy;
    side.open(transport, detect);
    if (!write_blob(fd, side.address())) throw std::runtime_error("cannot reach the parent");
    std::string client;
    if (!read_blob(fd, client)) throw std::runtime_error("no client address");
    side.connect(client, detect);
    std::vector<char> buffer(64 * MiB, 0x3c);
    for (;;) {
      char go = 0;
      if (!read_all(fd, &go, 1)) break;  // the parent is done
      side.done = false;
      while (!side.done) {
        side.wait_step();
        for (std::uint64_t size : side.pending) side.send(kRawReply, nullptr, 0, buffer.data(), size, false);
        side.pending.clear();
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "raw UCX server: %s\n", e.what());
    code = 1;
  }
  std::fflush(nullptr);
  ::_exit(code);
}

pid_t spawn(const std::function<void(int)>& child, int& parent_fd) {
  int fds[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) throw std::runtime_error("socketpair");
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid < 0) throw std::runtime_error("fork");
  if (pid == 0) {
    // Keep only stdio and this child's end of its socketpair (as fd 3): an
    // inherited end of another child's socketpair would keep it from ever
    // seeing EOF.
    if (fds[1] != 3 && ::dup2(fds[1], 3) != 3) ::_exit(3);
    ::close_range(4, ~0u, 0);
    child(3);
    ::_exit(0);
  }
  ::close(fds[1]);
  parent_fd = fds[0];
  return pid;
}

struct Children {
  pid_t holder = -1, server = -1, secure_holder = -1;
  int holder_fd = -1, server_fd = -1, secure_holder_fd = -1;
  void stop() {
    for (int* fd : {&holder_fd, &server_fd, &secure_holder_fd})
      if (*fd >= 0) ::close(*fd), *fd = -1;
    for (pid_t* pid : {&holder, &server, &secure_holder})
      if (*pid > 0) ::waitpid(*pid, nullptr, 0), *pid = -1;
  }
};

struct Figures {
  std::vector<double> troupe_bw, reused_bw, raw_bw;  // per size: MiB/s from the median fetch time
  std::vector<double> troupe_peak, raw_peak;         // per size: MiB/s from the fastest fetch
  double troupe_p50 = 0, raw_p50 = 0;                // us
  std::vector<double> secure_bw, secure_peak;        // the secure plane, per size
  double secure_p50 = 0;
  // Per kTensorSizes: one trip (meta + bytes), two trips (envelope, then bytes), raw; p50 us.
  std::vector<double> tensor_one_p50, tensor_two_p50, tensor_raw_p50;
  std::string lanes;
};

// Bandwidth from per-fetch times: size / median time. The median of many
// single fetches, troupe and raw taken in turn, shrugs off the other work on
// a shared machine better than a median of a few long runs.
double mib_per_s(std::size_t size, const troupe::bench::Samples& seconds) {
  return static_cast<double>(size) / MiB / seconds.median();
}

Figures measure(const Transport& transport, Children& children, bool detect, int busy_poll_us, bool raw_busy,
                const ClusterSecret& secret, const troupe::bench::Options& options) {
  const int repeats = options.repeats_or(5, 2);
  const std::size_t budget = options.quick ? 64 * MiB : 256 * MiB;  // bytes per repeat and size
  std::string holder_address, server_address;
  if (!read_blob(children.holder_fd, holder_address) || holder_address.empty())
    throw std::runtime_error("the troupe holder did not start");
  if (!read_blob(children.server_fd, server_address) || server_address.empty())
    throw std::runtime_error("the raw UCX server did not start");
  std::string secure_address;
  if (!read_blob(children.secure_holder_fd, secure_address) || secure_address.empty())
    throw std::runtime_error("the secure troupe holder did not start");

  // Two troupe consumers: the default allocator (troupe's host block cache),
  // and an allocator that hands out one reused buffer (as the raw client
  // receives into one buffer).
  auto context = UcxContext::create(ucx_options(transport, detect, busy_poll_us));
  auto worker = UcxWorker::create(context);
  DataPlane plane(worker);
  auto arena = std::make_shared<std::vector<char>>(64 * MiB, 0);
  DataPlaneOptions reused_options;
  reused_options.allocator = [arena](std::size_t size, MemoryType) {
    return ObjectBuffer::wrap(arena->data(), size, arena);
  };
  auto reused_worker = UcxWorker::create(context);
  DataPlane reused_plane(reused_worker, reused_options);
  // The secure consumer: the plane reads membership when it is made.
  set_membership(secret);
  DataPlane secure_plane(UcxWorker::create(context));
  set_membership(std::nullopt);

  RawSide raw;
  raw.busy = raw_busy;
  raw.open(transport, detect);
  if (!write_blob(children.server_fd, raw.address())) throw std::runtime_error("the raw server is gone");
  raw.connect(server_address, detect);
  std::vector<char> raw_destination(64 * MiB, 0);
  raw.destination = raw_destination.data();

  // The raw server progresses only inside a phase (it sleeps in read()
  // between them); inside one it sleeps on its event fd when idle.
  auto raw_phase = [&](const std::function<void()>& body) {
    const char go = 'G';
    if (!write_all(children.server_fd, &go, 1)) throw std::runtime_error("the raw server is gone");
    body();
    const char marker = 0;
    raw.send(kRawDone, nullptr, 0, &marker, 1, true);
  };
  auto fetch_with = [&](DataPlane& consumer, std::size_t size) {
    auto buffer = consumer.fetch(&consumer == &secure_plane ? secure_address : holder_address, key_of(size)).get();
    if (buffer.size != size) throw std::runtime_error("short fetch");
  };
  auto timed = [](troupe::bench::Samples& samples, const std::function<void()>& fn) {
    const auto start = Clock::now();
    fn();
    samples.add(troupe::bench::seconds_since(start));
  };

  // Warm up every path (connections, registration caches, rndv lanes, the
  // host block cache).
  raw_phase([&] {
    for (std::size_t size : {kSmall, 1 * MiB, 64 * MiB}) {
      for (int i = 0; i < 10; ++i) {
        fetch_with(plane, size);
        fetch_with(secure_plane, size);
        fetch_with(reused_plane, size);
        raw.fetch(size);
      }
    }
  });

  Figures figures;
  figures.lanes = plane.peer_transports(holder_address).get();
  for (std::size_t size : kSizes) {
    const int n = static_cast<int>(std::clamp<std::size_t>(budget / size, 4, 2000));
    troupe::bench::Samples t, sec, u, r;
    for (int rep = 0; rep < repeats; ++rep) {
      raw_phase([&] {
        for (int i = 0; i < n; ++i) {
          timed(t, [&] { fetch_with(plane, size); });
          timed(sec, [&] { fetch_with(secure_plane, size); });
          timed(u, [&] { fetch_with(reused_plane, size); });
          timed(r, [&] { raw.fetch(size); });
        }
      });
    }
    figures.troupe_bw.push_back(mib_per_s(size, t));
    figures.reused_bw.push_back(mib_per_s(size, u));
    figures.raw_bw.push_back(mib_per_s(size, r));
    figures.troupe_peak.push_back(static_cast<double>(size) / MiB / t.min());
    figures.secure_bw.push_back(mib_per_s(size, sec));
    figures.secure_peak.push_back(static_cast<double>(size) / MiB / sec.min());
    figures.raw_peak.push_back(static_cast<double>(size) / MiB / r.min());
  }

  const int latency_n = options.iterations_or(3000, 500);
  troupe::bench::Samples tp, sp, rp;
  for (int rep = 0; rep < repeats; ++rep) {
    raw_phase([&] {
      for (int i = 0; i < latency_n; ++i) {
        timed(tp, [&] { fetch_with(plane, kSmall); });
        timed(sp, [&] { fetch_with(secure_plane, kSmall); });
        timed(rp, [&] { raw.fetch(kSmall); });
      }
    });
  }
  for (std::size_t size : kTensorSizes) {
    troupe::bench::Samples one, two, raw_samples;
    const int n = size > kSmall ? latency_n / 4 : latency_n;
    for (int rep = 0; rep < repeats; ++rep) {
      raw_phase([&] {
        // Which of one and two trips goes first alternates: the first after
        // the raw fetch also pays for waking troupe's progress thread.
        auto one_trip = [&] {
          timed(one, [&] {
            auto buffer = plane.fetch(holder_address, tensor_key(size)).get();
            if (buffer.size != size || buffer.meta.size() != kEnvelopeBytes) throw std::runtime_error("short fetch");
          });
        };
        auto two_trips = [&] {
          timed(two, [&] {
            auto envelope = plane.fetch(holder_address, envelope_key(size)).get();
            auto buffer = plane.fetch(holder_address, key_of(size)).get();
            if (buffer.size != size || envelope.size != kEnvelopeBytes) throw std::runtime_error("short fetch");
          });
        };
        for (int i = 0; i < n; ++i) {
          if (i % 2 == 0) {
            one_trip();
            two_trips();
          } else {
            two_trips();
            one_trip();
          }
          timed(raw_samples, [&] { raw.fetch(size); });
        }
      });
    }
    figures.tensor_one_p50.push_back(one.p50() * 1e6);
    figures.tensor_two_p50.push_back(two.p50() * 1e6);
    figures.tensor_raw_p50.push_back(raw_samples.p50() * 1e6);
  }
  figures.troupe_p50 = tp.p50() * 1e6;
  figures.raw_p50 = rp.p50() * 1e6;
  figures.secure_p50 = sp.p50() * 1e6;

  raw.close();
  return figures;
}

std::string size_name(std::size_t size) {
  return size >= MiB ? std::to_string(size / MiB) + "MiB" : std::to_string(size / KiB) + "KiB";
}

}  // namespace

int main(int argc, char** argv) {
  int mode_none = 0;
  int busy_poll_us = 0;
  int raw_busy = 0;
  troupe::bench::Cli cli("ucx_transfer_bench",
                         "troupe's UCX data plane (DataPlane::fetch between two processes) beside a raw UCX\n"
                         "request + ucp_am_send_nbx rendezvous reply of the same buffer, same UCX_TLS, same run:\n"
                         "bandwidth 64 KiB .. 64 MiB and 64-byte fetch latency, over shm and tcp (or UCX_TLS).");
  cli.add_int("--err-mode-none", &mode_none,
              "1: endpoints in UCP_ERR_HANDLING_MODE_NONE (UcxOptions::detect_peer_failure = false) on both "
              "sides; default: MODE_PEER, troupe's default");
  cli.add_int("--busy-poll-us", &busy_poll_us, "UcxOptions::busy_poll of troupe's progress threads");
  cli.add_int("--raw-busy-poll", &raw_busy,
              "1: the raw UCX processes spin on ucp_worker_progress; 0 (default): they arm the worker and sleep on "
              "its event fd between messages, like troupe (spinning loses badly on an oversubscribed machine)");
  const auto options = cli.parse(argc, argv);
  const int detect = mode_none ? 0 : 1;

  std::vector<Transport> transports;
  if (const char* tls = std::getenv("UCX_TLS"); tls != nullptr && *tls != '\0') {
    transports.push_back({"env", ""});
  } else {
    transports.push_back({"shm", "posix,sysv,cma,self"});
    transports.push_back({"tcp", "tcp,self"});
  }

  // Fork every child now, while this process has not touched UCX.
  const ClusterSecret secret = ClusterSecret::generate();
  std::vector<Children> children(transports.size());
  try {
    for (std::size_t i = 0; i < transports.size(); ++i) {
      const Transport transport = transports[i];
      children[i].holder = spawn(
          [&](int fd) { run_troupe_holder(fd, transport, detect != 0, busy_poll_us, std::nullopt); },
          children[i].holder_fd);
      children[i].secure_holder = spawn(
          [&](int fd) { run_troupe_holder(fd, transport, detect != 0, busy_poll_us, secret); },
          children[i].secure_holder_fd);
      children[i].server =
          spawn([&](int fd) { run_raw_server(fd, transport, detect != 0, raw_busy != 0); }, children[i].server_fd);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ucx_transfer_bench: %s\n", e.what());
    return 1;
  }

  int code = 0;
  for (std::size_t i = 0; i < transports.size(); ++i) {
    const auto& transport = transports[i];
    Figures figures;
    try {
      figures = measure(transport, children[i], detect != 0, busy_poll_us, raw_busy != 0, secret, options);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "ucx_transfer_bench (%s): %s\n", transport.name.c_str(), e.what());
      children[i].stop();
      code = 1;
      continue;
    }
    children[i].stop();

    troupe::bench::Reporter report("ucx_transfer", options);
    report.set_labels("troupe", "raw UCX");
    double worst = 1e9;
    for (std::size_t s = 0; s < std::size(kSizes); ++s) {
      report.add(transport.name + "_fetch_bw_" + size_name(kSizes[s]), figures.troupe_bw[s], "MiB/s", Better::higher,
                 figures.raw_bw[s]);
      if (kSizes[s] >= MiB) worst = std::min(worst, figures.troupe_bw[s] / figures.raw_bw[s]);
    }
    for (std::size_t s = 0; s < std::size(kSizes); ++s)
      report.add(transport.name + "_fetch_bw_reused_" + size_name(kSizes[s]), figures.reused_bw[s], "MiB/s",
                 Better::higher, figures.raw_bw[s]);
    double worst_peak = 1e9;
    for (std::size_t s = 0; s < std::size(kSizes); ++s) {
      report.add(transport.name + "_fetch_bw_peak_" + size_name(kSizes[s]), figures.troupe_peak[s], "MiB/s",
                 Better::higher, figures.raw_peak[s]);
      if (kSizes[s] >= MiB) worst_peak = std::min(worst_peak, figures.troupe_peak[s] / figures.raw_peak[s]);
    }
    report.add(transport.name + "_fetch_latency_p50_64B", figures.troupe_p50, "us", Better::lower, figures.raw_p50);
    report.add(transport.name + "_target_bw_ratio_min_1MiB_up", worst, "x", Better::higher, 0.9);
    for (std::size_t s = 0; s < std::size(kTensorSizes); ++s) {
      const std::string size = kTensorSizes[s] < KiB ? std::to_string(kTensorSizes[s]) + "B" : size_name(kTensorSizes[s]);
      report.add(transport.name + "_tensor_fetch_p50_" + size + "_one_trip", figures.tensor_one_p50[s], "us",
                 Better::lower, figures.tensor_raw_p50[s]);
      report.add(transport.name + "_tensor_fetch_p50_" + size + "_two_trips", figures.tensor_two_p50[s], "us",
                 Better::lower, figures.tensor_raw_p50[s]);
    }
    // Secure (tags on headers) beside insecure: reference = the insecure figure.
    double secure_worst = 1e9, secure_worst_peak = 1e9;
    for (std::size_t s = 0; s < std::size(kSizes); ++s) {
      report.add(transport.name + "_fetch_bw_secure_" + size_name(kSizes[s]), figures.secure_bw[s], "MiB/s",
                 Better::higher, figures.troupe_bw[s]);
      if (kSizes[s] >= MiB) {
        secure_worst = std::min(secure_worst, figures.secure_bw[s] / figures.troupe_bw[s]);
        secure_worst_peak = std::min(secure_worst_peak, figures.secure_peak[s] / figures.troupe_peak[s]);
      }
    }
    report.add(transport.name + "_fetch_latency_p50_64B_secure", figures.secure_p50, "us", Better::lower,
               figures.troupe_p50);
    const double secure_p50_ratio = figures.secure_p50 / figures.troupe_p50;
    report.add(transport.name + "_secure_bw_ratio_min_1MiB_up", secure_worst, "x", Better::higher, 0.95);
    report.add(transport.name + "_secure_peak_bw_ratio_min_1MiB_up", secure_worst_peak, "x", Better::higher, 0.95);
    report.add(transport.name + "_secure_latency_p50_ratio_64B", secure_p50_ratio, "x", Better::lower, 1.15);
    report.add(transport.name + "_target_peak_bw_ratio_min_1MiB_up", worst_peak, "x", Better::higher, 0.9);
    const std::string tls = transport.tls.empty() ? std::string(std::getenv("UCX_TLS")) : transport.tls;
    report.note(transport.name + ": UCX_TLS=" + tls + "; troupe's endpoint lanes: " + figures.lanes +
                "; error handling " + (detect ? "PEER" : "NONE") + "; troupe busy-poll " +
                std::to_string(busy_poll_us) + " us; raw UCX " + (raw_busy ? "spins" : "polls while a transfer is in flight, else sleeps on the event fd") +
                ".");
    report.note("fetch_bw: size / median time of one fetch, troupe's default allocator (its host block cache); "
                "fetch_bw_reused: an allocator handing out one reused buffer, as the raw client receives into one. "
                "Fetches of troupe (both) and raw UCX alternate, one each in turn; 64B latency likewise. "
                "fetch_bw_peak: size / fastest single fetch (the least disturbed by other load). "
                "tensor_fetch_p50_*: a tensor as the runtime publishes it, its envelope as the object's meta "
                "(one trip, since this issue-14 change) or as a separate object fetched first (two trips, before).");
    char verdict[200];
    std::snprintf(verdict, sizeof verdict,
                  ">= 90%% of raw UCX bandwidth from 1 MiB up: %s (worst %.0f%% by median, %.0f%% by fastest fetch)",
                  worst >= 0.9 ? "MET" : "MISSED", worst * 100, worst_peak * 100);
    report.note(verdict);
    std::snprintf(verdict, sizeof verdict,
                  "secure vs insecure: bandwidth >= 0.95x from 1 MiB up: %s (worst %.3fx); 64 B p50 <= 1.15x: %s "
                  "(%.3fx)",
                  secure_worst >= 0.95 ? "MET" : "MISSED", secure_worst, secure_p50_ratio <= 1.15 ? "MET" : "MISSED",
                  secure_p50_ratio);
    report.note(verdict);
    if (!options.json && i > 0) std::printf("\n");
    report.print_table();
  }
  for (auto& c : children) c.stop();
  return code;
}
