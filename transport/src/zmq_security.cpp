#include "troupe/transport/internal/zmq_security.hpp"

#include <sodium.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstring>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <vector>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "troupe/runtime/error.hpp"
#include "troupe/transport/internal/zmq_socket.hpp"

namespace troupe::transport {
namespace {

using Key = ClusterSecret::Key;

std::shared_ptr<spdlog::logger> log() {
  auto logger = spdlog::get("troupe");
  return logger ? logger : spdlog::default_logger();
}

// Handshake events a monitor reports (server and client side).
constexpr int kHandshakeEvents = ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL |
                                 ZMQ_EVENT_HANDSHAKE_FAILED_AUTH | ZMQ_EVENT_HANDSHAKE_SUCCEEDED |
                                 ZMQ_EVENT_MONITOR_STOPPED;

std::string domain_of(const Key& server_public) {
  static const char* digits = "0123456789abcdef";
  std::string domain = "troupe-";
  for (auto byte : server_public) {
    domain.push_back(digits[byte >> 4]);
    domain.push_back(digits[byte & 15]);
  }
  return domain;
}

void set_key(zmq::socket_t& socket, int option, const Key& key) {
  if (::zmq_setsockopt(socket.handle(), option, key.data(), key.size()) != 0)
    throw Error(Errc::transport, std::string("setting a CURVE key: ") + ::zmq_strerror(::zmq_errno()));
}

std::string next_monitor_endpoint() {
  static std::atomic<std::uint64_t> counter{0};
  return "inproc://troupe-monitor-" + std::to_string(counter.fetch_add(1));
}

// One monitor event: {event, value} or nullopt when none is waiting.
struct MonitorEvent {
  std::uint16_t event = 0;
  std::uint32_t value = 0;
};
std::optional<MonitorEvent> read_event(zmq::socket_t& monitor) {
  zmq::message_t head;
  if (!monitor.recv(head, zmq::recv_flags::dontwait)) return std::nullopt;
  MonitorEvent event;
  if (head.size() >= 6) {
    std::memcpy(&event.event, head.data(), 2);
    std::memcpy(&event.value, static_cast<const char*>(head.data()) + 2, 4);
  }
  while (head.more()) {  // the endpoint frame
    zmq::message_t rest;
    if (!monitor.recv(rest, zmq::recv_flags::dontwait)) break;
    head = std::move(rest);
  }
  return event;
}

std::string describe_failure(const MonitorEvent& event) {
  switch (event.event) {
    case ZMQ_EVENT_HANDSHAKE_FAILED_AUTH:
      return "the peer refused this process's CURVE key (ZAP status " + std::to_string(event.value) +
             ": not a member of its cluster)";
    case ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL:
      if (event.value == ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH)
        return "security mechanism mismatch (one side uses CURVE with a cluster token, the other plain sockets)";
      if (event.value == ZMQ_PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC)
        return "CURVE handshake failed (the two sides hold different cluster tokens)";
      return "ZeroMQ handshake protocol error 0x" + fmt::format("{:x}", event.value);
    default:
      return "ZeroMQ handshake failed (" + std::string(::zmq_strerror(static_cast<int>(event.value))) + ")";
  }
}

// The process's ZAP handler and server monitors: one thread, started once.
class ZapHandler {
 public:
  static ZapHandler& instance() {
    static ZapHandler* handler = new ZapHandler();  // never destroyed: its thread runs until exit
    return *handler;
  }

  void admit(const std::string& domain, const Key& client_public) {
    std::lock_guard lock(mutex_);
    domains_[domain] = client_public;
  }

  // Hands a connected monitor PAIR over to the handler thread.
  void watch(zmq::socket_t monitor) {
    std::lock_guard lock(mutex_);
    new_monitors_.push_back(std::move(monitor));
  }

  ZapCounters counters() const {
    return ZapCounters{admitted_.load(), refused_.load(), failed_.load()};
  }

 private:
  // The logger is taken once: this thread outlives main(), and the spdlog
  // registry must not be touched while static destructors run.
  ZapHandler() : socket_(zmq_context(), zmq::socket_type::rep), logger_(log()) {
    socket_.set(zmq::sockopt::linger, 0);
    // Bound here, before any secure server binds: libzmq admits every CURVE
    // client when nothing serves this endpoint.
    socket_.bind("inproc://zeromq.zap.01");
    std::thread([this] { run(); }).detach();
  }

  void run() {
    std::vector<zmq::socket_t> monitors;
    for (;;) {
      try {
        {
          std::lock_guard lock(mutex_);
          for (auto& m : new_monitors_) monitors.push_back(std::move(m));
          new_monitors_.clear();
        }
        std::vector<zmq::pollitem_t> items;
        items.push_back({socket_.handle(), 0, ZMQ_POLLIN, 0});
        for (auto& m : monitors) items.push_back({m.handle(), 0, ZMQ_POLLIN, 0});
        zmq::poll(items.data(), items.size(), std::chrono::milliseconds(100));
        if (items[0].revents & ZMQ_POLLIN) serve_one();
        for (std::size_t i = monitors.size(); i-- > 0;) {
          if (!(items[i + 1].revents & ZMQ_POLLIN)) continue;
          bool stopped = false;
          while (auto event = read_event(monitors[i])) {
            if (event->event == ZMQ_EVENT_MONITOR_STOPPED) stopped = true;
            else if (event->event != ZMQ_EVENT_HANDSHAKE_SUCCEEDED) note_failure(describe_failure(*event));
          }
          if (stopped) monitors.erase(monitors.begin() + static_cast<std::ptrdiff_t>(i));
        }
      } catch (const std::exception& e) {
        logger_->warn("ZAP handler: {}", e.what());
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
    }
  }

  void note_failure(const std::string& why) {
    ++failed_;
    rate_limited_warn("refused a connection: " + why);
  }

  void rate_limited_warn(const std::string& text) {
    const auto now = std::chrono::steady_clock::now();
    if (now - last_log_ < std::chrono::seconds(1)) return;
    last_log_ = now;
    logger_->warn("ZeroMQ security: {} ({} refused by ZAP, {} failed handshakes so far)", text, refused_.load(),
                failed_.load());
  }

  // One ZAP request (RFC 27): version, request id, domain, address,
  // identity, mechanism, credentials. Answers 200 for a CURVE client whose
  // key is the domain's members' key, 400 for anything else.
  void serve_one() {
    std::vector<zmq::message_t> frames;
    for (;;) {
      zmq::message_t frame;
      if (!socket_.recv(frame, zmq::recv_flags::dontwait)) break;
      const bool more = frame.more();
      frames.push_back(std::move(frame));
      if (!more) break;
    }
    if (frames.empty()) return;
    auto text = [&](std::size_t i) { return i < frames.size() ? frames[i].to_string() : std::string(); };
    bool ok = false;
    if (frames.size() >= 7 && text(0) == "1.0" && text(5) == "CURVE" && frames[6].size() == Key{}.size()) {
      std::lock_guard lock(mutex_);
      auto it = domains_.find(text(2));
      ok = it != domains_.end() &&
           ::sodium_memcmp(it->second.data(), frames[6].data(), it->second.size()) == 0;
    }
    const std::string request_id = text(1);
    std::array<std::string, 6> reply = {"1.0", request_id, ok ? "200" : "400",
                                        ok ? "OK" : "not a member of this cluster", "", ""};
    for (std::size_t i = 0; i < reply.size(); ++i)
      socket_.send(zmq::buffer(reply[i]), i + 1 < reply.size() ? zmq::send_flags::sndmore : zmq::send_flags::none);
    if (ok) {
      ++admitted_;
    } else {
      ++refused_;
      rate_limited_warn("ZAP refused a client from " + text(3) + " (mechanism " + text(5) + ")");
    }
  }

  zmq::socket_t socket_;
  std::shared_ptr<spdlog::logger> logger_;
  mutable std::mutex mutex_;
  std::unordered_map<std::string, Key> domains_;  // guarded by mutex_
  std::vector<zmq::socket_t> new_monitors_;       // guarded by mutex_
  std::atomic<std::uint64_t> admitted_{0}, refused_{0}, failed_{0};
  std::chrono::steady_clock::time_point last_log_{};  // handler thread only
};

}  // namespace

void require_curve() {
  if (!::zmq_has("curve"))
    throw Error(Errc::unsupported,
                "this libzmq was built without CURVE security (zmq_has(\"curve\") is false); a secure cluster needs "
                "it (install a libzmq built with libsodium, or run an --insecure cluster)");
}

bool secure_server(zmq::socket_t& socket, const std::optional<ClusterSecret>& secret) {
  if (!secret) return false;
  require_curve();
  auto& zap = ZapHandler::instance();
  const Key server_public = secret->curve_server_public();
  const std::string domain = domain_of(server_public);
  zap.admit(domain, secret->curve_client_public());
  socket.set(zmq::sockopt::curve_server, 1);
  set_key(socket, ZMQ_CURVE_SECRETKEY, secret->curve_server_secret());
  socket.set(zmq::sockopt::zap_domain, domain);
  // Counts handshakes that fail before ZAP is asked (plain or foreign clients).
  const std::string endpoint = next_monitor_endpoint();
  if (::zmq_socket_monitor(socket.handle(), endpoint.c_str(), kHandshakeEvents) == 0) {
    zmq::socket_t monitor(zmq_context(), zmq::socket_type::pair);
    monitor.set(zmq::sockopt::linger, 0);
    monitor.connect(endpoint);
    zap.watch(std::move(monitor));
  }
  return true;
}

bool secure_client(zmq::socket_t& socket, const std::optional<ClusterSecret>& secret) {
  if (!secret) return false;
  require_curve();
  set_key(socket, ZMQ_CURVE_SERVERKEY, secret->curve_server_public());
  set_key(socket, ZMQ_CURVE_PUBLICKEY, secret->curve_client_public());
  set_key(socket, ZMQ_CURVE_SECRETKEY, secret->curve_client_secret());
  return true;
}

ZapCounters zap_counters() { return ZapHandler::instance().counters(); }

// --- HandshakeWatch ---------------------------------------------------------------

HandshakeWatch::HandshakeWatch(zmq::socket_t& socket)
    : socket_(socket.handle()), monitor_(zmq_context(), zmq::socket_type::pair) {
  monitor_.set(zmq::sockopt::linger, 0);
  const std::string endpoint = next_monitor_endpoint();
  if (::zmq_socket_monitor(socket.handle(), endpoint.c_str(), kHandshakeEvents) != 0)
    throw Error(Errc::transport, std::string("zmq_socket_monitor: ") + ::zmq_strerror(::zmq_errno()));
  monitor_.connect(endpoint);
}

HandshakeWatch::~HandshakeWatch() {
  // Stops the socket's monitor and reads what it sent, up to its
  // MONITOR_STOPPED, before the reader closes: closing an inproc reader
  // with unread events stalls libzmq's reaper for every socket of the
  // context (seen with libzmq 4.3.4: closed sockets then keep their file
  // descriptors forever).
  ::zmq_socket_monitor(socket_, nullptr, 0);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(200);
  try {
    while (std::chrono::steady_clock::now() < deadline) {
      auto event = read_event(monitor_);
      if (!event) {
        zmq::pollitem_t item{monitor_.handle(), 0, ZMQ_POLLIN, 0};
        zmq::poll(&item, 1, std::chrono::milliseconds(10));
        continue;
      }
      if (event->event == ZMQ_EVENT_MONITOR_STOPPED) break;
    }
  } catch (const zmq::error_t&) {
  }
}

void HandshakeWatch::poll() {
  while (auto event = read_event(monitor_)) {
    if (event->event == ZMQ_EVENT_HANDSHAKE_SUCCEEDED) {
      failure_.clear();
      reported_ = false;
    } else if (event->event != ZMQ_EVENT_MONITOR_STOPPED) failure_ = describe_failure(*event);
  }
}

std::string HandshakeWatch::take_unreported_failure() {
  if (failure_.empty() || reported_) return {};
  reported_ = true;
  return failure_;
}

std::string no_reply_message(const std::string& endpoint, long timeout_ms) {
  return "no reply from the head at " + endpoint + " within " + std::to_string(timeout_ms) +
         " ms (if the cluster is secure, this process needs its token: TROUPE_TOKEN or --token-file)";
}

std::string handshake_refused_message(const std::string& endpoint, const std::string& why) {
  return "the head at " + endpoint + " refused this process: " + why +
         " (a secure cluster needs its token: TROUPE_TOKEN or --token-file; an --insecure one none)";
}

}  // namespace troupe::transport
