// What the public API needs from a runtime mode. Local mode (the actor
// executor, executor/) keeps actors in this process; cluster mode
// (cluster/) talks to a head and to actor host processes. User code calls
// the same functions in both.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "thread_pool.hpp"
#include "troupe/runtime/actor.hpp"
#include "troupe/runtime/nodes.hpp"

namespace troupe::detail {

class Backend {
 public:
  virtual ~Backend() = default;
  virtual ThreadPool& pool() noexcept = 0;
  virtual bool running() const noexcept = 0;
  virtual std::shared_ptr<ActorCore> create_actor(const ClassInfo& cls, std::vector<ArgSlot> ctor_args,
                                                  ActorOptions options) = 0;
  // A live named actor; `name_space` "" is the job's own.
  virtual std::shared_ptr<ActorCore> find(std::string_view name, std::string_view name_space) = 0;
  virtual std::shared_ptr<ActorCore> find(const ActorId& id) = 0;
  virtual PlacementGroup create_group(std::vector<ResourceSpec> bundles, PlacementStrategy strategy,
                                      std::string name) = 0;
  virtual void remove_group(const std::shared_ptr<GroupCore>& group) = 0;
  virtual std::string group_reason(const GroupCore& group) = 0;
  // This job's groups not removed, in creation order; only the one named
  // `name` when it is not empty.
  virtual std::vector<PlacementGroup> list_groups(std::string_view name) = 0;
  virtual std::map<std::string, double> total_resources() = 0;
  virtual std::map<std::string, double> free_resources() = 0;
  virtual std::size_t live_actor_count() = 0;
  // The alive nodes. The default asks the head at head_address() on a
  // control connection of its own (nodes.cpp).
  virtual std::vector<NodeDescription> nodes();
  virtual void shutdown() = 0;
};

// The head this process joined (IP:PORT), set by init() in cluster mode;
// empty otherwise.
std::string head_address();
void set_head_address(std::string address);

// The backend of this process, or null before init / after shutdown.
std::shared_ptr<Backend> backend() noexcept;
void set_backend(std::shared_ptr<Backend> backend);

}  // namespace troupe::detail
