#include "head_client.hpp"

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "binary_hash_cache.hpp"
#include "troupe/runtime/error.hpp"
#include "troupe/runtime/logging.hpp"
#include "troupe/runtime/serialization.hpp"
#include "troupe/transport/content_hash.hpp"
#include "troupe/transport/upload_limit.hpp"

namespace troupe::detail {
transport::ReceivedMessage request_head(transport::ControlChannel& channel, capnp::MallocMessageBuilder& message,
                                        std::chrono::milliseconds timeout) {
  auto reply = channel.request(message, timeout);
  auto root = reply.root<wire::ControlMessage>();
  if (root.isError()) {
    auto error = root.getError();
    throw_error(errc_from_wire(error.getCode()), error.getMessage(), error.getRemoteType());
  }
  return reply;
}

namespace {
// Request ids of heartbeats (and of a registration a heartbeat's refusal
// sends again): their answers are not awaited by request(), so they come to
// on_message; the top bit keeps them apart from the channel's own ids.
constexpr std::uint64_t kBeatIds = std::uint64_t{1} << 63;
constexpr auto kFirstResend = std::chrono::milliseconds(2000);
}  // namespace

HeadClient::HeadClient(const std::string& head_address, std::string identity,
                       std::chrono::milliseconds request_timeout, PushHandler on_push)
    : on_push_(std::move(on_push)),
      channel_(std::make_unique<transport::ControlChannel>(
          head_address, std::move(identity), [this](wire::ControlMessage::Reader m) { on_message(m); })),
      request_timeout_(request_timeout) {}

void HeadClient::on_message(wire::ControlMessage::Reader message) {
  if ((message.getRequestId() & kBeatIds) == 0) {
    if (on_push_) on_push_(message);
    return;
  }
  if (!message.isError() || errc_from_wire(message.getError().getCode()) != Errc::not_found || !registration_) return;
  // The head does not know this driver: register again (its state was lost).
  TROUPE_LOG_WARN("the head does not know this driver ({}); registering again", message.getError().getMessage().cStr());
  capnp::MallocMessageBuilder again;
  again.setRoot(registration_->getRoot<wire::ControlMessage>().asReader());
  again.getRoot<wire::ControlMessage>().setRequestId(kBeatIds | ++heartbeat_seq_);
  channel_->send(again);
}

HeadClient::~HeadClient() { stop(); }

void HeadClient::stop() { channel_->stop(); }

transport::ReceivedMessage HeadClient::request(capnp::MallocMessageBuilder& message) {
  return request_head(*channel_, message, request_timeout_);
}

transport::ReceivedMessage HeadClient::request(capnp::MallocMessageBuilder& message,
                                               std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  auto attempt = std::min(timeout, kFirstResend);
  for (;;) {
    try {
      return request_head(*channel_, message, attempt);
    } catch (const Error& error) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (error.code() != Errc::timeout || left.count() <= 0) throw;
      attempt = std::min(attempt * 2, left);
    }
  }
}

namespace {

// A binary the head cannot take (its frame would pass the head's bound, and
// the head's socket would drop it unread) is refused here, with its size.
void check_binary_size(std::uintmax_t bytes) {
  if (bytes > transport::kMaxBinaryBytes) {
    throw_error(Errc::invalid_argument,
                "this binary is " + std::to_string(bytes >> 20) + " MiB; the head takes job binaries of at most " +
                    std::to_string(transport::kMaxBinaryBytes >> 20) + " MiB (strip its debug information)");
  }
}

}  // namespace

JobId HeadClient::register_driver(const WorkerId& worker_id, const std::string& head_address) {
  // At once, before hashing hundreds of MB: a binary too big to upload.
  std::error_code size_error;
  const std::uintmax_t size = std::filesystem::file_size("/proc/self/exe", size_error);
  if (!size_error) check_binary_size(size);
  // Hosts run this very binary: the head keeps it by content hash. An
  // unchanged binary's hash comes from the cache (binary_hash_cache.hpp),
  // and its bytes are read only if the head asks for them.
  const auto [hash, hash_cached] = self_binary_hash();
  capnp::MallocMessageBuilder message;
  auto reg = message.initRoot<wire::ControlMessage>().initRegisterDriver();
  reg.setProtocolVersion(wire::PROTOCOL_VERSION);
  troupe::to_wire(reg.initWorkerId(), worker_id);
  if (const char* job = std::getenv("TROUPE_JOB_ID"); job && *job) {
    const auto job_id = JobId::parse(job);
    if (!job_id) throw_error(Errc::invalid_argument, std::string("TROUPE_JOB_ID is not a job id: '") + job + "'");
    troupe::to_wire(reg.initJobId(), *job_id);
  }
  reg.setBinaryHash(hash);
  reg.setPid(static_cast<std::uint32_t>(::getpid()));
  char hostname[256] = {};
  ::gethostname(hostname, sizeof hostname - 1);
  reg.setHostname(hostname);
  auto reply = request(message);
  registration_ = std::make_unique<capnp::MallocMessageBuilder>();
  registration_->setRoot(message.getRoot<wire::ControlMessage>().asReader());
  auto root = reply.root<wire::ControlMessage>();
  if (!root.isRegisterDriverReply())
    throw_error(Errc::protocol, "head answered registerDriver with an unexpected message");
  auto body = root.getRegisterDriverReply();
  const JobId job_id = troupe::from_wire<JobId>(body.getJobId());
  // Registering again names the job the head gave us.
  troupe::to_wire(registration_->getRoot<wire::ControlMessage>().getRegisterDriver().initJobId(), job_id);
  const auto heartbeat = std::chrono::milliseconds(std::max<std::uint32_t>(50, body.getHeartbeatIntervalMs()));
  // Heartbeats from now on, before the upload: the head counts the upload
  // itself as life (and gives it time), and the heartbeats queued behind it
  // follow at once.
  channel_->set_periodic(heartbeat, [this, worker_id] {
    capnp::MallocMessageBuilder beat;
    auto root = beat.initRoot<wire::ControlMessage>();
    // issue 12 (persist): a request id, so a head that lost this driver says so.
    root.setRequestId(kBeatIds | ++heartbeat_seq_);
    auto hb = root.initDriverHeartbeat();
    troupe::to_wire(hb.initWorkerId(), worker_id);
    hb.setSeq(heartbeat_seq_);
    channel_->send(beat);
  });
  if (body.getNeedBinary()) {
    capnp::MallocMessageBuilder upload;
    auto up = upload.initRoot<wire::ControlMessage>().initUploadBinary();
    const std::string bytes = read_whole_file("/proc/self/exe");
    check_binary_size(bytes.size());
    if (hash_cached && transport::content_hash(bytes) != hash)
      throw_error(Errc::invalid_argument, "this binary changed while it was starting; run it again");
    up.setBinaryHash(hash);
    up.setBinary(as_data(bytes));
    // Once: the head hashes and writes it (off its loop) before it answers.
    (void)request_head(*channel_, upload, std::chrono::milliseconds(std::max<long>(request_timeout_.count(), 60000)));
  }
  TROUPE_LOG_INFO("driver {} registered with head {} as job {}", worker_id.hex(), head_address, job_id.hex());
  return job_id;
}

void HeadClient::create_actor(ActorId id, const JobId& job_id, const WorkerId& owner_id, const ClassInfo& cls,
                              const std::vector<std::string>& ctor_args, const ActorOptions& options,
                              PlacementGroupId group_id) {
  capnp::MallocMessageBuilder message;
  auto create = message.initRoot<wire::ControlMessage>().initCreateActor();
  troupe::to_wire(create.initActorId(), id);
  troupe::to_wire(create.initJobId(), job_id);
  troupe::to_wire(create.initOwnerId(), owner_id);
  create.setClassName(cls.name);
  create.setName(options.name);
  std::string args = serialize(ctor_args);
  create.setCtorArgs(as_data(args));
  auto amounts = options.resources;
  if (options.memory > 0) amounts["memory"] += static_cast<double>(options.memory);
  auto resources = create.initResources(static_cast<unsigned>(amounts.size()));
  unsigned i = 0;
  for (const auto& [name, amount] : amounts) {
    resources[i].setName(name);
    resources[i].setAmount(amount);
    ++i;
  }
  create.setGpuType(options.gpu_type);
  create.setGpuMemoryBytes(options.gpu_memory);
  create.setMaxRestarts(options.max_restarts);
  create.setMaxConcurrency(static_cast<std::uint32_t>(options.max_concurrency));
  create.setBundleIndex(options.bundle_index);
  create.setMaxPendingCalls(options.max_pending_calls);
  create.setDetached(options.detached);
  create.setMaxTaskRetries(options.max_task_retries);
  create.setFailWhenOverloaded(options.backpressure == Backpressure::fail);
  if (!group_id.nil()) troupe::to_wire(create.initPlacementGroupId(), group_id);
  auto env = create.initEnv(static_cast<unsigned>(options.env.size()));
  unsigned e = 0;
  for (const auto& [var, value] : options.env) {
    env[e].setName(var);
    env[e].setValue(value);
    ++e;
  }
  create.setActorNamespace(options.namespace_);
  (void)request(message);
}

void HeadClient::create_group(PlacementGroupId id, const JobId& job_id, const std::string& name,
                              const std::vector<scheduler::Bundle>& bundles, wire::PlacementStrategy strategy) {
  capnp::MallocMessageBuilder message;
  auto create = message.initRoot<wire::ControlMessage>().initCreatePlacementGroup();
  troupe::to_wire(create.initPlacementGroupId(), id);
  troupe::to_wire(create.initJobId(), job_id);
  create.setName(name);
  create.setStrategy(strategy);
  auto list = create.initBundles(static_cast<unsigned>(bundles.size()));
  for (unsigned i = 0; i < bundles.size(); ++i) {
    // The GPU type travels as Ray's "GPU:<type>" resource.
    auto amounts = bundles[i].amounts.amounts();
    std::vector<std::pair<std::string, double>> items(amounts.begin(), amounts.end());
    if (!bundles[i].gpu_type.empty())
      items.emplace_back("GPU:" + bundles[i].gpu_type, bundles[i].amounts.get(scheduler::kGpu));
    auto resources = list[i].initResources(static_cast<unsigned>(items.size()));
    for (unsigned j = 0; j < items.size(); ++j) {
      resources[j].setName(items[j].first);
      resources[j].setAmount(items[j].second);
    }
  }
  (void)request(message);
}

void HeadClient::kill_actor(ActorId actor_id, bool no_restart) {
  capnp::MallocMessageBuilder message;
  auto kill = message.initRoot<wire::ControlMessage>().initKillActor();
  troupe::to_wire(kill.initActorId(), actor_id);
  kill.setNoRestart(no_restart);
  (void)request(message);
}

std::optional<transport::ReceivedMessage> HeadClient::get_actor(const JobId& job_id, std::string_view name,
                                                                std::string_view name_space, ActorId actor_id) {
  capnp::MallocMessageBuilder message;
  auto get = message.initRoot<wire::ControlMessage>().initGetActorByName();
  troupe::to_wire(get.initJobId(), job_id);
  get.setName(std::string(name));
  get.setActorNamespace(std::string(name_space));
  if (name.empty()) troupe::to_wire(get.initActorId(), actor_id);
  try {
    auto reply = request(message);
    if (!reply.root<wire::ControlMessage>().isActorUpdate()) return std::nullopt;
    return reply;
  } catch (const Error& e) {
    if (e.code() == Errc::not_found) return std::nullopt;
    throw;
  }
}

std::map<std::string, double> HeadClient::cluster_totals(bool available) {
  capnp::MallocMessageBuilder message;
  message.initRoot<wire::ControlMessage>().initGetClusterState().setIncludeDead(false);
  auto reply = request(message);
  auto root = reply.root<wire::ControlMessage>();
  if (!root.isClusterState()) throw_error(Errc::protocol, "head answered getClusterState with an unexpected message");
  std::map<std::string, double> sum;
  for (auto node : root.getClusterState().getNodes()) {
    if (node.getState() != wire::NodeState::ALIVE) continue;
    if (available) {
      for (auto r : node.getAvailable()) sum[r.getName()] += r.getAmount();
    } else {
      auto info = node.getNode();
      sum["CPU"] += info.getNumCpus();
      sum["GPU"] += info.getGpus().size();
      sum["memory"] += static_cast<double>(info.getMemoryBytes());
      for (auto r : info.getResources()) sum[r.getName()] += r.getAmount();
    }
  }
  return sum;
}

void HeadClient::remove_group(PlacementGroupId group_id) {
  capnp::MallocMessageBuilder message;
  auto remove = message.initRoot<wire::ControlMessage>().initRemovePlacementGroup();
  troupe::to_wire(remove.initPlacementGroupId(), group_id);
  (void)request(message);
}

transport::ReceivedMessage HeadClient::get_groups(const JobId& job_id, std::string_view name) {
  capnp::MallocMessageBuilder message;
  auto get = message.initRoot<wire::ControlMessage>().initGetPlacementGroups();
  troupe::to_wire(get.initJobId(), job_id);
  get.setName(std::string(name));
  auto reply = request(message);
  if (!reply.root<wire::ControlMessage>().isClusterState())
    throw_error(Errc::protocol, "head answered getPlacementGroups with an unexpected message");
  return reply;
}

}  // namespace troupe::detail
