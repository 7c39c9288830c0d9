// UcxContext (ucp_init with troupe's options) and ObjectBuffer.
#include "troupe/transport/ucx.hpp"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>
#include <vector>

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>

#include <filesystem>

#include <ucp/api/ucp.h>

#include "troupe/transport/error.hpp"

namespace troupe::transport {

std::string_view to_string(MemoryType memory) noexcept {
  switch (memory) {
    case MemoryType::host: return "host";
    case MemoryType::cuda: return "cuda";
  }
  return "unknown";
}

// --- ObjectBuffer ------------------------------------------------------------

ObjectBuffer ObjectBuffer::allocate_host(std::size_t size) {
  ObjectBuffer buffer;
  buffer.size = size;
  if (size == 0) return buffer;
  constexpr std::align_val_t kAlign{64};
  void* data = ::operator new(size, kAlign);
  buffer.data = data;
  buffer.keepalive = std::shared_ptr<const void>(data, [](const void* p) {
    ::operator delete(const_cast<void*>(p), std::align_val_t{64});
  });
  return buffer;
}

ObjectBuffer ObjectBuffer::copy_of(std::string_view bytes) {
  ObjectBuffer buffer = allocate_host(bytes.size());
  if (!bytes.empty()) std::memcpy(buffer.data, bytes.data(), bytes.size());
  return buffer;
}

ObjectBuffer ObjectBuffer::wrap(const void* data, std::size_t size, std::shared_ptr<const void> keepalive,
                                MemoryType memory) {
  ObjectBuffer buffer;
  buffer.data = const_cast<void*>(data);  // never written through: see the header
  buffer.size = size;
  buffer.memory = memory;
  buffer.keepalive = std::move(keepalive);
  return buffer;
}

std::span<const std::byte> ObjectBuffer::bytes() const noexcept {
  if (memory != MemoryType::host || size == 0) return {};
  return {static_cast<const std::byte*>(data), size};
}

std::string_view ObjectBuffer::view() const noexcept {
  if (memory != MemoryType::host || size == 0) return {};
  return {static_cast<const char*>(data), size};
}

// --- UcxContext --------------------------------------------------------------

namespace {

std::string print_context_info(ucp_context_h context) {
  char* text = nullptr;
  std::size_t size = 0;
  FILE* stream = ::open_memstream(&text, &size);
  if (stream == nullptr) return {};
  ucp_context_print_info(context, stream);
  std::fclose(stream);
  std::string info(text != nullptr ? text : "", size);
  std::free(text);
  return info;
}

// "#      resource 4  :  md 3  dev 3  flags -- posix/memory" lines -> "posix",
// each transport once, in UCX's order, without "self".
std::string transports_of(const std::string& info) {
  std::vector<std::string> names;
  std::size_t pos = 0;
  while (pos < info.size()) {
    std::size_t end = info.find('\n', pos);
    if (end == std::string::npos) end = info.size();
    const std::string line = info.substr(pos, end - pos);
    pos = end + 1;
    if (line.find("resource") == std::string::npos) continue;
    const auto last = line.find_last_not_of(" \t");
    if (last == std::string::npos) continue;
    const auto first = line.find_last_of(" \t", last);
    const std::string resource = line.substr(first == std::string::npos ? 0 : first + 1,
                                             last - (first == std::string::npos ? 0 : first + 1) + 1);
    const auto slash = resource.find('/');
    if (slash == std::string::npos) continue;
    std::string name = resource.substr(0, slash);
    if (name == "self") continue;
    bool seen = false;
    for (const auto& n : names) seen = seen || n == name;
    if (!seen) names.push_back(std::move(name));
  }
  std::string out;
  for (const auto& name : names) out += (out.empty() ? "" : ",") + name;
  return out;
}

// Whether a UCX_TLS value (the option, else the environment's) may open
// posix or sysv; UCX warns about settings for transports it did not open.
bool may_use_shared_memory(const std::string& option) {
  std::string tls = option;
  if (tls.empty()) {
    const char* env = std::getenv("UCX_TLS");
    tls = env != nullptr ? env : "";
  }
  if (tls.empty() || tls[0] == '^') return true;  // all, or all but some
  std::size_t pos = 0;
  while (pos <= tls.size()) {
    std::size_t end = tls.find(',', pos);
    if (end == std::string::npos) end = tls.size();
    const std::string name = tls.substr(pos, end - pos);
    for (const char* shm : {"all", "sm", "shm", "mm", "posix", "sysv"})
      if (name == shm) return true;
    pos = end + 1;
  }
  return false;
}

void modify(ucp_config_t* config, const char* name, const std::string& value) {
  if (value.empty()) return;
  const ucs_status_t status = ucp_config_modify(config, name, value.c_str());
  if (status != UCS_OK) {
    ucp_config_release(config);
    throw_from_ucs(status, std::string("setting UCX ") + name + "=" + value);
  }
}

// "tcp://10.0.0.5:4000", "10.0.0.5:4000" or "10.0.0.5" -> "10.0.0.5".
std::string ip_of(std::string text) {
  if (auto scheme = text.find("://"); scheme != std::string::npos) text = text.substr(scheme + 3);
  if (auto colon = text.rfind(':'); colon != std::string::npos && text.find(':') == colon) text.resize(colon);
  return text;
}

}  // namespace

std::string net_devices_for_ip(const std::string& ip_or_endpoint) {
  const std::string ip = ip_of(ip_or_endpoint);
  in_addr wanted{};
  if (::inet_pton(AF_INET, ip.c_str(), &wanted) != 1 || wanted.s_addr == htonl(INADDR_ANY)) return {};
  std::string interface;
  ifaddrs* list = nullptr;
  if (::getifaddrs(&list) != 0) return {};
  for (ifaddrs* entry = list; entry != nullptr; entry = entry->ifa_next) {
    if (entry->ifa_addr == nullptr || entry->ifa_addr->sa_family != AF_INET) continue;
    if (reinterpret_cast<const sockaddr_in*>(entry->ifa_addr)->sin_addr.s_addr == wanted.s_addr) {
      interface = entry->ifa_name;
      break;
    }
  }
  ::freeifaddrs(list);
  if (interface.empty()) return {};
  std::string devices = interface;
  // RDMA ports are not reached through IP sockets; keep them.
  std::error_code ignored;
  for (const auto& device : std::filesystem::directory_iterator("/sys/class/infiniband", ignored)) {
    for (const auto& port : std::filesystem::directory_iterator(device.path() / "ports", ignored))
      devices += "," + device.path().filename().string() + ":" + port.path().filename().string();
  }
  return devices;
}

std::shared_ptr<UcxContext> UcxContext::create(const UcxOptions& options) {
  ucp_config_t* config = nullptr;
  // Reads UCX_* from the environment; the options below override it.
  if (ucs_status_t status = ucp_config_read(nullptr, nullptr, &config); status != UCS_OK)
    throw_from_ucs(status, "ucp_config_read");
  modify(config, "TLS", options.tls);
  std::string net_devices = options.net_devices;
  if (net_devices.empty() && !options.listen_ip.empty() && std::getenv("UCX_NET_DEVICES") == nullptr)
    net_devices = net_devices_for_ip(options.listen_ip);
  modify(config, "NET_DEVICES", net_devices);
  std::string keepalive = options.keepalive_interval;
  if (keepalive.empty() && std::getenv("UCX_KEEPALIVE_INTERVAL") == nullptr) keepalive = "1s";
  modify(config, "KEEPALIVE_INTERVAL", keepalive);
  if (options.detect_peer_failure && may_use_shared_memory(options.tls) &&
      std::getenv("UCX_MM_ERROR_HANDLING") == nullptr &&
      std::getenv("UCX_POSIX_ERROR_HANDLING") == nullptr && std::getenv("UCX_SYSV_ERROR_HANDLING") == nullptr) {
    // Lets posix/sysv serve endpoints with UCP_ERR_HANDLING_MODE_PEER (they
    // detect a dead peer by keepalive); without it UCX 1.13 picks no shm lane.
    // (The POSIX_/SYSV_ names are rejected by ucp_config_modify; the MM_
    // name they inherit from is accepted.)
    modify(config, "MM_ERROR_HANDLING", "y");
  }

  ucp_params_t params{};
  params.field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_MT_WORKERS_SHARED | UCP_PARAM_FIELD_NAME;
  params.features = UCP_FEATURE_AM | UCP_FEATURE_WAKEUP;
  params.mt_workers_shared = 0;  // each worker belongs to one progress thread
  params.name = "troupe";
  ucp_context_h context = nullptr;
  const ucs_status_t status = ucp_init(&params, config, &context);
  ucp_config_release(config);
  if (status != UCS_OK) {
    std::string what = "ucp_init";
    if (!options.tls.empty()) what += " with UCX_TLS=" + options.tls;
    throw_from_ucs(status, what);
  }

  std::shared_ptr<UcxContext> self(new UcxContext());
  self->context_ = context;
  self->options_ = options;
  ucp_context_attr_t attr{};
  attr.field_mask = UCP_ATTR_FIELD_MEMORY_TYPES;
  if (ucp_context_query(context, &attr) == UCS_OK)
    self->cuda_native_ = (attr.memory_types & UCS_BIT(UCS_MEMORY_TYPE_CUDA)) != 0;
  self->transports_ = transports_of(print_context_info(context));
  return self;
}

UcxContext::~UcxContext() {
  if (context_ != nullptr) ucp_cleanup(context_);
}

std::string UcxContext::describe() const {
  return std::string("UCX ") + ucp_get_version_string() + ", transports " +
         (transports_.empty() ? "none" : transports_) + ", cuda_native " + (cuda_native_ ? "yes" : "no");
}

}  // namespace troupe::transport
