#include "troupe/runtime/logging.hpp"

#include <spdlog/sinks/stdout_color_sinks.h>

#include <cstdlib>
#include <string>

#include "troupe/runtime/error.hpp"

namespace troupe::log {

spdlog::logger& logger() {
  static std::shared_ptr<spdlog::logger> instance = [] {
    auto created = spdlog::stderr_color_mt("troupe");
    created->set_pattern("[%Y-%m-%d %H:%M:%S.%e] [%n] [%^%l%$] [pid %P tid %t] %v");
    created->set_level(spdlog::level::warn);
    return created;
  }();
  return *instance;
}

void set_level(std::string_view level) {
  auto parsed = spdlog::level::from_str(std::string(level));
  // from_str maps unknown names to "off"; only accept "off" when asked for.
  if (parsed == spdlog::level::off && level != "off") {
    throw_error(Errc::invalid_argument,
                "unknown log level '" + std::string(level) +
                    "' (use trace, debug, info, warn, error, critical or off)");
  }
  logger().set_level(parsed);
}

void init_from_env(std::string_view fallback) {
  if (const char* env = std::getenv("TROUPE_LOG_LEVEL"); env && *env) {
    set_level(env);
  } else if (!fallback.empty()) {
    set_level(fallback);
  }
}

}  // namespace troupe::log
