// The head's state store (issue 12): a head destroyed and rebuilt on the same
// store recovers nodes, actors (ids, names, incarnations, placement), groups,
// jobs and drivers, for the SQLite and the Redis backend; a node's report of
// its hosts adopts the known ones and kills the others; an ALIVE actor its
// node no longer reports restarts; old dead things are forgotten; an upload
// is hashed and written off the head's thread. In one process over the
// in-process channel with a fake clock; the Redis case starts its own
// redis-server on a free port in a temporary directory.
#include "troupe/head/head.hpp"

#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <capnp/message.h>
#include <gtest/gtest.h>

#include "troupe/runtime/error.hpp"
#include "troupe/runtime/ids.hpp"
#include "troupe/transport/content_hash.hpp"
#include "troupe/transport/internal/control_socket.hpp"
#include "troupe/transport/schema/control.capnp.h"
#include "state_store.hpp"

namespace troupe::head {
namespace {

using wire::ActorState;
using wire::ControlMessage;
namespace fs = std::filesystem;

const std::string kDriver = "drv-test";
const std::string kCli = "cli-test";
const NodeId kNodeA{0xa, 1};
const ActorId kActor{0xac, 3};
const ActorId kStranger{0xdead, 4};
const PlacementGroupId kGroup{0x9, 9};
const WorkerId kWorker{8, 8};

std::string node_identity(const NodeId& node) { return "node-" + node.hex(); }

int free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  socklen_t length = sizeof addr;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &length);
  int port = ntohs(addr.sin_port);
  ::close(fd);
  return port;
}

// A redis-server of our own, in `dir`, on a free port; stopped with the object.
class RedisServer {
 public:
  explicit RedisServer(const fs::path& dir) : port_(free_port()) {
    pid_ = ::fork();
    if (pid_ == 0) {
      ::chdir(dir.c_str());
      std::string port = std::to_string(port_);
      ::execlp("redis-server", "redis-server", "--port", port.c_str(), "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "yes", "--appendfsync", "always", "--dir", dir.c_str(), "--logfile", "redis.log",
               static_cast<char*>(nullptr));
      ::_exit(127);
    }
    // Ready when it accepts a connection (bounded).
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (std::chrono::steady_clock::now() < deadline) {
      int fd = ::socket(AF_INET, SOCK_STREAM, 0);
      sockaddr_in addr{};
      addr.sin_family = AF_INET;
      addr.sin_port = htons(static_cast<std::uint16_t>(port_));
      addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      bool up = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
      ::close(fd);
      if (up) {
        ready_ = true;
        return;
      }
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }
  ~RedisServer() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
  }
  bool ready() const { return ready_; }
  std::string url() const { return "redis://127.0.0.1:" + std::to_string(port_) + "/test"; }

 private:
  int port_;
  pid_t pid_ = -1;
  bool ready_ = false;
};

class HeadStateTest : public ::testing::Test {
 protected:
  HeadStateTest() {
    dir_ = fs::temp_directory_path() / ("troupe-head-state-test-" + NodeId::random().short_hex());
    fs::create_directories(dir_ / "session" / "binaries");
  }
  ~HeadStateTest() override {
    head_.reset();
    redis_.reset();
    std::error_code ignored;
    fs::remove_all(dir_, ignored);
  }

  // A head on `store` (replacing the one before, which is destroyed: as a
  // crash leaves the store, since nothing is written on destruction).
  void start_head(const std::string& store, std::chrono::seconds retention = std::chrono::seconds(3600),
                  std::chrono::milliseconds lease = {}) {
    head_.reset();
    HeadConfig config;
    config.heartbeat_ms = 500;
    config.heartbeat_misses = 6;
    config.session_dir = dir_ / "session";
    config.head_node_id = NodeId{0, 1};
    config.clock = [this] { return now_; };
    config.state_store = store;
    config.retention = retention;
    config.state_lease = lease;
    auto server = std::make_unique<transport::InProcessControlServer>();
    server_ = server.get();
    head_ = std::make_unique<Head>(config, std::move(server));
  }

  void deliver(const std::string& identity, capnp::MallocMessageBuilder& message) {
    server_->deliver(identity, message);
    auto routed = server_->receive(std::chrono::milliseconds(0));
    ASSERT_TRUE(routed.has_value());
    head_->handle(routed->identity, routed->message);
  }

  std::vector<transport::InProcessControlServer::Sent> sent() { return server_->take_sent(); }

  ControlMessage::Builder request(capnp::MallocMessageBuilder& message) {
    auto root = message.initRoot<ControlMessage>();
    root.setRequestId(next_request_++);
    return root;
  }

  void register_node(const NodeId& node, std::uint32_t cpus,
                     const std::vector<std::pair<ActorId, std::uint32_t>>& hosts = {}) {
    capnp::MallocMessageBuilder message;
    auto reg = request(message).initRegisterNode();
    reg.setProtocolVersion(wire::PROTOCOL_VERSION);
    to_wire(reg.initNodeId(), node);
    reg.setAddress("127.0.0.1");
    reg.setHostname("test");
    reg.setNumCpus(cpus);
    reg.setMemoryBytes(std::uint64_t{1} << 30);
    auto actors = reg.initActors(static_cast<unsigned>(hosts.size()));
    for (unsigned i = 0; i < hosts.size(); ++i) {
      to_wire(actors[i].initActorId(), hosts[i].first);
      actors[i].setIncarnation(hosts[i].second);
      actors[i].setState(ActorState::ALIVE);
    }
    deliver(node_identity(node), message);
  }

  void heartbeat(const NodeId& node, const std::vector<std::pair<ActorId, std::uint32_t>>& hosts) {
    capnp::MallocMessageBuilder message;
    auto beat = request(message).initHeartbeat();
    to_wire(beat.initNodeId(), node);
    beat.setSeq(++seq_);
    auto actors = beat.initActors(static_cast<unsigned>(hosts.size()));
    for (unsigned i = 0; i < hosts.size(); ++i) {
      to_wire(actors[i].initActorId(), hosts[i].first);
      actors[i].setIncarnation(hosts[i].second);
      actors[i].setState(ActorState::ALIVE);
    }
    deliver(node_identity(node), message);
  }

  JobId register_driver() {
    capnp::MallocMessageBuilder message;
    auto root = request(message);
    auto reg = root.initRegisterDriver();
    reg.setProtocolVersion(wire::PROTOCOL_VERSION);
    to_wire(reg.initWorkerId(), kWorker);
    deliver(kDriver, message);
    for (auto& reply : sent()) {
      auto reader = reply.message.root<ControlMessage>();
      if (reader.isRegisterDriverReply()) return from_wire<JobId>(reader.getRegisterDriverReply().getJobId());
    }
    ADD_FAILURE() << "no registerDriverReply";
    return {};
  }

  void create_actor(const ActorId& actor, const JobId& job, const std::string& name, int max_restarts,
                    const PlacementGroupId& group = {}) {
    capnp::MallocMessageBuilder message;
    auto create = request(message).initCreateActor();
    to_wire(create.initActorId(), actor);
    to_wire(create.initJobId(), job);
    to_wire(create.initOwnerId(), kWorker);
    create.setClassName("Counter");
    create.setName(name);
    create.setMaxRestarts(max_restarts);
    create.setMaxConcurrency(1);
    create.setBundleIndex(group.nil() ? -1 : 0);
    if (!group.nil()) to_wire(create.initPlacementGroupId(), group);
    auto resources = create.initResources(1);
    resources[0].setName("CPU");
    resources[0].setAmount(1);
    deliver(kDriver, message);
  }

  void create_group(const PlacementGroupId& group, const JobId& job) {
    capnp::MallocMessageBuilder message;
    auto create = request(message).initCreatePlacementGroup();
    to_wire(create.initPlacementGroupId(), group);
    to_wire(create.initJobId(), job);
    auto bundles = create.initBundles(1);
    auto resources = bundles[0].initResources(1);
    resources[0].setName("CPU");
    resources[0].setAmount(2);
    deliver(kDriver, message);
  }

  void report_alive(const NodeId& node, const ActorId& actor, std::uint32_t incarnation) {
    capnp::MallocMessageBuilder message;
    auto update = request(message).initActorUpdate();
    to_wire(update.initActorId(), actor);
    update.setState(ActorState::ALIVE);
    to_wire(update.initNodeId(), node);
    update.setAddress("tcp://127.0.0.1:1");
    update.setIncarnation(incarnation);
    deliver(node_identity(node), message);
  }

  void kill_actor(const ActorId& actor) {
    capnp::MallocMessageBuilder message;
    auto kill = request(message).initKillActor();
    to_wire(kill.initActorId(), actor);
    kill.setNoRestart(true);
    deliver(kDriver, message);
  }

  transport::ReceivedMessage cluster_state() {
    capnp::MallocMessageBuilder message;
    auto root = request(message);
    std::uint64_t id = root.getRequestId();
    root.initGetClusterState().setIncludeDead(true);
    deliver(kCli, message);
    for (auto& reply : sent()) {
      auto reader = reply.message.root<ControlMessage>();
      if (reader.getRequestId() == id && reader.isClusterState()) return std::move(reply.message);
    }
    ADD_FAILURE() << "no clusterState reply";
    throw std::runtime_error("no clusterState reply");
  }

  // The actor's entry in the cluster state, if listed.
  std::optional<std::pair<ActorState, std::uint32_t>> actor_state(const ActorId& actor) {
    auto state = cluster_state();
    for (auto entry : state.root<ControlMessage>().getClusterState().getActors()) {
      if (from_wire<ActorId>(entry.getActorId()) == actor) return std::make_pair(entry.getState(), entry.getIncarnation());
    }
    return std::nullopt;
  }

  double available_cpus(const NodeId& node) {
    auto state = cluster_state();
    for (auto entry : state.root<ControlMessage>().getClusterState().getNodes()) {
      if (from_wire<NodeId>(entry.getNode().getNodeId()) != node) continue;
      for (auto resource : entry.getAvailable()) {
        if (std::string(resource.getName().cStr()) == "CPU") return resource.getAmount();
      }
    }
    return -1;
  }

  // Kills sent to `identity` in `batch`.
  static std::vector<ActorId> kills_in(std::vector<transport::InProcessControlServer::Sent>& batch) {
    std::vector<ActorId> kills;
    for (auto& message : batch) {
      auto reader = message.message.root<ControlMessage>();
      if (reader.isKillActor()) kills.push_back(from_wire<ActorId>(reader.getKillActor().getActorId()));
    }
    return kills;
  }
  static std::vector<std::pair<ActorId, std::uint32_t>> starts_in(
      std::vector<transport::InProcessControlServer::Sent>& batch) {
    std::vector<std::pair<ActorId, std::uint32_t>> starts;
    for (auto& message : batch) {
      auto reader = message.message.root<ControlMessage>();
      if (!reader.isStartActor()) continue;
      starts.emplace_back(from_wire<ActorId>(reader.getStartActor().getSpec().getActorId()),
                          reader.getStartActor().getIncarnation());
    }
    return starts;
  }

  // A cluster of one node (4 CPUs), a job, a group of one 2-CPU bundle, and
  // a named actor ALIVE on the node (1 CPU): then the head is destroyed and
  // rebuilt on `store`, which must give all of it back.
  void state_survives_a_rebuilt_head(const std::string& store) {
    start_head(store);
    register_node(kNodeA, 4);
    JobId job = register_driver();
    create_group(kGroup, job);
    head_->tick();
    create_actor(kActor, job, "counter", 2);
    head_->tick();
    auto batch = sent();
    ASSERT_EQ(starts_in(batch).size(), 1u);
    report_alive(kNodeA, kActor, 0);
    sent();
    ASSERT_EQ(available_cpus(kNodeA), 1.0);  // 4 - the bundle's 2 - the actor's 1

    start_head(store);  // the crash and the restart
    EXPECT_EQ(actor_state(kActor), std::make_pair(ActorState::ALIVE, 0u));
    EXPECT_EQ(available_cpus(kNodeA), 1.0) << "the books are restored";
    auto state = cluster_state();
    auto cluster = state.root<ControlMessage>().getClusterState();
    ASSERT_EQ(cluster.getNodes().size(), 1u);
    EXPECT_EQ(cluster.getNodes()[0].getState(), wire::NodeState::ALIVE);
    ASSERT_EQ(cluster.getPlacementGroups().size(), 1u);
    EXPECT_EQ(cluster.getPlacementGroups()[0].getState(), wire::PlacementGroupState::CREATED);
    ASSERT_EQ(cluster.getJobs().size(), 1u);
    EXPECT_EQ(from_wire<JobId>(cluster.getJobs()[0].getJobId()), job);
    EXPECT_EQ(cluster.getJobs()[0].getState(), wire::JobState::RUNNING);

    // Its name still finds it.
    capnp::MallocMessageBuilder lookup;
    auto get = request(lookup).initGetActorByName();
    to_wire(get.initJobId(), job);
    get.setName("counter");
    deliver(kDriver, lookup);
    auto replies = sent();
    ASSERT_EQ(replies.size(), 1u);
    ASSERT_TRUE(replies[0].message.root<ControlMessage>().isActorUpdate());
    EXPECT_EQ(from_wire<ActorId>(replies[0].message.root<ControlMessage>().getActorUpdate().getActorId()), kActor);

    // The node manager comes back with its host and a stranger: the known
    // host is adopted, the stranger killed.
    register_node(kNodeA, 4, {{kActor, 0}, {kStranger, 0}});
    auto after = sent();
    EXPECT_EQ(kills_in(after), std::vector<ActorId>{kStranger});
    heartbeat(kNodeA, {{kActor, 0}});
    heartbeat(kNodeA, {{kActor, 0}});
    head_->tick();
    auto beats = sent();
    EXPECT_TRUE(kills_in(beats).empty());
    EXPECT_TRUE(starts_in(beats).empty());
    EXPECT_EQ(actor_state(kActor), std::make_pair(ActorState::ALIVE, 0u));

    // The driver is known: its heartbeat is acknowledged, not refused.
    capnp::MallocMessageBuilder beat;
    auto driver_beat = request(beat).initDriverHeartbeat();
    to_wire(driver_beat.initWorkerId(), kWorker);
    deliver(kDriver, beat);
    auto acks = sent();
    ASSERT_EQ(acks.size(), 1u);
    EXPECT_TRUE(acks[0].message.root<ControlMessage>().isAck());
  }

  fs::path dir_;
  Clock::time_point now_ = Clock::time_point{} + std::chrono::hours(1);
  transport::InProcessControlServer* server_ = nullptr;
  std::unique_ptr<Head> head_;
  std::unique_ptr<RedisServer> redis_;
  std::uint64_t next_request_ = 1;
  std::uint64_t seq_ = 0;
};

TEST_F(HeadStateTest, StateSurvivesAHeadRebuiltOnTheSameSqliteStore) {
  state_survives_a_rebuilt_head((dir_ / "state").string());
}

TEST_F(HeadStateTest, StateSurvivesAHeadRebuiltOnTheSameRedisStore) {
  if (::system("command -v redis-server > /dev/null 2>&1") != 0) GTEST_SKIP() << "no redis-server installed";
  fs::create_directories(dir_ / "redis");
  redis_ = std::make_unique<RedisServer>(dir_ / "redis");
  ASSERT_TRUE(redis_->ready()) << "redis-server did not start";
  state_survives_a_rebuilt_head(redis_->url());
}

TEST_F(HeadStateTest, AnActorItsNodeNoLongerRunsRestartsAfterTwoReports) {
  start_head((dir_ / "state").string());
  register_node(kNodeA, 4);
  JobId job = register_driver();
  create_actor(kActor, job, "", 1);
  head_->tick();
  report_alive(kNodeA, kActor, 0);
  heartbeat(kNodeA, {{kActor, 0}});
  sent();
  // Its DEAD report was lost: the node's heartbeats stop listing it.
  heartbeat(kNodeA, {});
  EXPECT_EQ(actor_state(kActor), std::make_pair(ActorState::ALIVE, 0u)) << "one report may predate the host";
  heartbeat(kNodeA, {});
  head_->tick();
  auto batch = sent();
  auto starts = starts_in(batch);
  ASSERT_EQ(starts.size(), 1u);
  EXPECT_EQ(starts[0], std::make_pair(kActor, 1u));
  EXPECT_EQ(actor_state(kActor), std::make_pair(ActorState::RESTARTING, 1u));
}

TEST_F(HeadStateTest, ADeadActorIsForgottenAfterTheRetentionAndStaysForgotten) {
  std::string store = (dir_ / "state").string();
  start_head(store, std::chrono::seconds(10));
  register_node(kNodeA, 4);
  JobId job = register_driver();
  create_actor(kActor, job, "", 0);
  kill_actor(kActor);  // still pending: dead at once
  head_->tick();
  ASSERT_EQ(actor_state(kActor), std::make_pair(ActorState::DEAD, 0u));
  now_ += std::chrono::seconds(5);
  head_->tick();
  EXPECT_TRUE(actor_state(kActor).has_value()) << "kept within the retention";
  now_ += std::chrono::seconds(6);
  heartbeat(kNodeA, {});
  head_->tick();
  EXPECT_FALSE(actor_state(kActor).has_value()) << "forgotten after it";
  start_head(store, std::chrono::seconds(10));
  EXPECT_FALSE(actor_state(kActor).has_value()) << "and not brought back by a restart";
}

TEST_F(HeadStateTest, AHeadStoppedCleanlyLeavesNothingToRecover) {
  std::string store = (dir_ / "state").string();
  start_head(store);
  register_node(kNodeA, 4);
  std::atomic<bool> stop{true};
  head_->run(stop);
  start_head(store);
  EXPECT_EQ(cluster_state().root<ControlMessage>().getClusterState().getNodes().size(), 0u);
}

// A Redis store has one owner, as SQLite's flock gives: a second head waits
// one lease and is refused while the first renews it; once the first stops
// renewing (hung, partitioned from the server) the second takes the store
// over and the first cannot write one more record; a head that stops hands
// the store over at once, and so does one that died on this host.
TEST_F(HeadStateTest, ARedisStoreHasOneOwnerHeadAtATime) {
  if (::system("command -v redis-server > /dev/null 2>&1") != 0) GTEST_SKIP() << "no redis-server installed";
  fs::create_directories(dir_ / "redis");
  redis_ = std::make_unique<RedisServer>(dir_ / "redis");
  ASSERT_TRUE(redis_->ready()) << "redis-server did not start";
  const auto lease = std::chrono::milliseconds(600);
  auto first = open_redis_store(redis_->url(), "x", lease);
  first->apply({{RecordKind::job, "one", "first"}});
  // A head that stalled past its lease, the store taken by nobody, goes on.
  std::this_thread::sleep_for(lease + std::chrono::milliseconds(100));
  first->apply({{RecordKind::job, "one", "first"}});
  first->keep_alive();
  {
    std::atomic<bool> done{false};
    std::thread renew([&] {
      while (!done.load()) {
        first->keep_alive();
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
    });
    auto started = std::chrono::steady_clock::now();
    try {
      auto second = open_redis_store(redis_->url(), "x", lease);
      ADD_FAILURE() << "a second head opened a Redis store another head renews";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), Errc::invalid_argument);
      EXPECT_NE(std::string(e.what()).find("another head"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(" " + std::to_string(::getpid()) + ")"), std::string::npos) << e.what();
    }
    EXPECT_GE(std::chrono::steady_clock::now() - started, lease) << "refused before the lease could have expired";
    done = true;
    renew.join();
  }
  // The first stops renewing: after its lease the store is the second's.
  std::this_thread::sleep_for(lease + std::chrono::milliseconds(100));
  auto second = open_redis_store(redis_->url(), "x", lease);
  try {
    first->apply({{RecordKind::job, "two", "first"}});
    ADD_FAILURE() << "a head whose lease was taken over wrote to the store";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Errc::permission_denied) << e.what();
    EXPECT_NE(std::string(e.what()).find("took it over"), std::string::npos) << e.what();
  }
  EXPECT_THROW(
      [&] {
        std::this_thread::sleep_for(lease / 2);
        first->keep_alive();
      }(),
      Error);
  second->apply({{RecordKind::job, "three", "second"}});
  std::map<std::string, std::string> jobs;
  for (auto& record : second->load_all())
    if (record.kind == RecordKind::job) jobs[record.key] = record.value;
  EXPECT_EQ(jobs, (std::map<std::string, std::string>{{"one", "first"}, {"three", "second"}}));
  // A head that stops hands over at once (below); a head fenced before
  // never takes the released store back by itself.
  second.reset();
  EXPECT_THROW(first->apply({{RecordKind::job, "four", "first"}}), Error);
  first.reset();  // its release does not touch the store
  auto started = std::chrono::steady_clock::now();
  auto third = open_redis_store(redis_->url(), "x", std::chrono::seconds(30));
  EXPECT_LT(std::chrono::steady_clock::now() - started, std::chrono::seconds(5));
  third.reset();
  // A head killed on this host (no release): the next takes over at once.
  pid_t child = ::fork();
  if (child == 0) {
    try {
      auto dying = open_redis_store(redis_->url(), "x", std::chrono::seconds(30));
      dying->apply({{RecordKind::job, "five", "killed"}});
      ::_exit(0);  // no destructor: the lease stays behind, as after kill -9
    } catch (...) {
      ::_exit(1);
    }
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  started = std::chrono::steady_clock::now();
  auto fourth = open_redis_store(redis_->url(), "x", std::chrono::seconds(30));
  EXPECT_LT(std::chrono::steady_clock::now() - started, std::chrono::seconds(5));
  fourth->apply({{RecordKind::job, "six", "fourth"}});
}

// The head stops when another head took its store over: it must not answer
// or decide anything more for a cluster that is no longer its own.
TEST_F(HeadStateTest, AHeadWhoseRedisStoreWasTakenOverStops) {
  if (::system("command -v redis-server > /dev/null 2>&1") != 0) GTEST_SKIP() << "no redis-server installed";
  fs::create_directories(dir_ / "redis");
  redis_ = std::make_unique<RedisServer>(dir_ / "redis");
  ASSERT_TRUE(redis_->ready()) << "redis-server did not start";
  const auto lease = std::chrono::milliseconds(500);
  start_head(redis_->url(), std::chrono::seconds(3600), lease);
  register_node(kNodeA, 4);
  head_->tick();
  std::this_thread::sleep_for(lease + std::chrono::milliseconds(100));  // the head hangs
  auto other = open_redis_store(redis_->url(), "troupe", lease);
  try {
    head_->tick();
    FAIL() << "a head went on after another took its store over";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Errc::permission_denied) << e.what();
  }
}

TEST_F(HeadStateTest, ASecondHeadOnTheSameSqliteStoreIsRefusedWhileTheFirstRuns) {
  std::string store = (dir_ / "state").string();
  start_head(store);
  register_node(kNodeA, 4);
  HeadConfig config;
  config.session_dir = dir_ / "session";
  config.head_node_id = NodeId{0, 2};
  config.state_store = store;
  try {
    Head second(config, std::make_unique<transport::InProcessControlServer>());
    FAIL() << "a second head opened a store another head is using";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Errc::invalid_argument);
    EXPECT_NE(std::string(e.what()).find("another head (pid " + std::to_string(::getpid()) + ")"), std::string::npos)
        << e.what();
    EXPECT_NE(std::string(e.what()).find("--state-dir"), std::string::npos) << e.what();
  }
  // The first head's state is untouched, and a head that replaces it (the
  // first gone) takes the store.
  EXPECT_EQ(cluster_state().root<ControlMessage>().getClusterState().getNodes().size(), 1u);
  start_head(store);
  EXPECT_EQ(cluster_state().root<ControlMessage>().getClusterState().getNodes().size(), 1u);
}

TEST_F(HeadStateTest, TheHeadsOwnNodeKeepsItsIdAcrossARestart) {
  std::string store = (dir_ / "state").string();
  start_head(store);  // head node id {0, 1}
  EXPECT_EQ(head_->head_node_id(), (NodeId{0, 1}));
  head_.reset();
  HeadConfig config;
  config.session_dir = dir_ / "session";
  config.head_node_id = NodeId{0, 7};  // what a restarted `troupe start --head` picks
  config.state_store = store;
  Head restarted(config, std::make_unique<transport::InProcessControlServer>());
  EXPECT_EQ(restarted.head_node_id(), (NodeId{0, 1}));
}

TEST_F(HeadStateTest, AnUploadIsHashedOffTheHeadsThreadSoHeartbeatsAreAnsweredFirst) {
  start_head((dir_ / "state").string());
  register_node(kNodeA, 4);
  sent();
  std::string binary(64u << 20, '\0');  // 64 MiB: hashing and writing take a while
  std::mt19937_64 random(7);
  for (std::size_t i = 0; i + 8 <= binary.size(); i += 8) {
    std::uint64_t word = random();
    std::memcpy(binary.data() + i, &word, 8);
  }
  const std::string hash = transport::content_hash(binary);
  capnp::MallocMessageBuilder upload;
  auto root = request(upload);
  std::uint64_t upload_id = root.getRequestId();
  auto body = root.initUploadBinary();
  body.setBinaryHash(hash);
  body.setBinary(kj::arrayPtr(reinterpret_cast<const kj::byte*>(binary.data()), binary.size()));
  deliver(kDriver, upload);
  heartbeat(kNodeA, {});
  auto first = sent();
  ASSERT_EQ(first.size(), 1u) << "the heartbeat's answer, not the upload's";
  EXPECT_TRUE(first[0].message.root<ControlMessage>().isHeartbeatAck());

  ASSERT_TRUE(head_->wait_for_background_work(std::chrono::seconds(60)));
  head_->tick();
  auto later = sent();
  ASSERT_EQ(later.size(), 1u);
  EXPECT_EQ(later[0].message.root<ControlMessage>().getRequestId(), upload_id);
  EXPECT_TRUE(later[0].message.root<ControlMessage>().isAck());
  EXPECT_TRUE(fs::exists(dir_ / "session" / "binaries" / hash));
}

// The cost of a stored change, as the head pays it: one createActor (one
// new record, one transaction) per message, timed against the same head
// without a store. Prints the figures docs/fault-tolerance.md quotes.
TEST_F(HeadStateTest, TheCostOfAStoredChangeIsMeasured) {
  auto per_message_us = [&](const std::string& store) {
    start_head(store);
    register_node(kNodeA, 4);
    JobId job = register_driver();
    constexpr int kMessages = 200;
    auto start = std::chrono::steady_clock::now();
    for (int i = 0; i < kMessages; ++i) create_actor(ActorId{0x5000, static_cast<std::uint64_t>(i + 1)}, job, "", 0);
    auto took = std::chrono::steady_clock::now() - start;
    sent();
    return std::chrono::duration<double, std::micro>(took).count() / kMessages;
  };
  double memory = per_message_us("");
  double sqlite = per_message_us((dir_ / "cost-sqlite").string());
  std::printf("head state store: createActor %.1f us in memory, %.1f us with SQLite (WAL, synchronous=FULL)\n",
              memory, sqlite);
  RecordProperty("memory_us", std::to_string(memory));
  RecordProperty("sqlite_us", std::to_string(sqlite));
  if (::system("command -v redis-server > /dev/null 2>&1") == 0) {
    fs::create_directories(dir_ / "redis");
    redis_ = std::make_unique<RedisServer>(dir_ / "redis");
    ASSERT_TRUE(redis_->ready());
    double redis = per_message_us(redis_->url());
    std::printf("head state store: createActor %.1f us with Redis (appendfsync always, loopback)\n", redis);
    RecordProperty("redis_us", std::to_string(redis));
  }
  EXPECT_GT(sqlite, 0);
}

// issue 13 (cluster): a group's name stays taken across a head restart, and
// a lookup by name (from another process of the job) finds it there.
TEST_F(HeadStateTest, APlacementGroupNameStaysTakenAndFoundAfterAHeadRestart) {
  std::string store = (dir_ / "state").string();
  start_head(store);
  register_node(kNodeA, 4);
  JobId job = register_driver();
  auto create_named = [&](const PlacementGroupId& id) {
    capnp::MallocMessageBuilder message;
    auto root = request(message);
    const std::uint64_t request_id = root.getRequestId();
    auto create = root.initCreatePlacementGroup();
    to_wire(create.initPlacementGroupId(), id);
    to_wire(create.initJobId(), job);
    create.setName("pipeline");
    auto resources = create.initBundles(1)[0].initResources(1);
    resources[0].setName("CPU");
    resources[0].setAmount(1);
    deliver(kDriver, message);
    for (auto& reply : sent()) {
      auto reader = reply.message.root<ControlMessage>();
      if (reader.getRequestId() != request_id) continue;
      return reader.isError() ? errc_from_wire(reader.getError().getCode()) : Errc::ok;
    }
    ADD_FAILURE() << "no reply to createPlacementGroup";
    return Errc::internal;
  };
  ASSERT_EQ(create_named(kGroup), Errc::ok);
  head_->tick();
  EXPECT_EQ(create_named(kGroup), Errc::ok) << "a resent creation is acknowledged again";

  start_head(store);  // the crash and the restart
  EXPECT_EQ(create_named(PlacementGroupId{0x9, 10}), Errc::invalid_argument) << "the name is still taken";
  capnp::MallocMessageBuilder lookup;
  auto root = request(lookup);
  auto get = root.initGetPlacementGroups();
  to_wire(get.initJobId(), job);
  get.setName("pipeline");
  deliver("act-looker", lookup);
  auto replies = sent();
  ASSERT_EQ(replies.size(), 1u);
  auto reader = replies[0].message.root<ControlMessage>();
  ASSERT_TRUE(reader.isClusterState());
  auto groups = reader.getClusterState().getPlacementGroups();
  ASSERT_EQ(groups.size(), 1u);
  EXPECT_EQ(from_wire<PlacementGroupId>(groups[0].getPlacementGroupId()), kGroup);
  EXPECT_EQ(std::string(groups[0].getName().cStr()), "pipeline");
  EXPECT_EQ(groups[0].getBundles().size(), 1u);
  EXPECT_EQ(groups[0].getState(), wire::PlacementGroupState::CREATED);
}

// issue 13 (cluster): a name in a shared namespace is found from any job, a
// name in a job's own namespace only from that job; both after a restart.
TEST_F(HeadStateTest, ANamespacedActorNameIsSharedAcrossJobsAndSurvivesAHeadRestart) {
  std::string store = (dir_ / "state").string();
  start_head(store);
  register_node(kNodeA, 4);
  JobId job = register_driver();
  const JobId other_job{0x77, 7};
  for (auto [actor, actor_namespace] : {std::pair{kActor, "shared"}, std::pair{kStranger, ""}}) {
    capnp::MallocMessageBuilder message;
    auto create = request(message).initCreateActor();
    to_wire(create.initActorId(), actor);
    to_wire(create.initJobId(), job);
    to_wire(create.initOwnerId(), kWorker);
    create.setClassName("Counter");
    create.setName("counter");
    create.setActorNamespace(actor_namespace);
    create.setMaxConcurrency(1);
    create.setBundleIndex(-1);
    deliver(kDriver, message);
    auto replies = sent();
    ASSERT_FALSE(replies.empty());
    EXPECT_FALSE(replies.back().message.root<ControlMessage>().isError()) << "'counter' in '" << actor_namespace << "'";
  }
  auto look_up = [&](const JobId& asker, const char* actor_namespace) -> std::optional<ActorId> {
    capnp::MallocMessageBuilder lookup;
    auto get = request(lookup).initGetActorByName();
    to_wire(get.initJobId(), asker);
    get.setName("counter");
    get.setActorNamespace(actor_namespace);
    deliver(kCli, lookup);
    for (auto& reply : sent()) {
      auto reader = reply.message.root<ControlMessage>();
      if (reader.isActorUpdate()) return from_wire<ActorId>(reader.getActorUpdate().getActorId());
    }
    return std::nullopt;
  };
  for (int round = 0; round < 2; ++round) {
    EXPECT_EQ(look_up(job, "shared"), kActor) << "round " << round;
    EXPECT_EQ(look_up(other_job, "shared"), kActor) << "another job, round " << round;
    EXPECT_EQ(look_up(job, ""), kStranger) << "the job's own, round " << round;
    EXPECT_EQ(look_up(other_job, ""), std::nullopt) << "not another job's own, round " << round;
    start_head(store);  // the crash and the restart
  }
}

}  // namespace
}  // namespace troupe::head
