// troupe::nodes(): local mode answers from its one node; cluster mode asks
// the head for its cluster state on a short-lived control connection.
#include "troupe/runtime/nodes.hpp"

#include <mutex>

#include <capnp/message.h>

#include "backend.hpp"
#include "cluster/head_client.hpp"
#include "troupe/runtime/error.hpp"
#include "troupe/runtime/ids.hpp"
#include "troupe/scheduler/wire_gpu.hpp"
#include "troupe/transport/schema/control.capnp.h"

namespace troupe {
namespace detail {
namespace {

std::mutex g_head_mutex;
std::string g_head_address;  // guarded by g_head_mutex

constexpr std::chrono::milliseconds kNodesTimeout{10000};

}  // namespace

std::string head_address() {
  std::lock_guard lock(g_head_mutex);
  return g_head_address;
}

void set_head_address(std::string address) {
  std::lock_guard lock(g_head_mutex);
  g_head_address = std::move(address);
}

// TODO(perf): ClusterRuntime could override this to reuse its own control
// channel instead of opening one per call.
std::vector<NodeDescription> Backend::nodes() {
  const std::string head = head_address();
  if (head.empty()) throw_error(Errc::unsupported, "this runtime knows no head to ask for its nodes");
  transport::ControlChannel channel(head, "qry-" + WorkerId::random().hex(), [](wire::ControlMessage::Reader) {});
  capnp::MallocMessageBuilder message;
  message.initRoot<wire::ControlMessage>().initGetClusterState().setIncludeDead(false);
  auto reply = request_head(channel, message, kNodesTimeout);
  channel.stop();
  auto root = reply.root<wire::ControlMessage>();
  if (!root.isClusterState()) throw_error(Errc::protocol, "head answered getClusterState with an unexpected message");

  std::vector<NodeDescription> out;
  for (auto info : root.getClusterState().getNodes()) {
    if (info.getState() == wire::NodeState::DEAD) continue;  // a SUSPECTED node is still a member
    auto node = info.getNode();
    NodeDescription description;
    description.id = troupe::from_wire<NodeId>(node.getNodeId()).hex();
    description.name = description.id.substr(0, 12);
    description.hostname = node.getHostname().cStr();
    for (auto gpu : node.getGpus()) description.gpus.push_back(scheduler::gpu_from_wire(gpu));
    description.total[std::string(scheduler::kCpu)] = node.getNumCpus();
    description.total[std::string(scheduler::kGpu)] = static_cast<double>(node.getGpus().size());
    description.total[std::string(scheduler::kMemory)] = static_cast<double>(node.getMemoryBytes());
    for (auto resource : node.getResources()) description.total[resource.getName().cStr()] = resource.getAmount();
    for (auto resource : info.getAvailable()) description.available[resource.getName().cStr()] = resource.getAmount();
    out.push_back(std::move(description));
  }
  return out;
}

}  // namespace detail

std::vector<NodeDescription> nodes() {
  auto runtime = detail::backend();
  if (!runtime) throw_error(Errc::invalid_argument, "troupe::init() has not been called");
  return runtime->nodes();
}

}  // namespace troupe
