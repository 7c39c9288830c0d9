// `troupe submit [--address] [--name] [--env K=V]... [--no-wait] -- BINARY [ARGS...]`:
// ships the binary to the head (content-hashed), which runs it as the job's
// driver; streams the driver's output and exits with its exit code. Ctrl-C
// stops the job (a second Ctrl-C leaves at once).
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <iostream>
#include <memory>
#include <thread>

#include "cluster_commands.hpp"
#include "control_client.hpp"
#include "session.hpp"
#include "troupe/transport/upload_limit.hpp"
#include "troupe/runtime/error.hpp"
#include "troupe/runtime/ids.hpp"
#include "troupe/transport/content_hash.hpp"

namespace troupe::cli {

namespace {

std::atomic<int> g_interrupts{0};
extern "C" void on_interrupt(int) { g_interrupts.fetch_add(1); }

struct SubmitOptions {
  HeadOptions head;
  std::string name;
  std::vector<std::string> env;
  bool no_wait = false;
  std::vector<std::string> command;
};

}  // namespace

// Follows a job's output from `offset` until the job is final; returns the
// exit code `troupe submit` reports. With `stop_on_interrupt`, the first
// SIGINT sends stopJob, the second returns 130 at once.
int follow_job(ControlClient& client, const JobId& job_id, bool stop_on_interrupt) {
  std::uint64_t offset = 0;
  bool stop_sent = false;
  for (;;) {
    if (stop_on_interrupt && g_interrupts.load() > 0 && !stop_sent) {
      std::cerr << "\ntroupe submit: stopping job " << job_id.hex() << " (Ctrl-C again to leave now)\n";
      capnp::MallocMessageBuilder stop;
      to_wire(stop.initRoot<wire::ControlMessage>().initStopJob().initJobId(), job_id);
      client.request(stop);
      stop_sent = true;
    }
    if (stop_on_interrupt && g_interrupts.load() > 1) return 130;
    capnp::MallocMessageBuilder message;
    auto logs = message.initRoot<wire::ControlMessage>().initJobLogs();
    to_wire(logs.initJobId(), job_id);
    logs.setOffset(offset);
    logs.setMaxBytes(1 << 20);
    auto reply = client.request(message);
    auto reader = reply.root<wire::ControlMessage>();
    if (!reader.isJobLogsReply()) throw Error(Errc::protocol, "unexpected reply to jobLogs");
    auto logs_reply = reader.getJobLogsReply();
    auto data = logs_reply.getData();
    if (data.size() > 0) {
      std::cout.write(reinterpret_cast<const char*>(data.begin()), static_cast<std::streamsize>(data.size()));
      std::cout.flush();
    }
    offset = logs_reply.getNextOffset();
    auto job = logs_reply.getJob();
    auto state = job.getState();
    bool final = state != wire::JobState::PENDING && state != wire::JobState::RUNNING;
    if (final && data.size() == 0) {
      switch (state) {
        case wire::JobState::SUCCEEDED:
          return 0;
        case wire::JobState::FAILED:
          std::cerr << "troupe: job " << job_id.hex() << " failed: " << job.getError().getMessage().cStr() << "\n";
          return job.getExitCode() != 0 ? job.getExitCode() : kExitFailure;
        default:
          std::cerr << "troupe: job " << job_id.hex() << " was stopped\n";
          return stop_sent ? 130 : (job.getExitCode() != 0 ? job.getExitCode() : kExitFailure);
      }
    }
    if (data.size() == 0) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

namespace {

int submit(const SubmitOptions& options) {
  if (options.command.empty()) throw UsageError("give the job's binary after --: troupe submit -- ./job [ARGS...]");
  const fs::path binary = options.command.front();
  std::error_code error;
  if (!fs::is_regular_file(binary, error)) throw UsageError("no such file: " + binary.string());
  if (::access(binary.c_str(), X_OK) != 0) throw UsageError(binary.string() + " is not executable");
  std::vector<std::pair<std::string, std::string>> env;
  for (const auto& item : options.env) {
    auto eq = item.find('=');
    if (eq == std::string::npos || eq == 0) throw UsageError("--env wants NAME=VALUE, got \"" + item + "\"");
    env.emplace_back(item.substr(0, eq), item.substr(eq + 1));
  }
  const std::string address = resolve_head_address(options.head.address, temp_root(options.head.temp_dir));
  auto contents = read_file(binary);
  if (!contents) throw Error(Errc::not_found, "cannot read " + binary.string());
  if (contents->size() > transport::kMaxBinaryBytes) {
    throw Error(Errc::invalid_argument, binary.string() + " is " + std::to_string(contents->size() >> 20) +
                                            " MiB; the head takes job binaries of at most " +
                                            std::to_string(transport::kMaxBinaryBytes >> 20) +
                                            " MiB (strip its debug information)");
  }
  const std::string hash = transport::content_hash(*contents);

  // The head hashes and stores the binary before it answers: on a loaded
  // machine an 80 MB binary alone took over 10 s. The wait grows with it by
  // one second per 8 MB on top of --timeout.
  const auto upload_allowance = std::chrono::milliseconds(contents->size() / (8 * 1000));
  ControlClient client(address, request_timeout(options.head) + upload_allowance);
  capnp::MallocMessageBuilder message;
  auto submit = message.initRoot<wire::ControlMessage>().initSubmitJob();
  submit.setProtocolVersion(wire::PROTOCOL_VERSION);
  submit.setName(options.name.empty() ? binary.filename().string() : options.name);
  auto argv = submit.initArgv(static_cast<unsigned>(options.command.size()));
  argv.set(0, binary.filename().string());
  for (unsigned i = 1; i < options.command.size(); ++i) argv.set(i, options.command[i]);
  auto env_list = submit.initEnv(static_cast<unsigned>(env.size()));
  for (unsigned i = 0; i < env.size(); ++i) {
    env_list[i].setName(env[i].first);
    env_list[i].setValue(env[i].second);
  }
  submit.setBinaryHash(hash);
  submit.setBinary(kj::arrayPtr(reinterpret_cast<const kj::byte*>(contents->data()), contents->size()));
  transport::ReceivedMessage reply = client.request(message, "the head refused the job");
  auto update = reply.root<wire::ControlMessage>().getJobUpdate();
  JobId job_id = from_wire<JobId>(update.getJobId());
  std::cerr << "troupe submit: job " << job_id.hex() << " (" << update.getName().cStr() << ") submitted to "
            << address << "\n";
  if (options.no_wait) {
    std::cout << job_id.hex() << "\n";
    std::cerr << "  follow it with: troupe job logs " << job_id.hex() << " --follow\n";
    return kExitOk;
  }
  struct sigaction action {};
  action.sa_handler = on_interrupt;
  sigemptyset(&action.sa_mask);
  ::sigaction(SIGINT, &action, nullptr);
  ::sigaction(SIGTERM, &action, nullptr);
  return follow_job(client, job_id, /*stop_on_interrupt=*/true);
}

}  // namespace

void add_submit_command(CLI::App& app) {
  auto options = std::make_shared<SubmitOptions>();
  auto* command = app.add_subcommand(
      "submit", "Run a job: ship BINARY to the cluster, run it as the driver, stream its output");
  add_head_options(*command, options->head);
  command->add_option("--name", options->name, "Job name (default: the binary's file name)");
  command->add_option("--env", options->env,
                      "Environment variable for the driver and every actor of the job, NAME=VALUE (repeatable)")
      ->allow_extra_args(false);
  command->add_flag("--no-wait", options->no_wait, "Print the job id and return without following the output");
  command->add_option("command", options->command, "-- BINARY [ARGS...]")->required();
  command->footer(
      "The head stores the binary before it answers, so the wait is --timeout plus one second per 8 MB of "
      "binary.\nExample: troupe submit --env STEPS=10 -- ./build/examples/pipeline --batch 8");
  set_action(*command, [options] { return submit(*options); });
}

}  // namespace troupe::cli
