// Writes the seed corpora of the fuzz targets, from the runtime's own
// encoders (the bytes real traffic carries): make_seeds <corpus dir>
// writes <corpus dir>/<target>/<name> for the targets
//   arguments:   one encoded sample per argument type (argument_types.hpp),
//                after the byte that picks the type;
//   envelope:    plain, tensor and error envelopes as a holder publishes them;
//   call_server: call requests to the harness's Probe actor (each method,
//                by value, by inline and remote descriptor, ObjectRef
//                parameters), `__fetch`es, replies, cancels, releases;
//   head:        conversations with the head (register, heartbeat, create
//                and update actors, groups, drivers, jobs, logs, kills),
//                in fuzz_head's framing.
// No seed pairs a job binary with its content hash (see fuzz_head.cpp).
#include <capnp/message.h>
#include <capnp/serialize.h>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "cluster/envelope.hpp"
#include "fuzz/argument_types.hpp"
#include "runtime/call_server_harness.hpp"
#include "troupe/runtime/error.hpp"
#include "troupe/runtime/logging.hpp"
#include "troupe/transport/schema/control.capnp.h"

namespace {

namespace fs = std::filesystem;
using troupe::ActorId;
using troupe::JobId;
using troupe::NodeId;
using troupe::ObjectId;
using troupe::WorkerId;
using troupe::testing::CallServerHarness;

fs::path root;
int written = 0;

void write_seed(const std::string& target, const std::string& name, const std::string& bytes) {
  fs::create_directories(root / target);
  std::ofstream out(root / target / name, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ++written;
}

std::string flat(capnp::MallocMessageBuilder& message) {
  auto words = capnp::messageToFlatArray(message);
  return std::string(reinterpret_cast<const char*>(words.asBytes().begin()), words.asBytes().size());
}

capnp::Data::Reader data_of(const std::string& bytes) {
  return capnp::Data::Reader(reinterpret_cast<const capnp::byte*>(bytes.data()), bytes.size());
}

// ---- arguments -----------------------------------------------------------------

void argument_seeds() {
  auto samples = troupe::fuzz::argument_samples();
  [&]<std::size_t... I>(std::index_sequence<I...>) {
    ((write_seed("arguments", "type" + std::to_string(I),
                 std::string(1, static_cast<char>(I)) + troupe::serialize(std::get<I>(samples)))),
     ...);
  }(std::make_index_sequence<std::tuple_size_v<decltype(samples)>>{});
}

// ---- envelopes -----------------------------------------------------------------

void envelope_seeds() {
  using troupe::detail::TensorMeta;
  write_seed("envelope", "void", troupe::detail::plain_envelope(""));
  write_seed("envelope", "string", troupe::detail::plain_envelope(troupe::serialize(std::string("result"))));
  write_seed("envelope", "nested",
             troupe::detail::plain_envelope(troupe::serialize(std::vector<std::vector<std::string>>{{"a"}, {}})));
  write_seed("envelope", "tensor_f32_2x3", troupe::detail::tensor_envelope(TensorMeta{0, 0, {2, 3}, 24}));
  write_seed("envelope", "tensor_scalar_i64", troupe::detail::tensor_envelope(TensorMeta{4, 0, {}, 8}));
  write_seed("envelope", "tensor_cuda_bf16", troupe::detail::tensor_envelope(TensorMeta{2, 1, {4, 0, 7}, 0}));
  write_seed("envelope", "error_task",
             troupe::detail::error_envelope(troupe::make_error(troupe::Errc::task_failed, "boom", "std::runtime_error")));
  write_seed("envelope", "error_died",
             troupe::detail::error_envelope(troupe::make_error(troupe::Errc::actor_died, "gone")));
}

// ---- call plane ----------------------------------------------------------------

void call_seeds(CallServerHarness& harness) {
  auto call = [&](const std::string& name, const std::string& method, std::vector<std::string> args,
                  const std::function<void(troupe::wire::CallRequest::Builder)>& edit = {}) {
    capnp::MallocMessageBuilder message;
    harness.build_call(message, method, args, 1);
    if (edit) edit(message.getRoot<troupe::wire::CallMessage>().getRequest());
    write_seed("call_server", name, flat(message));
  };
  using troupe::serialize;
  call("add", "add", {serialize(3)});
  call("concat", "concat", {serialize(std::string("a")), serialize(std::vector<std::string>{"b", "c"})});
  call("count", "count", {serialize(std::map<std::string, std::vector<std::int64_t>>{{"k", {1, 2}}})});
  call("nested", "nested", {serialize(std::vector<std::vector<std::string>>{{"x"}, {"y", "z"}})});
  call("elements", "elements", {serialize(troupe::Tensor::from_vector<float>({1.f, 2.f}, {2}))});
  call("nothing", "nothing", {});
  call("unknown_method", "no_such_method", {});
  call("inline_ref", "add", {}, [](troupe::wire::CallRequest::Builder r) {
    auto d = r.initArgs(1)[0].initRef();
    troupe::to_wire(d.initId(), ObjectId{7, 7});
    const std::string bytes = serialize(9);
    d.setSizeBytes(bytes.size());
    d.setInlineData(data_of(bytes));
  });
  call("remote_ref", "add", {}, [](troupe::wire::CallRequest::Builder r) {
    auto d = r.initArgs(1)[0].initRef();
    troupe::to_wire(d.initId(), ObjectId{7, 8});
    d.setOwnerAddress("tcp://127.0.0.1:3");
    d.setOwnerDataAddress(data_of("ucx-address"));
    d.setRemote();
  });
  call("own_ref", "add", {}, [](troupe::wire::CallRequest::Builder r) {
    auto d = r.initArgs(1)[0].initRef();
    troupe::to_wire(d.initId(), ObjectId{7, 9});
    d.setOwnerAddress(CallServerHarness::kOwnAddress);
    d.setRemote();
  });
  call("pass_ref", "elements", {}, [](troupe::wire::CallRequest::Builder r) {
    auto d = r.initArgs(1)[0].initPassRef();
    troupe::to_wire(d.initId(), ObjectId{7, 10});
    d.setOwnerAddress("tcp://127.0.0.1:4");
    d.setRemote();
  });
  call("wrong_incarnation", "add", {serialize(1)}, [](auto r) { r.setActorIncarnation(9); });
  call("seq_gap", "add", {serialize(1)}, [](auto r) { r.setSeq(5); });
  call("fetch", "__fetch", {}, [](troupe::wire::CallRequest::Builder r) {
    auto d = r.initArgs(1)[0].initRef();
    troupe::to_wire(d.initId(), ObjectId{7, 11});
    d.setOwnerAddress(CallServerHarness::kOwnAddress);
    d.setRemote();
  });
  {
    capnp::MallocMessageBuilder message;
    auto reply = message.initRoot<troupe::wire::CallMessage>().initReply();
    reply.setCallId(1);
    reply.setValue(data_of(serialize(std::string("r"))));
    write_seed("call_server", "reply_value", flat(message));
  }
  {
    capnp::MallocMessageBuilder message;
    auto reply = message.initRoot<troupe::wire::CallMessage>().initReply();
    reply.setCallId(2);
    troupe::to_wire(reply.initActorId(), CallServerHarness::kActorId);
    auto d = reply.initRef();
    troupe::to_wire(d.initId(), ObjectId{9, 9});
    d.setOwnerAddress("tcp://127.0.0.1:5");
    d.setSizeBytes(1 << 20);
    d.setRemote();
    write_seed("call_server", "reply_ref", flat(message));
  }
  {
    capnp::MallocMessageBuilder message;
    auto reply = message.initRoot<troupe::wire::CallMessage>().initReply();
    reply.setCallId(3);
    troupe::detail::fill_error(reply.initError(), troupe::make_error(troupe::Errc::task_failed, "no", "E"));
    write_seed("call_server", "reply_error", flat(message));
  }
  {
    capnp::MallocMessageBuilder message;
    auto cancel = message.initRoot<troupe::wire::CallMessage>().initCancel();
    cancel.setCallId(1);
    troupe::to_wire(cancel.initActorId(), CallServerHarness::kActorId);
    troupe::to_wire(cancel.initCallerId(), CallServerHarness::kCallerId);
    troupe::to_wire(cancel.initResultId(), ObjectId{7, 12});
    write_seed("call_server", "cancel", flat(message));
  }
  {
    capnp::MallocMessageBuilder message;
    auto release = message.initRoot<troupe::wire::CallMessage>().initRelease();
    troupe::to_wire(release.initHolderId(), CallServerHarness::kCallerId);
    auto ids = release.initIds(2);
    troupe::to_wire(ids[0], ObjectId{7, 7});
    troupe::to_wire(ids[1], ObjectId{7, 8});
    write_seed("call_server", "release", flat(message));
  }
}

// ---- head ----------------------------------------------------------------------

// fuzz_head's senders, by index.
enum Sender : std::uint8_t { head_node = 0, node_a = 1, node_b = 2, driver = 3, cli = 4, actor_host = 5 };
const NodeId kNodeA{0x1111, 0x2222};
const NodeId kNodeB{0x3333, 0x4444};
const WorkerId kDriver{8, 8};
const JobId kJob{7, 7};
const ActorId kActor{0x5555, 0x6666};

class Conversation {
 public:
  using Build = std::function<void(troupe::wire::ControlMessage::Builder)>;
  Conversation& say(Sender from, std::uint8_t clock_step, const Build& build) {
    capnp::MallocMessageBuilder message;
    auto root = message.initRoot<troupe::wire::ControlMessage>();
    root.setRequestId(++request_);
    build(root);
    const std::string frame = flat(message);
    bytes_.push_back(static_cast<char>(from));
    bytes_.push_back(static_cast<char>(clock_step));
    bytes_.push_back(static_cast<char>(frame.size() & 0xff));
    bytes_.push_back(static_cast<char>(frame.size() >> 8));
    bytes_ += frame;
    return *this;
  }
  const std::string& bytes() const { return bytes_; }

 private:
  std::uint64_t request_ = 0;
  std::string bytes_;
};

void register_node(troupe::wire::ControlMessage::Builder root, const NodeId& node, bool gpu) {
  auto reg = root.initRegisterNode();
  reg.setProtocolVersion(troupe::wire::PROTOCOL_VERSION);
  troupe::to_wire(reg.initNodeId(), node);
  reg.setAddress("127.0.0.1");
  reg.setHostname("fuzz");
  reg.setNumCpus(4);
  reg.setMemoryBytes(std::uint64_t{1} << 30);
  if (gpu) {
    auto g = reg.initGpus(1)[0];
    g.setIndex(0);
    g.setModel("NVIDIA H100 80GB HBM3");
    g.setMemoryBytes(std::uint64_t{80} << 30);
    g.setDeclared(true);
  }
  auto resources = reg.initResources(1);
  resources[0].setName("custom");
  resources[0].setAmount(2);
  auto transports = reg.initTransports(1);
  transports.set(0, "tcp");
}

troupe::wire::CreateActor::Builder create_actor(troupe::wire::ControlMessage::Builder root, const ActorId& actor,
                                               double gpus) {
  auto create = root.initCreateActor();
  troupe::to_wire(create.initActorId(), actor);
  troupe::to_wire(create.initJobId(), kJob);
  troupe::to_wire(create.initOwnerId(), kDriver);
  create.setClassName("Counter");
  create.setName("c");
  create.setCtorArgs(data_of(troupe::serialize(std::vector<std::string>{troupe::serialize(1)})));
  auto resources = create.initResources(gpus > 0 ? 2 : 1);
  resources[0].setName("CPU");
  resources[0].setAmount(1);
  if (gpus > 0) {
    resources[1].setName("GPU");
    resources[1].setAmount(gpus);
  }
  create.setMaxRestarts(1);
  create.setMaxConcurrency(1);
  create.setBundleIndex(-1);
  return create;
}

void head_seeds() {
  using Root = troupe::wire::ControlMessage::Builder;
  auto heartbeat = [](const NodeId& node, std::uint64_t seq) {
    return [node, seq](Root root) {
      auto beat = root.initHeartbeat();
      troupe::to_wire(beat.initNodeId(), node);
      beat.setSeq(seq);
    };
  };
  auto register_driver = [](Root root) {
    auto reg = root.initRegisterDriver();
    reg.setProtocolVersion(troupe::wire::PROTOCOL_VERSION);
    troupe::to_wire(reg.initWorkerId(), kDriver);
    troupe::to_wire(reg.initJobId(), kJob);
    reg.setBinaryHash(std::string(64, 'a'));
    reg.setPid(1234);
    reg.setHostname("fuzz");
  };
  auto actor_update = [](troupe::wire::ActorState state) {
    return [state](Root root) {
      auto update = root.initActorUpdate();
      troupe::to_wire(update.initActorId(), kActor);
      troupe::to_wire(update.initNodeId(), kNodeA);
      update.setState(state);
      update.setAddress("tcp://127.0.0.1:7000");
      update.setIncarnation(0);
      update.setClassName("Counter");
      update.setName("c");
    };
  };
  write_seed("head", "register_heartbeat",
             Conversation().say(node_a, 0, [](Root r) { register_node(r, kNodeA, false); })
                 .say(node_a, 10, heartbeat(kNodeA, 1))
                 .say(node_a, 60, heartbeat(kNodeA, 2))
                 .bytes());
  write_seed("head", "actor_lifecycle",
             Conversation()
                 .say(node_a, 0, [](Root r) { register_node(r, kNodeA, true); })
                 .say(driver, 0, register_driver)
                 .say(driver, 1, [](Root r) { (void)create_actor(r, kActor, 1); })
                 .say(actor_host, 1, actor_update(troupe::wire::ActorState::ALIVE))
                 .say(cli, 0, [](Root r) { r.initGetClusterState().setIncludeDead(true); })
                 .say(driver, 1,
                      [](Root r) {
                        auto kill = r.initKillActor();
                        troupe::to_wire(kill.initActorId(), kActor);
                        kill.setNoRestart(false);
                      })
                 .say(node_a, 200, heartbeat(kNodeA, 1))
                 .bytes());
  write_seed("head", "groups",
             Conversation()
                 .say(node_a, 0, [](Root r) { register_node(r, kNodeA, false); })
                 .say(node_b, 0, [](Root r) { register_node(r, kNodeB, true); })
                 .say(driver, 0,
                      [](Root r) {
                        auto group = r.initCreatePlacementGroup();
                        troupe::to_wire(group.initPlacementGroupId(), troupe::PlacementGroupId{3, 3});
                        troupe::to_wire(group.initJobId(), kJob);
                        group.setName("g");
                        auto bundles = group.initBundles(2);
                        for (unsigned i = 0; i < 2; ++i) {
                          auto res = bundles[i].initResources(1);
                          res[0].setName("CPU");
                          res[0].setAmount(1);
                        }
                        group.setStrategy(troupe::wire::PlacementStrategy::STRICT_SPREAD);
                      })
                 .say(driver, 1,
                      [](Root r) {
                        auto create = create_actor(r, ActorId{0x77, 0x77}, 0);
                        troupe::to_wire(create.initPlacementGroupId(), troupe::PlacementGroupId{3, 3});
                        create.setBundleIndex(1);
                      })
                 .say(driver, 1,
                      [](Root r) {
                        troupe::to_wire(r.initRemovePlacementGroup().initPlacementGroupId(),
                                        troupe::PlacementGroupId{3, 3});
                      })
                 .bytes());
  write_seed("head", "jobs",
             Conversation()
                 .say(cli, 0,
                      [](Root r) {
                        auto submit = r.initSubmitJob();
                        submit.setProtocolVersion(troupe::wire::PROTOCOL_VERSION);
                        submit.setName("job");
                        auto argv = submit.initArgv(2);
                        argv.set(0, "job");
                        argv.set(1, "--flag");
                        auto env = submit.initEnv(1);
                        env[0].setName("A");
                        env[0].setValue("B");
                        submit.setBinaryHash(std::string(64, 'b'));  // the head has no such binary
                      })
                 .say(cli, 0,
                      [](Root r) {
                        auto upload = r.initUploadBinary();
                        upload.setBinaryHash(std::string(64, 'c'));
                        upload.setBinary(data_of("not the bytes of that hash"));
                      })
                 .say(node_a, 0, [](Root r) { r.initFetchBinary().setBinaryHash(std::string(64, 'c')); })
                 .say(cli, 0,
                      [](Root r) {
                        auto logs = r.initJobLogs();
                        troupe::to_wire(logs.initJobId(), kJob);
                        logs.setMaxBytes(4096);
                      })
                 .say(cli, 0, [](Root r) { troupe::to_wire(r.initStopJob().initJobId(), kJob); })
                 .say(driver, 0,
                      [](Root r) {
                        auto beat = r.initDriverHeartbeat();
                        troupe::to_wire(beat.initWorkerId(), kDriver);
                        beat.setSeq(1);
                      })
                 .say(driver, 0,
                      [](Root r) {
                        auto get = r.initGetActorByName();
                        troupe::to_wire(get.initJobId(), kJob);
                        get.setName("c");
                      })
                 .bytes());
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: " << argv[0] << " <corpus dir>\n";
    return 2;
  }
  troupe::log::set_level("off");
  root = argv[1];
  argument_seeds();
  envelope_seeds();
  {
    CallServerHarness harness;
    call_seeds(harness);
  }
  head_seeds();
  std::cout << "make_seeds: wrote " << written << " seeds under " << root << "\n";
  return 0;
}
