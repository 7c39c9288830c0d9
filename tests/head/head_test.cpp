// The head driven in one process: messages go in over an in-process control
// server, replies and commands come out of it, and a fake clock stands in for
// time, so heartbeat loss is simulated without sleeping or sockets.
#include "troupe/head/head.hpp"

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <gtest/gtest.h>

#include "troupe/runtime/error.hpp"
#include "troupe/runtime/ids.hpp"
#include "troupe/node/files.hpp"
#include "troupe/transport/content_hash.hpp"
#include "troupe/transport/internal/control_socket.hpp"
#include "troupe/transport/schema/control.capnp.h"

namespace troupe::head {
namespace {

using wire::ActorState;
using wire::ControlMessage;

const std::string kDriver = "driver-test";
const std::string kCli = "cli-test";

std::string node_identity(const NodeId& node) { return "node-" + node.hex(); }

class HeadTest : public ::testing::Test {
 protected:
  HeadTest() {
    session_ = std::filesystem::temp_directory_path() /
               ("troupe-head-test-" + NodeId::random().short_hex());
    std::filesystem::create_directories(session_ / "binaries");
    HeadConfig config;
    config.heartbeat_ms = 500;
    config.heartbeat_misses = 6;      // suspected after 3000 ms of silence
    config.probe_timeout_ms = 1000;   // lost after 1000 ms more
    config.actor_start_timeout_ms = 10000;
    config.session_dir = session_;
    config.head_node_id = NodeId{0, 1};
    config.clock = [this] { return now_; };
    auto server = std::make_unique<transport::InProcessControlServer>();
    server_ = server.get();
    head_ = std::make_unique<Head>(config, std::move(server));
  }
  ~HeadTest() override {
    head_.reset();
    std::error_code ignored;
    std::filesystem::remove_all(session_, ignored);
  }

  // Sends `message` from `identity` through the in-process channel and lets
  // the head serve it (not the placement loop: tick() runs that).
  void deliver(const std::string& identity, capnp::MallocMessageBuilder& message) {
    server_->deliver(identity, message);
    auto routed = server_->receive(std::chrono::milliseconds(0));
    ASSERT_TRUE(routed.has_value());
    head_->handle(routed->identity, routed->message);
  }

  // What the head sent since the last call, oldest first.
  std::vector<transport::InProcessControlServer::Sent> sent() {
    auto batch = server_->take_sent();
    for (auto& message : batch) log_.push_back(message.identity);
    return batch;
  }

  std::uint64_t register_node(const NodeId& node, std::uint32_t cpus,
                              const std::map<std::string, double>& custom = {}) {
    capnp::MallocMessageBuilder message;
    auto root = message.initRoot<ControlMessage>();
    std::uint64_t request = next_request_++;
    root.setRequestId(request);
    auto reg = root.initRegisterNode();
    reg.setProtocolVersion(wire::PROTOCOL_VERSION);
    to_wire(reg.initNodeId(), node);
    reg.setAddress("127.0.0.1");
    reg.setHostname("test");
    reg.setNumCpus(cpus);
    reg.setMemoryBytes(std::uint64_t{1} << 30);
    auto resources = reg.initResources(static_cast<unsigned>(custom.size()));
    unsigned i = 0;
    for (const auto& [name, amount] : custom) {
      resources[i].setName(name);
      resources[i].setAmount(amount);
      ++i;
    }
    deliver(node_identity(node), message);
    return request;
  }

  void heartbeat(const NodeId& node) {
    capnp::MallocMessageBuilder message;
    auto root = message.initRoot<ControlMessage>();
    root.setRequestId(next_request_++);
    auto beat = root.initHeartbeat();
    to_wire(beat.initNodeId(), node);
    beat.setSeq(++seq_);
    deliver(node_identity(node), message);
  }

  std::uint64_t create_actor(const ActorId& actor, const std::map<std::string, double>& resources,
                             int max_restarts = 0, const std::string& name = "") {
    capnp::MallocMessageBuilder message;
    auto root = message.initRoot<ControlMessage>();
    std::uint64_t request = next_request_++;
    root.setRequestId(request);
    auto create = root.initCreateActor();
    to_wire(create.initActorId(), actor);
    to_wire(create.initJobId(), JobId{7, 7});
    to_wire(create.initOwnerId(), WorkerId{8, 8});
    create.setClassName("Counter");
    create.setName(name);
    create.setMaxRestarts(max_restarts);
    create.setMaxConcurrency(1);
    create.setBundleIndex(-1);
    auto list = create.initResources(static_cast<unsigned>(resources.size()));
    unsigned i = 0;
    for (const auto& [resource, amount] : resources) {
      list[i].setName(resource);
      list[i].setAmount(amount);
      ++i;
    }
    deliver(kDriver, message);
    return request;
  }

  // The actor host of `actor` reports itself ALIVE through its node manager.
  void report_alive(const NodeId& node, const ActorId& actor, std::uint32_t incarnation) {
    capnp::MallocMessageBuilder message;
    auto root = message.initRoot<ControlMessage>();
    root.setRequestId(next_request_++);
    auto update = root.initActorUpdate();
    to_wire(update.initActorId(), actor);
    update.setState(ActorState::ALIVE);
    to_wire(update.initNodeId(), node);
    update.setAddress("tcp://127.0.0.1:1");
    update.setIncarnation(incarnation);
    deliver(node_identity(node), message);
  }

  // getClusterState's reply, as a message that stays readable.
  transport::ReceivedMessage cluster_state(bool include_dead = false) {
    capnp::MallocMessageBuilder message;
    auto root = message.initRoot<ControlMessage>();
    std::uint64_t request = next_request_++;
    root.setRequestId(request);
    root.initGetClusterState().setIncludeDead(include_dead);
    deliver(kCli, message);
    for (auto& reply : sent()) {
      auto reader = reply.message.root<ControlMessage>();
      if (reply.identity == kCli && reader.getRequestId() == request && reader.isClusterState()) {
        return std::move(reply.message);
      }
    }
    ADD_FAILURE() << "no clusterState reply";
    throw std::runtime_error("no clusterState reply");
  }

  // The startActor messages in `batch`, as (node identity, actor, incarnation).
  struct Start {
    std::string identity;
    ActorId actor;
    std::uint32_t incarnation;
  };
  static std::vector<Start> starts_in(std::vector<transport::InProcessControlServer::Sent>& batch) {
    std::vector<Start> starts;
    for (auto& message : batch) {
      auto reader = message.message.root<ControlMessage>();
      if (!reader.isStartActor()) continue;
      auto start = reader.getStartActor();
      starts.push_back({message.identity, from_wire<ActorId>(start.getSpec().getActorId()), start.getIncarnation()});
    }
    return starts;
  }

  void advance(std::chrono::milliseconds by) { now_ += by; }

  std::filesystem::path session_;
  Clock::time_point now_ = Clock::time_point{} + std::chrono::hours(1);
  transport::InProcessControlServer* server_ = nullptr;
  std::unique_ptr<Head> head_;
  std::uint64_t next_request_ = 1;
  std::uint64_t seq_ = 0;
  std::vector<std::string> log_;
};

const NodeId kNodeA{0xa, 1};
const NodeId kNodeB{0xb, 2};
const ActorId kActor{0xac, 3};

TEST_F(HeadTest, ARegisteredNodeIsAnsweredAndAppearsAliveInTheClusterState) {
  std::uint64_t request = register_node(kNodeA, 4);
  auto replies = sent();
  ASSERT_EQ(replies.size(), 1u);
  EXPECT_EQ(replies[0].identity, node_identity(kNodeA));
  auto reply = replies[0].message.root<ControlMessage>();
  ASSERT_TRUE(reply.isRegisterNodeReply());
  EXPECT_EQ(reply.getRequestId(), request);
  EXPECT_EQ(reply.getRegisterNodeReply().getHeartbeatIntervalMs(), 500u);
  EXPECT_EQ(reply.getRegisterNodeReply().getNodeTimeoutMs(), 4000u);  // suspicion 3000 + probe 1000
  EXPECT_EQ(from_wire<NodeId>(reply.getRegisterNodeReply().getHeadNodeId()), (NodeId{0, 1}));

  auto state = cluster_state();
  auto nodes = state.root<ControlMessage>().getClusterState().getNodes();
  ASSERT_EQ(nodes.size(), 1u);
  EXPECT_EQ(from_wire<NodeId>(nodes[0].getNode().getNodeId()), kNodeA);
  EXPECT_EQ(nodes[0].getState(), wire::NodeState::ALIVE);
  double cpus = -1;
  for (auto resource : nodes[0].getAvailable()) {
    if (std::string(resource.getName().cStr()) == "CPU") cpus = resource.getAmount();
  }
  EXPECT_EQ(cpus, 4.0);
}

TEST_F(HeadTest, AHeartbeatOfAnUnknownNodeAsksItToRegisterAgain) {
  heartbeat(kNodeA);
  auto replies = sent();
  ASSERT_EQ(replies.size(), 1u);
  auto reply = replies[0].message.root<ControlMessage>();
  ASSERT_TRUE(reply.isHeartbeatAck());
  EXPECT_TRUE(reply.getHeartbeatAck().getReregister());
}

TEST_F(HeadTest, ASatisfiableActorIsStartedOnTheNodeThatHoldsItsResource) {
  register_node(kNodeA, 4);
  register_node(kNodeB, 4, {{"special", 1}});
  sent();
  std::uint64_t request = create_actor(kActor, {{"CPU", 1}, {"special", 1}});
  auto acks = sent();
  ASSERT_EQ(acks.size(), 1u);
  EXPECT_EQ(acks[0].identity, kDriver);
  EXPECT_TRUE(acks[0].message.root<ControlMessage>().isAck());
  EXPECT_EQ(acks[0].message.root<ControlMessage>().getRequestId(), request);

  head_->tick();
  auto batch = sent();
  auto starts = starts_in(batch);
  ASSERT_EQ(starts.size(), 1u);
  EXPECT_EQ(starts[0].identity, node_identity(kNodeB));
  EXPECT_EQ(starts[0].actor, kActor);
  EXPECT_EQ(starts[0].incarnation, 0u);

  auto state = cluster_state();
  auto actors = state.root<ControlMessage>().getClusterState().getActors();
  ASSERT_EQ(actors.size(), 1u);
  EXPECT_EQ(actors[0].getState(), ActorState::PENDING);
  EXPECT_EQ(from_wire<NodeId>(actors[0].getNodeId()), kNodeB);
  EXPECT_EQ(std::string(actors[0].getReason().getMessage().cStr()), "starting on node " + kNodeB.short_hex());

  report_alive(kNodeB, kActor, 0);
  auto after = cluster_state();
  EXPECT_EQ(after.root<ControlMessage>().getClusterState().getActors()[0].getState(), ActorState::ALIVE);
}

TEST_F(HeadTest, AnUnsatisfiableActorStaysPendingWithAReasonAndIsNotStarted) {
  register_node(kNodeA, 4);
  create_actor(kActor, {{"CPU", 8}});
  head_->tick();
  auto batch = sent();
  EXPECT_TRUE(starts_in(batch).empty());

  auto state = cluster_state();
  auto actors = state.root<ControlMessage>().getClusterState().getActors();
  ASSERT_EQ(actors.size(), 1u);
  EXPECT_EQ(actors[0].getState(), ActorState::PENDING);
  EXPECT_EQ(errc_from_wire(actors[0].getReason().getCode()), Errc::unschedulable);
  EXPECT_NE(std::string(actors[0].getReason().getMessage().cStr()).find("infeasible"), std::string::npos)
      << actors[0].getReason().getMessage().cStr();
}

TEST_F(HeadTest, ARegistrationFromASecondNodeLetsAPendingActorPlace) {
  register_node(kNodeA, 4);
  create_actor(kActor, {{"CPU", 8}});
  head_->tick();
  sent();
  register_node(kNodeB, 16);
  head_->tick();
  auto batch = sent();
  auto starts = starts_in(batch);
  ASSERT_EQ(starts.size(), 1u);
  EXPECT_EQ(starts[0].identity, node_identity(kNodeB));
  EXPECT_EQ(starts[0].actor, kActor);
}

TEST_F(HeadTest, ANodeThatHeartbeatsInTimeStaysAlive) {
  register_node(kNodeA, 4);
  for (int i = 0; i < 4; ++i) {
    advance(std::chrono::milliseconds(2000));
    heartbeat(kNodeA);
    head_->tick();
  }
  auto state = cluster_state();
  auto nodes = state.root<ControlMessage>().getClusterState().getNodes();
  ASSERT_EQ(nodes.size(), 1u);
  EXPECT_EQ(nodes[0].getState(), wire::NodeState::ALIVE);
  EXPECT_EQ(nodes[0].getLastHeartbeatAgeMs(), 0u);
}

TEST_F(HeadTest, ANodeThatMissesHeartbeatsIsDeclaredDeadAndItsActorDies) {
  register_node(kNodeA, 4);
  create_actor(kActor, {{"CPU", 1}}, /*max_restarts=*/0);
  head_->tick();
  report_alive(kNodeA, kActor, 0);
  sent();

  advance(std::chrono::milliseconds(3000));  // exactly the suspicion time: not yet suspected
  head_->tick();
  ASSERT_EQ(cluster_state().root<ControlMessage>().getClusterState().getNodes().size(), 1u);
  EXPECT_EQ(cluster_state().root<ControlMessage>().getClusterState().getNodes()[0].getState(),
            wire::NodeState::ALIVE);

  advance(std::chrono::milliseconds(1));  // suspected and probed, not lost
  head_->tick();
  ASSERT_EQ(cluster_state().root<ControlMessage>().getClusterState().getNodes().size(), 1u);
  EXPECT_EQ(cluster_state().root<ControlMessage>().getClusterState().getNodes()[0].getState(),
            wire::NodeState::SUSPECTED);
  sent();

  advance(std::chrono::milliseconds(1000));  // the probe went unanswered for the probe timeout
  head_->tick();
  // The owner hears that its actor died because its node was lost.
  bool told_owner = false;
  for (auto& message : sent()) {
    auto reader = message.message.root<ControlMessage>();
    if (message.identity == kDriver && reader.isActorUpdate() &&
        reader.getActorUpdate().getState() == ActorState::DEAD) {
      told_owner = true;
      EXPECT_EQ(errc_from_wire(reader.getActorUpdate().getReason().getCode()), Errc::node_lost);
    }
  }
  EXPECT_TRUE(told_owner);

  auto alive_only = cluster_state();
  EXPECT_EQ(alive_only.root<ControlMessage>().getClusterState().getNodes().size(), 0u);
  auto everything = cluster_state(/*include_dead=*/true);
  auto state = everything.root<ControlMessage>().getClusterState();
  ASSERT_EQ(state.getNodes().size(), 1u);
  EXPECT_EQ(state.getNodes()[0].getState(), wire::NodeState::DEAD);
  ASSERT_EQ(state.getActors().size(), 1u);
  EXPECT_EQ(state.getActors()[0].getState(), ActorState::DEAD);
  EXPECT_NE(std::string(state.getActors()[0].getReason().getMessage().cStr()).find("was lost"), std::string::npos);

  // The lost node's next heartbeat is told to register again, and that it
  // was declared dead (it stops its actor hosts: fencing).
  heartbeat(kNodeA);
  auto replies = sent();
  ASSERT_EQ(replies.size(), 1u);
  EXPECT_TRUE(replies[0].message.root<ControlMessage>().getHeartbeatAck().getReregister());
  EXPECT_TRUE(replies[0].message.root<ControlMessage>().getHeartbeatAck().getDeclaredDead());
  // So is its registration, which starts it afresh.
  std::uint64_t request = register_node(kNodeA, 4);
  bool told = false;
  for (auto& reply : sent()) {
    auto reader = reply.message.root<ControlMessage>();
    if (reader.getRequestId() == request && reader.isRegisterNodeReply()) {
      told = reader.getRegisterNodeReply().getDeclaredDead();
    }
  }
  EXPECT_TRUE(told);
}

TEST_F(HeadTest, ASuspectedNodeIsProbedAndStaysAliveWhenItAnswers) {
  register_node(kNodeA, 4);
  create_actor(kActor, {{"CPU", 1}}, /*max_restarts=*/0);
  head_->tick();
  report_alive(kNodeA, kActor, 0);
  sent();

  advance(std::chrono::milliseconds(3500));
  head_->tick();
  std::optional<std::uint64_t> probe;
  for (auto& message : sent()) {
    auto reader = message.message.root<ControlMessage>();
    if (message.identity == node_identity(kNodeA) && reader.isProbeNode()) probe = reader.getRequestId();
  }
  ASSERT_TRUE(probe.has_value()) << "a suspected node is probed";
  EXPECT_EQ(cluster_state().root<ControlMessage>().getClusterState().getNodes()[0].getState(),
            wire::NodeState::SUSPECTED);
  // Unanswered, it is probed again every heartbeat period.
  advance(std::chrono::milliseconds(500));
  head_->tick();
  int probes = 0;
  for (auto& message : sent()) probes += message.message.root<ControlMessage>().isProbeNode() ? 1 : 0;
  EXPECT_EQ(probes, 1);

  // The node manager answers the probe (an ack): alive again, nothing died.
  advance(std::chrono::milliseconds(400));
  capnp::MallocMessageBuilder ack;
  auto root = ack.initRoot<ControlMessage>();
  root.setRequestId(*probe);
  root.setAck();
  deliver(node_identity(kNodeA), ack);
  advance(std::chrono::milliseconds(2000));
  head_->tick();
  auto state = cluster_state(/*include_dead=*/true);
  auto cluster = state.root<ControlMessage>().getClusterState();
  EXPECT_EQ(cluster.getNodes()[0].getState(), wire::NodeState::ALIVE);
  EXPECT_EQ(cluster.getActors()[0].getState(), ActorState::ALIVE);
}

TEST_F(HeadTest, AStartActorThatIsNotAcknowledgedIsSentAgainAndOneThatNeverStartsRestarts) {
  register_node(kNodeA, 4);
  create_actor(kActor, {{"CPU", 1}}, /*max_restarts=*/1);
  head_->tick();
  auto first = sent();
  auto starts = starts_in(first);
  ASSERT_EQ(starts.size(), 1u);
  std::uint64_t request = 0;
  for (auto& message : first) {
    if (message.message.root<ControlMessage>().isStartActor()) request = message.message.root<ControlMessage>().getRequestId();
  }
  // No ack within 2 heartbeat periods: the same request again.
  advance(std::chrono::milliseconds(1000));
  heartbeat(kNodeA);
  head_->tick();
  auto again = sent();
  auto resent = starts_in(again);
  ASSERT_EQ(resent.size(), 1u);
  EXPECT_EQ(resent[0].incarnation, 0u);
  // Acknowledged: no more resends, but still not ALIVE at the start timeout.
  capnp::MallocMessageBuilder ack;
  ack.initRoot<ControlMessage>().setRequestId(request);
  ack.getRoot<ControlMessage>().setAck();
  deliver(node_identity(kNodeA), ack);
  for (int i = 0; i < 9; ++i) {
    advance(std::chrono::milliseconds(1000));
    heartbeat(kNodeA);
    head_->tick();
    auto batch = sent();
    if (i < 8) EXPECT_TRUE(starts_in(batch).empty()) << i;
    else {
      // At 10 s: the start failed; the host is killed and the actor restarts.
      bool killed = false;
      for (auto& message : batch) killed |= message.message.root<ControlMessage>().isKillActor();
      EXPECT_TRUE(killed);
      auto restarts = starts_in(batch);
      ASSERT_EQ(restarts.size(), 1u);
      EXPECT_EQ(restarts[0].incarnation, 1u);
    }
  }
}

TEST_F(HeadTest, AKillTheNodeAnswersNotFoundEndsTheActorWhoseExitReportWasLost) {
  register_node(kNodeA, 4);
  create_actor(kActor, {{"CPU", 1}}, /*max_restarts=*/0);
  head_->tick();
  report_alive(kNodeA, kActor, 0);
  sent();
  capnp::MallocMessageBuilder kill;
  auto root = kill.initRoot<ControlMessage>();
  root.setRequestId(next_request_++);
  to_wire(root.initKillActor().initActorId(), kActor);
  root.getKillActor().setNoRestart(true);
  deliver(kDriver, kill);
  std::optional<std::uint64_t> request;
  for (auto& message : sent()) {
    auto reader = message.message.root<ControlMessage>();
    if (message.identity == node_identity(kNodeA) && reader.isKillActor()) {
      request = reader.getRequestId();
      EXPECT_EQ(reader.getKillActor().getIncarnation(), 0u);
    }
  }
  ASSERT_TRUE(request.has_value());
  // Unanswered: sent again.
  advance(std::chrono::milliseconds(1000));
  heartbeat(kNodeA);
  head_->tick();
  bool resent = false;
  for (auto& message : sent()) resent |= message.message.root<ControlMessage>().isKillActor();
  EXPECT_TRUE(resent);
  // The node has no such host (its DEAD report was lost): the actor is dead.
  capnp::MallocMessageBuilder error;
  auto reply = error.initRoot<ControlMessage>();
  reply.setRequestId(*request);
  reply.initError().setCode(wire_code(Errc::not_found));
  deliver(node_identity(kNodeA), error);
  EXPECT_EQ(cluster_state(true).root<ControlMessage>().getClusterState().getActors()[0].getState(), ActorState::DEAD);
}

TEST_F(HeadTest, ALostNodesActorHostsAreToldToStopDirectly) {
  register_node(kNodeA, 4);
  create_actor(kActor, {{"CPU", 1}}, /*max_restarts=*/1);
  head_->tick();
  std::string key;
  for (auto& message : sent()) {
    auto reader = message.message.root<ControlMessage>();
    if (reader.isStartActor()) {
      auto bytes = reader.getStartActor().getHostKey();
      key.assign(reinterpret_cast<const char*>(bytes.begin()), bytes.size());
    }
  }
  // The host itself reports ALIVE with its key, from its own connection.
  const std::string host = "act-" + kActor.hex();
  capnp::MallocMessageBuilder update;
  auto root = update.initRoot<ControlMessage>();
  root.setRequestId(next_request_++);
  auto body = root.initActorUpdate();
  to_wire(body.initActorId(), kActor);
  body.setState(ActorState::ALIVE);
  to_wire(body.initNodeId(), kNodeA);
  body.setAddress("tcp://127.0.0.1:1");
  body.setIncarnation(0);
  body.setHostKey(kj::arrayPtr(reinterpret_cast<const kj::byte*>(key.data()), key.size()));
  deliver(host, update);
  sent();
  advance(std::chrono::milliseconds(3001));
  head_->tick();
  advance(std::chrono::milliseconds(1000));
  head_->tick();
  bool told = false;
  for (auto& message : sent()) {
    auto reader = message.message.root<ControlMessage>();
    if (message.identity == host && reader.isKillActor()) {
      told = true;
      EXPECT_EQ(reader.getRequestId(), 0u);  // a notification
      EXPECT_EQ(reader.getKillActor().getIncarnation(), 0u);
    }
  }
  EXPECT_TRUE(told);
}

TEST_F(HeadTest, ADriverUploadingItsBinaryIsNotLostAndAnyMessageCountsAsLife) {
  capnp::MallocMessageBuilder reg;
  auto root = reg.initRoot<ControlMessage>();
  root.setRequestId(next_request_++);
  auto body = root.initRegisterDriver();
  body.setProtocolVersion(wire::PROTOCOL_VERSION);
  to_wire(body.initWorkerId(), WorkerId{5, 5});
  body.setBinaryHash(std::string(64, 'a'));
  deliver("drv-5", reg);
  bool need = false;
  for (auto& message : sent()) {
    auto reader = message.message.root<ControlMessage>();
    if (reader.isRegisterDriverReply()) need = reader.getRegisterDriverReply().getNeedBinary();
  }
  ASSERT_TRUE(need);
  // A heartbeat sent before the upload comes first; the ones after it queue
  // behind the upload: 20 s of silence then, and the job runs on.
  capnp::MallocMessageBuilder beat;
  auto beat_root = beat.initRoot<ControlMessage>();
  beat_root.setRequestId(0);
  to_wire(beat_root.initDriverHeartbeat().initWorkerId(), WorkerId{5, 5});
  deliver("drv-5", beat);
  advance(std::chrono::seconds(20));
  head_->tick();
  auto state = cluster_state();
  auto jobs = state.root<ControlMessage>().getClusterState().getJobs();
  ASSERT_EQ(jobs.size(), 1u);
  EXPECT_EQ(jobs[0].getState(), wire::JobState::RUNNING);
  // Once the upload came, the usual timeout applies again.
  capnp::MallocMessageBuilder upload;
  auto upload_root = upload.initRoot<ControlMessage>();
  upload_root.setRequestId(0);
  upload_root.initUploadBinary().setBinaryHash(std::string(64, 'a'));  // refused: wrong bytes
  deliver("drv-5", upload);
  advance(std::chrono::milliseconds(4001));
  head_->tick();
  auto after = cluster_state();
  EXPECT_EQ(after.root<ControlMessage>().getClusterState().getJobs()[0].getState(), wire::JobState::STOPPED);
}

// A node fetches a job binary in chunks, so that the head's heartbeat acks
// to it never wait behind tens of MB on their shared connection.
TEST_F(HeadTest, AJobBinaryIsServedInChunksFromAnyOffsetAndWholeToAnOldNode) {
  std::string bytes(10 * 1000 * 1000 + 7, '\0');
  for (std::size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<char>((i * 2654435761u) >> 13);
  const std::string hash = transport::content_hash(bytes);
  node::write_file_atomic(session_ / "binaries" / hash, bytes, 0755);
  register_node(kNodeA, 2);
  sent();
  struct Reply {
    bool ok = false;
    std::string data, error;
    std::uint64_t offset = 0, total = 0;
  };
  auto fetch = [&](std::uint64_t offset, std::uint32_t max_bytes) {
    capnp::MallocMessageBuilder message;
    auto root = message.initRoot<ControlMessage>();
    const std::uint64_t request = next_request_++;
    root.setRequestId(request);
    auto body = root.initFetchBinary();
    body.setBinaryHash(hash);
    body.setOffset(offset);
    body.setMaxBytes(max_bytes);
    deliver(node_identity(kNodeA), message);
    EXPECT_TRUE(head_->wait_for_background_work(std::chrono::seconds(60)));
    head_->tick();
    Reply reply;
    for (auto& out : sent()) {
      auto reader = out.message.root<ControlMessage>();
      if (out.identity != node_identity(kNodeA) || reader.getRequestId() != request) continue;
      if (reader.isBinaryData()) {
        auto data = reader.getBinaryData();
        reply.ok = true;
        reply.data.assign(reinterpret_cast<const char*>(data.getBinary().begin()), data.getBinary().size());
        reply.offset = data.getOffset();
        reply.total = data.getTotalBytes();
      } else if (reader.isError()) {
        reply.error = reader.getError().getMessage();
      }
    }
    return reply;
  };
  constexpr std::uint32_t kChunk = 4u << 20;
  std::string joined;
  int chunks = 0;
  while (joined.size() < bytes.size()) {
    Reply reply = fetch(joined.size(), kChunk);
    ASSERT_TRUE(reply.ok) << "offset " << joined.size() << ": " << reply.error;
    EXPECT_EQ(reply.offset, joined.size());
    EXPECT_EQ(reply.total, bytes.size());
    ASSERT_LE(reply.data.size(), kChunk);
    ASSERT_GT(reply.data.size(), 0u);
    joined += reply.data;
    ++chunks;
  }
  EXPECT_EQ(chunks, 3);
  EXPECT_TRUE(joined == bytes);
  // Past the end: a clear error, not an empty chunk.
  Reply past = fetch(bytes.size(), kChunk);
  EXPECT_FALSE(past.ok);
  EXPECT_NE(past.error.find("no chunk at offset"), std::string::npos) << past.error;
  // maxBytes 0: the whole binary in one message (a node from before chunks).
  Reply whole = fetch(0, 0);
  ASSERT_TRUE(whole.ok) << whole.error;
  EXPECT_TRUE(whole.data == bytes);
  // A damaged copy is refused at the first chunk.
  std::string damaged = bytes;
  damaged[12345] ^= 1;
  node::write_file_atomic(session_ / "binaries" / hash, damaged, 0755);
  Reply bad = fetch(0, kChunk);
  EXPECT_FALSE(bad.ok);
  EXPECT_NE(bad.error.find("does not match its hash"), std::string::npos) << bad.error;
}

TEST_F(HeadTest, AnActorOfALostNodeRestartsOnAnotherNode) {
  register_node(kNodeA, 4);
  create_actor(kActor, {{"CPU", 1}}, /*max_restarts=*/1);
  head_->tick();
  report_alive(kNodeA, kActor, 0);
  register_node(kNodeB, 4);
  head_->tick();
  sent();

  // Only B keeps heartbeating; A is suspected, probed, then lost.
  advance(std::chrono::milliseconds(2000));
  heartbeat(kNodeB);
  advance(std::chrono::milliseconds(2000));
  heartbeat(kNodeB);
  head_->tick();
  advance(std::chrono::milliseconds(1000));
  heartbeat(kNodeB);
  head_->tick();
  auto batch = sent();
  auto starts = starts_in(batch);
  ASSERT_EQ(starts.size(), 1u);
  EXPECT_EQ(starts[0].identity, node_identity(kNodeB));
  EXPECT_EQ(starts[0].actor, kActor);
  EXPECT_EQ(starts[0].incarnation, 1u);

  auto state = cluster_state();
  auto actors = state.root<ControlMessage>().getClusterState().getActors();
  ASSERT_EQ(actors.size(), 1u);
  EXPECT_EQ(actors[0].getState(), ActorState::RESTARTING);
  EXPECT_EQ(from_wire<NodeId>(actors[0].getNodeId()), kNodeB);

  // The new incarnation's host reports in.
  report_alive(kNodeB, kActor, 1);
  EXPECT_EQ(cluster_state().root<ControlMessage>().getClusterState().getActors()[0].getState(), ActorState::ALIVE);
}

TEST_F(HeadTest, ASecondActorWithTheSameNameInAJobIsRefused) {
  register_node(kNodeA, 4);
  create_actor(kActor, {{"CPU", 1}}, 0, "counter");
  sent();
  std::uint64_t request = create_actor(ActorId{0xac, 4}, {{"CPU", 1}}, 0, "counter");
  auto replies = sent();
  ASSERT_EQ(replies.size(), 1u);
  auto reply = replies[0].message.root<ControlMessage>();
  ASSERT_TRUE(reply.isError());
  EXPECT_EQ(reply.getRequestId(), request);
  EXPECT_EQ(errc_from_wire(reply.getError().getCode()), Errc::invalid_argument);
}

TEST_F(HeadTest, AFrameThatBreaksTheSchemaIsDroppedAndTheHeadKeepsServing) {
  // A registration whose hostname lost its NUL terminator: structurally a
  // valid Cap'n Proto message, invalid as a ControlMessage.
  capnp::MallocMessageBuilder message;
  auto root = message.initRoot<ControlMessage>();
  root.setRequestId(99);
  auto reg = root.initRegisterNode();
  reg.setProtocolVersion(wire::PROTOCOL_VERSION);
  to_wire(reg.initNodeId(), NodeId{0xe, 0xe});
  reg.setHostname("evil-host");
  auto words = capnp::messageToFlatArray(message);
  auto bytes = words.asBytes();
  const std::string name = "evil-host";
  auto* at = std::search(bytes.begin(), bytes.end(), name.begin(), name.end());
  ASSERT_NE(at, bytes.end());
  ASSERT_EQ(at[name.size()], 0);
  at[name.size()] = 'X';
  auto received = transport::ReceivedMessage::copy_of(bytes.begin(), bytes.size());
  EXPECT_NO_THROW(head_->handle("node-evil", received));
  EXPECT_TRUE(sent().empty());  // its request id cannot be trusted, so no answer
  EXPECT_EQ(cluster_state().root<ControlMessage>().getClusterState().getNodes().size(), 0u);

  // The head is still up and serving.
  register_node(kNodeA, 4);
  auto replies = sent();
  ASSERT_EQ(replies.size(), 1u);
  EXPECT_TRUE(replies[0].message.root<ControlMessage>().isRegisterNodeReply());
}

TEST_F(HeadTest, AMessageTypeTheHeadDoesNotServeIsAnsweredWithAProtocolError) {
  capnp::MallocMessageBuilder message;
  auto root = message.initRoot<ControlMessage>();
  root.setRequestId(77);
  root.initRegisterNodeReply().setHeartbeatIntervalMs(1);  // a reply, sent to the head
  deliver(kCli, message);
  auto replies = sent();
  ASSERT_EQ(replies.size(), 1u);
  EXPECT_EQ(replies[0].identity, kCli);
  auto reply = replies[0].message.root<ControlMessage>();
  ASSERT_TRUE(reply.isError());
  EXPECT_EQ(reply.getRequestId(), 77u);
  EXPECT_EQ(errc_from_wire(reply.getError().getCode()), Errc::protocol);
}

// --- ownership: who may speak for a node, an actor, a job ------------------------

// The head's error reply to `request` in `batch`, as its code (nullopt: none).
std::optional<Errc> error_reply(std::vector<transport::InProcessControlServer::Sent>& batch, std::uint64_t request) {
  for (auto& message : batch) {
    auto reader = message.message.root<ControlMessage>();
    if (reader.getRequestId() == request && reader.isError()) return errc_from_wire(reader.getError().getCode());
  }
  return std::nullopt;
}

TEST_F(HeadTest, ANodeIdCannotBeTakenOverByAnotherConnection) {
  register_node(kNodeA, 4);
  sent();
  // An impostor registers the same (public) node id from its own connection.
  capnp::MallocMessageBuilder message;
  auto root = message.initRoot<ControlMessage>();
  root.setRequestId(500);
  auto reg = root.initRegisterNode();
  reg.setProtocolVersion(wire::PROTOCOL_VERSION);
  to_wire(reg.initNodeId(), kNodeA);
  reg.setNumCpus(64);
  deliver("node-impostor", message);
  auto replies = sent();
  EXPECT_EQ(error_reply(replies, 500), Errc::permission_denied);

  // ... and heartbeats as it.
  capnp::MallocMessageBuilder beat;
  auto beat_root = beat.initRoot<ControlMessage>();
  beat_root.setRequestId(501);
  to_wire(beat_root.initHeartbeat().initNodeId(), kNodeA);
  deliver("node-impostor", beat);
  replies = sent();
  EXPECT_EQ(error_reply(replies, 501), Errc::permission_denied);

  // The real node still gets its actors' startActor.
  create_actor(kActor, {{"CPU", 1}});
  head_->tick();
  auto batch = sent();
  auto starts = starts_in(batch);
  ASSERT_EQ(starts.size(), 1u);
  EXPECT_EQ(starts[0].identity, node_identity(kNodeA));
  // Its CPUs were not rewritten by the impostor.
  auto state = cluster_state();
  EXPECT_EQ(state.root<ControlMessage>().getClusterState().getNodes()[0].getNode().getNumCpus(), 4u);
}

TEST_F(HeadTest, OnlyTheActorsNodeOrItsHostWithTheKeyMayUpdateIt) {
  register_node(kNodeA, 4);
  register_node(kNodeB, 4, {{"special", 1}});
  create_actor(kActor, {{"CPU", 1}, {"special", 1}});
  head_->tick();
  std::string key;
  for (auto& message : sent()) {
    auto reader = message.message.root<ControlMessage>();
    if (reader.isStartActor()) {
      auto bytes = reader.getStartActor().getHostKey();
      key.assign(reinterpret_cast<const char*>(bytes.begin()), bytes.size());
    }
  }
  ASSERT_EQ(key.size(), 16u);

  auto update_from = [&](const std::string& identity, const std::string& host_key, const std::string& address) {
    capnp::MallocMessageBuilder message;
    auto root = message.initRoot<ControlMessage>();
    std::uint64_t request = next_request_++;
    root.setRequestId(request);
    auto update = root.initActorUpdate();
    to_wire(update.initActorId(), kActor);
    update.setState(ActorState::ALIVE);
    to_wire(update.initNodeId(), kNodeB);
    update.setAddress(address);
    update.setIncarnation(0);
    update.setHostKey(kj::arrayPtr(reinterpret_cast<const kj::byte*>(host_key.data()), host_key.size()));
    deliver(identity, message);
    auto replies = sent();
    return error_reply(replies, request);
  };
  auto address = [&] {
    auto state = cluster_state();
    return std::string(state.root<ControlMessage>().getClusterState().getActors()[0].getAddress().cStr());
  };

  // A stranger, a driver, and another node may not rewrite its address.
  EXPECT_EQ(update_from("evil", "", "tcp://6.6.6.6:1"), Errc::permission_denied);
  EXPECT_EQ(update_from(kDriver, std::string(16, 'x'), "tcp://6.6.6.6:1"), Errc::permission_denied);
  EXPECT_EQ(update_from(node_identity(kNodeA), "", "tcp://6.6.6.6:1"), Errc::permission_denied);
  EXPECT_EQ(address(), "");
  // The host the head started, with its key, may.
  EXPECT_EQ(update_from("host-1", key, "tcp://127.0.0.1:7"), std::nullopt);
  EXPECT_EQ(address(), "tcp://127.0.0.1:7");
}

TEST_F(HeadTest, ADriverMayKillOnlyItsOwnJobsActorsAndStopOnlyItsOwnJob) {
  auto register_driver = [&](const std::string& identity, const WorkerId& worker, std::optional<JobId> join = {}) {
    capnp::MallocMessageBuilder message;
    auto root = message.initRoot<ControlMessage>();
    std::uint64_t request = next_request_++;
    root.setRequestId(request);
    auto reg = root.initRegisterDriver();
    reg.setProtocolVersion(wire::PROTOCOL_VERSION);
    to_wire(reg.initWorkerId(), worker);
    if (join) to_wire(reg.initJobId(), *join);
    deliver(identity, message);
    std::optional<JobId> job;
    for (auto& reply : sent()) {
      auto reader = reply.message.root<ControlMessage>();
      if (reader.getRequestId() == request && reader.isRegisterDriverReply())
        job = from_wire<JobId>(reader.getRegisterDriverReply().getJobId());
    }
    return job;
  };
  auto job1 = register_driver("drv-1", WorkerId{1, 1});
  auto job2 = register_driver("drv-2", WorkerId{2, 2});
  ASSERT_TRUE(job1 && job2);
  // A driver cannot join another driver's job.
  EXPECT_FALSE(register_driver("drv-3", WorkerId{3, 3}, job1).has_value());

  register_node(kNodeA, 4);
  capnp::MallocMessageBuilder create;
  auto create_root = create.initRoot<ControlMessage>();
  create_root.setRequestId(600);
  auto spec = create_root.initCreateActor();
  to_wire(spec.initActorId(), kActor);
  to_wire(spec.initJobId(), *job1);
  to_wire(spec.initOwnerId(), WorkerId{1, 1});
  spec.setClassName("Counter");
  spec.setMaxConcurrency(1);
  spec.setBundleIndex(-1);
  deliver("drv-1", create);
  head_->tick();
  sent();

  auto kill_from = [&](const std::string& identity) {
    capnp::MallocMessageBuilder message;
    auto root = message.initRoot<ControlMessage>();
    std::uint64_t request = next_request_++;
    root.setRequestId(request);
    auto kill = root.initKillActor();
    to_wire(kill.initActorId(), kActor);
    kill.setNoRestart(true);
    deliver(identity, message);
    auto replies = sent();
    return error_reply(replies, request);
  };
  auto stop_from = [&](const std::string& identity, const JobId& job) {
    capnp::MallocMessageBuilder message;
    auto root = message.initRoot<ControlMessage>();
    std::uint64_t request = next_request_++;
    root.setRequestId(request);
    to_wire(root.initStopJob().initJobId(), job);
    deliver(identity, message);
    auto replies = sent();
    return error_reply(replies, request);
  };
  EXPECT_EQ(kill_from("drv-2"), Errc::permission_denied);
  EXPECT_EQ(stop_from("drv-2", *job1), Errc::permission_denied);
  auto state = cluster_state();
  EXPECT_NE(state.root<ControlMessage>().getClusterState().getActors()[0].getState(), ActorState::DEAD);
  // Its own driver may; so may an operator's CLI for any job.
  EXPECT_EQ(stop_from("drv-2", *job2), std::nullopt);
  EXPECT_EQ(kill_from("drv-1"), std::nullopt);
  EXPECT_EQ(stop_from(kCli, *job1), std::nullopt);
}

}  // namespace
}  // namespace troupe::head
