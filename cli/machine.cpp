#include "machine.hpp"

#include "troupe/runtime/gpus.hpp"

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <memory>
#include <sstream>
#include <string>

#include <ucp/api/ucp.h>

#include "command.hpp"
#include "troupe/runtime/cuda.hpp"
#include "troupe/runtime/runtime.hpp"
#include "troupe/scheduler/gpu_spec.hpp"

namespace troupe::cli {

LocalGpus local_gpus() {
  LocalGpus out;
  if (const char* declared = std::getenv("TROUPE_GPUS"); declared && *declared) {
    try {
      out.gpus = scheduler::parse_gpu_spec(declared);
    } catch (const scheduler::SpecError& e) {
      throw UsageError(std::string("TROUPE_GPUS: ") + e.message());
    }
    out.source = "declared";
    return out;
  }
  out.gpus = detected_gpus();
  out.source = out.gpus.empty() ? "none" : "detected";
  if (out.gpus.empty()) out.unavailable_reason = cuda::unavailable_reason();
  return out;
}

std::map<std::string, double> local_resources() {
  // The runtime is the authority on what local mode sees; ask it rather than
  // repeat its arithmetic. One thread is plenty for a question.
  InitOptions options;
  options.address = "local";  // this machine, even where TROUPE_ADDRESS names a cluster
  options.num_threads = 1;
  init(options);
  struct Stop {
    ~Stop() { shutdown(); }
  } stop;
  return cluster_resources();
}

namespace {

// The resource lines of ucp_context_print_info, e.g.
//   "#      resource 1  :  md 1  dev 1  flags -- tcp/eth0"
// give "tcp/eth0". UCP has no structured query for its transports; this is
// the text `ucx_info -d` is built from, and it has been stable since 1.9.
std::vector<std::string> parse_transports(const std::string& text) {
  std::vector<std::string> transports;
  std::istringstream lines(text);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.find("resource") == std::string::npos || line.find("flags") == std::string::npos) continue;
    const auto end = line.find_last_not_of(" \t");
    const auto start = line.find_last_of(" \t", end);
    if (end == std::string::npos || start == std::string::npos) continue;
    std::string name = line.substr(start + 1, end - start);
    if (name.find('/') != std::string::npos) transports.push_back(std::move(name));
  }
  return transports;
}

std::string print_context_info(ucp_context_h context) {
  char* buffer = nullptr;
  std::size_t size = 0;
  FILE* stream = ::open_memstream(&buffer, &size);
  if (stream == nullptr) return {};
  ucp_context_print_info(context, stream);
  std::fclose(stream);
  std::string text(buffer != nullptr ? buffer : "", size);
  std::free(buffer);
  return text;
}

}  // namespace

UcxInfo probe_ucx() {
  UcxInfo info;
  info.version = ucp_get_version_string();

  ucp_config_t* config = nullptr;
  if (ucs_status_t status = ucp_config_read(nullptr, nullptr, &config); status != UCS_OK) {
    info.error = std::string("ucp_config_read failed: ") + ucs_status_string(status);
    return info;
  }
  ucp_params_t params{};
  params.field_mask = UCP_PARAM_FIELD_FEATURES;
  params.features = UCP_FEATURE_AM | UCP_FEATURE_TAG | UCP_FEATURE_RMA;
  ucp_context_h context = nullptr;
  const ucs_status_t status = ucp_init(&params, config, &context);
  ucp_config_release(config);
  if (status != UCS_OK) {
    info.error = std::string("ucp_init failed: ") + ucs_status_string(status);
    return info;
  }
  info.initialized = true;
  info.transports = parse_transports(print_context_info(context));
  ucp_context_attr_t attr{};
  attr.field_mask = UCP_ATTR_FIELD_MEMORY_TYPES;
  if (ucp_context_query(context, &attr) == UCS_OK) {
    // A bit per memory type: UCS_BIT, not the enum value (that is the host bit).
    info.cuda_memory = (attr.memory_types & UCS_BIT(UCS_MEMORY_TYPE_CUDA)) != 0;
  }
  ucp_cleanup(context);
  return info;
}

}  // namespace troupe::cli
