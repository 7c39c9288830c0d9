// `troupe info [--json]`: this machine as local mode sees it (resources,
// GPUs, UCX). The first thing to run on a new machine, and what a bug report
// should include.
#include <iostream>
#include <map>
#include <memory>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

#include "command.hpp"
#include "machine.hpp"
#include "troupe/runtime/cuda.hpp"
#include "troupe/scheduler/resources.hpp"

namespace troupe::cli {

namespace {

constexpr bool kBuiltWithCuda =
#if TROUPE_HAVE_CUDA
    true;
#else
    false;
#endif

std::string format_amount(const std::string& name, double amount) {
  if (name == scheduler::kMemory) return scheduler::format_bytes(amount);
  std::ostringstream out;
  out << amount;
  return out.str();
}

void print_gpu(std::ostream& out, const scheduler::GpuInfo& gpu) {
  out << "  [" << gpu.index << "] " << gpu.model;
  out << "  " << (gpu.memory_bytes > 0 ? scheduler::format_bytes(static_cast<double>(gpu.memory_bytes)) : "memory unknown");
  if (gpu.sm_count > 0) out << "  " << gpu.sm_count << " SMs";
  if (gpu.cc_major > 0) out << "  cc " << gpu.cc_major << '.' << gpu.cc_minor;
  if (!gpu.peers.empty()) {
    out << "  peers";
    for (int peer : gpu.peers) out << ' ' << peer;
  }
  out << '\n';
}

int run_info(bool json) {
  const LocalGpus gpus = local_gpus();
  const std::map<std::string, double> resources = local_resources();
  const UcxInfo ucx = probe_ucx();

  if (json) {
    nlohmann::json doc;
    doc["version"] = TROUPE_VERSION;
    doc["mode"] = "local";
    doc["resources"] = resources;
    doc["gpus"] = gpus.gpus;
    doc["gpu_source"] = gpus.source;
    doc["cuda"] = {{"built_with", kBuiltWithCuda},
                   {"device_count", cuda::device_count()},
                   {"unavailable_reason", cuda::unavailable_reason()}};
    doc["ucx"] = {{"installed", true},
                  {"version", ucx.version},
                  {"initialized", ucx.initialized},
                  {"error", ucx.error},
                  {"transports", ucx.transports},
                  {"cuda_memory", ucx.cuda_memory}};
    std::cout << doc.dump(2) << '\n';
    return kExitOk;
  }

  std::cout << "troupe " << TROUPE_VERSION << ": this machine as local mode sees it\n\nResources\n";
  for (const auto& [name, amount] : resources) {
    std::cout << "  " << name << std::string(name.size() < 10 ? 10 - name.size() : 1, ' ')
              << format_amount(name, amount) << '\n';
  }

  std::cout << "\nGPUs";
  if (gpus.source == "declared") std::cout << " (declared in TROUPE_GPUS)";
  if (gpus.source == "detected") std::cout << " (detected through CUDA)";
  std::cout << '\n';
  if (gpus.gpus.empty()) {
    std::cout << "  none: " << (gpus.unavailable_reason.empty() ? "TROUPE_GPUS declares no GPU" : gpus.unavailable_reason)
              << '\n';
  }
  for (const auto& gpu : gpus.gpus) print_gpu(std::cout, gpu);
  if (gpus.source == "declared") {
    std::cout << "  (CUDA itself sees "
              << (cuda::available() ? std::to_string(cuda::device_count()) + " device(s)"
                                    : "none: " + cuda::unavailable_reason())
              << ")\n";
  }

  std::cout << "\nUCX " << ucx.version << '\n';
  if (!ucx.initialized) {
    std::cout << "  unusable: " << ucx.error << '\n';
    return kExitOk;
  }
  std::cout << "  transports   ";
  for (std::size_t i = 0; i < ucx.transports.size(); ++i) std::cout << (i ? " " : "") << ucx.transports[i];
  std::cout << (ucx.transports.empty() ? "none reported\n" : "\n");
  std::cout << "  CUDA memory  "
            << (ucx.cuda_memory ? "yes (GPU buffers are sent directly)"
                                : "no (GPU tensors are staged through host memory)")
            << '\n';
  return kExitOk;
}

}  // namespace

void add_info_command(CLI::App& app) {
  CLI::App* info = app.add_subcommand("info", "Show this machine's resources, GPUs and UCX transports as troupe sees them");
  auto json = std::make_shared<bool>(false);
  info->add_flag("--json", *json, "Print one JSON object instead of text");
  info->footer(
      "Honours TROUPE_GPUS (declared GPUs, e.g. \"H100-80GB:2\") like troupe::init does.\n"
      "Keys of --json: version, mode, resources, gpus, gpu_source, cuda, ucx.");
  set_action(*info, [json] { return run_info(*json); });
}

}  // namespace troupe::cli
