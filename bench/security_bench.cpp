// The price of safety (docs/security.md): the same benchmarks with membership
// on (the default: CURVE on the ZeroMQ planes, authenticators on the UCX
// data plane) and with --insecure, in this one run, alternating so that
// noise falls on both alike. It runs the sibling benchmarks
// (cluster_call_bench, ucx_transfer_bench) with --json and compares their
// figures: round-trip p50 secure / insecure (target <= 1.15x) and bandwidth
// secure / insecure (target >= 0.95x).
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "bench_util.hpp"

namespace {

using troupe::bench::Better;
using troupe::bench::median;

std::string sibling(const std::string& name) {
  std::error_code error;
  auto self = std::filesystem::read_symlink("/proc/self/exe", error);
  return (self.parent_path() / name).string();
}

// Runs `argv` and returns its stdout lines parsed as JSON objects (others
// are skipped); its stderr passes through.
std::vector<nlohmann::json> run_json(const std::vector<std::string>& args) {
  std::string command;
  for (const auto& arg : args) command += "'" + arg + "' ";
  std::vector<nlohmann::json> rows;
  FILE* pipe = ::popen(command.c_str(), "r");
  if (!pipe) return rows;
  char line[8192];
  while (std::fgets(line, sizeof line, pipe)) {
    auto parsed = nlohmann::json::parse(line, nullptr, false);
    if (parsed.is_object()) rows.push_back(parsed);
  }
  int status = ::pclose(pipe);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
    std::fprintf(stderr, "security_bench: %s failed (status %d)\n", args[0].c_str(), status);
  return rows;
}

// metric -> values over the runs.
using Figures = std::map<std::string, std::vector<double>>;

void collect(const std::vector<nlohmann::json>& rows, Figures& into) {
  for (const auto& row : rows) {
    if (!row.contains("metric") || !row["value"].is_number()) continue;
    into[row["metric"].get<std::string>()].push_back(row["value"].get<double>());
  }
}

}  // namespace

int main(int argc, char** argv) {
  int rounds = 2;
  troupe::bench::Cli cli("security_bench",
                         "cluster_call and ucx_transfer with membership on (default) and --insecure, alternating,\n"
                         "in this run; prints secure/insecure ratios of round-trip p50 and bandwidth.");
  cli.add_int("--rounds", &rounds, "runs of each benchmark in each mode (alternating)");
  const auto options = cli.parse(argc, argv);
  std::vector<std::string> common{"--json"};
  if (options.quick) common.push_back("--quick");

  Figures call_secure, call_insecure, transfer;
  for (int round = 0; round < std::max(1, rounds); ++round) {
    for (bool insecure : {false, true}) {
      std::vector<std::string> args{sibling("cluster_call_bench")};
      args.insert(args.end(), common.begin(), common.end());
      if (insecure) args.push_back("--insecure");
      std::fprintf(stderr, "security_bench: round %d: cluster_call %s\n", round + 1, insecure ? "--insecure" : "secure");
      collect(run_json(args), insecure ? call_insecure : call_secure);
    }
    std::vector<std::string> args{sibling("ucx_transfer_bench")};
    args.insert(args.end(), common.begin(), common.end());
    std::fprintf(stderr, "security_bench: round %d: ucx_transfer (secure and insecure inside)\n", round + 1);
    collect(run_json(args), transfer);
  }

  troupe::bench::Reporter report("security", options);
  report.set_labels("secure", "insecure");
  auto both = [&](const std::string& metric, const std::string& unit, Better better) -> std::optional<double> {
    auto s = call_secure.find(metric);
    auto i = call_insecure.find(metric);
    if (s == call_secure.end() || i == call_insecure.end()) return std::nullopt;
    report.add("cluster_call_" + metric, median(s->second), unit, better, median(i->second));
    return median(s->second) / median(i->second);
  };
  auto p50 = both("latency_p50", "us", Better::lower);
  both("latency_p99", "us", Better::lower);
  auto tput = both("throughput_1to1", "calls/s", Better::higher);
  if (p50) report.add("target_latency_p50_secure_x_insecure", *p50, "x", Better::lower, 1.15);
  if (tput) report.add("throughput_1to1_secure_x_insecure", *tput, "x", Better::higher);
  // ucx_transfer measures a secure and an insecure holder in each run and
  // reports their ratios itself (<transport>_secure_..._ratio_...).
  for (const auto& [metric, values] : transfer) {
    if (metric.find("_secure_") == std::string::npos || metric.find("ratio") == std::string::npos) continue;
    const bool bandwidth = metric.find("bw") != std::string::npos;
    report.add("ucx_transfer_" + metric, median(values), "x", bandwidth ? Better::higher : Better::lower,
               bandwidth ? 0.95 : 1.15);
  }
  report.note("secure: the default (a cluster token; CURVE on the control and call planes; keyed BLAKE2b tags on every");
  report.note("data-plane request and push); insecure: --insecure. Medians over --rounds runs of each, alternating.");
  report.note("Targets: round-trip p50 at most 1.15x, bandwidth at least 0.95x of the insecure figures.");
  report.print_table();
  return 0;
}
