// The cluster subcommands (start, stop, status, list, submit, job) and the
// hidden daemon entry point, each registered like the others in command.hpp.
#pragma once

#include <chrono>
#include <string>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "troupe/transport/framing.hpp"
#include "troupe/transport/schema/control.capnp.h"

#include "command.hpp"

namespace troupe::cli {

void add_start_command(CLI::App& app);   // cmd_start.cpp
void add_daemon_command(CLI::App& app);  // cmd_start.cpp (hidden: `troupe __daemon --config F`)
void add_stop_command(CLI::App& app);    // cmd_stop.cpp
void add_status_command(CLI::App& app);  // cmd_status.cpp
void add_list_command(CLI::App& app);    // cmd_status.cpp
void add_submit_command(CLI::App& app);  // cmd_submit.cpp
void add_job_command(CLI::App& app);     // cmd_job.cpp

// Options every command that talks to the head shares.
struct HeadOptions {
  std::string address;   // --address IP:PORT; empty = the latest local session's head
  std::string temp_dir;  // --temp-dir; empty = $TROUPE_TEMP_DIR or /tmp/troupe
  double timeout_s = 10; // --timeout: each request to the head
  std::string token_file; // --token-file; empty = found by transport::find_token
};
void add_head_options(CLI::App& command, HeadOptions& options);
std::chrono::milliseconds request_timeout(const HeadOptions& options);

// getClusterState (with dead nodes, actors and removed groups) from the head
// the options name. Throws troupe::Error when there is no cluster (not_found)
// or no answer (timeout).
transport::ReceivedMessage get_cluster_state(const HeadOptions& options);

// The JSON rows of `troupe list nodes|actors|jobs --json`.
nlohmann::json nodes_json(wire::ClusterState::Reader state);
nlohmann::json actors_json(wire::ClusterState::Reader state);
nlohmann::json jobs_json(wire::ClusterState::Reader state);
nlohmann::json job_json(wire::JobUpdate::Reader job);
std::string job_state_name(wire::JobState state);
std::string actor_state_name(wire::ActorState state);

}  // namespace troupe::cli
