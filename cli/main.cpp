// `troupe`: the command line for running and inspecting troupe clusters.
//
// main owns parsing, exit codes and error messages; each subcommand is one
// add_<name>_command function in its own file (see command.hpp). To add one,
// write it and list it in kCommands below.
#include <exception>
#include <iostream>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "cluster_commands.hpp"
#include "command.hpp"
#include "troupe/runtime/error.hpp"

namespace troupe::cli {

namespace {

using AddCommand = void (*)(CLI::App&);

// In the order `troupe --help` lists them.
constexpr AddCommand kCommands[] = {
    add_start_command,
    add_stop_command,
    add_status_command,
    add_list_command,
    add_submit_command,
    add_job_command,
    add_info_command,
    add_gpus_command,
    add_plan_command,
    add_daemon_command,  // hidden
};

// The subcommand the command line chose (the deepest one), or the app itself.
const CLI::App* chosen_command(const CLI::App& app) {
  const CLI::App* current = &app;
  for (;;) {
    auto chosen = current->get_subcommands();
    if (chosen.empty()) return current;
    current = chosen.front();
  }
}

// "troupe" or "troupe gpus".
std::string command_path(const CLI::App* command) {
  std::string path;
  for (; command != nullptr; command = command->get_parent()) {
    path = command->get_name() + (path.empty() ? "" : " " + path);
  }
  return path;
}

// click's (and so ray's) shape for a usage error:
//   Usage: troupe gpus [OPTIONS]
//   Try 'troupe gpus --help' for help.
//
//   Error: <what went wrong>
int usage_error(const CLI::App* command, const std::string& message) {
  const std::string path = command_path(command);
  std::cerr << "Usage: " << path << " [OPTIONS]" << (command->get_subcommands({}).empty() ? "" : " [SUBCOMMAND]")
            << "\nTry '" << path << " --help' for help.\n\nError: " << message << '\n';
  return kExitUsage;
}

std::string command_list(const CLI::App& app) {
  std::string names;
  for (const CLI::App* sub : app.get_subcommands({})) names += (names.empty() ? "" : ", ") + sub->get_name();
  return names;
}

int run(int argc, char** argv) {
  CLI::App app{"troupe: run model-parallel deep learning as actors on heterogeneous GPU clusters", "troupe"};
  app.set_version_flag("--version", std::string("troupe ") + TROUPE_VERSION, "Print the version and exit");
  app.require_subcommand(0, 1);
  app.footer("Run 'troupe COMMAND --help' for a command's options.");
  for (AddCommand add : kCommands) add(app);

  try {
    app.parse(argc, argv);
  } catch (const CLI::RuntimeError& e) {  // an action's exit code (set_action)
    return e.get_exit_code();
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == static_cast<int>(CLI::ExitCodes::Success)) return app.exit(e);  // --help, --version
    const CLI::App* command = chosen_command(app);
    if (command == &app && dynamic_cast<const CLI::ExtrasError*>(&e) != nullptr) {
      const auto extras = app.remaining();
      if (!extras.empty() && !extras.front().starts_with("-")) {
        return usage_error(command, "No such command '" + extras.front() + "'. Commands: " + command_list(app) + ".");
      }
    }
    return usage_error(command, e.what());
  } catch (const UsageError& e) {
    return usage_error(chosen_command(app), e.message());
  } catch (const troupe::Error& e) {
    std::cerr << "Error: " << e.message() << '\n';
    return kExitFailure;
  } catch (const std::exception& e) {
    std::cerr << "Error: " << e.what() << '\n';
    return kExitFailure;
  }

  if (app.get_subcommands().empty()) {  // bare `troupe`: show what there is
    std::cout << app.help();
  }
  return kExitOk;
}

}  // namespace

void set_action(CLI::App& command, std::function<int()> action) {
  // CLI11 runs the callback once parsing (and the extras check) succeeded;
  // a nonzero result leaves parse() as a silent RuntimeError carrying it.
  command.callback([action = std::move(action)] {
    if (const int code = action(); code != kExitOk) throw CLI::RuntimeError(code);
  });
}

}  // namespace troupe::cli

int main(int argc, char** argv) { return troupe::cli::run(argc, argv); }
