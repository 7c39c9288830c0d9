// JobManager: jobs and the drivers that run them (Ray's GcsJobManager and
// the driver half of GcsWorkerManager).
//
// Contract: a job submitted through the head runs its driver as a child
// process in its own process group with output in jobs/<id>/output.log;
// when the child exits the job is SUCCEEDED, FAILED (exit code) or STOPPED
// (a stopJob came first: SIGTERM, SIGKILL after kStopGrace) and its actors
// are killed. An interactive driver that registers by itself makes a RUNNING
// job; when it (and every other driver of that job) is silent for
// node_timeout() the job is STOPPED (any message from its connection counts;
// a driver told to upload its binary has kUploadGrace more for the upload,
// which its heartbeats queue behind). Either way the actors a lost driver
// owns are killed.
#pragma once

#include <sys/types.h>

#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "head_context.hpp"

namespace troupe::head {

class ActorDirectory;
class BinaryStore;

struct DriverEntry {
  WorkerId worker;
  std::string identity;
  JobId job;
  std::string binary_hash;
  Clock::time_point last_heartbeat;
  Clock::time_point upload_until{};  // told to upload its binary: not lost before this
  bool alive = true;
  Clock::time_point gone_since;  // issue 12 (persist): when it stopped being alive (not stored)
};

struct JobEntry {
  JobId id;
  std::string name;
  wire::JobState state = wire::JobState::PENDING;
  pid_t pid = 0;
  int exit_code = 0;
  Errc error_code = Errc::ok;
  std::string error;
  std::filesystem::path log_path;
  std::string binary_hash;
  bool stop_requested = false;
  bool killed = false;
  Clock::time_point kill_deadline;
  bool head_started = false;  // false: an interactive driver that registered by itself
  // issue 12 (persist): creation order (stored); when it finished (not
  // stored); a driver process a previous head started (not our child: its
  // end is seen by polling the pid, its exit code read from exit_file).
  std::uint64_t sequence = 0;
  Clock::time_point finished_since;
  bool adopted = false;
};

class JobManager {
 public:
  JobManager(HeadContext& context, ActorDirectory& actors, BinaryStore& binaries)
      : context_(context), actors_(actors), binaries_(binaries) {}

  void on_register_driver(const std::string& identity, std::uint64_t request_id, wire::RegisterDriver::Reader reg);
  void on_driver_heartbeat(const std::string& identity, std::uint64_t request_id,
                           wire::DriverHeartbeat::Reader heartbeat);
  void on_submit_job(const std::string& identity, std::uint64_t request_id, wire::SubmitJob::Reader submit);
  void on_stop_job(const std::string& identity, std::uint64_t request_id, wire::StopJob::Reader stop);
  void on_job_logs(const std::string& identity, std::uint64_t request_id, wire::JobLogs::Reader logs);

  // Drivers silent since before now - node_timeout() (and not uploading
  // their binary) are lost.
  void expire_drivers(Clock::time_point now);
  // A message came from `identity`: the driver registered as it is heard from.
  void heard_from(const std::string& identity, Clock::time_point now);
  // Its uploadBinary arrived: the grace for the upload ends (heartbeats sent
  // before it may have come first; those sent after it queued behind it).
  void upload_arrived(const std::string& identity);
  // The head did not run for `gap`: that silence is not the drivers'.
  void forgive(Clock::duration gap, Clock::time_point now);
  // Reaps exited job drivers; SIGKILLs stopped ones past their deadline.
  void reap(Clock::time_point now);
  // SIGTERMs every running job driver, waits up to 2 s (real time), SIGKILLs the rest.
  void stop_all();

  // Whether an actor of `job` owned by `owner` still has someone to serve:
  // its job (if known) is PENDING or RUNNING and its driver (if known) alive.
  bool owner_alive(const JobId& job, const WorkerId& owner) const;
  // The job of the alive driver connected as `identity`, if it is one.
  std::optional<JobId> driver_job(const std::string& identity) const;
  // The binary an actor of this owner and job runs from: the owner driver's,
  // else the job's; empty when neither is known.
  std::string binary_hash_for(const WorkerId& owner, const JobId& job) const;

  void fill_job_update(wire::JobUpdate::Builder update, const JobEntry& job);

  // issue 12 (persist): the stored form of a job or driver (hex id), nullopt
  // when forgotten, and its restore after a head restart.
  std::optional<std::string> encode_job(const std::string& key);
  std::optional<std::string> encode_driver(const std::string& key);
  void restore_job(const std::string& value);
  void restore_driver(const std::string& value);
  void finish_restore();
  // Forgets finished jobs (and their drivers) and gone drivers older than
  // `retention` or beyond the newest `keep`.
  void forget_finished(Clock::time_point now, std::chrono::seconds retention, std::size_t keep);
  const std::vector<JobId>& order() const { return order_; }
  const JobEntry& at(const JobId& id) const { return jobs_.at(id); }

 private:
  JobEntry& job_or_throw(const JobId& id);
  // Starts a submitted job whose binary prepare() checked.
  void start_job(const std::string& identity, std::uint64_t request_id, wire::SubmitJob::Reader submit);
  void reply_job(const std::string& identity, std::uint64_t request_id, const JobEntry& job);
  void driver_lost(DriverEntry& driver, const std::string& why);

  HeadContext& context_;
  ActorDirectory& actors_;
  BinaryStore& binaries_;
  std::map<WorkerId, DriverEntry> drivers_;
  std::map<JobId, JobEntry> jobs_;
  std::vector<JobId> order_;
  std::uint64_t next_sequence_ = 1;
  void touch(const JobEntry& job) { context_.touch('j', job.id.hex()); }
  void touch(const DriverEntry& driver) { context_.touch('d', driver.worker.hex()); }
  void finish(JobEntry& job);
};

}  // namespace troupe::head
