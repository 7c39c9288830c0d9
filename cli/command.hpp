// The `troupe` command line: what every subcommand shares.
//
// Each subcommand lives in its own file and exposes one function
// `void add_<name>_command(CLI::App& app)` that adds the subcommand, its
// options and its action to the top-level app: info.cpp, gpus.cpp and
// cmd_plan.cpp (declared here), and the cluster commands start (with the
// hidden __daemon) in cmd_start.cpp, stop in cmd_stop.cpp, status and list
// in cmd_status.cpp, submit in cmd_submit.cpp and job in cmd_job.cpp
// (declared in cluster_commands.hpp). main.cpp lists those functions in one
// table and owns parsing, exit codes and error printing, so a subcommand
// only parses its options and does its work.
//
// Conventions, after ray's CLI: data goes to stdout (`--json` where a script
// may read it), errors to stderr as "Error: ...". Exit codes: 0 success,
// 1 the command failed, 2 the command line or an input given on it is wrong.
#pragma once

#include <functional>
#include <string>
#include <utility>

#include <CLI/CLI.hpp>

#include "troupe/runtime/error.hpp"

// The project version; the build may pass the one from project() instead.
#ifndef TROUPE_VERSION
#define TROUPE_VERSION "0.1.0"
#endif

namespace troupe::cli {

inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;
inline constexpr int kExitUsage = 2;

// Bad input on the command line that the parser could not catch (a malformed
// GPU spec, an unknown name): main prints "Error: <message>" with the
// subcommand's usage and exits with kExitUsage. Every other failure is a
// troupe::Error with the code that fits it (no cluster: not_found, no answer
// from the head: timeout, port in use: transport; a refusal by the head keeps
// the head's code): main prints "Error: <message>" and exits with
// kExitFailure.
class UsageError : public Error {
 public:
  explicit UsageError(std::string message) : Error(Errc::invalid_argument, std::move(message)) {}
};

// Makes `action` what runs when `command` is chosen; its result is the
// process's exit code. The action runs after the whole command line parsed
// cleanly. It may throw UsageError, troupe::Error or any std::exception;
// main turns each into a message and an exit code.
void set_action(CLI::App& command, std::function<int()> action);

// One per subcommand, each in its own file.
void add_info_command(CLI::App& app);
void add_gpus_command(CLI::App& app);
void add_plan_command(CLI::App& app);  // cmd_plan.cpp

}  // namespace troupe::cli
