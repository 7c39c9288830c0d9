// `troupe job status|logs|stop JOB_ID` and `troupe job list`. JOB_ID is the
// 32-digit hex id or any unique prefix of it.
#include <iostream>
#include <memory>

#include "cluster_commands.hpp"
#include "control_client.hpp"
#include "session.hpp"
#include "troupe/runtime/error.hpp"
#include "troupe/runtime/ids.hpp"

namespace troupe::cli {

int follow_job(ControlClient& client, const JobId& job_id, bool stop_on_interrupt);  // cmd_submit.cpp

namespace {

struct JobOptions {
  HeadOptions head;
  std::string job;
  bool json = false;
  bool follow = false;
};

JobId resolve_job(const JobOptions& options) {
  auto reply = get_cluster_state(options.head);
  auto jobs = reply.root<wire::ControlMessage>().getClusterState().getJobs();
  std::vector<JobId> matches;
  for (auto job : jobs) {
    JobId id = from_wire<JobId>(job.getJobId());
    if (id.hex().rfind(options.job, 0) == 0 && !options.job.empty()) matches.push_back(id);
  }
  if (matches.empty()) throw Error(Errc::not_found, "no job " + options.job + " (see `troupe job list`)");
  if (matches.size() > 1) throw UsageError("job id prefix " + options.job + " is ambiguous; give more digits");
  return matches.front();
}

wire::JobUpdate::Reader find_job(wire::ClusterState::Reader state, const JobId& id) {
  for (auto job : state.getJobs()) {
    if (from_wire<JobId>(job.getJobId()) == id) return job;
  }
  throw Error(Errc::not_found, "no job " + id.hex());
}

int job_status(const JobOptions& options) {
  JobId id = resolve_job(options);
  auto reply = get_cluster_state(options.head);
  auto job = find_job(reply.root<wire::ControlMessage>().getClusterState(), id);
  if (options.json) {
    std::cout << job_json(job).dump(2) << '\n';
    return kExitOk;
  }
  std::cout << "job " << id.hex() << " (" << job.getName().cStr() << "): " << job_state_name(job.getState());
  bool final = job.getState() != wire::JobState::PENDING && job.getState() != wire::JobState::RUNNING;
  if (final) std::cout << ", exit code " << job.getExitCode();
  if (job.getError().getMessage().size() > 0) std::cout << " (" << job.getError().getMessage().cStr() << ")";
  std::cout << '\n';
  return kExitOk;
}

int job_logs(const JobOptions& options) {
  JobId id = resolve_job(options);
  ControlClient client(resolve_head_address(options.head.address, temp_root(options.head.temp_dir)),
                       request_timeout(options.head));
  if (options.follow) {
    follow_job(client, id, /*stop_on_interrupt=*/false);
    return kExitOk;
  }
  std::uint64_t offset = 0;
  for (;;) {
    capnp::MallocMessageBuilder message;
    auto logs = message.initRoot<wire::ControlMessage>().initJobLogs();
    to_wire(logs.initJobId(), id);
    logs.setOffset(offset);
    auto reply = client.request(message);
    auto data = reply.root<wire::ControlMessage>().getJobLogsReply().getData();
    if (data.size() == 0) break;
    std::cout.write(reinterpret_cast<const char*>(data.begin()), static_cast<std::streamsize>(data.size()));
    offset += data.size();
  }
  std::cout.flush();
  return kExitOk;
}

int job_stop(const JobOptions& options) {
  JobId id = resolve_job(options);
  ControlClient client(resolve_head_address(options.head.address, temp_root(options.head.temp_dir)),
                       request_timeout(options.head));
  capnp::MallocMessageBuilder message;
  to_wire(message.initRoot<wire::ControlMessage>().initStopJob().initJobId(), id);
  auto reply = client.request(message);
  auto job = reply.root<wire::ControlMessage>().getJobUpdate();
  std::cout << "job " << id.hex() << ": " << job_state_name(job.getState())
            << (job.getState() == wire::JobState::RUNNING ? " (stopping: SIGTERM sent, SIGKILL after 5 s)" : "")
            << '\n';
  return kExitOk;
}

int job_list(const JobOptions& options) {
  auto reply = get_cluster_state(options.head);
  auto state = reply.root<wire::ControlMessage>().getClusterState();
  if (options.json) {
    std::cout << jobs_json(state).dump(2) << '\n';
    return kExitOk;
  }
  if (state.getJobs().size() == 0) {
    std::cout << "no jobs\n";
    return kExitOk;
  }
  for (auto job : state.getJobs()) {
    bool final = job.getState() != wire::JobState::PENDING && job.getState() != wire::JobState::RUNNING;
    std::cout << from_wire<JobId>(job.getJobId()).hex() << "  " << job_state_name(job.getState())
              << (final ? "  exit " + std::to_string(job.getExitCode()) : "") << "  " << job.getName().cStr()
              << '\n';
  }
  return kExitOk;
}

CLI::App* add_job_subcommand(CLI::App& job, const std::string& name, const std::string& help,
                             std::shared_ptr<JobOptions> options, bool needs_id) {
  auto* command = job.add_subcommand(name, help);
  if (needs_id) command->add_option("job_id", options->job, "Job id (or a unique prefix)")->required();
  add_head_options(*command, options->head);
  return command;
}

}  // namespace

void add_job_command(CLI::App& app) {
  auto* job = app.add_subcommand("job", "Inspect and control jobs: status, logs, stop, list");
  job->require_subcommand(1);

  auto status_options = std::make_shared<JobOptions>();
  auto* status = add_job_subcommand(*job, "status", "Show a job's state and exit code", status_options, true);
  status->add_flag("--json", status_options->json, "Print JSON");
  set_action(*status, [status_options] { return job_status(*status_options); });

  auto logs_options = std::make_shared<JobOptions>();
  auto* logs = add_job_subcommand(*job, "logs", "Print a job's output", logs_options, true);
  logs->add_flag("-f,--follow", logs_options->follow, "Keep printing until the job ends");
  set_action(*logs, [logs_options] { return job_logs(*logs_options); });

  auto stop_options = std::make_shared<JobOptions>();
  auto* stop = add_job_subcommand(*job, "stop", "Stop a job (SIGTERM, SIGKILL after 5 s)", stop_options, true);
  set_action(*stop, [stop_options] { return job_stop(*stop_options); });

  auto list_options = std::make_shared<JobOptions>();
  auto* list = add_job_subcommand(*job, "list", "List the cluster's jobs", list_options, false);
  list->add_flag("--json", list_options->json, "Print JSON");
  set_action(*list, [list_options] { return job_list(*list_options); });
}

}  // namespace troupe::cli
