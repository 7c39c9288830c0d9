// Cluster-mode actor call cost across processes, beside the raw transports
// measured in the same run:
//
//   troupe:   a no-op method on an actor in its own actor host process,
//             called from this driver (ZeroMQ call plane, Cap'n Proto frames)
//   raw zmq:  DEALER -> ROUTER echo over tcp://127.0.0.1, a forked child as
//             the echo server, frames of the same sizes as troupe's no-op
//             CallRequest / CallReply
//   raw UCX:  active messages (ucp_am_send_nbx, ucp_worker_set_am_recv_handler)
//             between two forked processes, both busy-polling
//             ucp_worker_progress; the transport is UCX's choice (printed)
//
//   latency:     one call + get() at a time (p50, p99 over the calls)
//   throughput:  issue N calls, then wait for all of them (1:1: one driver
//                thread -> one actor; n:n: n driver threads, each to its own
//                actor); the zmq baseline sends N frames, then receives N
//
// The bench starts its own one-machine cluster with the troupe CLI (a head
// with its node manager, in a temporary session directory, on a free port)
// and always stops it, on errors, SIGINT/SIGTERM and stalls too. The node
// manager runs this same binary as the actor host (TROUPE_ACTOR_SPEC).
//
// Systems are measured in alternating order, repeat after repeat, and each
// figure is the median over repeats (the machine is small, shared, noisy).
#include "bench_util.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <zmq.hpp>

#include "troupe/transport/schema/call.capnp.h"
#include "troupe/troupe.hpp"
#include "ucx_am_baseline.hpp"
#include "zmq_echo_baseline.hpp"

namespace bench_actors {

class ClusterNoop {
 public:
  ClusterNoop() = default;
  void noop() {}
};

}  // namespace bench_actors

TROUPE_ACTOR(bench_actors::ClusterNoop, (), noop);

namespace {

using namespace std::chrono_literals;
using troupe::bench::Better;
using troupe::bench::Clock;
using troupe::bench::Samples;
using troupe::bench::measure_parallel;
using troupe::bench::median;
using Noop = bench_actors::ClusterNoop;

// ---- the cluster this bench starts and stops ---------------------------------------

// Set before any thread or signal handler exists; read by the emergency stop.
char g_cli_path[4096];
char g_temp_dir[4096];
std::atomic<bool> g_cluster_up{false};
std::atomic<bool> g_stopping{false};

// Runs `path argv...` to completion with output discarded; fork, execv and
// waitpid only (async-signal-safe).
void run_quietly(const char* path, char* const argv[]) {
  pid_t pid = ::fork();
  if (pid == 0) {
    int null_fd = ::open("/dev/null", O_RDWR);
    if (null_fd >= 0) ::dup2(null_fd, 1), ::dup2(null_fd, 2);
    ::execv(path, argv);
    ::_exit(127);
  }
  if (pid > 0) {
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
  }
}

// `troupe stop --force --temp-dir DIR`, then removes DIR; from a signal
// handler or the watchdog.
void emergency_stop_cluster() {
  if (!g_cluster_up.load() || g_stopping.exchange(true)) return;
  char troupe[] = "troupe", stop[] = "stop", force[] = "--force", temp_dir[] = "--temp-dir";
  char* const stop_argv[] = {troupe, stop, force, temp_dir, g_temp_dir, nullptr};
  run_quietly(g_cli_path, stop_argv);
  char rm[] = "rm", rf[] = "-rf", end[] = "--";
  char* const rm_argv[] = {rm, rf, end, g_temp_dir, nullptr};
  run_quietly("/bin/rm", rm_argv);
}

void on_fatal_signal(int signal) {
  emergency_stop_cluster();
  ::_exit(128 + signal);
}

// Runs argv[0] with the arguments, output appended to `log_path`; its exit
// code, or -1 if it could not run or did not finish within `timeout`.
int run_command(const std::vector<std::string>& args, const std::string& log_path, std::chrono::seconds timeout) {
  std::vector<char*> argv;
  for (const auto& arg : args) argv.push_back(const_cast<char*>(arg.c_str()));
  argv.push_back(nullptr);
  std::fflush(nullptr);
  pid_t pid = ::fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    int log_fd = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    int null_fd = ::open("/dev/null", O_RDONLY);
    if (null_fd >= 0) ::dup2(null_fd, 0);
    if (log_fd >= 0) ::dup2(log_fd, 1), ::dup2(log_fd, 2);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  const auto deadline = Clock::now() + timeout;
  int status = 0;
  for (;;) {
    pid_t done = ::waitpid(pid, &status, WNOHANG);
    if (done == pid) break;
    if (done < 0 && errno != EINTR) return -1;
    if (Clock::now() > deadline) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      return -1;
    }
    std::this_thread::sleep_for(10ms);
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

int free_tcp_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return 0;
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = 0;
  int port = 0;
  socklen_t length = sizeof address;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0 &&
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) == 0)
    port = ntohs(address.sin_port);
  ::close(fd);
  return port;
}

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

class BenchCluster {
 public:
  BenchCluster(std::string cli, bool insecure) : cli_(std::move(cli)), insecure_(insecure) {}
  ~BenchCluster() { stop(); }

  // Starts a head (with its node manager) in a fresh temporary session root.
  void start() {
    if (::access(cli_.c_str(), X_OK) != 0)
      throw std::runtime_error("no troupe CLI at " + cli_ + " (build troupe_cli, or pass --troupe-cli PATH)");
    char pattern[] = "/tmp/troupe-cluster-bench-XXXXXX";
    if (!::mkdtemp(pattern)) throw std::runtime_error("mkdtemp failed");
    dir_ = pattern;
    std::snprintf(g_cli_path, sizeof g_cli_path, "%s", cli_.c_str());
    std::snprintf(g_temp_dir, sizeof g_temp_dir, "%s", dir_.c_str());
    log_ = dir_ + "/bench-cli.log";
    for (int attempt = 0; attempt < 3; ++attempt) {
      const int port = free_tcp_port();
      if (port == 0) continue;
      g_cluster_up.store(true);  // from here on a stop is due, whatever happens
      std::vector<std::string> args{cli_,       "start", "--head", "--port", std::to_string(port), "--node-ip",
                                    "127.0.0.1", "--temp-dir", dir_, "--gpus", "", "--num-cpus", "8", "--wait", "30"};
      if (insecure_) args.push_back("--insecure");
      const int code = run_command(args, log_, 60s);
      if (code == 0) {
        address_ = "127.0.0.1:" + std::to_string(port);
        return;
      }
      run_command({cli_, "stop", "--force", "--temp-dir", dir_}, log_, 30s);  // whatever half-started
    }
    throw std::runtime_error("`troupe start --head` failed; its output:\n" + read_text(log_));
  }

  const std::string& address() const noexcept { return address_; }
  const std::string& dir() const noexcept { return dir_; }

  void stop() {
    if (dir_.empty()) return;
    if (g_cluster_up.load() && !g_stopping.exchange(true)) {
      if (run_command({cli_, "stop", "--force", "--temp-dir", dir_}, log_, 30s) != 0)
        std::fprintf(stderr, "cluster_call_bench: `troupe stop --force --temp-dir %s` failed:\n%s\n", dir_.c_str(),
                     read_text(log_).c_str());
    }
    g_cluster_up.store(false);
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
    dir_.clear();
  }

 private:
  std::string cli_;
  std::string dir_;
  bool insecure_ = false;
  std::string log_;
  std::string address_;
};

// <build>/bench/cluster_call_bench -> <build>/cli/troupe
std::string default_cli_path() {
  std::error_code error;
  auto exe = std::filesystem::read_symlink("/proc/self/exe", error);
  if (error) return "troupe";
  return (exe.parent_path().parent_path() / "cli" / "troupe").string();
}

// ---- stall watchdog ---------------------------------------------------------------------

// A wait that crosses processes without a timeout (ObjectRef::get()) could
// hang if something breaks; the watchdog then stops the cluster and exits.
class Watchdog {
 public:
  explicit Watchdog(std::chrono::seconds limit) : limit_(limit) {
    touch();
    thread_ = std::thread([this] {
      while (!done_.load()) {
        std::this_thread::sleep_for(200ms);
        const auto idle = Clock::now().time_since_epoch().count() - last_.load();
        if (std::chrono::nanoseconds(idle) > limit_) {
          std::fprintf(stderr, "cluster_call_bench: no progress for %lld s; stopping the cluster and exiting\n",
                       static_cast<long long>(limit_.count()));
          std::fflush(stderr);
          emergency_stop_cluster();
          ::_exit(1);
        }
      }
    });
  }
  ~Watchdog() {
    done_.store(true);
    thread_.join();
  }
  void touch() { last_.store(Clock::now().time_since_epoch().count()); }

 private:
  std::chrono::seconds limit_;
  std::atomic<Clock::rep> last_{0};
  std::atomic<bool> done_{false};
  std::thread thread_;
};

// ---- measurements -----------------------------------------------------------------------

// The sizes of troupe's frames for a no-op call: the CallRequest the driver
// sends and the CallReply it gets back, built as the runtime builds them.
struct FrameSizes {
  std::size_t request = 0, reply = 0;
};

FrameSizes troupe_frame_sizes() {
  FrameSizes sizes;
  {
    capnp::MallocMessageBuilder message;
    auto request = message.initRoot<troupe::wire::CallMessage>().initRequest();
    request.setCallId(12345);
    auto actor = request.initActorId();
    actor.setHi(0), actor.setLo(0x1234567890abcdefull);
    request.setActorIncarnation(0);
    auto caller = request.initCallerId();
    caller.setHi(0x1234567890abcdefull), caller.setLo(0xfedcba0987654321ull);
    request.setSeq(777);
    request.setMethod("noop");
    request.setReturnTo("tcp://127.0.0.1:45678");
    auto result = request.initResultId();
    result.setHi(0x1234567890abcdefull), result.setLo(99);
    request.initArgs(0);
    sizes.request = capnp::computeSerializedSizeInWords(message) * sizeof(capnp::word);
  }
  {
    capnp::MallocMessageBuilder message;
    auto reply = message.initRoot<troupe::wire::CallMessage>().initReply();
    reply.setCallId(12345);
    auto actor = reply.initActorId();
    actor.setHi(0), actor.setLo(0x1234567890abcdefull);
    reply.setValue(capnp::Data::Reader());
    sizes.reply = capnp::computeSerializedSizeInWords(message) * sizeof(capnp::word);
  }
  return sizes;
}

struct Latency {
  double p50 = 0, p99 = 0, mean = 0;
};

template <class RoundTrip>
Latency measure_latency(int iterations, RoundTrip&& round_trip) {
  Samples samples;
  samples.reserve(static_cast<std::size_t>(iterations));
  for (int i = 0; i < iterations; ++i) {
    const auto start = Clock::now();
    round_trip();
    samples.add(troupe::bench::micros_since(start));
  }
  return {samples.p50(), samples.p99(), samples.mean()};
}

// `callers` threads run `per_caller(index, n / callers)` together; calls/s
// over the window from their common start to the last one's end.

std::optional<double> median_or_none(const std::vector<double>& values) {
  if (values.empty()) return std::nullopt;
  return median(values);
}

// Pulls "--troupe-cli PATH" / "--troupe-cli=PATH" out of argv (the shared
// harness only knows integer flags).
std::string take_string_flag(int& argc, char** argv, const std::string& flag) {
  std::string value;
  int out = 1;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == flag && i + 1 < argc) {
      value = argv[++i];
    } else if (arg.rfind(flag + "=", 0) == 0) {
      value = arg.substr(flag.size() + 1);
    } else {
      argv[out++] = argv[i];
    }
  }
  argc = out;
  argv[argc] = nullptr;
  return value;
}

int init_probe() {
  troupe::InitOptions options;
  options.log_level = "warn";
  const auto start = Clock::now();
  troupe::init(options);
  const double micros = troupe::bench::micros_since(start);
  troupe::shutdown();
  std::printf("init_us %.0f\n", micros);
  return 0;
}

// How long a driver's troupe::init() takes against the running cluster,
// measured in a fresh process (this binary with --init-probe): `repeats`
// runs with the binary-hash cache (the first fills it) and as many with it
// off (the binary hashed at every start), alternating. Returns {cached,
// hashing} medians in ms, or {-1, -1} when a probe failed.
std::pair<double, double> measure_init(const std::string& dir, int repeats) {
  std::error_code error;
  const auto self = std::filesystem::read_symlink("/proc/self/exe", error).string();
  const std::string cache_dir = dir + "/binary-hash-cache";
  ::setenv("TROUPE_CACHE_DIR", cache_dir.c_str(), 1);
  auto probe = [&](bool cached) {
    if (cached) ::unsetenv("TROUPE_BINARY_HASH_CACHE");
    else ::setenv("TROUPE_BINARY_HASH_CACHE", "0", 1);
    const std::string log = dir + "/init-probe.log";
    std::filesystem::remove(log, error);
    if (run_command({self, "--init-probe"}, log, 60s) != 0) {
      std::fprintf(stderr, "cluster_call_bench: init probe failed:\n%s\n", read_text(log).c_str());
      return -1.0;
    }
    const std::string text = read_text(log);
    const auto at = text.find("init_us ");
    return at == std::string::npos ? -1.0 : std::atof(text.c_str() + at + 8) / 1000.0;
  };
  std::vector<double> cached, hashing;
  const double first = probe(true);  // fills the cache
  if (first < 0) return {-1, -1};
  for (int r = 0; r < repeats; ++r) {
    const double c = probe(true), h = probe(false);
    if (c < 0 || h < 0) return {-1, -1};
    cached.push_back(c), hashing.push_back(h);
  }
  ::unsetenv("TROUPE_BINARY_HASH_CACHE");
  ::unsetenv("TROUPE_CACHE_DIR");
  return {median(cached), median(hashing)};
}

}  // namespace

int main(int argc, char** argv) {
  // In an actor host (the node manager re-ran this binary) this never returns.
  if (const char* spec = std::getenv("TROUPE_ACTOR_SPEC"); spec && *spec) {
    troupe::init();
    return 0;
  }

  // A driver that only starts and stops (the init rows): prints how long
  // troupe::init() took, in microseconds.
  if (argc == 2 && std::string(argv[1]) == "--init-probe") return init_probe();

  int callers = 2;
  std::string cli_path = take_string_flag(argc, argv, "--troupe-cli");
  // --insecure: the cluster runs without a token (plain sockets), for
  // scripts/bench.sh security's comparison with the default (CURVE).
  bool insecure = false;
  {
    int out = 1;
    for (int i = 1; i < argc; ++i) {
      if (std::string(argv[i]) == "--insecure") insecure = true;
      else argv[out++] = argv[i];
    }
    argc = out;
    argv[argc] = nullptr;
  }
  troupe::bench::Cli cli(
      "cluster_call_bench",
      "Cross-process no-op actor calls (cluster mode, a temporary one-machine cluster started\n"
      "with the troupe CLI) beside a raw ZeroMQ DEALER->ROUTER echo of the same frame sizes and\n"
      "a raw UCX active-message round trip, all measured in this run.\n"
      "  --troupe-cli PATH  the troupe CLI (default: <build>/cli/troupe next to this binary)\n"
      "  --insecure         start the cluster with --insecure (no token, no CURVE)");
  cli.add_int("--callers", &callers, "driver threads (each with its own actor) for the n:n throughput");
  const auto options = cli.parse(argc, argv);
  if (cli_path.empty()) cli_path = default_cli_path();

  const int latency_iterations = options.iterations_or(5000, 1000);
  const int throughput_calls = options.iterations_or(50000, 5000);
  const int repeats = options.repeats_or(9, 3);
  const int warmup = options.quick ? 300 : 2000;
  const FrameSizes frames = troupe_frame_sizes();

  // ---- baselines: forked while this process still has one thread -----------------
  std::vector<std::unique_ptr<troupe::bench::ZmqEchoServer>> echo_servers;
  std::unique_ptr<troupe::bench::UcxAmBaseline> ucx;
  std::string ucx_problem;
  try {
    for (int c = 0; c < callers; ++c)
      echo_servers.push_back(std::make_unique<troupe::bench::ZmqEchoServer>(frames.reply));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "cluster_call_bench: %s\n", e.what());
    return 1;
  }
  try {
    ucx = std::make_unique<troupe::bench::UcxAmBaseline>(frames.request, frames.reply);
  } catch (const std::exception& e) {
    ucx_problem = e.what();
    std::fprintf(stderr, "cluster_call_bench: no UCX baseline: %s\n", e.what());
  }

  // ---- the cluster ----------------------------------------------------------------------
  BenchCluster cluster(cli_path, insecure);
  struct sigaction action {};
  action.sa_handler = on_fatal_signal;
  sigemptyset(&action.sa_mask);
  for (int signal : {SIGINT, SIGTERM, SIGHUP}) ::sigaction(signal, &action, nullptr);

  // Figures, filled by the measurement below.
  std::vector<double> t_p50, t_p99, t_mean, z_p50, z_p99, z_mean, u_p50, u_p99, u_mean;
  std::vector<double> t_tput, z_tput, u_tput, t_par, z_par;
  std::pair<double, double> init_ms{-1, -1};
  int code = 0;
  {
    std::optional<Watchdog> watchdog;
    try {
      cluster.start();
      watchdog.emplace(options.quick ? 60s : 180s);
      ::setenv("TROUPE_ADDRESS", cluster.address().c_str(), 1);
      ::setenv("TROUPE_TEMP_DIR", cluster.dir().c_str(), 1);  // where this driver finds the cluster's token
      init_ms = measure_init(cluster.dir(), options.quick ? 2 : 5);
      watchdog->touch();
      troupe::InitOptions init_options;
      if (const char* level = std::getenv("TROUPE_LOG_LEVEL"); !level || !*level) init_options.log_level = "warn";
      troupe::init(init_options);

      std::vector<troupe::ActorHandle<Noop>> actors;
      for (int c = 0; c < std::max(1, callers); ++c) actors.push_back(troupe::actor<Noop>());
      for (auto& actor : actors) actor.call<&Noop::noop>().get(60s);  // up and reachable
      watchdog->touch();

      zmq::context_t zmq_context(1);  // like the driver's: one I/O thread
      std::vector<std::unique_ptr<troupe::bench::ZmqEchoClient>> zmq_clients;
      for (auto& server : echo_servers)
        zmq_clients.push_back(
            std::make_unique<troupe::bench::ZmqEchoClient>(zmq_context, server->endpoint(), frames.request));

      // A UCX failure mid-run loses only the UCX column, not the run.
      auto drop_ucx = [&](const std::exception& e) {
        ucx_problem = e.what();
        std::fprintf(stderr, "cluster_call_bench: UCX baseline dropped: %s\n", e.what());
        ucx.reset();
        u_p50.clear(), u_p99.clear(), u_mean.clear(), u_tput.clear();
      };

      auto& actor = actors[0];
      auto& zmq_client = *zmq_clients[0];
      auto troupe_round_trip = [&] { actor.call<&Noop::noop>().get(); };
      auto zmq_round_trip = [&] { zmq_client.round_trip(); };
      troupe::bench::warm_up(warmup, troupe_round_trip);
      troupe::bench::warm_up(warmup, zmq_round_trip);
      watchdog->touch();

      // ---- latency ----------------------------------------------------------------------
      for (int r = 0; r < repeats; ++r) {
        auto run_troupe = [&] {
          auto f = measure_latency(latency_iterations, troupe_round_trip);
          t_p50.push_back(f.p50), t_p99.push_back(f.p99), t_mean.push_back(f.mean);
        };
        auto run_zmq = [&] {
          auto f = measure_latency(latency_iterations, zmq_round_trip);
          z_p50.push_back(f.p50), z_p99.push_back(f.p99), z_mean.push_back(f.mean);
        };
        auto run_ucx = [&] {
          if (!ucx) return;
          try {
            auto f = ucx->latency(latency_iterations);
            u_p50.push_back(f.p50), u_p99.push_back(f.p99), u_mean.push_back(f.mean);
          } catch (const std::exception& e) {
            drop_ucx(e);
          }
        };
        // Rotate the order so that none always follows another.
        switch (r % 3) {
          case 0: run_troupe(), run_zmq(), run_ucx(); break;
          case 1: run_zmq(), run_ucx(), run_troupe(); break;
          default: run_ucx(), run_troupe(), run_zmq(); break;
        }
        watchdog->touch();
      }

      // ---- throughput 1:1 -----------------------------------------------------------------
      std::vector<troupe::ObjectRef<void>> refs;
      refs.reserve(static_cast<std::size_t>(throughput_calls));
      auto troupe_tput = [&] {
        refs.clear();
        const auto start = Clock::now();
        for (int i = 0; i < throughput_calls; ++i) refs.push_back(actor.call<&Noop::noop>());
        for (auto& ref : refs) ref.get();
        const double rate = throughput_calls / troupe::bench::seconds_since(start);
        refs.clear();
        return rate;
      };
      auto zmq_tput = [&] {
        const auto start = Clock::now();
        zmq_client.pipelined(throughput_calls);
        return throughput_calls / troupe::bench::seconds_since(start);
      };
      troupe_tput(), zmq_tput();  // warm the pipelined paths (buffers, allocator)
      for (int r = 0; r < repeats; ++r) {
        auto run_troupe = [&] { t_tput.push_back(troupe_tput()); };
        auto run_zmq = [&] { z_tput.push_back(zmq_tput()); };
        auto run_ucx = [&] {
          if (!ucx) return;
          try {
            u_tput.push_back(ucx->throughput(throughput_calls));
          } catch (const std::exception& e) {
            drop_ucx(e);
          }
        };
        switch (r % 3) {
          case 0: run_troupe(), run_zmq(), run_ucx(); break;
          case 1: run_zmq(), run_ucx(), run_troupe(); break;
          default: run_ucx(), run_troupe(), run_zmq(); break;
        }
        watchdog->touch();
      }

      // ---- throughput n:n -----------------------------------------------------------------
      auto troupe_par = [&] {
        return measure_parallel(callers, throughput_calls, [&](int c, int n) {
          std::vector<troupe::ObjectRef<void>> mine;
          mine.reserve(static_cast<std::size_t>(n));
          for (int i = 0; i < n; ++i) mine.push_back(actors[static_cast<std::size_t>(c)].call<&Noop::noop>());
          for (auto& ref : mine) ref.get();
        });
      };
      auto zmq_par = [&] {
        return measure_parallel(callers, throughput_calls,
                                [&](int c, int n) { zmq_clients[static_cast<std::size_t>(c)]->pipelined(n); });
      };
      for (int r = 0; r < repeats; ++r) {
        if (r % 2 == 0) t_par.push_back(troupe_par()), z_par.push_back(zmq_par());
        else z_par.push_back(zmq_par()), t_par.push_back(troupe_par());
        watchdog->touch();
      }
      zmq_clients.clear();
      actors.clear();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "cluster_call_bench: %s\n", e.what());
      code = 1;
    }
    watchdog.reset();
  }
  troupe::shutdown();
  cluster.stop();
  if (ucx) ucx->stop();
  for (auto& server : echo_servers) server->stop();
  if (code != 0) return code;

  // ---- report ---------------------------------------------------------------------------
  const std::string nn = std::to_string(callers) + "to" + std::to_string(callers);
  troupe::bench::Reporter vs_zmq("cluster_call", options);
  vs_zmq.set_labels("troupe", "raw zmq");
  vs_zmq.add("latency_p50", median(t_p50), "us", Better::lower, median(z_p50));
  vs_zmq.add("latency_p99", median(t_p99), "us", Better::lower, median(z_p99));
  vs_zmq.add("latency_mean", median(t_mean), "us", Better::lower, median(z_mean));
  vs_zmq.add("throughput_1to1", median(t_tput), "calls/s", Better::higher, median(z_tput));
  vs_zmq.add("throughput_" + nn, median(t_par), "calls/s", Better::higher, median(z_par));
  char text[512];
  std::snprintf(text, sizeof text,
                "troupe: no-op actor call, driver -> actor host process; raw zmq: DEALER -> ROUTER echo (forked "
                "child), tcp://127.0.0.1, %zu-byte request / %zu-byte reply frames (troupe's no-op CallRequest / "
                "CallReply).",
                frames.request, frames.reply);
  vs_zmq.note(text);
  std::snprintf(text, sizeof text,
                "latency: %d sequential call+get per repeat; throughput: %d calls issued then awaited (zmq: %d "
                "sends then %d receives); n:n = %d driver threads, each to its own actor / echo server; median of "
                "%d repeats.",
                latency_iterations, throughput_calls, throughput_calls, throughput_calls, callers, repeats);
  vs_zmq.note(text);
  vs_zmq.print_table();

  troupe::bench::Reporter vs_ucx("cluster_call", options);
  vs_ucx.set_labels("troupe", "raw UCX AM");
  vs_ucx.add("latency_p50_vs_ucx_am", median(t_p50), "us", Better::lower, median_or_none(u_p50));
  vs_ucx.add("latency_p99_vs_ucx_am", median(t_p99), "us", Better::lower, median_or_none(u_p99));
  vs_ucx.add("throughput_1to1_vs_ucx_am", median(t_tput), "calls/s", Better::higher, median_or_none(u_tput));
  if (ucx) {
    vs_ucx.note("raw UCX AM: ucp_am_send_nbx + am recv handler between two forked processes, both busy-polling");
    vs_ucx.note("ucp_worker_progress; same frame sizes. UCX chose: " + ucx->transport());
  } else {
    vs_ucx.note("raw UCX AM: not measured: " + ucx_problem);
  }
  if (!options.json) std::printf("\n");
  vs_ucx.print_table();

  // ---- driver start-up ---------------------------------------------------------------------
  if (init_ms.first >= 0) {
    troupe::bench::Reporter init_rows("cluster_call", options);
    init_rows.set_labels("cached hash", "hashing");
    init_rows.add("driver_init_ms", init_ms.first, "ms", Better::lower, init_ms.second);
    init_rows.note("troupe::init() in a fresh driver process against the running cluster, the binary unchanged: "
                   "its hash from the binary-hash cache vs TROUPE_BINARY_HASH_CACHE=0 (read and hashed); median.");
    if (!options.json) std::printf("\n");
    init_rows.print_table();
  }

  // ---- the targets ----------------------------------------------------------------
  const double p50_ratio = median(t_p50) / median(z_p50);
  const double tput = median(t_tput);
  troupe::bench::Reporter targets("cluster_call", options);
  targets.set_labels("measured", "target");
  targets.add("target_latency_p50_x_raw_zmq", p50_ratio, "x", Better::lower, 2.0);
  targets.add("target_throughput_1to1", tput, "calls/s", Better::higher, 100000.0);
  if (init_ms.first >= 0) targets.add("target_driver_init_ms", init_ms.first, "ms", Better::lower, 200.0);
  std::snprintf(text, sizeof text, "p50 round trip <= 2x raw zmq: %s (%.2fx: %.1f us vs %.1f us)",
                p50_ratio <= 2.0 ? "MET" : "MISSED", p50_ratio, median(t_p50), median(z_p50));
  targets.note(text);
  const std::string verdict_p50 = text;
  std::snprintf(text, sizeof text, ">= 100,000 async calls/s 1:1: %s (%.0f calls/s)",
                tput >= 100000.0 ? "MET" : "MISSED", tput);
  targets.note(text);
  const std::string verdict_tput = text;
  if (!options.json) std::printf("\n");
  targets.print_table();
  if (options.json) {
    // The verdicts, where they cannot be mistaken for JSON.
    std::fprintf(stderr, "cluster_call_bench: %s\ncluster_call_bench: %s\n", verdict_p50.c_str(),
                 verdict_tput.c_str());
  }
  return 0;
}
