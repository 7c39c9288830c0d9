#include "daemon.hpp"

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <iostream>
#include <optional>
#include <thread>

#include "command.hpp"
#include "session.hpp"
#include "troupe/head/head.hpp"
#include "troupe/node/log_rotation.hpp"
#include "troupe/node/node_manager.hpp"
#include "troupe/runtime/error.hpp"
#include "troupe/runtime/logging.hpp"
#include "troupe/transport/internal/membership.hpp"

namespace troupe::cli {
namespace {

std::atomic<bool> g_stop{false};

extern "C" void on_stop_signal(int) { g_stop.store(true); }

void install_signal_handlers() {
  struct sigaction action {};
  action.sa_handler = on_stop_signal;
  sigemptyset(&action.sa_mask);
  ::sigaction(SIGTERM, &action, nullptr);
  ::sigaction(SIGINT, &action, nullptr);
  ::signal(SIGPIPE, SIG_IGN);
  ::signal(SIGHUP, SIG_IGN);
}

}  // namespace

std::string DaemonConfig::name() const { return head ? "head" : "worker-" + node_id.short_hex(); }

void to_json(nlohmann::json& j, const DaemonConfig& c) {
  j = nlohmann::json{{"head", c.head},
                     {"session_dir", c.session_dir.string()},
                     {"node_ip", c.node_ip},
                     {"port", c.port},
                     {"heartbeat_ms", c.heartbeat_ms},
                     {"heartbeat_misses", c.heartbeat_misses},
                     {"probe_timeout_ms", c.probe_timeout_ms},
                     {"head_address", c.head_address},
                     {"node_id", c.node_id.hex()},
                     {"num_cpus", c.num_cpus},
                     {"memory_bytes", c.memory_bytes},
                     {"gpus", c.gpus},
                     {"resources", c.resources},
                     {"token_file", c.token_file.string()},
                     {"state_store", c.state_store},
                     {"state_prefix", c.state_prefix},
                     {"retention_s", c.retention_s},
                     {"log_max_bytes", c.log_max_bytes},
                     {"log_keep", c.log_keep}};
}

void from_json(const nlohmann::json& j, DaemonConfig& c) {
  c.head = j.at("head").get<bool>();
  c.session_dir = j.at("session_dir").get<std::string>();
  c.node_ip = j.at("node_ip").get<std::string>();
  c.port = j.at("port").get<int>();
  c.heartbeat_ms = j.at("heartbeat_ms").get<std::uint32_t>();
  c.heartbeat_misses = j.at("heartbeat_misses").get<std::uint32_t>();
  c.probe_timeout_ms = j.value("probe_timeout_ms", std::uint32_t{3000});
  c.head_address = j.at("head_address").get<std::string>();
  auto id = NodeId::parse(j.at("node_id").get<std::string>());
  if (!id) throw Error(Errc::invalid_argument, "bad node_id in daemon config");
  c.node_id = *id;
  c.num_cpus = j.at("num_cpus").get<std::uint32_t>();
  c.memory_bytes = j.at("memory_bytes").get<std::uint64_t>();
  c.gpus = j.at("gpus").get<std::vector<scheduler::GpuInfo>>();
  c.resources = j.at("resources").get<scheduler::ResourceSet>();
  c.token_file = j.value("token_file", std::string());
  c.state_store = j.value("state_store", std::string());
  c.state_prefix = j.value("state_prefix", std::string("troupe"));
  c.retention_s = j.value("retention_s", std::uint32_t{3600});
  c.log_max_bytes = j.value("log_max_bytes", c.log_max_bytes);
  c.log_keep = j.value("log_keep", c.log_keep);
}

std::string insecure_warning(const std::string& address) {
  return "WARNING: this cluster is INSECURE (started with --insecure): anyone who can reach " + address +
         " can run any program on every node of it, read its jobs' logs and objects, and stop it. Use it only "
         "on a machine or network you alone control.\n";
}

std::string head_banner(const std::string& address, const std::filesystem::path& session,
                        const std::filesystem::path& token_file) {
  std::string text;
  text += "troupe head is running at " + address + "\n";
  text += "  session: " + session.string() + "\n";
  if (token_file.empty()) {
    text += "\n" + insecure_warning(address) + "\n";
    text += "To add a worker on another machine, run there:\n";
    text += "    troupe start --address " + address + " [--gpus H100-80GB:2]\n\n";
  } else {
    std::string fingerprint;
    try {
      fingerprint = " (fingerprint " + transport::read_token_file(token_file).fingerprint() + ")";
    } catch (const Error&) {
    }
    text += "  security: members only; the cluster token is in " + token_file.string() + fingerprint + "\n\n";
    text += "Commands and jobs on this machine find the token by themselves. To add a worker on\n";
    text += "another machine, copy the token file there (keep it private: chmod 600) and run:\n";
    text += "    troupe start --address " + address + " --token-file PATH/TO/token [--gpus H100-80GB:2]\n";
    text += "  (or set TROUPE_TOKEN to its contents; drivers elsewhere need TROUPE_TOKEN or TROUPE_TOKEN_FILE)\n\n";
  }
  text += "To submit a job:\n";
  text += "    troupe submit -- ./my_job [ARGS...]\n\n";
  text += "To see the cluster: troupe status    To stop it: troupe stop\n";
  return text;
}

int run_daemon(const DaemonConfig& config, bool foreground) {
  install_signal_handlers();
  troupe::log::init_from_env("info");
  ensure_session_layout(config.session_dir);
  // Every socket of this process (the head's, its node manager's) presents
  // and requires the cluster's secret; none when the cluster is insecure.
  try {
    if (config.token_file.empty()) {
      transport::set_membership(std::nullopt);
    } else {
      transport::set_membership(transport::read_token_file(config.token_file));
    }
  } catch (const Error& error) {
    std::fprintf(stderr, "troupe %s: %s\n", config.name().c_str(), error.message().c_str());
    return kExitFailure;
  }
  const auto pid_file = config.session_dir / "pids" / (config.name() + ".pid");
  write_file_atomic(pid_file, std::to_string(::getpid()) + "\n");
  // This daemon's log, its actor hosts' and (head) its jobs' drivers' stay
  // under the cap (docs/fault-tolerance.md).
  node::LogRotator log_rotator(config.session_dir / "logs", config.session_dir / "jobs",
                               node::LogRotation{config.log_max_bytes, config.log_keep});

  node::NodeManagerConfig node;
  node.node_ip = config.node_ip;
  node.node_id = config.node_id;
  node.num_cpus = config.num_cpus;
  node.memory_bytes = config.memory_bytes;
  node.gpus = config.gpus;
  node.resources = config.resources;
  node.session_dir = config.session_dir;
  node.token_file = config.token_file;

  int exit_code = 0;
  if (config.head) {
    head::HeadConfig head_config;
    head_config.node_ip = config.node_ip;
    head_config.port = config.port;
    head_config.heartbeat_ms = config.heartbeat_ms;
    head_config.heartbeat_misses = config.heartbeat_misses;
    head_config.probe_timeout_ms = config.probe_timeout_ms;
    head_config.session_dir = config.session_dir;
    head_config.head_node_id = config.node_id;
    head_config.token_file = config.token_file;
    head_config.state_store = config.state_store;
    head_config.state_prefix = config.state_prefix;
    head_config.retention = std::chrono::seconds(config.retention_s);
    std::optional<head::Head> head;
    try {
      head.emplace(head_config);  // opens the state store and recovers what it holds
    } catch (const Error& error) {
      std::fprintf(stderr, "troupe head: %s\n", error.message().c_str());
      TROUPE_LOG_ERROR("head: cannot start: {}", error.message());
      std::error_code ignored;
      std::filesystem::remove(pid_file, ignored);
      return kExitFailure;
    }
    try {
      head->bind();
    } catch (const Error& error) {  // the port is taken or cannot be bound
      std::fprintf(stderr, "troupe head: %s\n", error.message().c_str());
      std::error_code ignored;
      std::filesystem::remove(pid_file, ignored);
      return kExitFailure;
    }
    // The head's node id first: `troupe start` waits for that node (a
    // recovered head's node keeps its earlier id), and reads it once the
    // address is there.
    write_file_atomic(config.session_dir / "head_node_id", head->head_node_id().hex() + "\n");
    write_file_atomic(config.session_dir / "head_address", head->address() + "\n");
    TROUPE_LOG_INFO("head: listening on {} (session {}, state {})", head->address(), config.session_dir.string(),
                    config.state_store.empty() ? std::string("in memory only") : config.state_store);
    if (foreground) std::cout << head_banner(head->address(), config.session_dir, config.token_file) << std::flush;
    if (config.token_file.empty()) TROUPE_LOG_WARN("head: {}", insecure_warning(head->address()));
    node.head_address = head->address();
    node.node_id = head->head_node_id();  // a recovered head's node keeps its id
    std::thread node_thread([&] { node::run_node_manager(node, g_stop); });
    try {
      head->run(g_stop);
    } catch (const std::exception& error) {
      TROUPE_LOG_ERROR("head: stopped by an error: {}", error.what());
      exit_code = 1;
      g_stop.store(true);
    }
    g_stop.store(true);
    node_thread.join();
    std::error_code ignored;
    std::filesystem::remove(config.session_dir / "head_address", ignored);
  } else {
    node.head_address = config.head_address;
    if (foreground) {
      std::cout << "troupe worker " << config.node_id.hex() << " started; head at "
                << config.head_address << "\n" << std::flush;
    }
    try {
      node::run_node_manager(node, g_stop);
    } catch (const std::exception& error) {
      TROUPE_LOG_ERROR("node: stopped by an error: {}", error.what());
      exit_code = 1;
    }
  }
  TROUPE_LOG_INFO("{}: stopped", config.name());
  std::error_code ignored;
  std::filesystem::remove(pid_file, ignored);
  return exit_code;
}

}  // namespace troupe::cli
