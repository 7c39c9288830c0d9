// `troupe gpus [--parse SPEC] [--json]`: the GPUs local mode schedules on,
// or the GPUs a spec such as "H100-80GB:2,T4-16GB:1" declares. The same
// spec goes to `--troupe-gpus=`, TROUPE_GPUS and (later) `troupe start --gpus`,
// so this is the place to check one before using it.
#include <algorithm>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "command.hpp"
#include "machine.hpp"
#include "troupe/scheduler/gpu_spec.hpp"
#include "troupe/scheduler/resources.hpp"

namespace troupe::cli {

namespace {

struct GpusOptions {
  std::string spec;
  bool parse = false;  // --parse was given (an empty spec is valid: no GPUs)
  bool json = false;
};

void print_table(const std::vector<scheduler::GpuInfo>& gpus) {
  std::size_t width = 5;  // "model"
  for (const auto& gpu : gpus) width = std::max(width, gpu.model.size());
  std::cout << "  index  model" << std::string(width - 5 + 2, ' ') << "memory\n";
  for (const auto& gpu : gpus) {
    std::string index = std::to_string(gpu.index);
    std::cout << "  " << index << std::string(7 - std::min<std::size_t>(index.size(), 6), ' ') << gpu.model
              << std::string(width - gpu.model.size() + 2, ' ')
              << (gpu.memory_bytes > 0 ? scheduler::format_bytes(static_cast<double>(gpu.memory_bytes)) : "unknown")
              << '\n';
  }
}

int run_parse(const GpusOptions& options) {
  std::vector<scheduler::GpuInfo> gpus;
  try {
    gpus = scheduler::parse_gpu_spec(options.spec);
  } catch (const scheduler::SpecError& e) {
    throw UsageError(e.message());
  }
  const std::string normalized = scheduler::format_gpu_spec(gpus);
  if (options.json) {
    nlohmann::json doc{{"spec", options.spec}, {"normalized", normalized}, {"count", gpus.size()}, {"gpus", gpus}};
    std::cout << doc.dump(2) << '\n';
    return kExitOk;
  }
  std::cout << "GPU spec \"" << options.spec << "\": " << gpus.size() << (gpus.size() == 1 ? " GPU" : " GPUs")
            << '\n';
  if (gpus.empty()) return kExitOk;
  print_table(gpus);
  std::cout << "normalized: " << normalized << '\n';
  return kExitOk;
}

int run_list(const GpusOptions& options) {
  const LocalGpus local = local_gpus();
  if (options.json) {
    nlohmann::json doc{{"source", local.source},
                       {"spec", scheduler::format_gpu_spec(local.gpus)},
                       {"gpus", local.gpus},
                       {"unavailable_reason", local.unavailable_reason}};
    std::cout << doc.dump(2) << '\n';
    return kExitOk;
  }
  if (local.gpus.empty()) {
    std::cout << "none: "
              << (local.unavailable_reason.empty() ? "TROUPE_GPUS declares no GPU" : local.unavailable_reason)
              << '\n';
    return kExitOk;
  }
  std::cout << local.gpus.size() << (local.gpus.size() == 1 ? " GPU " : " GPUs ")
            << (local.source == "declared" ? "declared in TROUPE_GPUS" : "detected through CUDA") << '\n';
  print_table(local.gpus);
  std::cout << "as a spec: " << scheduler::format_gpu_spec(local.gpus) << '\n';
  return kExitOk;
}

}  // namespace

void add_gpus_command(CLI::App& app) {
  CLI::App* gpus = app.add_subcommand("gpus", "List this machine's GPUs, or check a GPU spec with --parse");
  auto options = std::make_shared<GpusOptions>();
  CLI::Option* parse = gpus->add_option("--parse", options->spec,
                                        "Validate and print a GPU spec: MODEL[:COUNT],... e.g. \"H100-80GB:2,T4-16GB:1\"");
  parse->type_name("SPEC");
  gpus->add_flag("--json", options->json, "Print JSON instead of text");
  gpus->footer(
      "Without --parse: the GPUs declared in TROUPE_GPUS, else those CUDA detects.\n"
      "A bad spec exits with status 2 and names the bad item.");
  set_action(*gpus, [options, parse] {
    options->parse = parse->count() > 0;
    return options->parse ? run_parse(*options) : run_list(*options);
  });
}

}  // namespace troupe::cli
