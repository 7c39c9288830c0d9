#include "troupe/node/node_manager.hpp"

#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <map>
#include <memory>
#include <optional>
#include <thread>

#include <capnp/message.h>
#include <capnp/serialize.h>

#include "troupe/node/files.hpp"
#include "troupe/node/process.hpp"
#include "troupe/runtime/error.hpp"
#include "troupe/runtime/ids.hpp"
#include "troupe/runtime/logging.hpp"
#include "troupe/transport/content_hash.hpp"
#include "troupe/transport/internal/control_socket.hpp"
#include "troupe/transport/internal/membership.hpp"
#include "troupe/transport/framing.hpp"
#include "troupe/transport/schema/control.capnp.h"
#include "troupe/transport/ucx.hpp"
#include "troupe/transport/upload_limit.hpp"

namespace troupe::node {
namespace {

using Clock = std::chrono::steady_clock;
using wire::ControlMessage;

constexpr auto kMaxBackoff = std::chrono::milliseconds(2000);
constexpr auto kFetchTimeout = std::chrono::seconds(60);  // per chunk of a job binary
// A job binary comes in chunks of this size: the head's heartbeat acks to
// this node travel on the same connection and wait behind each chunk, so
// a whole 65 MB binary in one message could hold them back past the
// fencing timeout on a loaded machine (a healthy node stopping its actors).
constexpr std::uint32_t kBinaryChunkBytes = 4u << 20;
// DEAD reports not acknowledged are sent again this often; at most this
// many wait (the oldest is dropped: the head's reconciliation of the
// heartbeat's host list covers it).
constexpr auto kReportResend = std::chrono::milliseconds(1000);
constexpr std::size_t kMaxReports = 10000;

// Whether nothing listens at `address` (HOST:PORT): a TCP connect is
// refused at once. That is a head process that is not running (killed,
// restarting), which cannot declare this node dead meanwhile; a partition
// or a lost machine makes the connect time out or fail otherwise, and a
// stalled head still accepts. False whenever it cannot tell.
bool head_refuses_connections(const std::string& address, std::chrono::milliseconds timeout) {
  const auto colon = address.rfind(':');
  if (colon == std::string::npos) return false;
  std::string host = address.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  const std::string port = address.substr(colon + 1);
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* found = nullptr;
  if (::getaddrinfo(host.c_str(), port.c_str(), &hints, &found) != 0 || found == nullptr) return false;
  bool refused = false;
  int fd = ::socket(found->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd >= 0) {
    int rc = ::connect(fd, found->ai_addr, found->ai_addrlen);
    if (rc != 0 && errno == ECONNREFUSED) {
      refused = true;
    } else if (rc != 0 && errno == EINPROGRESS) {
      pollfd p{fd, POLLOUT, 0};
      if (::poll(&p, 1, static_cast<int>(timeout.count())) == 1) {
        int error = 0;
        socklen_t length = sizeof error;
        ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length);
        refused = error == ECONNREFUSED;
      }
    }
    ::close(fd);
  }
  ::freeaddrinfo(found);
  return refused;
}
// (actor, incarnation) pairs whose host ended, remembered so that a
// startActor sent again after the host ended does not start it twice.
constexpr std::size_t kMaxFinished = 4096;

struct ActorHost {
  ActorId actor;
  std::uint32_t incarnation = 0;
  pid_t pid = 0;
  std::string fenced;  // why this node killed it (fencing), for its exit report
  // Set by stop_host: when a host that has not exited by then gets SIGKILL.
  Clock::time_point kill_by = Clock::time_point::max();
  bool sigkilled = false;
};

// How long a host asked to stop (SIGTERM) has to reach a safe point before
// it is SIGKILLed (see NodeManager::stop_host). A running host takes
// microseconds; this covers one that is stopped or still starting.
constexpr std::chrono::milliseconds kStopGrace{200};

struct Report {  // an actorUpdate DEAD the head has not acknowledged yet
  ActorId actor;
  std::uint32_t incarnation = 0;
  Errc code = Errc::actor_died;
  std::string reason;
  Clock::time_point resend_at;
};

// A job binary checked against its hash off the node manager's loop (a
// 200 MB binary takes seconds to hash: on the loop it would stall the
// heartbeats and every other message).
struct Verification {
  std::atomic<bool> done{false};
  std::string error;     // set before done: the binary cannot be used
  bool missing = false;  // the file on disk did not match: fetch it again
};

struct PendingFetch {
  std::string hash;
  Clock::time_point deadline;
  std::vector<std::unique_ptr<capnp::MallocMessageBuilder>> starts;  // StartActor roots
  std::shared_ptr<Verification> verifying;  // set while a verifier thread works on it
  std::shared_ptr<std::string> received;    // the chunks so far
};

class NodeManager {
 public:
  explicit NodeManager(const NodeManagerConfig& config)
      : config_(config),
        // The node id is public (getClusterState lists it); the random
        // suffix is not, so no other peer can take this connection's name
        // over (the head's ROUTER hands a name to whoever connects with it).
        identity_("node-" + config_.node_id.hex() + "-" + transport::random_hex(16)),
        // immediate: drop, not queue, while the head is away
        head_(identity_, config_.head_address, {.immediate = true}) {
    probe_data_plane();
  }

  void run(const std::atomic<bool>& stop) {
    TROUPE_LOG_INFO("node {}: connecting to the head at {}", config_.node_id.short_hex(), config_.head_address);
    while (!stop.load()) {
      std::optional<transport::ReceivedMessage> message;
      try {
        message = head_.receive(std::chrono::milliseconds(20));
      } catch (const Error& error) {
        if (error.code() == Errc::permission_denied) {
          // The head refused our handshake: no token, or another cluster's.
          TROUPE_LOG_ERROR("node {}: the head at {} refused this node: {}", config_.node_id.short_hex(),
                           config_.head_address, error.message());
        } else {
          TROUPE_LOG_WARN("node: dropped a malformed message: {}", error.message());
        }
      }
      if (message) {
        try {
          dispatch(*message);
        } catch (const std::exception& error) {
          TROUPE_LOG_ERROR("node: handling a message: {}", error.what());
        }
      }
      finish_verifications();
      timers();
      reap();
    }
    shutdown();
  }

 private:
  // --- sending --------------------------------------------------------------------

  bool send(capnp::MallocMessageBuilder& message) {
    try {
      head_.send(message);
      return true;
    } catch (const Error&) {
      return false;  // not connected (ZMQ_IMMEDIATE): the head is away
    }
  }

  void reply_ack(std::uint64_t request_id) {
    if (request_id == 0) return;
    capnp::MallocMessageBuilder message;
    auto root = message.initRoot<ControlMessage>();
    root.setRequestId(request_id);
    root.setAck();
    send(message);
  }

  void reply_error(std::uint64_t request_id, Errc code, const std::string& text) {
    if (request_id == 0) return;
    capnp::MallocMessageBuilder message;
    auto root = message.initRoot<ControlMessage>();
    root.setRequestId(request_id);
    auto error = root.initError();
    error.setCode(wire_code(code));
    error.setMessage(text);
    send(message);
  }

  void send_register() {
    capnp::MallocMessageBuilder message;
    auto root = message.initRoot<ControlMessage>();
    register_request_ = next_request_id_++;
    root.setRequestId(register_request_);
    auto reg = root.initRegisterNode();
    reg.setProtocolVersion(wire::PROTOCOL_VERSION);
    to_wire(reg.initNodeId(), config_.node_id);
    reg.setAddress(config_.node_ip);
    char host[256] = {};
    ::gethostname(host, sizeof host - 1);
    reg.setHostname(host);
    reg.setNumCpus(config_.num_cpus);
    reg.setMemoryBytes(config_.memory_bytes);
    auto gpus = reg.initGpus(static_cast<unsigned>(config_.gpus.size()));
    for (unsigned i = 0; i < config_.gpus.size(); ++i) {
      const auto& gpu = config_.gpus[i];
      gpus[i].setIndex(static_cast<std::uint32_t>(gpu.index));
      gpus[i].setModel(gpu.model);
      gpus[i].setMemoryBytes(gpu.memory_bytes);
      gpus[i].setSmCount(static_cast<std::uint32_t>(gpu.sm_count));
      gpus[i].setCcMajor(static_cast<std::uint16_t>(gpu.cc_major));
      gpus[i].setCcMinor(static_cast<std::uint16_t>(gpu.cc_minor));
      gpus[i].setDeclared(gpu.declared);
      auto peers = gpus[i].initPeers(static_cast<unsigned>(gpu.peers.size()));
      for (unsigned p = 0; p < gpu.peers.size(); ++p) peers.set(p, static_cast<std::uint32_t>(gpu.peers[p]));
    }
    // Custom resources, plus the node's own "node:<short id>" (as Ray's
    // raylet adds node:<ip>), which lets a bundle or actor pin this node.
    scheduler::ResourceSet custom = config_.resources;
    custom.set(scheduler::node_resource(config_.node_id.short_hex()), scheduler::kNodeResourceCapacity);
    auto resources = reg.initResources(static_cast<unsigned>(custom.amounts().size()));
    unsigned i = 0;
    for (const auto& [name, amount] : custom.amounts()) {
      resources[i].setName(name);
      resources[i].setAmount(amount);
      ++i;
    }
    // What the actor hosts this node starts will use for object bytes (they
    // inherit this process's UCX_TLS/UCX_NET_DEVICES).
    auto transports = reg.initTransports(static_cast<unsigned>(data_transports_.size()));
    for (unsigned t = 0; t < data_transports_.size(); ++t) transports.set(t, data_transports_[t]);
    reg.setCudaStaging(!cuda_native_);
    // issue 12 (persist): the hosts running now, so that a restarted head
    // adopts the ones it knows instead of having them killed.
    auto actors = reg.initActors(static_cast<unsigned>(hosts_.size()));
    for (unsigned h = 0; h < hosts_.size(); ++h) {
      to_wire(actors[h].initActorId(), hosts_[h].actor);
      actors[h].setState(wire::ActorState::ALIVE);
      actors[h].setIncarnation(hosts_[h].incarnation);
      actors[h].setPid(static_cast<std::uint32_t>(hosts_[h].pid));
    }
    send(message);
  }

  void send_heartbeat() {
    capnp::MallocMessageBuilder message;
    auto root = message.initRoot<ControlMessage>();
    root.setRequestId(next_request_id_++);
    auto heartbeat = root.initHeartbeat();
    to_wire(heartbeat.initNodeId(), config_.node_id);
    heartbeat.setSeq(++heartbeat_seq_);
    auto actors = heartbeat.initActors(static_cast<unsigned>(hosts_.size()));
    for (unsigned i = 0; i < hosts_.size(); ++i) {
      to_wire(actors[i].initActorId(), hosts_[i].actor);
      actors[i].setState(wire::ActorState::ALIVE);
      actors[i].setIncarnation(hosts_[i].incarnation);
      actors[i].setPid(static_cast<std::uint32_t>(hosts_[i].pid));
    }
    send(message);
  }

  // Reports that an actor's host ended (or never started); kept and sent
  // again until the head acknowledges it, also across a link that is down.
  void send_actor_update(const ActorId& actor, std::uint32_t incarnation, Errc code,
                         const std::string& reason) {
    std::uint64_t request_id = next_request_id_++;
    if (reports_.size() >= kMaxReports) reports_.erase(reports_.begin());
    reports_[request_id] = {actor, incarnation, code, reason, Clock::now() + kReportResend};
    transmit_report(request_id, reports_[request_id]);
  }

  void transmit_report(std::uint64_t request_id, const Report& report) {
    const ActorId& actor = report.actor;
    std::uint32_t incarnation = report.incarnation;
    Errc code = report.code;
    const std::string& reason = report.reason;
    capnp::MallocMessageBuilder message;
    auto root = message.initRoot<ControlMessage>();
    root.setRequestId(request_id);
    auto update = root.initActorUpdate();
    to_wire(update.initActorId(), actor);
    update.setState(wire::ActorState::DEAD);
    to_wire(update.initNodeId(), config_.node_id);
    update.setIncarnation(incarnation);
    auto error = update.initReason();
    error.setCode(wire_code(code));
    error.setMessage(reason);
    send(message);
  }

  // --- receiving ------------------------------------------------------------------

  void dispatch(transport::ReceivedMessage& received) {
    auto reader = received.root<ControlMessage>();
    std::uint64_t request_id = reader.getRequestId();
    last_contact_ = Clock::now();
    switch (reader.which()) {
      case ControlMessage::REGISTER_NODE_REPLY: {
        if (request_id != register_request_) break;
        auto reply = reader.getRegisterNodeReply();
        if (reply.getDeclaredDead()) fence("the head had declared this node dead");
        heartbeat_interval_ = std::chrono::milliseconds(std::max<std::uint32_t>(10, reply.getHeartbeatIntervalMs()));
        node_timeout_ = std::chrono::milliseconds(std::max<std::uint32_t>(50, reply.getNodeTimeoutMs()));
        // Fencing: with no word from the head for this long, this node's
        // actor hosts stop, before the head (which declares the node dead
        // after node_timeout) restarts them elsewhere; a head restart
        // shorter than this leaves them running.
        fence_after_ = std::max(node_timeout_ - std::max<std::chrono::milliseconds>(
                                                    std::chrono::milliseconds(1000), 2 * heartbeat_interval_),
                                node_timeout_ / 2);
        registered_ = true;
        backoff_ = std::chrono::milliseconds(100);
        last_ack_ = Clock::now();
        next_heartbeat_ = Clock::now();
        for (auto& [id, report] : reports_) report.resend_at = Clock::now();  // the link is back
        TROUPE_LOG_INFO("node {}: registered with the head at {}", config_.node_id.short_hex(), config_.head_address);
        break;
      }
      case ControlMessage::HEARTBEAT_ACK: {
        last_ack_ = Clock::now();
        if (reader.getHeartbeatAck().getDeclaredDead() && registered_) {
          fence("the head declared this node dead");
        }
        if (reader.getHeartbeatAck().getReregister() && registered_) {
          TROUPE_LOG_WARN("node {}: the head does not know this node (it restarted?): registering again",
                          config_.node_id.short_hex());
          registered_ = false;
          next_register_ = Clock::now();
        }
        break;
      }
      case ControlMessage::START_ACTOR:
        on_start_actor(request_id, reader.getStartActor());
        break;
      case ControlMessage::KILL_ACTOR:
        on_kill_actor(request_id, reader.getKillActor());
        break;
      case ControlMessage::BINARY_DATA:
        on_binary(request_id, reader.getBinaryData());
        break;
      case ControlMessage::PROBE_NODE:
        reply_ack(request_id);  // the head suspects this node: answer at once
        break;
      case ControlMessage::ACK:
        reports_.erase(request_id);
        break;
      case ControlMessage::ERROR: {
        if (auto report = reports_.find(request_id); report != reports_.end()) {
          // Refused while this node is not registered (the head restarted):
          // sent again once it is; any other refusal is final.
          if (errc_from_wire(reader.getError().getCode()) != Errc::permission_denied) reports_.erase(report);
          else report->second.resend_at = Clock::time_point::max();
        }
        if (request_id == register_request_) {
          TROUPE_LOG_ERROR("node: the head refused registration: {}", reader.getError().getMessage().cStr());
        } else if (auto it = fetches_.find(request_id); it != fetches_.end()) {
          fail_fetch(it->second, reader.getError().getMessage().cStr());
          fetches_.erase(it);
        }
        break;
      }
      default:
        break;  // acks of our actor updates
    }
  }

  // Whether incarnation `incarnation` of `actor` (or a later one) runs,
  // waits for its binary, or ran here already: a repeated startActor.
  bool started_already(const ActorId& actor, std::uint32_t incarnation) const {
    for (const auto& host : hosts_) {
      if (host.actor == actor && host.incarnation >= incarnation) return true;
    }
    for (const auto& [id, fetch] : fetches_) {
      for (const auto& start : fetch.starts) {
        auto reader = start->getRoot<wire::StartActor>();
        if (from_wire<ActorId>(reader.getSpec().getActorId()) == actor && reader.getIncarnation() >= incarnation)
          return true;
      }
    }
    return std::find(finished_.begin(), finished_.end(), std::make_pair(actor, incarnation)) != finished_.end();
  }

  void on_start_actor(std::uint64_t request_id, wire::StartActor::Reader start) {
    std::string hash = start.getJobBinaryHash().cStr();
    if (!transport::valid_hash_name(hash)) {
      reply_error(request_id, Errc::invalid_argument, "startActor with a bad jobBinaryHash \"" + hash + "\"");
      return;
    }
    reply_ack(request_id);
    if (started_already(from_wire<ActorId>(start.getSpec().getActorId()), start.getIncarnation())) return;
    auto copy = std::make_unique<capnp::MallocMessageBuilder>();
    copy->setRoot(start);
    for (auto& [id, fetch] : fetches_) {
      if (fetch.hash == hash) {
        fetch.starts.push_back(std::move(copy));
        return;
      }
    }
    PendingFetch fetch;
    fetch.hash = hash;
    fetch.deadline = Clock::now() + kFetchTimeout;
    fetch.starts.push_back(std::move(copy));
    if (std::filesystem::exists(binary_path(hash))) {
      auto known = known_file_hash_match(binary_path(hash), hash);
      if (known.value_or(false)) {
        spawn_host(fetch.starts.front()->getRoot<wire::StartActor>());
        return;
      }
      // Not hashed yet (a node manager restarted over its binary cache), or
      // planted or damaged: checked off the loop, fetched again on mismatch.
      verify_existing(std::move(fetch));
      return;
    }
    request_binary(std::move(fetch));
  }

  void request_binary(PendingFetch fetch) {
    fetch.received = std::make_shared<std::string>();
    request_chunk(std::move(fetch));
  }

  // Asks for the next chunk: from the end of what was received.
  void request_chunk(PendingFetch fetch) {
    capnp::MallocMessageBuilder message;
    auto root = message.initRoot<ControlMessage>();
    std::uint64_t fetch_id = next_request_id_++;
    root.setRequestId(fetch_id);
    auto request = root.initFetchBinary();
    request.setBinaryHash(fetch.hash);
    request.setOffset(fetch.received ? fetch.received->size() : 0);
    request.setMaxBytes(kBinaryChunkBytes);
    fetch.deadline = Clock::now() + kFetchTimeout;
    fetch.verifying.reset();
    fetches_.emplace(fetch_id, std::move(fetch));
    send(message);
  }

  void verify_existing(PendingFetch fetch) {
    auto verification = std::make_shared<Verification>();
    fetch.verifying = verification;
    verifiers_.emplace_back(verification, std::thread([verification, path = binary_path(fetch.hash), hash = fetch.hash,
                             node = config_.node_id.short_hex()] {
      if (!file_matches_hash(path, hash)) {
        // Planted or damaged: never run it; fetch the real one from the head.
        TROUPE_LOG_WARN("node {}: binaries/{} does not match its hash; removed it and fetching it again", node, hash);
        std::error_code ignored;
        std::filesystem::remove(path, ignored);
        verification->missing = true;
      }
      verification->done.store(true);
    }));
    fetches_.emplace(next_request_id_++, std::move(fetch));
  }

  void on_binary(std::uint64_t request_id, wire::BinaryData::Reader data) {
    auto it = fetches_.find(request_id);
    if (it == fetches_.end() || it->second.verifying) return;
    PendingFetch& fetch = it->second;
    auto bytes = data.getBinary();
    const std::uint64_t total = data.getTotalBytes();
    if (!fetch.received) fetch.received = std::make_shared<std::string>();
    std::string& received = *fetch.received;
    if (total == 0) {  // the whole binary in one message
      received.assign(reinterpret_cast<const char*>(bytes.begin()), bytes.size());
    } else {
      if (data.getOffset() != received.size() || bytes.size() == 0 || total > transport::kMaxBinaryBytes ||
          received.size() + bytes.size() > total) {
        fail_fetch(fetch, "the head sent a chunk of the job binary out of place (offset " +
                              std::to_string(data.getOffset()) + ", " + std::to_string(bytes.size()) + " of " +
                              std::to_string(total) + " bytes, " + std::to_string(received.size()) + " received)");
        fetches_.erase(it);
        return;
      }
      if (received.empty()) received.reserve(total);
      received.append(reinterpret_cast<const char*>(bytes.begin()), bytes.size());
      if (received.size() < total) {  // more to come: ask for the next chunk
        PendingFetch next = std::move(fetch);
        fetches_.erase(it);
        request_chunk(std::move(next));
        return;
      }
    }
    // The whole binary, for the verifier thread: hashing and writing happen there.
    auto copy = std::move(fetch.received);
    auto verification = std::make_shared<Verification>();
    fetch.verifying = verification;
    fetch.deadline = Clock::now() + kFetchTimeout;
    verifiers_.emplace_back(verification, std::thread([verification, copy, path = binary_path(fetch.hash), hash = fetch.hash] {
      try {
        if (transport::content_hash(*copy) != hash) {
          verification->error = "the head sent bytes that do not match the hash";
        } else if (!file_matches_hash(path, hash)) {
          write_file_atomic(path, *copy, 0700);
          // Hashes the file as written, so spawning finds it known.
          if (!file_matches_hash(path, hash)) verification->error = "the stored job binary does not match its hash";
        }
      } catch (const Error& error) {
        verification->error = "cannot store the job binary: " + error.message();
      } catch (const std::exception& error) {
        verification->error = std::string("cannot store the job binary: ") + error.what();
      }
      verification->done.store(true);
    }));
  }

  // Ends the verifications that are done: their starts spawn, fail, or
  // wait for the binary fetched again.
  void finish_verifications() {
    for (auto it = fetches_.begin(); it != fetches_.end();) {
      auto verification = it->second.verifying;
      if (!verification || !verification->done.load()) {
        ++it;
        continue;
      }
      PendingFetch fetch = std::move(it->second);
      it = fetches_.erase(it);
      if (!verification->error.empty()) {
        fail_fetch(fetch, verification->error);
      } else if (verification->missing) {
        request_binary(std::move(fetch));
      } else {
        for (auto& start : fetch.starts) spawn_host(start->getRoot<wire::StartActor>());
      }
    }
    // Threads that are done are joined here; the rest at shutdown.
    std::erase_if(verifiers_, [](auto& verifier) {
      if (!verifier.first->done.load()) return false;
      verifier.second.join();  // it is returning
      return true;
    });
  }

  void fail_fetch(PendingFetch& fetch, const std::string& why) {
    for (auto& start : fetch.starts) {
      auto reader = start->getRoot<wire::StartActor>();
      send_actor_update(from_wire<ActorId>(reader.getSpec().getActorId()), reader.getIncarnation(), Errc::actor_died,
                        "cannot fetch job binary " + fetch.hash + ": " + why);
    }
  }

  // Kills this actor's hosts of the given incarnation or earlier, and drops
  // such starts still waiting for their binary.
  void on_kill_actor(std::uint64_t request_id, wire::KillActor::Reader kill) {
    ActorId actor = from_wire<ActorId>(kill.getActorId());
    std::uint32_t up_to = kill.getIncarnation();
    bool found = false;
    for (auto& host : hosts_) {
      if (host.actor == actor && host.incarnation <= up_to) {
        stop_host(host);
        found = true;
      }
    }
    for (auto& [id, fetch] : fetches_) {
      std::erase_if(fetch.starts, [&](const auto& start) {
        auto reader = start->template getRoot<wire::StartActor>();
        bool match = from_wire<ActorId>(reader.getSpec().getActorId()) == actor && reader.getIncarnation() <= up_to;
        if (match) {
          found = true;
          send_actor_update(actor, reader.getIncarnation(), Errc::actor_died, "killed before it started");
        }
        return match;
      });
    }
    if (found) reply_ack(request_id);
    else reply_error(request_id, Errc::not_found, "no actor host for " + actor.hex() + " on this node");
  }

  // --- actor hosts ------------------------------------------------------------------

  std::filesystem::path binary_path(const std::string& hash) const {
    return config_.session_dir / "binaries" / hash;
  }

  void spawn_host(wire::StartActor::Reader start) {
    ActorId actor = from_wire<ActorId>(start.getSpec().getActorId());
    std::uint32_t incarnation = start.getIncarnation();
    for (auto& host : hosts_) {
      if (host.actor == actor && host.incarnation >= incarnation) return;  // started already
    }
    for (auto& host : hosts_) {
      if (host.actor == actor) stop_host(host);  // an older incarnation still running
    }
    try {
      capnp::MallocMessageBuilder spec;
      spec.setRoot(start);
      auto words = capnp::messageToFlatArray(spec);
      auto bytes = words.asBytes();
      auto spec_path = config_.session_dir / "actors" / (actor.hex() + ".spec");
      write_file_atomic(spec_path, std::string(reinterpret_cast<const char*>(bytes.begin()), bytes.size()));

      SpawnOptions options;
      options.program = binary_path(start.getJobBinaryHash().cStr()).string();
      if (!file_matches_hash(options.program, start.getJobBinaryHash().cStr()))
        throw Error(Errc::permission_denied, "the job binary in the cache does not match its hash; not running it");
      options.argv = {options.program};
      options.env = current_environment();
      options.env.erase("TROUPE_ADDRESS");
      options.env.erase("TROUPE_JOB_ID");
      // issue 13 (cluster): the actor's own variables (ActorOptions::env, and
      // its job's `troupe submit --env`); the runtime's own below win.
      for (auto var : start.getSpec().getEnv()) options.env[var.getName().cStr()] = var.getValue().cStr();
      options.env["TROUPE_ACTOR_SPEC"] = spec_path.string();
      options.env["TROUPE_HEAD_ADDRESS"] = config_.head_address;
      options.env["TROUPE_NODE_ID"] = config_.node_id.hex();
      options.env["TROUPE_NODE_IP"] = config_.node_ip;
      // The host ends when this process does (PR_SET_PDEATHSIG, and it
      // checks that its parent is still this pid: actor_host.cpp).
      options.env["TROUPE_NODE_MANAGER_PID"] = std::to_string(::getpid());
      set_membership_env(options.env, config_.token_file);
      std::string devices;
      for (auto index : start.getGpuIndices()) {
        if (!devices.empty()) devices += ",";
        devices += std::to_string(index);
      }
      options.env["CUDA_VISIBLE_DEVICES"] = devices;
      options.output_path = (config_.session_dir / "logs" / ("actor-" + actor.hex() + ".log")).string();
      options.new_process_group = true;
      pid_t pid = spawn_process(options);
      hosts_.push_back({actor, incarnation, pid});
      TROUPE_LOG_INFO("node {}: started actor {} ({}) incarnation {} as pid {} (CUDA_VISIBLE_DEVICES={})",
                      config_.node_id.short_hex(), actor.short_hex(),
                      start.getSpec().getClassName().cStr(), incarnation, pid, devices);
    } catch (const Error& error) {
      send_actor_update(actor, incarnation, Errc::actor_died, "cannot start the actor host: " + error.message());
    } catch (const std::exception& error) {
      send_actor_update(actor, incarnation, Errc::actor_died,
                        std::string("cannot start the actor host: ") + error.what());
    }
  }

  // Kills an actor host without harming its peers: SIGTERM makes it stop at
  // its UCX progress thread's next safe point and SIGKILL itself
  // (transport::UcxWorker::exit_at_safe_points; a host SIGKILLed in the
  // middle of a shared-memory send would leave each peer it was sending to
  // deaf over shared memory for good); reap() SIGKILLs it kStopGrace later
  // if it is still there. Its exit reads "killed by signal 9" either way.
  void stop_host(ActorHost& host) {
    if (host.kill_by != Clock::time_point::max()) return;  // asked already
    ::kill(host.pid, SIGTERM);
    host.kill_by = Clock::now() + kStopGrace;
  }

  void reap() {
    const auto now = Clock::now();
    for (auto& host : hosts_) {
      if (!host.sigkilled && now >= host.kill_by) {
        ::kill(host.pid, SIGKILL);
        host.sigkilled = true;
      }
    }
    for (auto it = hosts_.begin(); it != hosts_.end();) {
      auto status = try_reap(it->pid);
      if (!status) {
        ++it;
        continue;
      }
      std::string reason = "actor host " + describe_wait_status(*status);
      if (!it->fenced.empty()) reason = "stopped by its node (fencing): " + it->fenced;
      TROUPE_LOG_INFO("node {}: actor {} {}", config_.node_id.short_hex(), it->actor.short_hex(), reason);
      send_actor_update(it->actor, it->incarnation, Errc::actor_died, reason);
      if (finished_.size() >= kMaxFinished) finished_.erase(finished_.begin());
      finished_.emplace_back(it->actor, it->incarnation);
      it = hosts_.erase(it);
    }
  }

  void timers() {
    auto now = Clock::now();
    if (!registered_) {
      if (now >= next_register_) {
        send_register();
        next_register_ = now + backoff_;
        backoff_ = std::min(kMaxBackoff, backoff_ * 2);
      }
    } else {
      if (now >= next_heartbeat_) {
        send_heartbeat();
        next_heartbeat_ = now + heartbeat_interval_;
      }
      if (now - last_ack_ > node_timeout_) {
        TROUPE_LOG_WARN("node {}: no answer from the head at {} for {} ms; retrying",
                        config_.node_id.short_hex(), config_.head_address, node_timeout_.count());
        registered_ = false;
        next_register_ = now;
        backoff_ = std::chrono::milliseconds(100);
      }
      for (auto& [id, report] : reports_) {
        if (now >= report.resend_at) {
          report.resend_at = now + kReportResend;
          transmit_report(id, report);
        }
      }
    }
    // Silence fences running hosts only. A binary fetch alone is no reason:
    // the head's answer (tens of MB) holds back its acks behind it, which
    // on a loaded machine can outlast fence_after_ although the head hears
    // this node throughout; a fetch ends at its own deadline, and a host it
    // starts after the head gave this node up is reconciled away.
    if (now - last_contact_ > fence_after_ && !hosts_.empty() && !head_process_down(now)) {
      fence("no word from the head at " + config_.head_address + " for " +
            std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(now - last_contact_).count()) +
            " ms");
    }
    for (auto it = fetches_.begin(); it != fetches_.end();) {
      if (now >= it->second.deadline) {
        fail_fetch(it->second, it->second.verifying ? "checking the job binary's hash took too long" : "no answer from the head");
        it = fetches_.erase(it);
      } else {
        ++it;
      }
    }
  }

  // Fencing spares a head that is down, not cut off: while the head's port
  // refuses connections no head runs there to restart this node's actors
  // elsewhere, so they keep running for the restarted head to adopt
  // (docs/fault-tolerance.md). Checked at most once a second.
  bool head_process_down(Clock::time_point now) {
    if (now < next_refusal_check_) return head_down_;
    next_refusal_check_ = now + std::chrono::seconds(1);
    const bool down = head_refuses_connections(config_.head_address, std::chrono::milliseconds(300));
    if (down && !head_down_) {
      TROUPE_LOG_WARN("node {}: the head at {} is not running (connection refused); keeping {} actor host(s) "
                      "for it to adopt when it restarts",
                      config_.node_id.short_hex(), config_.head_address, hosts_.size());
    }
    if (head_down_ && !down) {
      // The head is back (its port accepts again): it has the fencing
      // timeout from now to answer this node's registration, as at a start.
      TROUPE_LOG_INFO("node {}: the head at {} accepts connections again", config_.node_id.short_hex(),
                      config_.head_address);
      head_down_ = false;
      last_contact_ = now;
      return true;
    }
    head_down_ = down;
    return down;
  }

  // Stops every actor host of this node (their exits are reported as
  // usual, queued until the head acknowledges them) and drops the starts
  // waiting for a binary: the head restarts these actors elsewhere, and no
  // actor may run twice.
  void fence(const std::string& why) {
    bool unfenced = std::any_of(hosts_.begin(), hosts_.end(), [](const ActorHost& h) { return h.fenced.empty(); });
    if (!unfenced && fetches_.empty()) return;  // done already; the exits are being reaped
    TROUPE_LOG_WARN("node {}: fencing: {}; stopping its {} actor host(s)", config_.node_id.short_hex(), why,
                    hosts_.size());
    for (auto& host : hosts_) {
      if (host.fenced.empty()) host.fenced = why;
      stop_host(host);
    }
    for (auto& [id, fetch] : fetches_) fail_fetch(fetch, "fenced: " + why);
    fetches_.clear();
  }

  void shutdown() {
    for (auto& [verification, thread] : verifiers_) thread.join();
    verifiers_.clear();
    for (auto& host : hosts_) ::kill(host.pid, SIGKILL);
    for (auto& host : hosts_) ::waitpid(host.pid, nullptr, 0);
    hosts_.clear();
  }

  // UCX's transports here ("ucx:tcp", "ucx:sysv", ...), or "zmq" when UCX
  // cannot start (actor hosts then move objects over the call plane).
  void probe_data_plane() {
    try {
      auto context = transport::UcxContext::create();
      std::string all = context->transports();
      for (std::size_t start = 0; start < all.size();) {
        auto comma = all.find(',', start);
        if (comma == std::string::npos) comma = all.size();
        if (comma > start) data_transports_.push_back("ucx:" + all.substr(start, comma - start));
        start = comma + 1;
      }
      cuda_native_ = context->cuda_native();
    } catch (const std::exception& e) {
      TROUPE_LOG_WARN("node {}: no UCX data plane ({}); objects will move over the call plane",
                      config_.node_id.short_hex(), e.what());
    }
    if (data_transports_.empty()) data_transports_.push_back("zmq");
  }

  std::vector<std::string> data_transports_;
  bool cuda_native_ = false;
  NodeManagerConfig config_;
  std::string identity_;
  transport::ControlDealer head_;
  std::uint64_t next_request_id_ = 1;
  std::uint64_t register_request_ = 0;
  bool registered_ = false;
  Clock::time_point next_register_ = Clock::now();
  std::chrono::milliseconds backoff_{100};
  Clock::time_point next_heartbeat_ = Clock::now();
  Clock::time_point last_ack_ = Clock::now();
  std::chrono::milliseconds heartbeat_interval_{500};
  std::chrono::milliseconds node_timeout_{3000};
  std::uint64_t heartbeat_seq_ = 0;
  std::vector<ActorHost> hosts_;
  std::vector<std::pair<std::shared_ptr<Verification>, std::thread>> verifiers_;
  std::map<std::uint64_t, PendingFetch> fetches_;
  std::map<std::uint64_t, Report> reports_;  // by request id
  std::vector<std::pair<ActorId, std::uint32_t>> finished_;
  Clock::time_point last_contact_ = Clock::now();  // last message from the head
  std::chrono::milliseconds fence_after_{std::chrono::hours(24 * 365)};  // set at registration
  Clock::time_point next_refusal_check_{};
  bool head_down_ = false;  // the last check found the head's port refusing connections
};

}  // namespace

void run_node_manager(const NodeManagerConfig& config, const std::atomic<bool>& stop) {
  NodeManager manager(config);
  manager.run(stop);
}

}  // namespace troupe::node
