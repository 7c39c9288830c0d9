// Workers in separate network namespaces: the head runs in this (the root)
// namespace, each worker in a namespace of its own joined to the root one by
// a veth pair with addresses from a private 10.213.x.0/24 that exists only
// on those veths. A real job submitted with `troupe submit` places a T4 actor
// on one namespace's worker and an H100 actor on the other's, and chains
// calls between them, so every daemon, actor host and driver must bind and
// advertise an address the others can reach (not 127.0.0.1).
//
// Needs root, the `ip` tool and permission to create namespaces and veths;
// skips with the reason otherwise. Traffic goes only to the 10.213.x
// addresses of these veths. The namespaces, veths and daemons are removed
// also when an assertion fails.
// TROUPE_TEST_LABELS: cluster slow netns
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <regex>
#include <thread>

#include "cluster/cluster_harness.hpp"

namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using troupe::testing::RunResult;
using troupe::testing::TestCluster;
using troupe::testing::read_text;
using troupe::testing::run_process;

// Full path of `ip` (posix_spawn does not search PATH); empty when missing.
std::string find_ip_tool() {
  std::vector<std::string> dirs;
  if (const char* path = std::getenv("PATH")) {
    std::stringstream s(path);
    for (std::string dir; std::getline(s, dir, ':');)
      if (!dir.empty()) dirs.push_back(dir);
  }
  for (const char* dir : {"/usr/sbin", "/sbin", "/usr/bin", "/bin"}) dirs.emplace_back(dir);
  for (const auto& dir : dirs) {
    std::string candidate = dir + "/ip";
    if (::access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return "";
}

std::string trimmed(std::string text) {
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  return text;
}

// Forks a child that enters network namespace `ns` ("" = stay in this one)
// and exits with body()'s result (90 when it cannot enter the namespace).
pid_t fork_in_netns(const std::string& ns, const std::function<int()>& body) {
  pid_t pid = ::fork();
  if (pid != 0) return pid;
  if (!ns.empty()) {
    int fd = ::open(("/run/netns/" + ns).c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) fd = ::open(("/var/run/netns/" + ns).c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0 || ::setns(fd, CLONE_NEWNET) != 0) ::_exit(90);
  }
  ::_exit(body());
}

sockaddr_in ipv4(const std::string& ip, int port) {
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<std::uint16_t>(port));
  ::inet_pton(AF_INET, ip.c_str(), &addr.sin_addr);
  return addr;
}

int exit_status(pid_t pid) {
  int status = 0;
  if (::waitpid(pid, &status, 0) != pid) return -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// Whether a TCP connection from namespace `from` to `ip` (an address of
// namespace `to`) gets through; "" = root namespace. Both ends are forked
// children; each gives up after 3 s.
bool tcp_reachable(const std::string& from, const std::string& to, const std::string& ip) {
  int port_pipe[2];
  if (::pipe(port_pipe) != 0) return false;
  pid_t listener = fork_in_netns(to, [&] {
    ::close(port_pipe[0]);
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr = ipv4(ip, 0);
    if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || ::listen(fd, 1) != 0) return 1;
    socklen_t len = sizeof addr;
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
    int port = ntohs(addr.sin_port);
    if (::write(port_pipe[1], &port, sizeof port) != sizeof port) return 1;
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 3000) != 1) return 2;
    return ::accept(fd, nullptr, nullptr) >= 0 ? 0 : 3;
  });
  ::close(port_pipe[1]);
  int port = 0;
  pollfd p{port_pipe[0], POLLIN, 0};
  bool have_port = ::poll(&p, 1, 3000) == 1 && ::read(port_pipe[0], &port, sizeof port) == sizeof port;
  ::close(port_pipe[0]);
  if (!have_port) {
    ::kill(listener, SIGKILL);
    exit_status(listener);
    return false;
  }
  pid_t connector = fork_in_netns(from, [&] {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    sockaddr_in addr = ipv4(ip, port);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) return 0;
    if (errno != EINPROGRESS) return 1;
    pollfd q{fd, POLLOUT, 0};
    if (::poll(&q, 1, 3000) != 1) return 2;
    int error = 0;
    socklen_t len = sizeof error;
    ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &len);
    return error == 0 ? 0 : 3;
  });
  bool connected = exit_status(connector) == 0;
  bool accepted = exit_status(listener) == 0;
  return connected && accepted;
}

// Two network namespaces, each joined to the root namespace by a veth pair:
// 10.213.<o_k>.1/24 on the root side, 10.213.<o_k>.2/24 inside, lo up, and a
// route to the other namespace's /24 through the root side. Forwarding is
// switched on only for the two root-side veths (it goes away with them);
// net.ipv4.ip_forward is left alone. The destructor removes everything.
class NetnsPair {
 public:
  NetnsPair() : ip_(find_ip_tool()), pid_(std::to_string(::getpid())) {}
  ~NetnsPair() { teardown(); }
  NetnsPair(const NetnsPair&) = delete;
  NetnsPair& operator=(const NetnsPair&) = delete;

  // "" when ready, otherwise why not (the test skips with it).
  std::string setup() {
    if (::geteuid() != 0) return "needs root to create network namespaces and veth pairs";
    if (ip_.empty()) return "the `ip` tool (iproute2) is not installed";
    if (!pick_subnets()) return "no free 10.213.x.0/24 pair on this machine";
    for (int k = 0; k < 2; ++k) {
      auto added = ip({"netns", "add", ns(k)});
      if (added.exit_code != 0) return "cannot create a network namespace: " + trimmed(added.all());
      ns_created_[k] = true;
      auto veth = ip({"link", "add", host_dev(k), "type", "veth", "peer", "name", ns_dev(k)});
      if (veth.exit_code != 0) return "cannot create a veth pair: " + trimmed(veth.all());
      link_created_[k] = true;
      const std::string other_subnet = "10.213." + std::to_string(octet_[1 - k]) + ".0/24";
      const std::vector<std::vector<std::string>> steps = {
          {"link", "set", ns_dev(k), "netns", ns(k)},
          {"addr", "add", host_ip(k) + "/24", "dev", host_dev(k)},
          {"link", "set", host_dev(k), "up"},
          {"netns", "exec", ns(k), "ip", "addr", "add", ns_ip(k) + "/24", "dev", ns_dev(k)},
          {"netns", "exec", ns(k), "ip", "link", "set", ns_dev(k), "up"},
          {"netns", "exec", ns(k), "ip", "link", "set", "lo", "up"},
          {"netns", "exec", ns(k), "ip", "route", "add", other_subnet, "via", host_ip(k)},
      };
      for (const auto& step : steps) {
        auto result = ip(step);
        if (result.exit_code != 0) {
          std::string command = "ip";
          for (const auto& a : step) command += " " + a;
          return "`" + command + "` failed: " + trimmed(result.all());
        }
      }
      const fs::path forwarding = "/proc/sys/net/ipv4/conf/" + host_dev(k) + "/forwarding";
      std::ofstream out(forwarding);
      out << "1\n";
      out.close();
      if (!out || trimmed(read_text(forwarding)) != "1") return "cannot enable forwarding on " + host_dev(k);
    }
    // The head (root side of veth 0) must be reachable from both namespaces,
    // the namespaces from each other and from the root namespace (driver).
    struct Check {
      std::string from, to, ip;
    };
    const std::vector<Check> checks = {{ns(0), "", host_ip(0)},   {ns(1), "", host_ip(0)},
                                       {"", ns(0), ns_ip(0)},      {"", ns(1), ns_ip(1)},
                                       {ns(0), ns(1), ns_ip(1)},   {ns(1), ns(0), ns_ip(0)}};
    for (const auto& check : checks) {
      if (!tcp_reachable(check.from, check.to, check.ip)) {
        return "no TCP from namespace '" + (check.from.empty() ? std::string("root") : check.from) + "' to " +
               check.ip + " over the veths (a firewall FORWARD/INPUT rule?)";
      }
    }
    return "";
  }

  void teardown() {
    if (ip_.empty()) return;
    for (int k = 0; k < 2; ++k) {
      if (ns_created_[k]) {
        // Whatever still runs inside was started by this test (a daemon a
        // failed stop left): the namespace lives on until it exits.
        for (int attempt = 0; attempt < 50; ++attempt) {
          std::stringstream pids(ip({"netns", "pids", ns(k)}).out);
          bool any = false;
          for (pid_t pid = 0; pids >> pid;) {
            if (pid > 0 && pid != ::getpid()) {
              ::kill(pid, SIGKILL);
              any = true;
            }
          }
          if (!any) break;
          std::this_thread::sleep_for(20ms);
        }
        ip({"netns", "del", ns(k)});
        ns_created_[k] = false;
      }
      if (link_created_[k]) {
        // Deleting the namespace destroys the pair; this is for a pair that
        // never made it into the namespace.
        if (ip({"link", "show", host_dev(k)}).exit_code == 0) ip({"link", "del", host_dev(k)});
        link_created_[k] = false;
      }
    }
  }

  // Names of this test's namespaces that `ip netns list` still shows.
  std::vector<std::string> leftover_namespaces() {
    std::vector<std::string> left;
    std::stringstream list(ip({"netns", "list"}).out);
    for (std::string line; std::getline(list, line);) {
      std::string name = line.substr(0, line.find(' '));
      if (name == ns(0) || name == ns(1)) left.push_back(name);
    }
    return left;
  }

  RunResult ip(const std::vector<std::string>& args, std::chrono::milliseconds timeout = 30s) const {
    return run_process(ip_, args, {}, timeout);
  }
  // Runs `program args...` inside namespace k.
  RunResult exec_in(int k, const std::string& program, const std::vector<std::string>& args,
                    std::chrono::milliseconds timeout = 30s) const {
    std::vector<std::string> full{"netns", "exec", ns(k), program};
    full.insert(full.end(), args.begin(), args.end());
    return ip(full, timeout);
  }

  // A partition of namespace k: its veth's root side goes down, so packets
  // either way are dropped (no reset, no refusal: a cut cable). heal() undoes it.
  bool cut(int k) const { return ip({"link", "set", host_dev(k), "down"}).exit_code == 0; }
  bool heal(int k) const { return ip({"link", "set", host_dev(k), "up"}).exit_code == 0; }

  std::string ns(int k) const { return "troupe-netns-" + pid_ + "-" + std::to_string(k + 1); }
  std::string host_ip(int k) const { return "10.213." + std::to_string(octet_[k]) + ".1"; }
  std::string ns_ip(int k) const { return "10.213." + std::to_string(octet_[k]) + ".2"; }

 private:
  std::string host_dev(int k) const { return "trp" + pid_ + "h" + std::to_string(k + 1); }
  std::string ns_dev(int k) const { return "trp" + pid_ + "n" + std::to_string(k + 1); }

  // Two third octets (from the pid, so that parallel runs differ) that no
  // address or route on this machine uses yet.
  bool pick_subnets() {
    const std::string in_use = ip({"-4", "addr", "show"}).out + ip({"-4", "route", "show", "table", "all"}).out;
    int start = static_cast<int>(::getpid() % 120);
    for (int i = 0; i < 120; ++i) {
      int a = 2 * ((start + i) % 120) + 10, b = a + 1;  // 10..249
      if (in_use.find("10.213." + std::to_string(a) + ".") == std::string::npos &&
          in_use.find("10.213." + std::to_string(b) + ".") == std::string::npos) {
        octet_ = {a, b};
        return true;
      }
    }
    return false;
  }

  std::string ip_;
  std::string pid_;
  std::array<int, 2> octet_{0, 0};
  std::array<bool, 2> ns_created_{false, false};
  std::array<bool, 2> link_created_{false, false};
};

// A worker daemon started inside a namespace with a temp dir of its own;
// force-stopped (and any pid in its pid files killed) on destruction.
class NetnsWorker {
 public:
  NetnsWorker() {
    std::string pattern = (fs::temp_directory_path() / "troupe-netns-worker-XXXXXX").string();
    root_ = ::mkdtemp(pattern.data());
  }
  ~NetnsWorker() {
    run_process(TestCluster::cli(), {"stop", "--force", "--temp-dir", root_.string()}, {}, 20s);
    std::error_code error;
    for (const auto& session : fs::directory_iterator(root_, error)) {
      fs::path pids = session.path() / "pids";
      if (!fs::is_directory(pids, error)) continue;
      for (const auto& file : fs::directory_iterator(pids, error)) {
        pid_t pid = static_cast<pid_t>(std::atol(read_text(file.path()).c_str()));
        if (pid > 0) ::kill(pid, SIGKILL);
      }
    }
    if (std::getenv("TROUPE_KEEP_TEST_DIRS") == nullptr) fs::remove_all(root_, error);
  }
  NetnsWorker(const NetnsWorker&) = delete;
  NetnsWorker& operator=(const NetnsWorker&) = delete;
  const fs::path& root() const { return root_; }

 private:
  fs::path root_;
};

// "PLACED a <node id> [gpus] pid N" -> node id, for actor label `label`.
std::string node_of(const std::string& output, const std::string& label) {
  std::smatch match;
  std::regex pattern("PLACED " + label + " ([0-9a-f]+) \\[([0-9]*)\\]");
  if (std::regex_search(output, match, pattern)) return match[1];
  return "";
}

// Starts a worker in namespace k (`extra`: more `troupe start` options);
// returns its node id ("" when none appeared).
std::string start_netns_worker(TestCluster& cluster, const NetnsPair& net, const std::string& head_address, int k,
                               const NetnsWorker& worker, const std::vector<std::string>& extra) {
  auto before = cluster.node_ids();
  // Namespaces on one kernel share /dev/shm and SysV IPC, so UCX takes
  // their processes for one host and picks shared memory, whose wake-up
  // goes through abstract unix sockets that a network namespace isolates:
  // fetches between the namespaces would never be answered. Distinct
  // hosts use TCP anyway; so do these "hosts" (the workers' actor hosts
  // inherit UCX_TLS from their node manager).
  ::setenv("UCX_TLS", "tcp,self", 1);
  std::vector<std::string> args{"start", "--address", head_address, "--node-ip", net.ns_ip(k), "--num-cpus", "2",
                                "--temp-dir", worker.root().string(), "--token-file",
                                (cluster.session() / "token").string()};
  args.insert(args.end(), extra.begin(), extra.end());
  auto result = net.exec_in(k, TestCluster::cli(), args);
  ::unsetenv("UCX_TLS");
  EXPECT_EQ(result.exit_code, 0) << result.all();
  for (const auto& id : cluster.node_ids())
    if (std::find(before.begin(), before.end(), id) == before.end()) return id;
  return "";
}

// The cluster part; returns early on a failed assertion, after which the
// caller still removes the namespaces and checks that none is left.
void run_job_across_namespaces(const NetnsPair& net) {
  // Nodes are declared lost after 5 s without a heartbeat (and fence
  // themselves a little before): beside a build on 2 cores a worker went
  // 2.5 s without word from the head while the job's 65 MB binary was
  // served, and fenced, with 3 s. This test is about the namespaces, not
  // detection speed (the partition test below measures that).
  TestCluster cluster(200, 25);
  NetnsWorker w1, w2;  // destroyed (stopped) before the cluster's head
  auto head = cluster.start_head({"--gpus", "", "--node-ip", net.host_ip(0)});
  ASSERT_EQ(head.exit_code, 0) << head.all();
  const std::string head_address = net.host_ip(0) + ":" + std::to_string(cluster.port());
  const auto ids_before = cluster.node_ids();
  ASSERT_EQ(ids_before.size(), 1u);
  const std::string head_node = ids_before[0];

  const std::string t4 = start_netns_worker(cluster, net, head_address, 0, w1, {"--gpus", "T4-16GB:1"});
  const std::string h100 = start_netns_worker(cluster, net, head_address, 1, w2, {"--gpus", "H100-80GB:1"});
  ASSERT_FALSE(t4.empty());
  ASSERT_FALSE(h100.empty());

  // Each node advertises its own namespace's address.
  EXPECT_EQ(cluster.node(head_node).value("address", ""), net.host_ip(0));
  EXPECT_EQ(cluster.node(t4).value("address", ""), net.ns_ip(0));
  EXPECT_EQ(cluster.node(h100).value("address", ""), net.ns_ip(1));

  auto result = cluster.troupe({"submit", "--name", "netns", "--", TROUPE_CLUSTER_JOB, "placement"}, 120s);
  ASSERT_EQ(result.exit_code, 0) << result.all();
  EXPECT_NE(result.out.find("JOB OK"), std::string::npos) << result.all();
  // 200 calls alternating between the T4 actor (namespace 1) and the H100
  // actor (namespace 2), the refs going directly between the namespaces; the
  // driver runs in the root namespace. An actor host or driver advertising
  // an address the others cannot reach (127.0.0.1) would fail these.
  EXPECT_NE(result.out.find("CHAIN 200 ok"), std::string::npos) << result.all();
  EXPECT_NE(result.out.find("TENSOR 4MiB ok"), std::string::npos) << result.all();
  EXPECT_EQ(node_of(result.out, "a"), t4) << result.out;
  EXPECT_EQ(node_of(result.out, "b"), h100) << result.out;

  bool succeeded = false;
  for (const auto& job : cluster.list("jobs")) succeeded = succeeded || job.value("state", "") == "SUCCEEDED";
  EXPECT_TRUE(succeeded) << cluster.list("jobs").dump();
}

TEST(ClusterNetns, WorkersInSeparateNetworkNamespacesRunAJobChainingCallsBetweenThem) {
  NetnsPair net;
  if (std::string why = net.setup(); !why.empty()) {
    net.teardown();
    GTEST_SKIP() << "network namespaces unavailable: " << why;
  }
  run_job_across_namespaces(net);
  net.teardown();
  EXPECT_TRUE(net.leftover_namespaces().empty());
}

// CLOCK_MONOTONIC in ns, the clock the job's actors report their birth on.
long monotonic_ns() {
  timespec now{};
  ::clock_gettime(CLOCK_MONOTONIC, &now);
  return static_cast<long>(now.tv_sec) * 1000000000L + now.tv_nsec;
}

// A process that no longer runs (gone, or a zombie not yet reaped).
bool process_gone(long pid) {
  std::string stat = read_text("/proc/" + std::to_string(pid) + "/stat");
  if (stat.empty()) return true;
  auto paren = stat.rfind(')');
  return paren == std::string::npos || paren + 2 >= stat.size() || stat[paren + 2] == 'Z' || stat[paren + 2] == 'X';
}

// "KEY ... pid P born B" -> {P, B}, from the first line starting with KEY.
std::pair<long, long> pid_and_birth(const std::string& lines, const std::string& key) {
  std::smatch match;
  std::regex pattern(key + " .* pid ([0-9]+) born ([0-9]+)");
  if (std::regex_search(lines, match, pattern)) return {std::atol(match[1].str().c_str()), std::atol(match[2].str().c_str())};
  return {0, 0};
}

// issue 12 (fencing): a node cut off from the head by a partition (packets
// dropped, not refused) stops its actor hosts before the head declares it
// lost and restarts the actor elsewhere, so two incarnations never run at
// once: the old host is gone before the new one is born.
void run_partition(const NetnsPair& net) {
  TestCluster cluster(200, 15);  // nodes lost after 3 s of silence; fencing after 2 s
  NetnsWorker w1, w2;
  auto head = cluster.start_head({"--gpus", "", "--node-ip", net.host_ip(0)});
  ASSERT_EQ(head.exit_code, 0) << head.all();
  const std::string head_address = net.host_ip(0) + ":" + std::to_string(cluster.port());
  const std::vector<std::string> far{"--gpus", "", "--resources", "{\"far\": 1}"};
  const std::string cut_node = start_netns_worker(cluster, net, head_address, 0, w1, far);
  ASSERT_FALSE(cut_node.empty());

  const fs::path lines_file = w2.root() / "partition-lines";
  RunResult job;
  std::thread submit([&] {
    job = cluster.troupe({"submit", "--name", "partition", "--", TROUPE_CLUSTER_JOB, "partition", lines_file.string()},
                         240s);
  });
  struct Joiner {
    std::thread& t;
    ~Joiner() {
      if (t.joinable()) t.join();
    }
  } joiner{submit};
  auto wait_for_line = [&](const std::string& key, std::chrono::seconds limit) {
    for (auto until = std::chrono::steady_clock::now() + limit; std::chrono::steady_clock::now() < until;) {
      std::string text = read_text(lines_file);
      if (text.find(key) != std::string::npos || text.find("JOB FAILED") != std::string::npos) return text;
      std::this_thread::sleep_for(20ms);
    }
    return read_text(lines_file);
  };
  const std::string first = wait_for_line("FIRST", 120s);
  const auto [old_pid, old_born] = pid_and_birth(first, "FIRST");
  ASSERT_GT(old_pid, 0) << first;
  ASSERT_NE(first.find(cut_node), std::string::npos) << "not placed on the node with \"far\": " << first;

  ASSERT_TRUE(net.cut(0));
  const long cut_at = monotonic_ns();
  // A node the head can reach, for the restart.
  const std::string other_node = start_netns_worker(cluster, net, head_address, 1, w2, far);
  EXPECT_FALSE(other_node.empty());
  long gone_at = 0;
  for (auto until = std::chrono::steady_clock::now() + 60s; std::chrono::steady_clock::now() < until;) {
    if (process_gone(old_pid)) {
      gone_at = monotonic_ns();
      break;
    }
    std::this_thread::sleep_for(5ms);
  }
  const std::string lines = wait_for_line("RESTARTED", 150s);
  EXPECT_TRUE(net.heal(0));
  submit.join();
  ASSERT_GT(gone_at, 0) << "the cut-off node's actor host " << old_pid << " still runs 60 s after the partition";
  const auto [new_pid, new_born] = pid_and_birth(lines, "RESTARTED");
  ASSERT_GT(new_pid, 0) << lines << job.all();
  EXPECT_NE(lines.find("RESTARTED fenced " + other_node), std::string::npos) << lines;
  EXPECT_LT(gone_at, new_born) << "the new incarnation was born " << (gone_at - new_born) / 1000000
                               << " ms before the old host stopped";
  std::printf("partition: the old host stopped %ld ms after the cut; the new incarnation was born %ld ms after that\n",
              (gone_at - cut_at) / 1000000, (new_born - gone_at) / 1000000);
  EXPECT_EQ(job.exit_code, 0) << job.all();
  EXPECT_NE(job.out.find("JOB OK"), std::string::npos) << job.all();
}

TEST(ClusterNetns, APartitionedNodeStopsItsActorsBeforeTheHeadRestartsThemElsewhere) {
  NetnsPair net;
  if (std::string why = net.setup(); !why.empty()) {
    net.teardown();
    GTEST_SKIP() << "network namespaces unavailable: " << why;
  }
  run_partition(net);
  net.teardown();
  EXPECT_TRUE(net.leftover_namespaces().empty());
}

}  // namespace
