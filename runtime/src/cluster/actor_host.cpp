#include "actor_host.hpp"

#include <pthread.h>
#include <signal.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <thread>

#include "executor/local_runtime.hpp"
#include "troupe/runtime/error.hpp"
#include "troupe/runtime/logging.hpp"
#include "troupe/runtime/serialization.hpp"
#include "troupe/transport/framing.hpp"
#include "troupe/transport/schema/control.capnp.h"
#include "troupe/transport/ucx.hpp"

namespace troupe::detail {
namespace {

// The node manager that started this process (TROUPE_NODE_MANAGER_PID), or
// 0 when this is no actor host.
pid_t node_manager_pid() {
  if (std::getenv("TROUPE_ACTOR_SPEC") == nullptr) return 0;
  const char* text = std::getenv("TROUPE_NODE_MANAGER_PID");
  return text != nullptr ? static_cast<pid_t>(std::atol(text)) : 0;
}

// An actor host ends with its node manager, whatever ended that: the kernel
// sends SIGKILL when the parent goes (PR_SET_PDEATHSIG), set as early as
// this library's static initialisation; the parent is checked after it is
// set, since one that died before would never send it (the host is then a
// child of init or of a subreaper). posix_spawn offers no hook to set it
// before exec. Runs before main(), before any thread.
void die_with_node_manager() {
  const pid_t parent = node_manager_pid();
  if (parent <= 0) return;
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (::getppid() != parent) ::_exit(1);
}
[[maybe_unused]] const bool g_die_with_node_manager = (die_with_node_manager(), true);

// The same check, periodically (a belt to the kernel's braces: a parent
// whose thread that spawned us ended, or a reparenting the signal missed).
void watch_node_manager() {
  const pid_t parent = node_manager_pid();
  if (parent <= 0) return;
  std::thread([parent] {
    while (true) {
      std::this_thread::sleep_for(std::chrono::milliseconds(250));
      if (::getppid() != parent) {
        TROUPE_LOG_ERROR("actor host: its node manager (pid {}) is gone; exiting", parent);
        std::fflush(nullptr);
        std::_Exit(1);
      }
    }
  }).detach();
}

}  // namespace

ActorHost::ActorHost(const std::string& spec_path) {
  // Die with the node manager that started us (also set at static init).
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  // The node manager's kill: SIGTERM, answered at the UCX progress thread's
  // next safe point by a SIGKILL of our own, so that no peer's shared-memory
  // FIFO is left with a half-written message (node_manager.cpp, stop_host).
  transport::UcxWorker::exit_at_safe_points_on(SIGTERM);
  watch_node_manager();
  spec_bytes_ = read_whole_file(spec_path);
  auto message = transport::ReceivedMessage::copy_of(spec_bytes_.data(), spec_bytes_.size());
  auto start = message.root<wire::StartActor>();
  auto spec = start.getSpec();
  actor_id_ = troupe::from_wire<ActorId>(spec.getActorId());
  incarnation_ = start.getIncarnation();
  job_id_ = troupe::from_wire<JobId>(spec.getJobId());
  // issue 13 (cluster): what troupe::actor_incarnation() and node_gpu_ids() say.
  auto& hosted = hosted_actor_info();
  hosted.hosted = true;
  hosted.incarnation = static_cast<int>(incarnation_);
  hosted.node_gpus.clear();
  for (auto index : start.getGpuIndices()) hosted.node_gpus.push_back(static_cast<int>(index));
  if (const char* node = std::getenv("TROUPE_NODE_ID"); node && *node) {
    if (auto id = NodeId::parse(node)) node_id_ = *id;
  }
}

ActorHost::ActorHost(ActorId actor_id, std::uint32_t incarnation, std::shared_ptr<LocalRuntime> runtime,
                     std::shared_ptr<LocalActor> actor)
    : actor_id_(actor_id),
      incarnation_(incarnation),
      host_runtime_(std::move(runtime)),
      hosted_(std::move(actor)),
      published_(hosted_ != nullptr) {}

ActorHost::~ActorHost() = default;

void ActorHost::start_actor(HeadClient& head, const std::string& call_address, const std::string& data_address) {
  auto message = transport::ReceivedMessage::copy_of(spec_bytes_.data(), spec_bytes_.size());
  auto start = message.root<wire::StartActor>();
  auto spec = start.getSpec();
  std::string failure;
  const ClassInfo* cls = find_class(spec.getClassName().cStr());
  if (!cls) {
    failure = std::string("actor class '") + spec.getClassName().cStr() + "' is not registered in this binary";
  } else {
    InitOptions local;
    local.num_threads = std::max<int>(2, static_cast<int>(spec.getMaxConcurrency()) + 1);
    const auto gpus = start.getGpuIndices().size();
    if (gpus > 0) local.gpus = "visible:" + std::to_string(gpus);
    host_runtime_ = std::make_shared<LocalRuntime>(local);
    std::vector<ArgSlot> slots;
    try {
      auto args = deserialize<std::vector<std::string>>(
          std::string_view(reinterpret_cast<const char*>(spec.getCtorArgs().begin()), spec.getCtorArgs().size()));
      for (auto& arg : args) slots.push_back(ArgSlot{std::make_shared<EncodedValue>(std::move(arg)), nullptr});
      ActorOptions options;
      options.max_concurrency = static_cast<int>(std::max<std::uint32_t>(1, spec.getMaxConcurrency()));
      // Each caller's queue here is bounded by the actor's max_pending_calls
      // (its callers bound themselves by theirs): past it, `overloaded`.
      if (spec.getMaxPendingCalls() > 0) options.max_pending_calls = spec.getMaxPendingCalls();
      options.detached = spec.getDetached();
      if (gpus > 0) options.resources = {{"GPU", static_cast<double>(gpus)}};
      auto actor = host_runtime_->create_actor_as(actor_id_, *cls, std::move(slots), options);
      // troupe::exit_actor(): the head hears it is DEAD for good, then this
      // process ends, after a pause that lets the replies already queued
      // on the call plane (the exiting call's result, the calls refused
      // meanwhile) leave.
      actor->set_exit_hook([this, &head, call_address, data_address](const std::string& reason) {
        std::thread([this, &head, call_address, data_address, reason] {
          try {
            report(head, reason, call_address, data_address);
          } catch (const std::exception& error) {
            TROUPE_LOG_ERROR("actor host for {}: reporting its exit: {}", actor_id_.hex(), error.what());
          }
          std::this_thread::sleep_for(std::chrono::milliseconds(500));
          std::fflush(nullptr);
          std::_Exit(0);
        }).detach();
      });
      while (actor->state() == ActorState::pending) std::this_thread::sleep_for(std::chrono::milliseconds(1));
      if (actor->state() == ActorState::dead) failure = actor->status_message();
      hosted_ = std::move(actor);
      // Before the head hears ALIVE, so a caller that learns the address
      // from the head finds the actor.
      published_.store(true, std::memory_order_release);
    } catch (const std::exception& e) {
      failure = e.what();
    }
  }
  report(head, failure, call_address, data_address);
  if (!failure.empty()) {
    TROUPE_LOG_ERROR("actor host failed to start: {}", failure);
    std::fflush(nullptr);
    std::_Exit(3);
  }
  TROUPE_LOG_INFO("actor host for {} serving at {}", actor_id_.hex(), call_address);
}

void ActorHost::report(HeadClient& head, const std::string& failure, const std::string& call_address,
                       const std::string& data_address) {
  auto message = transport::ReceivedMessage::copy_of(spec_bytes_.data(), spec_bytes_.size());
  auto start = message.root<wire::StartActor>();
  auto spec = start.getSpec();
  capnp::MallocMessageBuilder update;
  auto body = update.initRoot<wire::ControlMessage>().initActorUpdate();
  troupe::to_wire(body.initActorId(), actor_id_);
  troupe::to_wire(body.initNodeId(), node_id_);
  body.setIncarnation(incarnation_);
  body.setHostKey(start.getHostKey());  // proves to the head that we are the host it started
  body.setClassName(spec.getClassName());
  body.setName(spec.getName());
  if (failure.empty()) {
    body.setState(wire::ActorState::ALIVE);
    body.setAddress(call_address);
    if (!data_address.empty()) body.setDataAddress(as_data(data_address));
  } else {
    body.setState(wire::ActorState::DEAD);
    auto reason = body.initReason();
    reason.setCode(wire_code(Errc::actor_died));
    reason.setMessage(failure);
  }
  (void)head.request(update);
}

void ActorHost::shutdown() {
  if (host_runtime_) host_runtime_->shutdown();
}

void ActorHost::serve_forever() {
  // SIGTERM has its handler (the constructor): it ends the process at a
  // safe point, on whichever thread it lands.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  int signal = 0;
  sigwait(&signals, &signal);
  TROUPE_LOG_INFO("actor host exiting on signal {}", signal);
  std::fflush(nullptr);
  std::_Exit(0);
}

}  // namespace troupe::detail
