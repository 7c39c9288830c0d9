// The cluster-mode submitter (cluster/remote_actor.hpp) in one process,
// over a fake CallSender that records what is sent and keeps the calls in
// flight as OutboundCalls does: a restart fails the calls in flight to the
// old incarnation or, with retries, resends them first, in order, with
// fresh seqs; a death fails everything, also calls submitted while it is
// handled; deadlines and max_pending_calls act on queued and sent calls;
// and failures are completed outside the actor's lock (a callback may call
// back into it).
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "cluster/remote_actor.hpp"
#include "deadline_queue.hpp"
#include "thread_pool.hpp"
#include "troupe/troupe.hpp"

using namespace std::chrono_literals;

namespace remote {

class Echo {
 public:
  int echo(int x) { return x; }
};

}  // namespace remote

TROUPE_ACTOR(remote::Echo, (), echo);

namespace troupe::detail {
namespace {

using remote::Echo;

int arg_of(const CallSpec& spec) { return deserialize<int>(spec.args.at(0).value->encode()); }

bool eventually(const std::function<bool()>& condition, std::chrono::milliseconds timeout = 20s) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!condition()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(5ms);
  }
  return true;
}

class FakeSender final : public CallSender {
 public:
  struct Sent {
    std::uint32_t incarnation;
    std::uint64_t seq;
    int arg;
  };

  FakeSender() : pool_(2), deadlines_(std::make_shared<DeadlineQueue>(pool_.context())) {}
  ~FakeSender() override {
    deadlines_->stop();
    pool_.stop();
  }

  bool running() const noexcept override { return running_.load(); }
  void post(std::function<void()> fn) override { pool_.post(std::move(fn)); }
  void at_deadline(std::chrono::steady_clock::time_point when, const StatePtr& result,
                   std::function<void()> fn) override {
    deadlines_->add(when, result, std::move(fn));
  }
  void send_call(ActorId, const std::string&, std::uint32_t incarnation, std::uint64_t seq, CallSpec& spec,
                 bool keep_for_retry) override {
    if (during_send) during_send();
    std::lock_guard lock(mutex_);
    log_.push_back(Sent{incarnation, seq, arg_of(spec)});
    Flight flight{incarnation, spec.result, std::nullopt, arg_of(spec)};
    if (keep_for_retry) flight.spec = std::move(spec);
    inflight_.emplace(next_id_++, std::move(flight));
    sent_.notify_all();
  }
  std::vector<SentCall> take_sent(ActorId, std::optional<std::uint32_t> below) override {
    std::lock_guard lock(mutex_);
    std::vector<SentCall> taken;
    for (auto it = inflight_.begin(); it != inflight_.end();) {
      if (below && it->second.incarnation >= *below) {
        ++it;
        continue;
      }
      taken.push_back(SentCall{it->second.result, std::move(it->second.spec), {}, {}});
      it = inflight_.erase(it);
    }
    return taken;
  }
  void end_loans(const std::vector<ObjectId>&) override {}
  bool cancel_sent(ActorId, const std::string&, const StatePtr&) override { return false; }
  void withdraw_sent(ActorId, const std::string&, const StatePtr& result) override {
    std::lock_guard lock(mutex_);
    for (auto it = inflight_.begin(); it != inflight_.end(); ++it) {
      if (it->second.result == result) {
        inflight_.erase(it);
        ++withdrawn_;
        return;
      }
    }
  }
  void kill_actor(ActorId, bool) override {}

  // The host answers every call in flight with its argument.
  void answer_all() {
    std::vector<std::pair<StatePtr, int>> answers;
    {
      std::lock_guard lock(mutex_);
      for (auto& [id, flight] : inflight_) answers.emplace_back(flight.result, flight.arg);
      inflight_.clear();
    }
    for (auto& [result, arg] : answers) result->set_value(make_value<int>(arg));
  }
  std::vector<Sent> log() {
    std::lock_guard lock(mutex_);
    return log_;
  }
  std::size_t in_flight() {
    std::lock_guard lock(mutex_);
    return inflight_.size();
  }
  int withdrawn() {
    std::lock_guard lock(mutex_);
    return withdrawn_;
  }
  bool wait_sent(std::size_t count, std::chrono::milliseconds timeout = 20s) {
    std::unique_lock lock(mutex_);
    return sent_.wait_for(lock, timeout, [&] { return log_.size() >= count; });
  }

  std::function<void()> during_send;  // runs inside send_call, before it records
  std::atomic<bool> running_{true};

 private:
  struct Flight {
    std::uint32_t incarnation;
    StatePtr result;
    std::optional<CallSpec> spec;
    int arg;
  };
  ThreadPool pool_;
  std::shared_ptr<DeadlineQueue> deadlines_;
  std::mutex mutex_;
  std::condition_variable sent_;
  std::map<std::uint64_t, Flight> inflight_;  // in send order
  std::uint64_t next_id_ = 0;
  std::vector<Sent> log_;
  int withdrawn_ = 0;
};

class RemoteActorTest : public ::testing::Test {
 protected:
  std::shared_ptr<RemoteActor> make(RemoteActor::Policy policy = {}) {
    const ClassInfo* cls = find_class("remote::Echo");
    EXPECT_NE(cls, nullptr);
    return std::make_shared<RemoteActor>(sender_, ActorId::random(), *cls, "echo", true, policy);
  }
  static ActorHandle<Echo> handle(const std::shared_ptr<RemoteActor>& actor) { return ActorHandle<Echo>(actor); }
  static std::string error_of(const ObjectRef<int>& ref) {
    if (!ref.wait_for(20s)) return "hung";
    try {
      (void)ref.get();
      return "value";
    } catch (const Error& e) {
      return std::string(to_string(e.code())) + ": " + e.message();
    }
  }

  FakeSender sender_;
};

TEST_F(RemoteActorTest, CallsWaitWhilePendingAndLeaveInOrderOnceAlive) {
  auto actor = make();
  std::vector<ObjectRef<int>> refs;
  for (int i = 0; i < 5; ++i) refs.push_back(handle(actor).call<&Echo::echo>(i));
  EXPECT_TRUE(sender_.log().empty());
  actor->on_update(ActorState::alive, "tcp://127.0.0.1:9", 0, "");
  ASSERT_TRUE(sender_.wait_sent(5));
  auto log = sender_.log();
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(log[static_cast<std::size_t>(i)].arg, i);
    EXPECT_EQ(log[static_cast<std::size_t>(i)].seq, static_cast<std::uint64_t>(i));
  }
  sender_.answer_all();
  for (int i = 0; i < 5; ++i) EXPECT_EQ(refs[static_cast<std::size_t>(i)].get(20s), i);
  EXPECT_EQ(actor->pending(), 0u);
}

TEST_F(RemoteActorTest, ARestartFailsTheCallsInFlightSayingItRestarted) {
  auto actor = make();
  actor->on_update(ActorState::alive, "tcp://127.0.0.1:9", 0, "");
  auto sent = handle(actor).call<&Echo::echo>(1);
  ASSERT_TRUE(sender_.wait_sent(1));
  actor->on_update(ActorState::restarting, "", 1, "its process exited");
  const std::string error = error_of(sent);
  EXPECT_NE(error.find("actor_died"), std::string::npos) << error;
  EXPECT_NE(error.find("restarted"), std::string::npos) << error;
  EXPECT_EQ(sender_.in_flight(), 0u);
  EXPECT_EQ(actor->restarts(), 1);
  // Calls made while it restarts wait for the new incarnation.
  auto next = handle(actor).call<&Echo::echo>(2);
  actor->on_update(ActorState::alive, "tcp://127.0.0.1:10", 1, "");
  ASSERT_TRUE(sender_.wait_sent(2));
  EXPECT_EQ(sender_.log()[1].incarnation, 1u);
  EXPECT_EQ(sender_.log()[1].seq, 0u) << "seqs restart with each incarnation";
  sender_.answer_all();
  EXPECT_EQ(next.get(20s), 2);
}

TEST_F(RemoteActorTest, WithRetriesCallsInFlightAreResentFirstInOrderWithFreshSeqs) {
  auto actor = make({.max_task_retries = 1});
  actor->on_update(ActorState::alive, "tcp://127.0.0.1:9", 0, "");
  std::vector<ObjectRef<int>> refs;
  for (int i = 0; i < 4; ++i) refs.push_back(handle(actor).call<&Echo::echo>(i));
  ASSERT_TRUE(sender_.wait_sent(4));
  actor->on_update(ActorState::restarting, "", 1, "killed");
  for (int i = 4; i < 6; ++i) refs.push_back(handle(actor).call<&Echo::echo>(i));  // queued meanwhile
  actor->on_update(ActorState::alive, "tcp://127.0.0.1:10", 1, "");
  ASSERT_TRUE(sender_.wait_sent(10));
  auto log = sender_.log();
  for (std::size_t i = 4; i < 10; ++i) {
    EXPECT_EQ(log[i].incarnation, 1u);
    EXPECT_EQ(log[i].seq, i - 4);
    EXPECT_EQ(log[i].arg, static_cast<int>(i - 4)) << "resent calls go first, in their order";
  }
  sender_.answer_all();
  for (int i = 0; i < 6; ++i) EXPECT_EQ(refs[static_cast<std::size_t>(i)].get(20s), i);
  // Its one retry is used: the next restart fails it.
  auto once = handle(actor).call<&Echo::echo>(7);
  ASSERT_TRUE(sender_.wait_sent(11));
  actor->on_update(ActorState::alive, "tcp://127.0.0.1:11", 2, "");  // RESTARTING never seen here
  ASSERT_TRUE(sender_.wait_sent(12));
  actor->on_update(ActorState::alive, "tcp://127.0.0.1:12", 3, "");
  EXPECT_NE(error_of(once).find("restarted"), std::string::npos);
}

TEST_F(RemoteActorTest, UnlimitedRetriesSurviveManyRestarts) {
  auto actor = make({.max_task_retries = -1});
  actor->on_update(ActorState::alive, "tcp://127.0.0.1:9", 0, "");
  auto ref = handle(actor).call<&Echo::echo>(42);
  for (std::uint32_t incarnation = 1; incarnation <= 5; ++incarnation) {
    ASSERT_TRUE(sender_.wait_sent(incarnation));
    actor->on_update(ActorState::alive, "tcp://127.0.0.1:9", incarnation, "");
  }
  ASSERT_TRUE(sender_.wait_sent(6));
  sender_.answer_all();
  EXPECT_EQ(ref.get(20s), 42);
}

TEST_F(RemoteActorTest, ACallOnItsWayWhileTheActorRestartsIsTakenBackToo) {
  auto actor = make({.max_task_retries = 1});
  actor->on_update(ActorState::alive, "tcp://127.0.0.1:9", 0, "");
  // The restart is handled while the call is being sent (after the pump
  // let go of the lock, before the call is recorded in flight).
  std::atomic<bool> once{true};
  sender_.during_send = [&] {
    if (once.exchange(false)) {
      std::thread([&] { actor->on_update(ActorState::restarting, "", 1, "killed"); }).join();
    }
  };
  auto ref = handle(actor).call<&Echo::echo>(5);
  ASSERT_TRUE(sender_.wait_sent(1));
  sender_.during_send = nullptr;
  EXPECT_EQ(sender_.in_flight(), 0u) << "the call sent to the old incarnation was not taken back";
  actor->on_update(ActorState::alive, "tcp://127.0.0.1:10", 1, "");
  ASSERT_TRUE(sender_.wait_sent(2));
  EXPECT_EQ(sender_.log()[1].incarnation, 1u);
  sender_.answer_all();
  EXPECT_EQ(ref.get(20s), 5);
}

TEST_F(RemoteActorTest, UpdatesHandledOutOfOrderAreIgnored) {
  auto actor = make();
  actor->on_update(ActorState::alive, "tcp://127.0.0.1:10", 2, "");
  actor->on_update(ActorState::restarting, "", 1, "late");
  actor->on_update(ActorState::alive, "tcp://127.0.0.1:9", 1, "");
  EXPECT_EQ(actor->state(), ActorState::alive);
  EXPECT_EQ(actor->incarnation(), 2u);
  auto ref = handle(actor).call<&Echo::echo>(1);
  ASSERT_TRUE(sender_.wait_sent(1));
  EXPECT_EQ(sender_.log()[0].incarnation, 2u);
  sender_.answer_all();
  EXPECT_EQ(ref.get(20s), 1);
}

TEST_F(RemoteActorTest, DeathFailsEverythingQueuedOrInFlight) {
  auto actor = make({.max_task_retries = -1});
  actor->on_update(ActorState::alive, "tcp://127.0.0.1:9", 0, "");
  auto sent = handle(actor).call<&Echo::echo>(1);
  ASSERT_TRUE(sender_.wait_sent(1));
  actor->on_update(ActorState::restarting, "", 1, "killed");
  auto queued = handle(actor).call<&Echo::echo>(2);
  actor->on_update(ActorState::dead, "", 1, "no restarts left");
  EXPECT_NE(error_of(sent).find("actor_died"), std::string::npos);
  EXPECT_NE(error_of(queued).find("no restarts left"), std::string::npos);
  EXPECT_NE(error_of(handle(actor).call<&Echo::echo>(3)).find("actor_died"), std::string::npos);
  EXPECT_EQ(actor->pending(), 0u);
}

TEST_F(RemoteActorTest, ACallSubmittedWhileADeathIsHandledNeverHangs) {
  for (int round = 0; round < 200; ++round) {
    auto actor = make();
    actor->on_update(ActorState::alive, "tcp://127.0.0.1:9", 0, "");
    std::vector<ObjectRef<int>> refs;
    std::atomic<bool> go{false};
    std::thread submitter([&] {
      while (!go.load()) std::this_thread::yield();
      for (int i = 0; i < 20; ++i) refs.push_back(handle(actor).call<&Echo::echo>(i));
    });
    go = true;
    if (round % 2) std::this_thread::yield();
    actor->on_update(ActorState::dead, "", 0, "killed");
    submitter.join();
    for (auto& ref : refs) {
      const std::string error = error_of(ref);  // nothing answers: each must fail
      ASSERT_NE(error.find("actor_died"), std::string::npos) << "round " << round << ": " << error;
    }
    EXPECT_EQ(sender_.in_flight(), 0u);
  }
}

TEST_F(RemoteActorTest, FailuresCompleteOutsideTheLockSoCallbacksMayUseTheActor) {
  auto actor = make();
  actor->on_update(ActorState::alive, "tcp://127.0.0.1:9", 0, "");
  auto ref = handle(actor).call<&Echo::echo>(1);
  ASSERT_TRUE(sender_.wait_sent(1));
  std::atomic<bool> called{false};
  ref.state()->on_complete([&] {
    (void)actor->state();                             // takes the actor's lock
    (void)handle(actor).call<&Echo::echo>(2);         // and submits (fails: dead)
    called = true;
  });
  std::thread death([&] { actor->on_update(ActorState::dead, "", 0, "killed"); });
  death.join();  // would deadlock if the failure ran under the actor's lock
  EXPECT_TRUE(called.load());
}

TEST_F(RemoteActorTest, ASentCallPastItsDeadlineFailsWithTimeoutAndIsWithdrawn) {
  auto actor = make();
  actor->on_update(ActorState::alive, "tcp://127.0.0.1:9", 0, "");
  auto ref = handle(actor).with_options({.timeout = 100ms}).call<&Echo::echo>(1);
  ASSERT_TRUE(sender_.wait_sent(1));
  EXPECT_NE(error_of(ref).find("timeout"), std::string::npos);
  EXPECT_TRUE(eventually([&] { return sender_.withdrawn() == 1; }));
  EXPECT_EQ(sender_.in_flight(), 0u);
}

TEST_F(RemoteActorTest, AnUnsentCallPastItsDeadlineFailsWithTimeoutAndIsNeverSent) {
  auto actor = make();  // pending: nothing is sent
  auto ref = handle(actor).with_options({.timeout = 100ms}).call<&Echo::echo>(1);
  EXPECT_NE(error_of(ref).find("timeout"), std::string::npos);
  actor->on_update(ActorState::alive, "tcp://127.0.0.1:9", 0, "");
  auto next = handle(actor).call<&Echo::echo>(2);
  ASSERT_TRUE(sender_.wait_sent(1));
  EXPECT_EQ(sender_.log().size(), 1u);
  EXPECT_EQ(sender_.log()[0].arg, 2);
  EXPECT_EQ(sender_.log()[0].seq, 0u) << "a call never sent takes no seq";
  sender_.answer_all();
  EXPECT_EQ(next.get(20s), 2);
}

TEST_F(RemoteActorTest, PastMaxPendingCallsTheFailPolicyFailsWithOverloaded) {
  auto actor = make({.max_pending_calls = 3, .backpressure = Backpressure::fail});
  std::vector<ObjectRef<int>> refs;
  for (int i = 0; i < 3; ++i) refs.push_back(handle(actor).call<&Echo::echo>(i));  // queued (pending actor)
  auto refused = handle(actor).call<&Echo::echo>(3);
  ASSERT_TRUE(refused.is_ready());
  EXPECT_THROW((void)refused.get(), OverloadedError);
  actor->on_update(ActorState::alive, "tcp://127.0.0.1:9", 0, "");
  ASSERT_TRUE(sender_.wait_sent(3));
  auto still = handle(actor).call<&Echo::echo>(4);  // sent counts as pending too
  EXPECT_THROW((void)still.get(), OverloadedError);
  sender_.answer_all();
  for (auto& ref : refs) (void)ref.get(20s);
  EXPECT_EQ(actor->pending(), 0u);
  auto room = handle(actor).call<&Echo::echo>(5);
  ASSERT_TRUE(sender_.wait_sent(4));
  sender_.answer_all();
  EXPECT_EQ(room.get(20s), 5);
}

TEST_F(RemoteActorTest, PastMaxPendingCallsTheBlockPolicyWaitsForRoom) {
  auto actor = make({.max_pending_calls = 2});
  actor->on_update(ActorState::alive, "tcp://127.0.0.1:9", 0, "");
  auto a = handle(actor).call<&Echo::echo>(1);
  auto b = handle(actor).call<&Echo::echo>(2);
  ASSERT_TRUE(sender_.wait_sent(2));
  std::atomic<bool> returned{false};
  ObjectRef<int> c;
  std::thread caller([&] {
    c = handle(actor).call<&Echo::echo>(3);
    returned = true;
  });
  std::this_thread::sleep_for(300ms);
  EXPECT_FALSE(returned.load()) << "the third call did not wait for room";
  sender_.answer_all();  // room
  caller.join();
  ASSERT_TRUE(sender_.wait_sent(3));
  sender_.answer_all();
  EXPECT_EQ(c.get(20s), 3);
}

TEST_F(RemoteActorTest, ACallWaitingForRoomFailsAtItsDeadlineOrAtDeath) {
  auto actor = make({.max_pending_calls = 1});
  auto first = handle(actor).call<&Echo::echo>(1);
  auto timed = handle(actor).with_options({.timeout = 200ms}).call<&Echo::echo>(2);  // waits, then times out
  EXPECT_NE(error_of(timed).find("timeout"), std::string::npos);
  ObjectRef<int> blocked;
  std::thread caller([&] { blocked = handle(actor).call<&Echo::echo>(3); });
  std::this_thread::sleep_for(100ms);
  actor->on_update(ActorState::dead, "", 0, "killed");
  caller.join();
  EXPECT_NE(error_of(blocked).find("actor_died"), std::string::npos);
  EXPECT_NE(error_of(first).find("actor_died"), std::string::npos);
}

}  // namespace
}  // namespace troupe::detail
