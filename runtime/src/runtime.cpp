#include "troupe/runtime/runtime.hpp"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "cluster/cluster_runtime.hpp"
#include "executor/local_runtime.hpp"
#include "troupe/runtime/actor.hpp"
#include "troupe/runtime/logging.hpp"

namespace troupe {
namespace {
std::mutex g_init_mutex;
std::atomic<Mode> g_mode{Mode::none};

std::shared_ptr<detail::Backend> require_runtime() {
  auto runtime = detail::backend();
  if (!runtime) throw_error(Errc::invalid_argument, "troupe::init() has not been called");
  return runtime;
}
}  // namespace

std::string_view to_string(ActorState state) noexcept {
  switch (state) {
    case ActorState::pending: return "PENDING";
    case ActorState::alive: return "ALIVE";
    case ActorState::restarting: return "RESTARTING";
    case ActorState::dead: return "DEAD";
  }
  return "UNKNOWN";
}

std::string_view to_string(PlacementStrategy strategy) noexcept {
  switch (strategy) {
    case PlacementStrategy::pack: return "PACK";
    case PlacementStrategy::spread: return "SPREAD";
    case PlacementStrategy::strict_pack: return "STRICT_PACK";
    case PlacementStrategy::strict_spread: return "STRICT_SPREAD";
  }
  return "UNKNOWN";
}

void init(InitOptions options) {
  std::lock_guard lock(g_init_mutex);
  if (g_mode.load() != Mode::none) throw_error(Errc::invalid_argument, "troupe::init() called twice");
  log::init_from_env(options.log_level);
  if (!options.log_level.empty()) log::set_level(options.log_level);
  if (options.address.empty()) {
    if (const char* env = std::getenv("TROUPE_ADDRESS"); env && *env) options.address = env;
  }
  if (options.num_threads < 0) throw_error(Errc::invalid_argument, "num_threads must not be negative");
  static std::once_flag at_exit;
  // Stop threads and sockets before static destructors run.
  std::call_once(at_exit, [] { std::atexit([] { troupe::shutdown(); }); });

  // The job binary started by a node manager: become that actor's host.
  if (const char* spec = std::getenv("TROUPE_ACTOR_SPEC"); spec && *spec) {
    const char* head = std::getenv("TROUPE_HEAD_ADDRESS");
    if (!head || !*head) throw_error(Errc::invalid_argument, "TROUPE_ACTOR_SPEC is set but TROUPE_HEAD_ADDRESS is not");
    detail::ClusterRuntime::Config config;
    config.head_address = head;
    config.actor_host = true;
    config.spec_path = spec;
    detail::set_head_address(head);
    auto runtime = std::make_shared<detail::ClusterRuntime>(config);
    detail::set_backend(runtime);
    g_mode.store(Mode::cluster);
    try {
      runtime->start();
    } catch (const std::exception& e) {
      TROUPE_LOG_ERROR("actor host failed: {}", e.what());
      std::fflush(nullptr);
      std::_Exit(3);
    }
    runtime->serve_forever();
  }
  if (!options.address.empty() && options.address != "local") {
    // issue 12 (persist): a driver the head started records its exit code
    // where a restarted head (not its parent: it cannot wait for it) finds it.
    if (const char* file = std::getenv("TROUPE_JOB_EXIT_FILE"); file && *file) {
      static std::string exit_file = file;
      static std::once_flag exit_hook;
      std::call_once(exit_hook, [] {
        ::on_exit(
            [](int code, void*) {
              if (FILE* out = std::fopen(exit_file.c_str(), "w")) {
                std::fprintf(out, "%d\n", code);
                std::fclose(out);
              }
            },
            nullptr);
      });
    }
    detail::ClusterRuntime::Config config;
    config.head_address = options.address;
    config.num_threads = options.num_threads;
    auto runtime = std::make_shared<detail::ClusterRuntime>(config);
    detail::set_backend(runtime);
    detail::set_head_address(options.address);
    try {
      runtime->start();
    } catch (...) {
      detail::set_backend(nullptr);
      detail::set_head_address({});
      runtime->shutdown();
      throw;
    }
    g_mode.store(Mode::cluster);
    TROUPE_LOG_INFO("troupe initialised in cluster mode (head {})", options.address);
    return;
  }
  auto runtime = std::make_shared<detail::LocalRuntime>(options);
  detail::set_backend(std::move(runtime));
  g_mode.store(Mode::local);
  TROUPE_LOG_INFO("troupe initialised in local mode");
}

void init(int& argc, char** argv) {
  InitOptions options;
  int out = 1;
  auto value_of = [](const char* arg, const char* flag) -> const char* {
    const std::size_t n = std::strlen(flag);
    return std::strncmp(arg, flag, n) == 0 ? arg + n : nullptr;
  };
  for (int i = 1; i < argc; ++i) {
    const char* arg = argv[i];
    if (const char* v = value_of(arg, "--troupe-address=")) {
      options.address = v;
    } else if (const char* v = value_of(arg, "--troupe-log-level=")) {
      options.log_level = v;
    } else if (const char* v = value_of(arg, "--troupe-gpus=")) {
      options.gpus = v;
    } else if (const char* v = value_of(arg, "--troupe-threads=")) {
      char* end = nullptr;
      long n = std::strtol(v, &end, 10);
      if (end == v || *end != '\0' || n < 0 || n > 4096)
        throw_error(Errc::invalid_argument, std::string("bad --troupe-threads value '") + v + "'");
      options.num_threads = static_cast<int>(n);
    } else {
      argv[out++] = argv[i];
    }
  }
  argc = out;
  argv[argc] = nullptr;
  init(std::move(options));
}

void shutdown() {
  std::lock_guard lock(g_init_mutex);
  auto runtime = detail::backend();
  if (!runtime) return;
  runtime->shutdown();
  detail::set_backend(nullptr);
  detail::set_head_address({});
  g_mode.store(Mode::none);
}

bool is_initialized() noexcept { return g_mode.load() != Mode::none; }
Mode mode() noexcept { return g_mode.load(); }

std::vector<int> get_gpu_ids() {
  auto* context = detail::current_context();
  if (!context || !context->gpus) return {};
  return *context->gpus;
}

std::vector<int> visible_gpu_ids() { return get_gpu_ids(); }

std::vector<int> node_gpu_ids() {
  auto* context = detail::current_context();
  if (!context || !context->gpus) return {};
  // An actor host's executor numbers its GPUs as CUDA_VISIBLE_DEVICES does;
  // the head said which of the node's they are.
  const auto& hosted = detail::hosted_actor_info();
  if (hosted.hosted) return hosted.node_gpus;
  return *context->gpus;
}

ActorId current_actor_id() noexcept { return detail::current_actor(); }

int actor_incarnation() {
  auto* context = detail::current_context();
  if (!context) throw_error(Errc::invalid_argument, "troupe::actor_incarnation() called outside an actor");
  return detail::hosted_actor_info().incarnation + context->incarnation;
}

void exit_actor() {
  auto* context = detail::current_context();
  if (!context || !context->in_method) {
    throw_error(Errc::invalid_argument, "troupe::exit_actor() called outside an actor method (it may not be "
                                        "called from a constructor or from another thread)");
  }
  context->exit_requested = true;
}

std::map<std::string, double> cluster_resources() { return require_runtime()->total_resources(); }
std::map<std::string, double> available_resources() { return require_runtime()->free_resources(); }
std::size_t live_actors() {
  auto runtime = detail::backend();
  return runtime ? runtime->live_actor_count() : 0;
}

// ---- placement groups ---------------------------------------------------------

PlacementGroup placement_group(std::vector<ResourceSpec> bundles, PlacementStrategy strategy, std::string name) {
  return require_runtime()->create_group(std::move(bundles), strategy, std::move(name));
}

void remove_placement_group(const PlacementGroup& group) {
  if (!group.valid()) throw_error(Errc::invalid_argument, "use of an empty PlacementGroup");
  require_runtime()->remove_group(group.core());
}

PlacementGroup get_placement_group(std::string_view name) {
  if (name.empty()) throw_error(Errc::invalid_argument, "get_placement_group needs a name");
  auto found = require_runtime()->list_groups(name);
  if (found.empty()) throw_error(Errc::not_found, "no placement group named '" + std::string(name) + "' in this job");
  return found.front();
}

std::vector<PlacementGroup> placement_groups() { return require_runtime()->list_groups({}); }

std::string PlacementGroup::name() const { return core_ ? core_->name : std::string(); }

ObjectRef<void> PlacementGroup::ready() const {
  if (!core_) throw_error(Errc::invalid_argument, "use of an empty PlacementGroup");
  return core_->ready_ref;
}

std::string PlacementGroup::pending_reason() const {
  if (!core_) throw_error(Errc::invalid_argument, "use of an empty PlacementGroup");
  auto runtime = detail::backend();
  return runtime ? runtime->group_reason(*core_) : "the runtime is shut down";
}

std::size_t PlacementGroup::bundle_count() const { return core_ ? core_->bundles.size() : 0; }

std::string PlacementGroup::id() const {
  if (!core_) return {};
  return core_->name.empty() ? "pg-" + core_->id.short_hex() : core_->name;
}

}  // namespace troupe
