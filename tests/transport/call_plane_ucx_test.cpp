// TROUPE_TEST_LABELS: fast
// The call plane over UCX (CallPlane::attach_ucx): requests to a peer whose
// UCX address is known go as active messages, the callee answers over UCX
// because the stream's hello named the caller, each caller's messages keep
// their order, and peers without a UCX address (or a process that only
// receives over UCX) stay on ZeroMQ.
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <capnp/message.h>
#include <gtest/gtest.h>

#include "troupe/transport/internal/channels.hpp"
#include "troupe/transport/schema/call.capnp.h"
#include "troupe/transport/ucx.hpp"

namespace troupe::transport {
namespace {

using namespace std::chrono_literals;

// One process's call plane: two threads run its io_context (as the
// runtime's pool does), so dispatch order is the plane's doing, not luck.
struct Process {
  explicit Process(bool ucx = true, bool send_over_ucx = true) {
    if (ucx) {
      UcxOptions options;
      options.tls = "posix,sysv,cma,self";
      data = std::make_shared<DataPlane>(UcxWorker::create(UcxContext::create(options)));
    }
    calls = std::make_unique<CallPlane>("127.0.0.1", io, [this](ReceivedMessage& m) { on_message(m); });
    calls->start();
    if (data) calls->attach_ucx(data, send_over_ucx);
    for (int i = 0; i < 2; ++i) threads.emplace_back([this] { io.run(); });
  }
  ~Process() {
    calls->stop();
    guard.reset();
    io.stop();
    for (auto& t : threads) t.join();
  }

  void on_message(ReceivedMessage& m) {
    auto root = m.root<wire::CallMessage>();
    if (root.isRequest()) {
      auto request = root.getRequest();
      {
        std::lock_guard lock(mutex);
        requests.push_back(request.getSeq());
      }
      capnp::MallocMessageBuilder reply;
      reply.initRoot<wire::CallMessage>().initReply().setCallId(request.getSeq());
      calls->send(request.getReturnTo(), reply);
    } else if (root.isReply()) {
      std::lock_guard lock(mutex);
      replies.push_back(root.getReply().getCallId());
    }
    changed.notify_all();
  }

  void send_requests(const std::string& to, std::uint64_t count) {
    for (std::uint64_t seq = 0; seq < count; ++seq) {
      capnp::MallocMessageBuilder message;
      auto request = message.initRoot<wire::CallMessage>().initRequest();
      request.setSeq(seq);
      request.setCallId(seq);
      request.setMethod("echo");
      request.setReturnTo(calls->address());
      calls->send(to, message);
    }
  }

  bool wait(std::vector<std::uint64_t>& list, std::size_t count, std::chrono::milliseconds timeout = 20s) {
    std::unique_lock lock(mutex);
    return changed.wait_for(lock, timeout, [&] { return list.size() >= count; });
  }
  std::uint64_t ucx_messages_received() { return data ? data->stats().get().messages_received : 0; }

  boost::asio::io_context io;
  boost::asio::executor_work_guard<boost::asio::io_context::executor_type> guard{io.get_executor()};
  std::shared_ptr<DataPlane> data;
  std::unique_ptr<CallPlane> calls;
  std::vector<std::thread> threads;
  std::mutex mutex;
  std::condition_variable changed;
  std::vector<std::uint64_t> requests, replies;
};

bool in_order(const std::vector<std::uint64_t>& list) {
  for (std::size_t i = 0; i < list.size(); ++i)
    if (list[i] != i) return false;
  return true;
}

TEST(CallPlaneOverUcx, CallsGoOverUcxInOrderAndTheCalleeAnswersOverUcx) {
  Process caller, callee;
  caller.calls->note_ucx_peer(callee.calls->address(), callee.data->address());
  EXPECT_TRUE(caller.calls->over_ucx(callee.calls->address()));
  EXPECT_FALSE(callee.calls->over_ucx(caller.calls->address())) << "not before the caller's hello";
  constexpr std::uint64_t kCalls = 20000;
  caller.send_requests(callee.calls->address(), kCalls);
  ASSERT_TRUE(callee.wait(callee.requests, kCalls));
  ASSERT_TRUE(caller.wait(caller.replies, kCalls));
  std::lock_guard a(caller.mutex), b(callee.mutex);
  EXPECT_TRUE(in_order(callee.requests)) << "a caller's requests were reordered";
  EXPECT_TRUE(in_order(caller.replies)) << "a callee's replies were reordered";
  EXPECT_TRUE(callee.calls->over_ucx(caller.calls->address())) << "the hello named the caller";
  EXPECT_EQ(callee.ucx_messages_received(), kCalls);
  EXPECT_EQ(caller.ucx_messages_received(), kCalls);
}

TEST(CallPlaneOverUcx, APeerWithoutAUcxAddressStaysOnZeroMq) {
  Process caller, callee;
  EXPECT_FALSE(caller.calls->over_ucx(callee.calls->address()));
  caller.send_requests(callee.calls->address(), 100);
  ASSERT_TRUE(caller.wait(caller.replies, 100));
  EXPECT_EQ(callee.ucx_messages_received(), 0u);
  EXPECT_EQ(caller.ucx_messages_received(), 0u);
}

TEST(CallPlaneOverUcx, AProcessWithoutUcxIsCalledOverZeroMq) {
  Process caller, callee(/*ucx=*/false);
  caller.send_requests(callee.calls->address(), 100);
  ASSERT_TRUE(caller.wait(caller.replies, 100));
  std::lock_guard lock(caller.mutex);
  EXPECT_TRUE(in_order(caller.replies));
}

// TROUPE_CALL_PLANE=zmq in the callee: it still takes calls sent over UCX,
// and answers over ZeroMQ.
TEST(CallPlaneOverUcx, AReceiveOnlyProcessTakesUcxCallsAndAnswersOverZeroMq) {
  Process caller, callee(/*ucx=*/true, /*send_over_ucx=*/false);
  caller.calls->note_ucx_peer(callee.calls->address(), callee.data->address());
  caller.send_requests(callee.calls->address(), 500);
  ASSERT_TRUE(caller.wait(caller.replies, 500));
  EXPECT_EQ(callee.ucx_messages_received(), 500u);
  EXPECT_EQ(caller.ucx_messages_received(), 0u);
  EXPECT_FALSE(callee.calls->over_ucx(caller.calls->address()));
  std::lock_guard lock(caller.mutex);
  EXPECT_TRUE(in_order(caller.replies));
}

}  // namespace
}  // namespace troupe::transport
