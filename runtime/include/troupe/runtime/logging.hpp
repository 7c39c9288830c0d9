// Logging through spdlog. The level comes from InitOptions::log_level, the
// --troupe-log-level flag, or TROUPE_LOG_LEVEL (trace, debug, info, warn,
// error, critical, off); the default is warn. Log lines go to stderr.
#pragma once

#include <memory>
#include <string_view>

#include <spdlog/spdlog.h>

namespace troupe::log {

// troupe's logger ("troupe"); created on first use.
spdlog::logger& logger();
// Sets the level; throws Error(invalid_argument) for an unknown name.
void set_level(std::string_view level);
// Applies TROUPE_LOG_LEVEL if set, else `fallback` if not empty.
void init_from_env(std::string_view fallback = {});

}  // namespace troupe::log

#define TROUPE_LOG_TRACE(...) SPDLOG_LOGGER_TRACE(&::troupe::log::logger(), __VA_ARGS__)
#define TROUPE_LOG_DEBUG(...) SPDLOG_LOGGER_DEBUG(&::troupe::log::logger(), __VA_ARGS__)
#define TROUPE_LOG_INFO(...) ::troupe::log::logger().info(__VA_ARGS__)
#define TROUPE_LOG_WARN(...) ::troupe::log::logger().warn(__VA_ARGS__)
#define TROUPE_LOG_ERROR(...) ::troupe::log::logger().error(__VA_ARGS__)
