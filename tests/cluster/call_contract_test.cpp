// The call plane's wire contract, as an actor host enforces it
// (transport/schema/call.capnp): a request for another incarnation of the
// hosted actor fails with actorDied and a caller's `seq` must be the next
// one, else the call fails with `protocol`; neither runs the call. Raw
// CallRequests are sent to a real actor host of a real local cluster.
// TROUPE_TEST_LABELS: cluster slow
#include <gtest/gtest.h>

#include <signal.h>

#include <capnp/message.h>
#include <zmq.hpp>

#include <random>
#include <thread>

#include "cluster/cluster_harness.hpp"
#include "cluster/member_sockets.hpp"
#include "troupe/runtime/error.hpp"
#include "troupe/transport/framing.hpp"
#include "troupe/transport/schema/call.capnp.h"

namespace {

using namespace std::chrono_literals;
using troupe::testing::TestCluster;

constexpr int kHeartbeatMs = 200;
constexpr int kMisses = 15;

struct Reply {
  std::uint16_t code = 0;  // 0: a value
  std::string message;
};

// A caller that speaks the call plane by hand: a DEALER to the host and a
// ROUTER the host replies to.
class RawCaller {
 public:
  explicit RawCaller(std::optional<troupe::transport::ClusterSecret> secret) : secret_(std::move(secret)) {
    troupe::testing::as_member_server(inbound_, secret_);
    inbound_.bind("tcp://127.0.0.1:*");
    address_ = inbound_.get(zmq::sockopt::last_endpoint);
    std::random_device random;
    caller_hi_ = (std::uint64_t{random()} << 32) | random();
    caller_lo_ = (std::uint64_t{random()} << 32) | random();
  }

  void connect(const std::string& host) {
    outbound_.set(zmq::sockopt::linger, 0);
    troupe::testing::as_member_client(outbound_, secret_);
    outbound_.connect(host);
  }

  void send(const std::string& actor_hex, std::uint32_t incarnation, std::uint64_t seq, std::uint64_t call_id) {
    capnp::MallocMessageBuilder message;
    auto request = message.initRoot<troupe::wire::CallMessage>().initRequest();
    request.setCallId(call_id);
    const std::uint64_t hi = std::stoull(actor_hex.substr(0, 16), nullptr, 16);
    const std::uint64_t lo = std::stoull(actor_hex.substr(16), nullptr, 16);
    request.initActorId().setHi(hi);
    request.getActorId().setLo(lo);
    request.setActorIncarnation(incarnation);
    request.initCallerId().setHi(caller_hi_);
    request.getCallerId().setLo(caller_lo_);
    request.setSeq(seq);
    request.setMethod("where");
    request.initArgs(0);
    request.setReturnTo(address_);
    request.initResultId().setHi(caller_hi_);
    request.getResultId().setLo(call_id);
    troupe::transport::send_message(outbound_, message);
  }

  // The reply to `call_id`, or nullopt if none comes within `timeout`.
  std::optional<Reply> reply_to(std::uint64_t call_id, std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
      auto routed = troupe::transport::recv_routed(inbound_, 100ms);
      if (!routed) continue;
      auto root = routed->message.root<troupe::wire::CallMessage>();
      if (!root.isReply() || root.getReply().getCallId() != call_id) continue;
      auto reply = root.getReply();
      if (!reply.isError()) return Reply{};
      return Reply{reply.getError().getCode(), reply.getError().getMessage().cStr()};
    }
    return std::nullopt;
  }

 private:
  zmq::context_t context_{1};
  zmq::socket_t inbound_{context_, zmq::socket_type::router};
  zmq::socket_t outbound_{context_, zmq::socket_type::dealer};
  std::optional<troupe::transport::ClusterSecret> secret_;
  std::string address_;
  std::uint64_t caller_hi_ = 0, caller_lo_ = 0;
};

constexpr auto kActorDied = troupe::wire_code(troupe::Errc::actor_died);
constexpr auto kProtocol = static_cast<std::uint16_t>(troupe::Errc::protocol);

TEST(CallContract, AHostRefusesCallsForAnotherIncarnationAndCallsOutOfSeqWithoutRunningThem) {
  TestCluster cluster(kHeartbeatMs, kMisses);
  ASSERT_EQ(cluster.start_head().exit_code, 0);
  const std::string a100 = cluster.add_worker("A100-40GB:1");
  ASSERT_FALSE(a100.empty());

  // The job's actor "victim" sits in a 60 s call; calls queued behind it do
  // not run until it ends, but the host answers refused calls at once.
  troupe::testing::RunResult result;
  std::thread submit([&] {
    result = cluster.troupe({"submit", "--", TROUPE_CLUSTER_JOB, "wait-for-death"}, 120s);
  });
  nlohmann::json victim;
  const bool alive = troupe::testing::eventually(
      [&] {
        for (const auto& actor : cluster.list("actors"))
          if (actor["name"] == "victim" && actor["state"] == "ALIVE") {
            victim = actor;
            return true;
          }
        return false;
      },
      60s);
  ASSERT_TRUE(alive);
  const std::string actor_id = victim["actor_id"];
  const std::uint32_t incarnation = victim["incarnation"];
  RawCaller caller(cluster.secret());
  caller.connect(victim["address"]);

  caller.send(actor_id, incarnation + 1, 0, 1);
  auto wrong_incarnation = caller.reply_to(1, 10s);
  ASSERT_TRUE(wrong_incarnation.has_value());
  EXPECT_EQ(wrong_incarnation->code, kActorDied) << wrong_incarnation->message;
  EXPECT_NE(wrong_incarnation->message.find("incarnation"), std::string::npos) << wrong_incarnation->message;

  // The refused call took no seq: seq 0 is accepted (and queued).
  caller.send(actor_id, incarnation, 0, 2);
  caller.send(actor_id, incarnation, 0, 3);  // a duplicate
  auto duplicate = caller.reply_to(3, 10s);
  ASSERT_TRUE(duplicate.has_value());
  EXPECT_EQ(duplicate->code, kProtocol) << duplicate->message;
  EXPECT_NE(duplicate->message.find("out of order"), std::string::npos) << duplicate->message;

  caller.send(actor_id, incarnation, 5, 4);  // seq 1..4 never came
  auto gap = caller.reply_to(4, 10s);
  ASSERT_TRUE(gap.has_value());
  EXPECT_EQ(gap->code, kProtocol) << gap->message;
  EXPECT_FALSE(caller.reply_to(2, 500ms).has_value()) << "the accepted call should wait behind the long one";

  ::kill(cluster.pid_of(TestCluster::worker_name(a100)), SIGKILL);
  submit.join();
  EXPECT_EQ(result.exit_code, 0) << result.all();
}

}  // namespace
