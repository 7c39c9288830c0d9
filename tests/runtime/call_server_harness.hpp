// An actor host's call server in one process, for tests and fuzz targets:
// a registered test actor (Probe) hosted by an ActorHost built in process,
// the CallServer that serves it, and its replies captured instead of sent.
// No head, no sockets, no data plane (TROUPE_DATA_PLANE=zmq; fetches from
// other processes fail at once). Include it in one file of a binary: it
// registers Probe.
#pragma once

#include <capnp/message.h>
#include <capnp/serialize.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "cluster/actor_host.hpp"
#include "cluster/call_server.hpp"
#include "cluster/object_table.hpp"
#include "cluster/object_transfer.hpp"
#include "cluster/outbound_calls.hpp"
#include "executor/local_runtime.hpp"
#include "thread_pool.hpp"
#include "troupe/runtime/actor.hpp"
#include "troupe/runtime/error.hpp"
#include "troupe/transport/framing.hpp"
#include "troupe/transport/schema/call.capnp.h"

namespace troupe::testing {

// The hosted actor: methods over the argument types a fuzzer should reach
// (strings, vectors, maps, nesting, tensors).
class Probe {
 public:
  explicit Probe(int base) : base_(base) {}
  int add(int x) { return base_ + x; }
  std::string concat(std::string head, std::vector<std::string> tail) {
    for (auto& part : tail) head += part;
    return head;
  }
  std::size_t count(std::map<std::string, std::vector<std::int64_t>> table) {
    std::size_t n = 0;
    for (auto& [key, values] : table) n += key.size() + values.size();
    return n;
  }
  std::size_t nested(std::vector<std::vector<std::string>> rows) {
    std::size_t n = 0;
    for (auto& row : rows) n += row.size();
    return n;
  }
  std::int64_t elements(Tensor tensor) { return tensor.defined() ? tensor.numel() : -1; }
  void nothing() {}
  int nap(int ms) {
    std::this_thread::sleep_for(std::chrono::milliseconds(ms));
    return ms;
  }

 private:
  int base_;
};

}  // namespace troupe::testing

TROUPE_ACTOR(troupe::testing::Probe, (int), add, concat, count, nested, elements, nothing, nap);

namespace troupe::testing {

class CallServerHarness {
 public:
  struct Reply {
    std::string address;
    kj::Array<capnp::word> words;
  };

  static constexpr const char* kReturnTo = "tcp://127.0.0.1:1";
  static constexpr const char* kOwnAddress = "tcp://127.0.0.1:2";

  // Fixed ids, so that seeds written by one process (tests/fuzz) address
  // the harness of another.
  static constexpr ActorId kActorId{0x5eed5eed, 0xac70};
  static constexpr WorkerId kCallerId{0xca11e5, 1};

  explicit CallServerHarness(int base = 5, std::uint32_t incarnation = 1, ActorOptions actor_options = {})
      : actor_id_(kActorId), incarnation_(incarnation) {
    ::setenv("TROUPE_DATA_PLANE", "zmq", 1);
    InitOptions options;
    options.num_threads = 2;
    runtime_ = std::make_shared<detail::LocalRuntime>(options);
    const detail::ClassInfo* cls = detail::find_class("troupe::testing::Probe");
    if (!cls) throw Error(Errc::internal, "Probe is not registered");
    std::vector<detail::ArgSlot> ctor;
    ctor.push_back(detail::ArgSlot{std::make_shared<detail::EncodedValue>(serialize(base)), nullptr});
    actor_ = runtime_->create_actor_as(actor_id_, *cls, std::move(ctor), std::move(actor_options));
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (actor_->state() == ActorState::pending && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    if (actor_->state() != ActorState::alive) throw Error(Errc::internal, "Probe did not start");
    host_ = std::make_shared<detail::ActorHost>(actor_id_, incarnation_, runtime_, actor_);
    pool_ = std::make_shared<detail::ThreadPool>(1);
    table_ = std::make_shared<detail::ObjectTable>([](const ObjectId&) {});
    transfer_ = std::make_shared<detail::ObjectTransfer>(pool_, table_, std::chrono::milliseconds(2000));
    transfer_->start(kOwnAddress, [](const ObjectId& id, const std::string&) {
      auto state = std::make_shared<detail::ObjectState>(id);
      state->set_error(make_error(Errc::object_lost, "no other process in this harness"));
      return state;
    });
    outbound_ = std::make_shared<detail::OutboundCalls>(WorkerId::random(), nullptr, table_, transfer_);
    reset_server();
  }

  // A fresh call server over the same actor (every caller's seq restarts).
  void reset_server() {
    server_ = std::make_shared<detail::CallServer>(
        [this](const std::string& address, capnp::MallocMessageBuilder& message) {
          std::lock_guard lock(mutex_);
          replies_.push_back(Reply{address, capnp::messageToFlatArray(message)});
          arrived_.notify_all();
        },
        table_, transfer_, outbound_);
    server_->set_host(host_);
  }

  ~CallServerHarness() {
    runtime_->shutdown();
    transfer_->stop();
  }

  const ActorId& actor_id() const { return actor_id_; }
  std::uint32_t incarnation() const { return incarnation_; }
  detail::CallServer& server() { return *server_; }
  detail::ObjectTable& table() { return *table_; }

  // A frame as it would arrive; framing errors are thrown as on receipt.
  // As on the call plane, a call handed to the idle actor runs on this
  // thread once the message is dispatched (DeferScope), so its reply is
  // usually captured when this returns.
  void deliver_bytes(const void* data, std::size_t size) {
    auto received = transport::ReceivedMessage::copy_of(data, size);
    detail::DeferScope defer(runtime_->pool());
    server_->on_call_message(received);
    defer.run();
  }
  void deliver(capnp::MallocMessageBuilder& message) {
    auto words = capnp::messageToFlatArray(message);
    deliver_bytes(words.asBytes().begin(), words.asBytes().size());
  }
  // As deliver(), but a call the actor takes runs on the runtime's pool,
  // not on this thread (for calls that take long).
  void deliver_posted(capnp::MallocMessageBuilder& message) {
    auto words = capnp::messageToFlatArray(message);
    auto received = transport::ReceivedMessage::copy_of(words.asBytes().begin(), words.asBytes().size());
    server_->on_call_message(received);
  }

  // A well-formed call request for method `method` with plain `args`
  // (encoded values), numbered with this caller's next seq.
  void build_call(capnp::MallocMessageBuilder& message, const std::string& method,
                  const std::vector<std::string>& args, std::uint64_t call_id) {
    auto request = message.initRoot<wire::CallMessage>().initRequest();
    request.setCallId(call_id);
    to_wire(request.initActorId(), actor_id_);
    request.setActorIncarnation(incarnation_);
    to_wire(request.initCallerId(), caller_);
    request.setSeq(next_seq_);
    request.setMethod(method);
    request.setReturnTo(kReturnTo);
    to_wire(request.initResultId(), ObjectId::random());
    auto list = request.initArgs(static_cast<unsigned>(args.size()));
    for (unsigned i = 0; i < args.size(); ++i)
      list[i].setValue(capnp::Data::Reader(reinterpret_cast<const capnp::byte*>(args[i].data()), args[i].size()));
  }
  // The seq the next build_call uses; advance it once a call was taken.
  void took_seq() { ++next_seq_; }

  // Waits (bounded) until `count` replies arrived; takes them.
  std::vector<Reply> take_replies(std::size_t count, std::chrono::milliseconds timeout = std::chrono::seconds(20)) {
    std::unique_lock lock(mutex_);
    arrived_.wait_for(lock, timeout, [&] { return replies_.size() >= count; });
    std::vector<Reply> out;
    out.swap(replies_);
    return out;
  }
  std::size_t reply_count() {
    std::lock_guard lock(mutex_);
    return replies_.size();
  }
  void clear_replies() {
    std::lock_guard lock(mutex_);
    replies_.clear();
  }

 private:
  ActorId actor_id_;
  std::uint32_t incarnation_;
  WorkerId caller_ = kCallerId;
  std::uint64_t next_seq_ = 0;
  std::shared_ptr<detail::LocalRuntime> runtime_;
  std::shared_ptr<detail::LocalActor> actor_;
  std::shared_ptr<detail::ActorHost> host_;
  std::shared_ptr<detail::ThreadPool> pool_;
  std::shared_ptr<detail::ObjectTable> table_;
  std::shared_ptr<detail::ObjectTransfer> transfer_;
  std::shared_ptr<detail::OutboundCalls> outbound_;
  std::shared_ptr<detail::CallServer> server_;
  std::mutex mutex_;
  std::condition_variable arrived_;
  std::vector<Reply> replies_;
};

}  // namespace troupe::testing
