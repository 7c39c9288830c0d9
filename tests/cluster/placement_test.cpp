// TROUPE_TEST_LABELS: cluster slow
// Placement and actor lifecycle at the head, with real head and worker
// daemons and real actor host processes (a fixture that speaks the actor
// host's part of docs/protocol.md). The driver here is a test client that
// sends the control messages a driver sends.
#include <signal.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <map>
#include <optional>
#include <string>

#include <capnp/message.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <zmq.hpp>

#include "cluster/cluster_harness.hpp"
#include "cluster/member_sockets.hpp"
#include "troupe/transport/content_hash.hpp"
#include "troupe/transport/framing.hpp"
#include "troupe/transport/schema/control.capnp.h"

namespace troupe::testing {
namespace {

using ::testing::HasSubstr;
namespace transport = troupe::transport;
using wire::ActorState;
using wire::ControlMessage;

struct Id {
  std::uint64_t hi = 0, lo = 0;
  std::string hex() const {
    char buffer[33];
    std::snprintf(buffer, sizeof buffer, "%016llx%016llx", static_cast<unsigned long long>(hi),
                  static_cast<unsigned long long>(lo));
    return buffer;
  }
  static Id next() {
    static std::uint64_t counter = 0x1000;
    return Id{0xabcdef0000000000ull | static_cast<std::uint64_t>(::getpid()), ++counter};
  }
  template <typename B>
  void to(B builder) const {
    builder.setHi(hi);
    builder.setLo(lo);
  }
  template <typename R>
  static Id of(R reader) {
    return Id{reader.getHi(), reader.getLo()};
  }
};

struct ActorView {
  ActorState state = ActorState::PENDING;
  std::string node;
  std::string address;
  std::uint32_t incarnation = 0;
  std::uint16_t reason_code = 0;
  std::string reason;
};

// What a driver does on the control plane, and nothing else.
class FakeDriver {
 public:
  FakeDriver(const std::string& head_address, const std::string& binary_path,
             std::optional<transport::ClusterSecret> secret)
      : binary_(read_text(binary_path)), binary_hash_(transport::content_hash(binary_)), secret_(std::move(secret)) {
    socket_.set(zmq::sockopt::linger, 0);
    troupe::testing::as_member_client(socket_, secret_);
    socket_.set(zmq::sockopt::routing_id, "drv-" + worker_.hex());
    socket_.connect("tcp://" + head_address);
    capnp::MallocMessageBuilder reg;
    auto driver = reg.initRoot<ControlMessage>().initRegisterDriver();
    driver.setProtocolVersion(wire::PROTOCOL_VERSION);
    worker_.to(driver.initWorkerId());
    driver.setBinaryHash(binary_hash_);
    driver.setPid(static_cast<std::uint32_t>(::getpid()));
    auto reply = request(reg);
    auto reader = reply.root<ControlMessage>();
    EXPECT_TRUE(reader.isRegisterDriverReply());
    job_ = Id::of(reader.getRegisterDriverReply().getJobId());
    start_heartbeats(head_address);
    if (reader.getRegisterDriverReply().getNeedBinary()) {
      EXPECT_EQ(upload(binary_hash_, binary_), "");
    }
  }

  // Sends uploadBinary; "" when acked, else the head's error message.
  std::string upload(const std::string& hash, const std::string& binary) {
    capnp::MallocMessageBuilder message;
    auto up = message.initRoot<ControlMessage>().initUploadBinary();
    up.setBinaryHash(hash);
    up.setBinary(kj::arrayPtr(reinterpret_cast<const kj::byte*>(binary.data()), binary.size()));
    auto reply = request(message);
    auto root = reply.root<ControlMessage>();
    if (root.isAck()) return "";
    return root.isError() ? std::string(root.getError().getMessage().cStr()) : std::string("unexpected reply");
  }

  // Sends a createActor; returns its id. `resources` like {{"GPU", 1}}.
  Id create_actor(const std::string& class_name, std::map<std::string, double> resources,
                  const std::string& gpu_type = "", int max_restarts = 0, Id group = {}, int bundle = -1) {
    Id id = Id::next();
    capnp::MallocMessageBuilder message;
    auto create = message.initRoot<ControlMessage>().initCreateActor();
    id.to(create.initActorId());
    job_.to(create.initJobId());
    worker_.to(create.initOwnerId());
    create.setClassName(class_name);
    auto list = create.initResources(static_cast<unsigned>(resources.size()));
    unsigned i = 0;
    for (const auto& [name, amount] : resources) {
      list[i].setName(name);
      list[i].setAmount(amount);
      ++i;
    }
    create.setGpuType(gpu_type);
    create.setMaxRestarts(max_restarts);
    create.setMaxConcurrency(1);
    group.to(create.initPlacementGroupId());
    create.setBundleIndex(bundle);
    auto reply = request(message);
    EXPECT_TRUE(reply.root<ControlMessage>().isAck());
    return id;
  }

  void kill_actor(Id id) {
    capnp::MallocMessageBuilder message;
    auto kill = message.initRoot<ControlMessage>().initKillActor();
    id.to(kill.initActorId());
    kill.setNoRestart(true);
    EXPECT_TRUE(request(message).root<ControlMessage>().isAck());
  }

  Id create_group(const std::vector<std::map<std::string, double>>& bundles, wire::PlacementStrategy strategy) {
    Id id = Id::next();
    capnp::MallocMessageBuilder message;
    auto create = message.initRoot<ControlMessage>().initCreatePlacementGroup();
    id.to(create.initPlacementGroupId());
    job_.to(create.initJobId());
    create.setStrategy(strategy);
    auto list = create.initBundles(static_cast<unsigned>(bundles.size()));
    for (unsigned b = 0; b < bundles.size(); ++b) {
      auto resources = list[b].initResources(static_cast<unsigned>(bundles[b].size()));
      unsigned i = 0;
      for (const auto& [name, amount] : bundles[b]) {
        resources[i].setName(name);
        resources[i].setAmount(amount);
        ++i;
      }
    }
    EXPECT_TRUE(request(message).root<ControlMessage>().isAck());
    return id;
  }

  // Waits (heartbeating) until the latest update of `id` satisfies `done`.
  std::optional<ActorView> wait_actor(Id id, const std::function<bool(const ActorView&)>& done,
                                      std::chrono::milliseconds timeout = 10s) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
      auto it = actors_.find(id.hex());
      if (it != actors_.end() && done(it->second)) return it->second;
      pump(20ms);
    }
    return std::nullopt;
  }

  std::optional<std::pair<wire::PlacementGroupState, std::vector<std::string>>> wait_group(
      Id id, wire::PlacementGroupState state, std::chrono::milliseconds timeout = 10s) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
      auto it = groups_.find(id.hex());
      if (it != groups_.end() && it->second.first == state) return it->second;
      pump(20ms);
    }
    return std::nullopt;
  }

  ~FakeDriver() { stop_heartbeats(); }

  // Heartbeats go from a thread of their own (with its own socket), so the
  // driver stays alive while the test runs CLI commands.
  void start_heartbeats(const std::string& head_address) {
    heartbeat_thread_ = std::thread([this, head_address] {
      zmq::socket_t socket(context_, zmq::socket_type::dealer);
      socket.set(zmq::sockopt::linger, 0);
      troupe::testing::as_member_client(socket, secret_);
      socket.connect("tcp://" + head_address);
      std::uint64_t seq = 0;
      while (heartbeats_.load()) {
        capnp::MallocMessageBuilder heartbeat;
        auto root = heartbeat.initRoot<ControlMessage>();
        root.setRequestId(0);
        auto hb = root.initDriverHeartbeat();
        worker_.to(hb.initWorkerId());
        hb.setSeq(++seq);
        transport::send_message(socket, heartbeat);
        std::this_thread::sleep_for(50ms);
      }
    });
  }

  void stop_heartbeats() {
    heartbeats_.store(false);
    if (heartbeat_thread_.joinable()) heartbeat_thread_.join();
  }
  const std::map<std::string, std::pair<wire::PlacementGroupState, std::vector<std::string>>>& groups() const {
    return groups_;
  }

 private:
  std::string binary_;
  std::string binary_hash_;
  std::optional<transport::ClusterSecret> secret_;

  transport::ReceivedMessage request(capnp::MallocMessageBuilder& message) {
    std::uint64_t id = next_request_++;
    message.getRoot<ControlMessage>().setRequestId(id);
    transport::send_message(socket_, message);
    auto deadline = std::chrono::steady_clock::now() + 10s;
    while (std::chrono::steady_clock::now() < deadline) {
      if (auto reply = receive(50ms)) {
        if (reply->root<ControlMessage>().getRequestId() == id) return std::move(*reply);
      }
    }
    throw std::runtime_error("no reply from the head");
  }

  void pump(std::chrono::milliseconds wait) { (void)receive(wait); }

  // Receives one message, records pushed updates, heartbeats when due;
  // returns replies (requestId != 0).
  std::optional<transport::ReceivedMessage> receive(std::chrono::milliseconds wait) {
    auto message = transport::recv_message(socket_, wait);
    if (!message) return std::nullopt;
    auto reader = message->root<ControlMessage>();
    if (reader.getRequestId() != 0) return message;
    if (reader.isActorUpdate()) {
      auto update = reader.getActorUpdate();
      ActorView view;
      view.state = update.getState();
      view.node = Id::of(update.getNodeId()).hex();
      view.address = update.getAddress().cStr();
      view.incarnation = update.getIncarnation();
      view.reason_code = update.getReason().getCode();
      view.reason = update.getReason().getMessage().cStr();
      actors_[Id::of(update.getActorId()).hex()] = view;
    } else if (reader.isPlacementGroupUpdate()) {
      auto update = reader.getPlacementGroupUpdate();
      std::vector<std::string> nodes;
      for (auto node : update.getBundleNodes()) nodes.push_back(Id::of(node).hex());
      groups_[Id::of(update.getPlacementGroupId()).hex()] = {update.getState(), nodes};
    }
    return std::nullopt;
  }

  zmq::context_t context_{1};
  zmq::socket_t socket_{context_, zmq::socket_type::dealer};
  Id worker_ = Id::next();
  Id job_;
  std::uint64_t next_request_ = 1;
  std::atomic<bool> heartbeats_{true};
  std::thread heartbeat_thread_;
  std::map<std::string, ActorView> actors_;
  std::map<std::string, std::pair<wire::PlacementGroupState, std::vector<std::string>>> groups_;
};

bool is_alive(const ActorView& a) { return a.state == ActorState::ALIVE; }
bool is_dead(const ActorView& a) { return a.state == ActorState::DEAD; }

// Head without GPUs, an H100 x2 worker and a T4 worker.
class ClusterPlacement : public ::testing::Test {
 protected:
  void SetUp() override {
    auto head = cluster.start_head();
    ASSERT_EQ(head.exit_code, 0) << head.all();
    h100 = cluster.add_worker("H100-80GB:2");
    t4 = cluster.add_worker("T4-16GB:1");
    ASSERT_FALSE(h100.empty());
    ASSERT_FALSE(t4.empty());
    driver.emplace(cluster.address(), TROUPE_FAKE_ACTOR_HOST, cluster.secret());
  }

  std::string actor_log(Id id) {
    return read_text(cluster.session() / "logs" / ("actor-" + id.hex() + ".log"));
  }

  // 100 ms heartbeats, 2 s to declare a node or driver dead: short enough
  // for the failure tests, long enough that a loaded CI machine (ctest -j2
  // beside the netns test) does not starve the fake driver's heartbeats.
  TestCluster cluster{100, 20};
  std::string h100, t4;
  std::optional<FakeDriver> driver;
};

TEST_F(ClusterPlacement, ActorsLandOnTheNodeWithTheirGpuType) {
  Id on_t4 = driver->create_actor("Stage", {{"GPU", 1}}, "T4");
  auto alive = driver->wait_actor(on_t4, is_alive);
  ASSERT_TRUE(alive) << cluster.troupe({"status"}).out;
  EXPECT_EQ(alive->node, t4);
  EXPECT_THAT(alive->address, HasSubstr("tcp://127.0.0.1:"));
  EXPECT_THAT(actor_log(on_t4), HasSubstr("CUDA_VISIBLE_DEVICES=0\n"));

  Id on_h100 = driver->create_actor("Stage", {{"GPU:H100", 2}});
  alive = driver->wait_actor(on_h100, is_alive);
  ASSERT_TRUE(alive);
  EXPECT_EQ(alive->node, h100);
  EXPECT_THAT(actor_log(on_h100), HasSubstr("CUDA_VISIBLE_DEVICES=0,1\n"));

  auto actors = cluster.list("actors");
  ASSERT_EQ(actors.size(), 2u);
  EXPECT_EQ(actors[0]["state"], "ALIVE");
  EXPECT_EQ(actors[0]["node_id"], t4);
  auto node = cluster.node(h100);
  EXPECT_EQ(node["available"]["GPU"].get<double>(), 0.0);
  EXPECT_THAT(cluster.troupe({"status"}).out, HasSubstr("GPU     3/3"));
}

TEST_F(ClusterPlacement, TheHeadKeepsABinaryOnlyUnderItsOwnContentHash) {
  const std::string bytes = "not the binary its name says";
  const std::string other_hash = transport::content_hash("something else");
  EXPECT_THAT(driver->upload(other_hash, bytes), HasSubstr("does not match its hash"));
  EXPECT_FALSE(std::filesystem::exists(cluster.session() / "binaries" / other_hash));
  EXPECT_THAT(driver->upload("../escape", bytes), HasSubstr("bad binary hash"));
  EXPECT_EQ(driver->upload(transport::content_hash(bytes), bytes), "");
}

TEST_F(ClusterPlacement, AnActorNeedingAnAbsentGpuTypeStaysPendingWithTheReason) {
  Id id = driver->create_actor("Stage", {{"GPU", 1}}, "V100");
  auto pending = driver->wait_actor(id, [](const ActorView& a) { return a.reason.find("V100") != std::string::npos; });
  ASSERT_TRUE(pending);
  EXPECT_EQ(pending->state, ActorState::PENDING);
  EXPECT_THAT(pending->reason, HasSubstr("infeasible"));
  auto status = cluster.troupe({"status"});
  EXPECT_THAT(status.out, HasSubstr("1 PENDING"));
  EXPECT_THAT(status.out, HasSubstr("V100"));
  auto actors = cluster.list("actors");
  ASSERT_EQ(actors.size(), 1u);
  EXPECT_EQ(actors[0]["state"], "PENDING");
  EXPECT_THAT(actors[0]["reason"].get<std::string>(), HasSubstr("V100"));

  // A V100 node joining makes it placeable.
  std::string v100 = cluster.add_worker("V100-16GB:1");
  auto alive = driver->wait_actor(id, is_alive);
  ASSERT_TRUE(alive);
  EXPECT_EQ(alive->node, v100);
}

TEST_F(ClusterPlacement, HostExitsAreReportedAndRestartsCounted) {
  Id flaky = driver->create_actor("Exit3", {{"CPU", 1}}, "", /*max_restarts=*/1);
  auto restarting = driver->wait_actor(flaky, [](const ActorView& a) { return a.state == ActorState::RESTARTING; });
  ASSERT_TRUE(restarting);
  EXPECT_THAT(restarting->reason, HasSubstr("exited with code 3"));
  auto dead = driver->wait_actor(flaky, is_dead);
  ASSERT_TRUE(dead);
  EXPECT_EQ(dead->incarnation, 1u);
  EXPECT_THAT(dead->reason, HasSubstr("exited with code 3"));

  Id broken = driver->create_actor("FailCtor", {});
  dead = driver->wait_actor(broken, is_dead);
  ASSERT_TRUE(dead);
  EXPECT_THAT(dead->reason, HasSubstr("constructor threw"));

  Id victim = driver->create_actor("Stage", {{"GPU", 1}}, "T4");
  ASSERT_TRUE(driver->wait_actor(victim, is_alive));
  driver->kill_actor(victim);
  dead = driver->wait_actor(victim, is_dead);
  ASSERT_TRUE(dead);
  EXPECT_THAT(dead->reason, HasSubstr("killed"));
  // Its GPU is free again.
  ASSERT_TRUE(eventually([&] { return cluster.node(t4)["available"]["GPU"].get<double>() == 1.0; }, 3s));
}

TEST_F(ClusterPlacement, ActorsOfALostNodeDieWithNodeLost) {
  Id id = driver->create_actor("Stage", {{"GPU", 1}}, "T4");
  ASSERT_TRUE(driver->wait_actor(id, is_alive));
  ASSERT_EQ(::kill(cluster.pid_of(TestCluster::worker_name(t4)), SIGKILL), 0);
  auto dead = driver->wait_actor(id, is_dead, cluster.node_timeout() + 2s);
  ASSERT_TRUE(dead);
  EXPECT_EQ(dead->reason_code, 5);  // nodeLost
  EXPECT_THAT(dead->reason, HasSubstr("was lost"));
}

TEST_F(ClusterPlacement, ASilentDriverHasItsActorsKilled) {
  Id id = driver->create_actor("Stage", {{"CPU", 1}});
  ASSERT_TRUE(driver->wait_actor(id, is_alive));
  driver->stop_heartbeats();
  auto dead = driver->wait_actor(id, is_dead, cluster.node_timeout() + 3s);
  ASSERT_TRUE(dead);
  EXPECT_THAT(dead->reason, HasSubstr("driver went away"));
}

TEST_F(ClusterPlacement, PlacementGroupStrategiesChooseNodes) {
  Id spread = driver->create_group({{{"GPU", 1}}, {{"GPU", 1}}}, wire::PlacementStrategy::STRICT_SPREAD);
  auto created = driver->wait_group(spread, wire::PlacementGroupState::CREATED);
  ASSERT_TRUE(created);
  ASSERT_EQ(created->second.size(), 2u);
  EXPECT_NE(created->second[0], created->second[1]);

  // Two whole GPUs on one node: only the H100 node has them, and one H100 is
  // already in the spread group.
  Id pack = driver->create_group({{{"GPU", 1}}, {{"GPU", 1}}}, wire::PlacementStrategy::STRICT_PACK);
  ASSERT_TRUE(driver->wait_group(pack, wire::PlacementGroupState::PENDING));
  Id impossible = driver->create_group({{{"GPU", 1}}, {{"GPU", 1}}, {{"GPU", 1}}}, wire::PlacementStrategy::STRICT_PACK);
  ASSERT_TRUE(driver->wait_group(impossible, wire::PlacementGroupState::INFEASIBLE));

  // An actor in bundle 1 of the spread group runs on that bundle's node.
  Id member = driver->create_actor("Stage", {{"GPU", 1}}, "", 0, spread, 1);
  auto alive = driver->wait_actor(member, is_alive);
  ASSERT_TRUE(alive);
  EXPECT_EQ(alive->node, created->second[1]);
}

TEST_F(ClusterPlacement, ABundleOfALostNodeIsReservedAgainAndItsActorRestartsThere) {
  Id group = driver->create_group({{{"GPU", 1}}, {{"GPU", 1}}}, wire::PlacementStrategy::STRICT_SPREAD);
  auto created = driver->wait_group(group, wire::PlacementGroupState::CREATED);
  ASSERT_TRUE(created);
  const int on_t4 = created->second[0] == t4 ? 0 : 1;
  ASSERT_EQ(created->second[on_t4], t4);
  const std::string survivor = created->second[1 - on_t4];
  Id member = driver->create_actor("Stage", {{"GPU", 1}}, "", /*max_restarts=*/2, group, on_t4);
  Id other = driver->create_actor("Stage", {{"GPU", 1}}, "", 0, group, 1 - on_t4);
  ASSERT_TRUE(driver->wait_actor(member, is_alive));
  auto other_before = driver->wait_actor(other, is_alive);
  ASSERT_TRUE(other_before);

  // The T4 node dies: no other node may take its bundle (STRICT_SPREAD, and
  // the head has no GPU), so the member waits, saying why.
  ASSERT_EQ(::kill(cluster.pid_of(TestCluster::worker_name(t4)), SIGKILL), 0);
  auto waiting = driver->wait_actor(
      member, [](const ActorView& a) { return a.reason.find("rescheduling") != std::string::npos; },
      cluster.node_timeout() + 3s);
  ASSERT_TRUE(waiting) << cluster.troupe({"status"}).out;
  EXPECT_NE(waiting->state, ActorState::DEAD);
  auto reduced = driver->wait_group(group, wire::PlacementGroupState::CREATED);
  ASSERT_TRUE(reduced);
  EXPECT_EQ(reduced->second[on_t4], "00000000000000000000000000000000");
  EXPECT_EQ(reduced->second[1 - on_t4], survivor);

  // A new GPU node joins: the bundle is reserved there and the member
  // restarts in it; the other bundle's actor never noticed.
  const std::string fresh = cluster.add_worker("T4-16GB:1");
  ASSERT_FALSE(fresh.empty());
  auto restarted = driver->wait_actor(
      member, [&](const ActorView& a) { return a.state == ActorState::ALIVE && a.node == fresh; }, 20s);
  ASSERT_TRUE(restarted) << cluster.troupe({"status"}).out;
  auto moved = driver->wait_group(group, wire::PlacementGroupState::CREATED);
  ASSERT_TRUE(moved);
  EXPECT_EQ(moved->second[on_t4], fresh);
  auto untouched = driver->wait_actor(other, is_alive);
  ASSERT_TRUE(untouched);
  EXPECT_EQ(untouched->incarnation, other_before->incarnation);
  EXPECT_EQ(untouched->node, survivor);
}

}  // namespace
}  // namespace troupe::testing
