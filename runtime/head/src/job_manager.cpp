#include "job_manager.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <fstream>
#include <set>

#include "actor_directory.hpp"
#include "binary_store.hpp"
#include "state_store.hpp"
#include "troupe/node/files.hpp"
#include "troupe/node/process.hpp"
#include "troupe/runtime/logging.hpp"
#include "troupe/transport/content_hash.hpp"

namespace troupe::head {
namespace {

using wire::ControlMessage;
using wire::JobState;

constexpr std::size_t kMaxLogChunk = std::size_t{1} << 20;
constexpr auto kStopGrace = std::chrono::seconds(5);
// A driver told to upload its binary gets this long for it (it waits 60 s
// for the head's answer) on top of the usual silence: its heartbeats queue
// behind the upload on the same connection.
constexpr auto kUploadGrace = std::chrono::seconds(60);

}  // namespace

JobEntry& JobManager::job_or_throw(const JobId& id) {
  auto it = jobs_.find(id);
  if (it == jobs_.end()) throw Error(Errc::not_found, "no job " + id.hex());
  return it->second;
}

bool JobManager::owner_alive(const JobId& job, const WorkerId& owner) const {
  auto job_it = jobs_.find(job);
  if (job_it != jobs_.end()) {
    auto state = job_it->second.state;
    if (state != JobState::PENDING && state != JobState::RUNNING) return false;
  }
  auto driver_it = drivers_.find(owner);
  return driver_it == drivers_.end() || driver_it->second.alive;
}

std::optional<JobId> JobManager::driver_job(const std::string& identity) const {
  for (const auto& [worker, driver] : drivers_) {
    if (driver.alive && driver.identity == identity) return driver.job;
  }
  return std::nullopt;
}

std::string JobManager::binary_hash_for(const WorkerId& owner, const JobId& job) const {
  std::string hash;
  if (auto driver = drivers_.find(owner); driver != drivers_.end()) hash = driver->second.binary_hash;
  if (hash.empty()) {
    if (auto it = jobs_.find(job); it != jobs_.end()) hash = it->second.binary_hash;
  }
  return hash;
}

// --- drivers ---------------------------------------------------------------------

void JobManager::on_register_driver(const std::string& identity, std::uint64_t request_id,
                                    wire::RegisterDriver::Reader reg) {
  if (reg.getProtocolVersion() != wire::PROTOCOL_VERSION) {
    throw Error(Errc::protocol, "protocol version mismatch (driver " + std::to_string(reg.getProtocolVersion()) +
                                      ", head " + std::to_string(wire::PROTOCOL_VERSION) + ")");
  }
  std::string hash = reg.getBinaryHash().cStr();
  if (!hash.empty() && !transport::valid_hash_name(hash))
    throw Error(Errc::invalid_argument, "bad binary hash \"" + hash + "\"");
  DriverEntry driver;
  driver.worker = from_wire<WorkerId>(reg.getWorkerId());
  if (driver.worker.nil()) throw Error(Errc::invalid_argument, "registerDriver without a workerId");
  driver.identity = identity;
  driver.job = from_wire<JobId>(reg.getJobId());
  driver.binary_hash = hash;
  driver.last_heartbeat = context_.now();
  if (driver.job.nil()) driver.job = JobId::random();
  auto job_it = jobs_.find(driver.job);
  auto known = drivers_.find(driver.worker);
  bool again = known != drivers_.end() && known->second.job == driver.job;  // a reconnecting driver
  if (job_it != jobs_.end() && !job_it->second.head_started && !again) {
    // Joining a job is for the driver `troupe submit` started (it is given
    // TROUPE_JOB_ID); another job's actors and stop are its own driver's.
    throw Error(Errc::permission_denied, "job " + driver.job.short_hex() +
                                             " was started by another driver; a driver cannot join it");
  }
  if (job_it == jobs_.end()) {
    JobEntry job;
    job.id = driver.job;
    job.name = "driver pid " + std::to_string(reg.getPid()) + " on " + reg.getHostname().cStr();
    job.state = JobState::RUNNING;
    job.binary_hash = hash;
    job.sequence = next_sequence_++;
    touch(job);
    jobs_.emplace(job.id, std::move(job));
    order_.push_back(driver.job);
  } else if (job_it->second.binary_hash.empty()) {
    job_it->second.binary_hash = hash;
    touch(job_it->second);
  }
  drivers_[driver.worker] = driver;
  touch(driver);
  TROUPE_LOG_INFO("head: driver {} registered for job {}", driver.worker.short_hex(), driver.job.short_hex());

  capnp::MallocMessageBuilder message;
  auto root = message.initRoot<ControlMessage>();
  root.setRequestId(request_id);
  auto reply = root.initRegisterDriverReply();
  to_wire(reply.initJobId(), driver.job);
  bool need_binary = !hash.empty() && !binaries_.has(hash);
  if (need_binary) drivers_[driver.worker].upload_until = context_.now() + kUploadGrace;
  reply.setNeedBinary(need_binary);
  reply.setHeartbeatIntervalMs(context_.config.heartbeat_ms);
  reply.setDriverTimeoutMs(static_cast<std::uint32_t>(context_.node_timeout().count()));
  context_.send_to(identity, message);
}

void JobManager::on_driver_heartbeat(const std::string& identity, std::uint64_t request_id,
                                     wire::DriverHeartbeat::Reader heartbeat) {
  WorkerId worker = from_wire<WorkerId>(heartbeat.getWorkerId());
  auto it = drivers_.find(worker);
  if (it == drivers_.end() || !it->second.alive) {
    throw Error(Errc::not_found, "driver " + worker.hex() +
                                      " is not registered (or timed out): register again");
  }
  // The heartbeat may come from another socket than the registration; the
  // driver stays addressed by the identity it registered with.
  it->second.last_heartbeat = context_.now();
  context_.reply_ack(identity, request_id);
}

void JobManager::driver_lost(DriverEntry& driver, const std::string& why) {
  driver.alive = false;
  driver.gone_since = context_.now();
  touch(driver);
  TROUPE_LOG_WARN("head: driver {} lost: {}", driver.worker.short_hex(), why);
  actors_.kill_actors_where([&](const ActorEntry& a) { return a.owner == driver.worker; },
                            "its driver went away: " + why);
  auto job = jobs_.find(driver.job);
  if (job != jobs_.end() && !job->second.head_started && job->second.state == JobState::RUNNING) {
    // Nobody waits on an interactive driver's exit status: it just stopped.
    bool other_alive = std::any_of(drivers_.begin(), drivers_.end(), [&](const auto& entry) {
      return entry.second.alive && entry.second.job == driver.job;
    });
    if (!other_alive) {
      job->second.state = JobState::STOPPED;
      job->second.error_code = Errc::actor_died;
      job->second.error = "driver went away: " + why;
      finish(job->second);
    }
  }
}

void JobManager::heard_from(const std::string& identity, Clock::time_point now) {
  for (auto& [worker, driver] : drivers_) {
    if (driver.alive && driver.identity == identity) {
      driver.last_heartbeat = std::max(driver.last_heartbeat, now);
    }
  }
}

void JobManager::upload_arrived(const std::string& identity) {
  for (auto& [worker, driver] : drivers_) {
    if (driver.identity == identity) driver.upload_until = {};
  }
}

void JobManager::forgive(Clock::duration gap, Clock::time_point now) {
  for (auto& [worker, driver] : drivers_) {
    if (driver.alive) driver.last_heartbeat = std::min(now, driver.last_heartbeat + gap);
  }
}

void JobManager::expire_drivers(Clock::time_point now) {
  for (auto& [id, driver] : drivers_) {
    if (driver.alive && now >= driver.upload_until && now - driver.last_heartbeat > context_.node_timeout()) {
      driver_lost(driver, "no heartbeat for " + std::to_string(context_.node_timeout().count()) + " ms");
    }
  }
}

// --- jobs ----------------------------------------------------------------------------

void JobManager::fill_job_update(wire::JobUpdate::Builder update, const JobEntry& job) {
  to_wire(update.initJobId(), job.id);
  update.setState(job.state);
  update.setName(job.name);
  to_wire(update.initDriverNodeId(), job.head_started ? context_.config.head_node_id : NodeId{});
  update.setExitCode(job.exit_code);
  auto error = update.initError();
  error.setCode(wire_code(job.error_code));
  error.setMessage(job.error);
}

void JobManager::reply_job(const std::string& identity, std::uint64_t request_id, const JobEntry& job) {
  capnp::MallocMessageBuilder message;
  auto root = message.initRoot<ControlMessage>();
  root.setRequestId(request_id);
  fill_job_update(root.initJobUpdate(), job);
  context_.send_to(identity, message);
}

void JobManager::on_submit_job(const std::string& identity, std::uint64_t request_id,
                               wire::SubmitJob::Reader submit) {
  if (submit.getProtocolVersion() != wire::PROTOCOL_VERSION) {
    throw Error(Errc::protocol, "protocol version mismatch (CLI " + std::to_string(submit.getProtocolVersion()) +
                                      ", head " + std::to_string(wire::PROTOCOL_VERSION) + ")");
  }
  if (submit.getArgv().size() == 0) throw Error(Errc::invalid_argument, "submitJob with an empty argv");
  std::string hash = submit.getBinaryHash().cStr();
  if (!transport::valid_hash_name(hash)) throw Error(Errc::invalid_argument, "bad binary hash \"" + hash + "\"");
  // Read the binary once: every read counts against the frame's traversal
  // limit (twice the largest frame), so three reads of a 200 MB binary fail.
  const capnp::Data::Reader binary = submit.getBinary();
  if (binary.size() == 0 && !binaries_.has(hash)) {
    throw Error(Errc::not_found, "the head has no binary " + hash + "; send it with the job");
  }
  // issue 12 (persist): the binary is checked (and stored) on the binary
  // store's worker, not here; the job starts when that is done.
  auto request = std::make_shared<capnp::MallocMessageBuilder>();
  auto copy = request->initRoot<wire::SubmitJob>();
  copy.setProtocolVersion(submit.getProtocolVersion());
  copy.setName(submit.getName());
  copy.setArgv(submit.getArgv());
  copy.setEnv(submit.getEnv());
  copy.setBinaryHash(hash);
  copy.setResources(submit.getResources());
  std::shared_ptr<std::string> bytes;
  if (binary.size() > 0) {
    bytes = std::make_shared<std::string>(reinterpret_cast<const char*>(binary.begin()), binary.size());
  }
  binaries_.prepare(hash, std::move(bytes), [this, identity, request_id, request](std::optional<Error> failure) {
    if (failure) {
      context_.reply_error(identity, request_id, failure->code(), failure->message());
      return;
    }
    try {
      start_job(identity, request_id, request->getRoot<wire::SubmitJob>());
    } catch (const Error& error) {
      context_.reply_error(identity, request_id, error.code(), error.message());
    } catch (const std::exception& error) {
      context_.reply_error(identity, request_id, Errc::internal, error.what());
    }
  });
}

void JobManager::start_job(const std::string& identity, std::uint64_t request_id, wire::SubmitJob::Reader submit) {
  std::string hash = submit.getBinaryHash().cStr();
  JobEntry job;
  job.id = JobId::random();
  job.name = submit.getName().size() > 0 ? submit.getName().cStr()
                                          : std::filesystem::path(submit.getArgv()[0].cStr()).filename().string();
  job.binary_hash = hash;
  job.head_started = true;
  auto job_dir = context_.config.session_dir / "jobs" / job.id.hex();
  std::filesystem::create_directories(job_dir);
  job.log_path = job_dir / "output.log";
  // The log exists from the start (`troupe job logs` may ask at once), private.
  if (int fd = ::open(job.log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600); fd >= 0) ::close(fd);

  node::SpawnOptions spawn;
  spawn.program = binaries_.path(hash).string();  // checked against its hash by prepare()
  for (auto arg : submit.getArgv()) spawn.argv.emplace_back(arg.cStr());
  spawn.env = node::current_environment();
  for (const char* name : {"TROUPE_ACTOR_SPEC", "TROUPE_HEAD_ADDRESS", "TROUPE_NODE_ID", "TROUPE_NODE_IP"}) {
    spawn.env.erase(name);
  }
  // issue 13 (cluster): the names of the job's own variables (--env) let
  // the driver hand them on to every actor it creates (cluster_runtime.cpp).
  std::string job_env_names;
  for (auto var : submit.getEnv()) {
    spawn.env[var.getName().cStr()] = var.getValue().cStr();
    if (!job_env_names.empty()) job_env_names += ",";
    job_env_names += var.getName().cStr();
  }
  if (!job_env_names.empty()) spawn.env["TROUPE_JOB_ENV_NAMES"] = job_env_names;
  node::set_membership_env(spawn.env, context_.config.token_file);
  spawn.env["TROUPE_ADDRESS"] = context_.address();
  spawn.env["TROUPE_JOB_ID"] = job.id.hex();
  spawn.env["TROUPE_JOB_EXIT_FILE"] = (job_dir / "exit_code").string();
  spawn.output_path = job.log_path.string();
  spawn.new_process_group = true;
  try {
    job.pid = node::spawn_process(spawn);
    job.state = JobState::RUNNING;
    TROUPE_LOG_INFO("head: job {} ({}) started as pid {}", job.id.short_hex(), job.name, job.pid);
  } catch (const std::exception& error) {
    job.state = JobState::FAILED;
    job.exit_code = 127;
    job.error_code = Errc::invalid_argument;
    job.error = error.what();
  }
  JobId id = job.id;
  job.sequence = next_sequence_++;
  touch(job);
  jobs_.emplace(id, std::move(job));
  order_.push_back(id);
  if (jobs_.at(id).state == JobState::FAILED) finish(jobs_.at(id));
  reply_job(identity, request_id, jobs_.at(id));
}

void JobManager::on_stop_job(const std::string& identity, std::uint64_t request_id, wire::StopJob::Reader stop) {
  JobEntry& job = job_or_throw(from_wire<JobId>(stop.getJobId()));
  if (auto own = actors_.job_of_identity(identity); own && *own != job.id) {
    throw Error(Errc::permission_denied, "job " + own->short_hex() + " may stop only itself, not job " +
                                             job.id.short_hex());
  }
  touch(job);
  if (job.state == JobState::RUNNING || job.state == JobState::PENDING) {
    job.stop_requested = true;
    if (job.head_started && job.pid > 0) {
      ::kill(-job.pid, SIGTERM);
      job.kill_deadline = context_.now() + kStopGrace;
    } else {
      job.state = JobState::STOPPED;
      job.error = "stopped by request";
      finish(job);
      actors_.kill_actors_where([&](const ActorEntry& a) { return a.job == job.id; }, "its job was stopped");
    }
  }
  reply_job(identity, request_id, job);
}

void JobManager::on_job_logs(const std::string& identity, std::uint64_t request_id, wire::JobLogs::Reader logs) {
  JobEntry& job = job_or_throw(from_wire<JobId>(logs.getJobId()));
  capnp::MallocMessageBuilder message;
  auto root = message.initRoot<ControlMessage>();
  root.setRequestId(request_id);
  auto reply = root.initJobLogsReply();
  // The state first: once it is final the file is complete, so the data
  // read after it holds everything up to the end.
  fill_job_update(reply.initJob(), job);
  std::size_t limit =
      logs.getMaxBytes() == 0 ? kMaxLogChunk : std::min<std::size_t>(logs.getMaxBytes(), kMaxLogChunk);
  std::string data;
  std::uint64_t offset = logs.getOffset();
  if (!job.log_path.empty()) {
    std::ifstream in(job.log_path, std::ios::binary);
    if (in) {
      in.seekg(0, std::ios::end);
      auto size = static_cast<std::uint64_t>(in.tellg());
      if (offset < size) {
        std::size_t count = std::min<std::uint64_t>(limit, size - offset);
        data.resize(count);
        in.seekg(static_cast<std::streamoff>(offset));
        in.read(data.data(), static_cast<std::streamsize>(count));
        data.resize(static_cast<std::size_t>(in.gcount()));
      }
    }
  }
  reply.setData(kj::arrayPtr(reinterpret_cast<const kj::byte*>(data.data()), data.size()));
  reply.setNextOffset(offset + data.size());
  context_.send_to(identity, message);
}

void JobManager::reap(Clock::time_point now) {
  for (auto& [id, job] : jobs_) {
    if (!job.head_started || job.pid <= 0 || job.state != JobState::RUNNING) continue;
    std::optional<int> status;
    if (job.adopted) {
      // Not our child: it ended when its pid is gone; its runtime wrote the
      // exit code (none: killed by a signal, or not a troupe driver).
      if (::kill(job.pid, 0) == 0 || errno != ESRCH) {
        status.reset();
      } else if (auto text = node::read_file(job.log_path.parent_path() / "exit_code")) {
        status = (std::atoi(text->c_str()) & 0xff) << 8;  // as waitpid reports exit(code)
      } else {
        status = SIGKILL;  // as waitpid reports a kill: the code is unknown
      }
    } else {
      status = node::try_reap(job.pid);
    }
    if (status) {
      job.exit_code = node::exit_code_of(*status);
      ::kill(-job.pid, SIGKILL);  // anything the driver left in its group
      if (job.stop_requested) {
        job.state = JobState::STOPPED;
        job.error_code = Errc::ok;
        job.error = "stopped by request (driver " + node::describe_wait_status(*status) + ")";
      } else if (job.exit_code == 0) {
        job.state = JobState::SUCCEEDED;
      } else {
        job.state = JobState::FAILED;
        job.error_code = Errc::task_failed;  // the driver failed
        job.error = "driver " + node::describe_wait_status(*status);
      }
      TROUPE_LOG_INFO("head: job {} finished: {}", id.short_hex(), node::describe_wait_status(*status));
      finish(job);
      for (auto& [worker, driver] : drivers_) {
        if (driver.job == id && driver.alive) {
          driver.alive = false;
          driver.gone_since = now;
          touch(driver);
        }
      }
      JobId job_id = id;
      actors_.kill_actors_where([&](const ActorEntry& a) { return a.job == job_id; }, "its job's driver exited");
    } else if (job.stop_requested && !job.killed && now >= job.kill_deadline) {
      ::kill(-job.pid, SIGKILL);
      job.killed = true;
      touch(job);
    }
  }
}

void JobManager::stop_all() {
  std::vector<JobEntry*> running;
  for (auto& [id, job] : jobs_) {
    if (job.head_started && job.pid > 0 && job.state == JobState::RUNNING) {
      ::kill(-job.pid, SIGTERM);
      running.push_back(&job);
    }
  }
  auto deadline = Clock::now() + std::chrono::seconds(2);
  while (!running.empty() && Clock::now() < deadline) {
    std::erase_if(running, [](JobEntry* job) { return node::try_reap(job->pid).has_value(); });
    ::usleep(20000);
  }
  for (JobEntry* job : running) {
    ::kill(-job->pid, SIGKILL);
    ::waitpid(job->pid, nullptr, 0);
  }
}

// --- issue 12 (persist): the stored form, retention ---------------------------------

void JobManager::finish(JobEntry& job) {
  job.finished_since = context_.now();
  touch(job);
}

std::optional<std::string> JobManager::encode_job(const std::string& key) {
  auto id = JobId::parse(key);
  auto it = id ? jobs_.find(*id) : jobs_.end();
  if (it == jobs_.end()) return std::nullopt;
  const JobEntry& job = it->second;
  return RecordWriter()
      .id(job.id)
      .u64(job.sequence)
      .str(job.name)
      .u64(static_cast<std::uint64_t>(job.state))
      .i64(job.pid)
      .i64(job.exit_code)
      .u64(wire_code(job.error_code))
      .str(job.error)
      .str(job.log_path.string())
      .str(job.binary_hash)
      .u64(job.stop_requested ? 1 : 0)
      .u64(job.killed ? 1 : 0)
      .u64(job.head_started ? 1 : 0)
      .take();
}

std::optional<std::string> JobManager::encode_driver(const std::string& key) {
  auto id = WorkerId::parse(key);
  auto it = id ? drivers_.find(*id) : drivers_.end();
  if (it == drivers_.end()) return std::nullopt;
  const DriverEntry& driver = it->second;
  return RecordWriter()
      .id(driver.worker)
      .str(driver.identity)
      .id(driver.job)
      .str(driver.binary_hash)
      .u64(driver.alive ? 1 : 0)
      .take();
}

void JobManager::restore_job(const std::string& value) {
  RecordReader in(value);
  JobEntry job;
  job.id = in.id<JobId>();
  job.sequence = in.u64();
  job.name = in.str();
  job.state = static_cast<JobState>(in.u64());
  job.pid = static_cast<pid_t>(in.i64());
  job.exit_code = static_cast<int>(in.i64());
  job.error_code = errc_from_wire(static_cast<std::uint16_t>(in.u64()));
  job.error = in.str();
  job.log_path = in.str();
  job.binary_hash = in.str();
  job.stop_requested = in.u64() != 0;
  job.killed = in.u64() != 0;
  job.head_started = in.u64() != 0;
  auto now = context_.now();
  job.finished_since = now;
  job.kill_deadline = now + kStopGrace;
  // A driver the previous head started outlives it (its own process group).
  job.adopted = job.head_started && job.pid > 0 && job.state == JobState::RUNNING;
  next_sequence_ = std::max(next_sequence_, job.sequence + 1);
  JobId id = job.id;
  jobs_.emplace(id, std::move(job));
  order_.push_back(id);
}

void JobManager::restore_driver(const std::string& value) {
  RecordReader in(value);
  DriverEntry driver;
  driver.worker = in.id<WorkerId>();
  driver.identity = in.str();
  driver.job = in.id<JobId>();
  driver.binary_hash = in.str();
  driver.alive = in.u64() != 0;
  // A driver alive then has the driver timeout from now to heartbeat again.
  driver.last_heartbeat = context_.now();
  driver.gone_since = context_.now();
  drivers_[driver.worker] = std::move(driver);
}

void JobManager::finish_restore() {
  std::sort(order_.begin(), order_.end(),
            [&](const JobId& a, const JobId& b) { return jobs_.at(a).sequence < jobs_.at(b).sequence; });
}

void JobManager::forget_finished(Clock::time_point now, std::chrono::seconds retention, std::size_t keep) {
  std::vector<JobEntry*> finished;
  for (auto& [id, job] : jobs_) {
    if (job.state != JobState::PENDING && job.state != JobState::RUNNING) finished.push_back(&job);
  }
  std::sort(finished.begin(), finished.end(),
            [](JobEntry* a, JobEntry* b) { return a->finished_since > b->finished_since; });
  std::set<JobId> forget;
  for (std::size_t i = 0; i < finished.size(); ++i) {
    if (i >= keep || now - finished[i]->finished_since > retention) forget.insert(finished[i]->id);
  }
  for (const auto& id : forget) {
    jobs_.erase(id);
    context_.touch('j', id.hex());
  }
  if (!forget.empty()) std::erase_if(order_, [&](const JobId& id) { return forget.count(id) != 0; });
  // Drivers: of a forgotten job, or gone for longer than the retention.
  std::vector<DriverEntry*> gone;
  for (auto& [worker, driver] : drivers_) {
    if (!driver.alive) gone.push_back(&driver);
  }
  std::sort(gone.begin(), gone.end(), [](DriverEntry* a, DriverEntry* b) { return a->gone_since > b->gone_since; });
  std::set<WorkerId> drop;
  for (std::size_t i = 0; i < gone.size(); ++i) {
    if (i >= keep || now - gone[i]->gone_since > retention || forget.count(gone[i]->job) != 0)
      drop.insert(gone[i]->worker);
  }
  for (const auto& worker : drop) {
    drivers_.erase(worker);
    context_.touch('d', worker.hex());
  }
}

}  // namespace troupe::head
