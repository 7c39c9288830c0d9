// `troupe start --head ...` / `troupe start --address HOST:PORT ...`: starts
// the head or a worker daemon, in the background (a re-exec of this binary as
// the hidden `troupe __daemon --config FILE`, in its own session, output to
// logs/<name>.log) or in the foreground with --block.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <optional>
#include <fstream>
#include <iostream>
#include <memory>
#include <thread>

#include <nlohmann/json.hpp>

#include "cluster_commands.hpp"
#include "control_client.hpp"
#include "daemon.hpp"
#include "machine.hpp"
#include "session.hpp"
#include "troupe/node/process.hpp"
#include "troupe/runtime/error.hpp"
#include "troupe/runtime/ids.hpp"
#include "troupe/scheduler/gpu_spec.hpp"
#include "troupe/scheduler/resources.hpp"
#include "troupe/transport/internal/membership.hpp"
#include "troupe/transport/schema/control.capnp.h"

namespace troupe::cli {

using node::current_environment;
using node::describe_wait_status;
using node::self_executable;
using node::spawn_process;
using node::SpawnOptions;
using node::try_reap;
namespace {

struct StartOptions {
  bool head = false;
  std::string address;
  int port = 6380;
  std::string node_ip = "127.0.0.1";
  int num_cpus = -1;
  std::string gpus;
  bool gpus_given = false;
  std::string resources;
  std::string temp_dir;
  int heartbeat_ms = 500;
  int heartbeat_misses = 6;
  double log_max_mb = 100;
  int log_keep = 3;
  int probe_timeout_ms = 3000;
  bool block = false;
  double wait_s = 15;
  bool insecure = false;    // no cluster secret: plain sockets, anyone who reaches the head is in
  std::string token_file;   // worker: the head's token file (else TROUPE_TOKEN, ...); head: the token to use
  bool new_token = false;   // head: a new secret even if the previous session has one
  std::string state_dir;    // head: the SQLite state store's directory
  std::string state_store;  // head: redis://HOST:PORT[/prefix] instead
  int retention_s = 3600;   // head: how long finished jobs, dead actors... are kept
};

std::uint64_t machine_memory_bytes() {
  long pages = ::sysconf(_SC_PHYS_PAGES);
  long page_size = ::sysconf(_SC_PAGE_SIZE);
  if (pages <= 0 || page_size <= 0) return 0;
  return static_cast<std::uint64_t>(pages) * static_cast<std::uint64_t>(page_size);
}

// The last lines of a daemon's log, for an error message.
std::string log_tail(const fs::path& log, std::size_t lines = 5) {
  auto text = read_file(log).value_or("");
  std::vector<std::string> all;
  std::size_t start = 0;
  while (start < text.size()) {
    auto end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    if (end > start) all.push_back(text.substr(start, end - start));
    start = end + 1;
  }
  std::string tail;
  for (std::size_t i = all.size() > lines ? all.size() - lines : 0; i < all.size(); ++i) {
    tail += "\n  " + all[i];
  }
  return tail;
}

// Whether the head at `address` lists node `node` as alive; nullopt when the
// head does not answer.
std::optional<bool> head_lists_node(const std::string& address, const NodeId& node) {
  try {
    ControlClient client(address, std::chrono::milliseconds(500));
    capnp::MallocMessageBuilder message;
    message.initRoot<wire::ControlMessage>().initGetClusterState();
    auto reply = client.request(message);
    for (auto info : reply.root<wire::ControlMessage>().getClusterState().getNodes()) {
      if (from_wire<NodeId>(info.getNode().getNodeId()) == node && info.getState() == wire::NodeState::ALIVE) {
        return true;
      }
    }
    return false;
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

// Fails early, before a session is created, when the head's port is taken.
void check_port_free(const std::string& ip, int port) {
  if (port == 0) return;
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return;
  int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<std::uint16_t>(port));
  if (::inet_pton(AF_INET, ip.c_str(), &addr.sin_addr) != 1) {
    ::close(fd);
    throw UsageError("--node-ip must be an IPv4 address, got \"" + ip + "\"");
  }
  int rc = ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  int error = errno;
  ::close(fd);
  if (rc != 0 && error == EADDRINUSE) {
    throw Error(Errc::transport, "port " + std::to_string(port) + " on " + ip +
                   " is already in use (another head running? try `troupe stop` or --port)");
  }
  if (rc != 0) {
    throw Error(Errc::transport, "cannot listen on " + ip + ":" + std::to_string(port) + ": " + std::strerror(error));
  }
}

DaemonConfig build_config(const StartOptions& options) {
  if (options.head == !options.address.empty()) {
    throw UsageError("give exactly one of --head (start a head) or --address HOST:PORT (join one as a worker)");
  }
  if (options.port < 0 || options.port > 65535) throw UsageError("--port must be in 0..65535");
  if (options.heartbeat_ms < 10) throw UsageError("--heartbeat-ms must be at least 10");
  if (options.heartbeat_misses < 1) throw UsageError("--heartbeat-misses must be at least 1");
  if (options.retention_s < 0) throw UsageError("--retention-s must not be negative");
  if (!options.state_store.empty() && options.state_store.rfind("redis://", 0) != 0)
    throw UsageError("--state-store must be redis://HOST:PORT[/prefix], got \"" + options.state_store + "\"");
  if (!options.state_store.empty() && !options.state_dir.empty())
    throw UsageError("give --state-dir (SQLite) or --state-store (Redis), not both");
  if (!(options.log_max_mb >= 0)) throw UsageError("--log-max-mb must be 0 (never rotate) or more");
  if (options.log_keep < 1 || options.log_keep > 100) throw UsageError("--log-keep must be in 1..100");
  if (options.probe_timeout_ms < 10) throw UsageError("--probe-timeout-ms must be at least 10");
  if (!options.address.empty() && options.address.find(':') == std::string::npos) {
    throw UsageError("--address must be HOST:PORT, got \"" + options.address + "\"");
  }
  DaemonConfig config;
  config.head = options.head;
  config.node_ip = options.node_ip;
  config.port = options.port;
  config.heartbeat_ms = static_cast<std::uint32_t>(options.heartbeat_ms);
  config.heartbeat_misses = static_cast<std::uint32_t>(options.heartbeat_misses);
  config.log_max_bytes = static_cast<std::uint64_t>(options.log_max_mb * 1024 * 1024);
  config.log_keep = options.log_keep;
  config.probe_timeout_ms = static_cast<std::uint32_t>(options.probe_timeout_ms);
  config.head_address = options.address;
  config.node_id = NodeId::random();
  config.num_cpus = options.num_cpus >= 0 ? static_cast<std::uint32_t>(options.num_cpus)
                                          : std::max(1u, std::thread::hardware_concurrency());
  config.memory_bytes = machine_memory_bytes();
  if (options.gpus_given) {
    try {
      config.gpus = scheduler::parse_gpu_spec(options.gpus);
    } catch (const scheduler::SpecError& error) {
      throw UsageError(std::string("--gpus: ") + error.message());
    }
  } else {
    config.gpus = local_gpus().gpus;
  }
  if (!options.resources.empty()) {
    nlohmann::json parsed;
    try {
      parsed = nlohmann::json::parse(options.resources);
    } catch (const nlohmann::json::parse_error& error) {
      throw UsageError("--resources is not valid JSON (want e.g. '{\"TPU\": 2}'): " + std::string(error.what()));
    }
    scheduler::ResourceSet resources;
    try {
      if (!parsed.is_object()) throw scheduler::SpecError("want a JSON object of numbers, e.g. {\"TPU\": 2}");
      resources = parsed.get<scheduler::ResourceSet>();
    } catch (const scheduler::SpecError& error) {
      throw UsageError(std::string("--resources: ") + error.message());
    } catch (const nlohmann::json::exception& error) {
      throw UsageError(std::string("--resources: ") + error.what());
    }
    for (const auto& [name, amount] : resources.amounts()) {
      if (name == scheduler::kGpu || name.rfind("GPU:", 0) == 0) {
        throw UsageError("--resources: declare GPUs with --gpus, not \"" + name + "\"");
      }
      if (scheduler::is_node_resource(name)) {
        throw UsageError("--resources: \"" + name + "\" is taken: every node offers node:<its id> by itself");
      }
      if (name == scheduler::kCpu) {
        config.num_cpus = static_cast<std::uint32_t>(amount);
      } else if (name == scheduler::kMemory) {
        config.memory_bytes = static_cast<std::uint64_t>(amount);
      } else {
        config.resources.set(name, amount);
      }
    }
  }
  return config;
}

int start(const StartOptions& options) {
  DaemonConfig config = build_config(options);
  std::string worker_token_source;
  const fs::path root = temp_root(options.temp_dir);
  std::optional<fs::path> previous_session = latest_session(root);
  if (config.head) {
    check_port_free(config.node_ip, config.port);
    config.session_dir = create_session(root);
    if (options.insecure) {
      // The marker tells local clients (find_token) to connect without one.
      write_file_atomic(config.session_dir / "insecure", "started with --insecure: no cluster token\n");
      set_cli_membership(std::nullopt);
    } else {
      // The cluster's secret: --token-file; else the previous session's, so
      // that a restarted head keeps its cluster (workers and token files
      // elsewhere stay valid); else a new one. --new-token rotates it.
      std::optional<transport::ClusterSecret> kept;
      if (!options.token_file.empty()) {
        kept = transport::read_token_file(options.token_file);
      } else if (!options.new_token && previous_session && fs::exists(*previous_session / "token")) {
        try {
          kept = transport::read_token_file(*previous_session / "token");
          std::cerr << "troupe: keeping the cluster token of the previous session (--new-token makes a new one)\n";
        } catch (const Error& error) {
          std::cerr << "troupe: not reusing the previous session's token (" << error.message() << ")\n";
        }
      }
      auto secret = kept ? *kept : transport::ClusterSecret::generate();
      config.token_file = config.session_dir / "token";
      transport::write_token_file(config.token_file, secret);
      set_cli_membership(secret);
      config.state_prefix = "troupe:" + secret.fingerprint();
    }
    if (options.insecure) config.state_prefix = "troupe:" + config.node_ip + ":" + std::to_string(config.port);
    // issue 12 (persist): the head's state. --state-store (Redis); else
    // --state-dir; else, as the token, the previous session's state (a
    // restarted head recovers the cluster), else a new one in this session.
    // <session>/head-state names it either way, so the next restart finds it.
    if (!options.state_store.empty()) {
      config.state_store = options.state_store;
    } else {
      fs::path dir;
      if (!options.state_dir.empty()) {
        dir = fs::absolute(options.state_dir);
      } else if (previous_session && fs::is_directory(*previous_session / "head-state") &&
                 !is_troupe_daemon(static_cast<pid_t>(
                     std::atol(read_file(*previous_session / "pids" / "head.pid").value_or("0").c_str())))) {
        // (Not while the previous head still runs: two heads on one store.)
        dir = fs::canonical(*previous_session / "head-state");
      } else {
        dir = config.session_dir / "head-state";
      }
      node::ensure_private_directory(dir);
      if (dir != config.session_dir / "head-state") {
        std::error_code ignored;
        fs::create_directory_symlink(dir, config.session_dir / "head-state", ignored);
      }
      config.state_store = dir.string();
    }
    config.retention_s = static_cast<std::uint32_t>(options.retention_s);
  } else {
    // The worker's secret: --token-file, else TROUPE_TOKEN / TROUPE_TOKEN_FILE
    // / the local session of the same head (transport::find_token).
    std::optional<transport::ClusterSecret> secret;
    std::string from;
    if (options.insecure) {
      from = "--insecure";
    } else if (!options.token_file.empty()) {
      secret = transport::read_token_file(options.token_file);
      from = options.token_file;
    } else {
      auto found = transport::find_token(config.head_address);
      secret = found.secret;
      from = found.from;
    }
    set_cli_membership(secret);
    auto latest = latest_session(root);
    config.session_dir = latest ? *latest : create_session(root);
    ensure_session_layout(config.session_dir);
    if (!fs::exists(config.session_dir / "head_address")) {
      write_file_atomic(config.session_dir / "head_address", config.head_address + "\n");
    }
    if (secret) {
      // Its own copy: the session may be shared with a head of this machine.
      config.token_file = config.session_dir / (config.name() + ".token");
      transport::write_token_file(config.token_file, *secret);
    }
    worker_token_source = from;
  }
  const fs::path config_path = config.session_dir / (config.name() + ".json");
  write_file_atomic(config_path, nlohmann::json(config).dump(2) + "\n");

  if (options.block) return run_daemon(config, /*foreground=*/true);

  const fs::path log = config.session_dir / "logs" / (config.name() + ".log");
  SpawnOptions spawn;
  spawn.program = self_executable();
  spawn.argv = {"troupe", "__daemon", "--config", config_path.string()};
  spawn.env = current_environment();
  spawn.output_path = log.string();
  spawn.new_session = true;
  pid_t pid = spawn_process(spawn);
  // A head that fails leaves session_latest where it was.
  auto restore_latest = [&] {
    if (config.head && previous_session) point_latest(root, *previous_session);
  };

  // Ready when the head lists this daemon's node as alive.
  auto deadline = std::chrono::steady_clock::now() +
                  std::chrono::milliseconds(static_cast<long>(options.wait_s * 1000));
  std::string address = config.head_address;
  while (std::chrono::steady_clock::now() < deadline) {
    if (auto status = try_reap(pid)) {
      restore_latest();
      // The daemon exited although its inputs were checked: nothing the user typed.
      throw Error(Errc::internal, std::string(config.head ? "the head" : "the worker") + " failed to start (" +
                                      describe_wait_status(*status) + "); its log " + log.string() +
                                      " ends:" + log_tail(log));
    }
    if (config.head && address.empty()) {
      if (auto text = read_file(config.session_dir / "head_address")) {
        address = text->substr(0, text->find('\n'));
        // A head recovered from its state store runs its node under the id
        // that node had before the restart.
        if (auto id_text = read_file(config.session_dir / "head_node_id")) {
          if (auto id = NodeId::parse(id_text->substr(0, id_text->find('\n')))) config.node_id = *id;
        }
      }
    }
    if (!address.empty() && head_lists_node(address, config.node_id).value_or(false)) {
      if (config.head) {
        std::cout << head_banner(address, config.session_dir, config.token_file);
        if (config.token_file.empty()) std::cerr << insecure_warning(address);
      } else {
        std::cout << "troupe worker " << config.node_id.short_hex() << " joined the cluster at " << address
                  << "\n  " << config.num_cpus << " CPUs, GPUs: "
                  << (config.gpus.empty() ? std::string("none") : scheduler::format_gpu_spec(config.gpus))
                  << "\n  log: " << log.string() << "\n";
      }
      return kExitOk;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ::kill(pid, SIGTERM);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  if (!try_reap(pid)) ::kill(pid, SIGKILL);
  restore_latest();
  if (config.head) {
    throw Error(Errc::timeout, "the head did not become ready within " +
                                   std::to_string(static_cast<int>(options.wait_s)) + " s; its log " + log.string() +
                                   " ends:" + log_tail(log));
  }
  std::string hint = worker_token_source.empty()
                         ? "; this worker has no cluster token: if the cluster is secure, pass --token-file "
                           "(the head's session_latest/token) or set TROUPE_TOKEN"
                         : "; if the head was restarted, its token changed (this worker's came from " +
                               worker_token_source + ")";
  throw Error(Errc::timeout, "no answer from the head at " + config.head_address + " within " +
                                 std::to_string(static_cast<int>(options.wait_s)) +
                                 " s (is the address right and the head running?)" + hint + "; worker not started");
}

}  // namespace

void add_start_command(CLI::App& app) {
  auto options = std::make_shared<StartOptions>();
  auto* command = app.add_subcommand(
      "start", "Start the head daemon (--head) or a worker daemon joining a head (--address HOST:PORT)");
  command->add_flag("--head", options->head, "Start the head (it also runs a node manager for this machine)");
  command->add_option("--address", options->address, "Head to join as a worker, HOST:PORT");
  command->add_option("--port", options->port, "Head: port to listen on")->capture_default_str();
  command->add_option("--node-ip", options->node_ip, "IP address of this node, reachable by the others")
      ->capture_default_str();
  command->add_option("--num-cpus", options->num_cpus, "CPUs to offer (default: all cores)");
  auto* gpus = command->add_option(
      "--gpus", options->gpus, "Declare GPUs instead of detecting them, e.g. \"H100-80GB:2,T4-16GB:1\" (\"\" = none)");
  command->add_option("--resources", options->resources, "Custom resources as JSON, e.g. '{\"TPU\": 2}'");
  command->add_option("--temp-dir", options->temp_dir, "Root of session directories (default $TROUPE_TEMP_DIR or /tmp/troupe)");
  command->add_option("--heartbeat-ms", options->heartbeat_ms, "Head: heartbeat period of nodes and drivers")
      ->capture_default_str();
  command->add_option("--heartbeat-misses", options->heartbeat_misses,
                      "Head: missed heartbeats after which a node is suspected and probed (a driver: lost after "
                      "these and --probe-timeout-ms)")
      ->capture_default_str();
  command->add_option("--probe-timeout-ms", options->probe_timeout_ms,
                      "Head: a suspected node that answers nothing for this long more is declared dead "
                      "(detection time = heartbeat-ms * heartbeat-misses + this; docs/fault-tolerance.md)")
      ->capture_default_str();
  command->add_option("--log-max-mb", options->log_max_mb,
                      "Rotate a log file of this session (daemon, actor host, job driver) when larger than this "
                      "many MiB (0: never)")
      ->capture_default_str();
  command->add_option("--log-keep", options->log_keep, "Rotated copies kept of each log file (<file>.1 newest)")
      ->capture_default_str();
  command->add_flag("--insecure", options->insecure,
                    "No cluster token, no encryption: anyone who can reach the head can run code on every node "
                    "(throwaway clusters on a machine you alone use)");
  command->add_option("--token-file", options->token_file,
                      "Worker: the cluster token file the head made (its session_latest/token); default: "
                      "$TROUPE_TOKEN, $TROUPE_TOKEN_FILE, or this machine's session of the same head. Head: use "
                      "this token (default: the previous session's, else a new one)");
  command->add_flag("--new-token", options->new_token,
                    "Head: make a new cluster token even if the previous session has one (workers then need it)");
  command->add_option("--state-dir", options->state_dir,
                      "Head: directory of its state store (SQLite); a head restarted on it recovers the cluster "
                      "(default: the previous session's head-state, else <session>/head-state)");
  command->add_option("--state-store", options->state_store,
                      "Head: keep its state in Redis instead, redis://HOST:PORT[/prefix] (a standby head on "
                      "another machine can take over; the prefix defaults to one per cluster)");
  command->add_option("--retention-s", options->retention_s,
                      "Head: seconds finished jobs, gone drivers, dead actors and removed groups are kept "
                      "(the newest 1000 of each at most)")
      ->capture_default_str();
  command->add_flag("--block", options->block, "Run in the foreground until SIGINT/SIGTERM");
  command->add_option("--wait", options->wait_s, "Seconds to wait for the daemon to be ready")->capture_default_str();
  set_action(*command, [options, gpus] {
    options->gpus_given = gpus->count() > 0;
    return start(*options);
  });
}

void add_daemon_command(CLI::App& app) {
  auto config_path = std::make_shared<std::string>();
  auto* command = app.add_subcommand("__daemon", "Run a daemon (internal: started by `troupe start`)");
  command->group("");  // hidden from --help
  command->add_option("--config", *config_path, "Daemon config (JSON) written by `troupe start`")->required();
  set_action(*command, [config_path] {
    auto text = read_file(*config_path);
    if (!text) throw Error(Errc::not_found, "cannot read " + *config_path);
    DaemonConfig config = nlohmann::json::parse(*text).get<DaemonConfig>();
    return run_daemon(config, /*foreground=*/false);
  });
}

void add_head_options(CLI::App& command, HeadOptions& options) {
  command.add_option("--address", options.address,
                     "Head address IP:PORT (default: the latest session's head on this machine)");
  command.add_option("--temp-dir", options.temp_dir,
                     "Root of session directories (default $TROUPE_TEMP_DIR or /tmp/troupe)");
  command.add_option("--timeout", options.timeout_s, "Seconds to wait for each answer from the head")
      ->capture_default_str();
  command.add_option("--token-file", options.token_file,
                     "The cluster token file (default: $TROUPE_TOKEN, $TROUPE_TOKEN_FILE, or this machine's "
                     "session of that head)")
      ->each([](const std::string& path) { set_token_file_flag(path); });
}

std::chrono::milliseconds request_timeout(const HeadOptions& options) {
  return std::chrono::milliseconds(static_cast<long>(std::max(0.1, options.timeout_s) * 1000));
}

}  // namespace troupe::cli
