#include "rate_limited_log.hpp"

#include "troupe/runtime/logging.hpp"

namespace troupe::detail {

RateLimitedWarning::RateLimitedWarning(std::string what, int burst, std::chrono::steady_clock::duration interval)
    : what_(std::move(what)), burst_(burst), interval_(interval) {}

void RateLimitedWarning::warn(std::string_view detail) {
  std::uint64_t held_back = 0;
  {
    std::lock_guard lock(mutex_);
    ++count_;
    const auto now = std::chrono::steady_clock::now();
    if (now - window_start_ >= interval_) {
      window_start_ = now;
      logged_in_window_ = 0;
    }
    if (logged_in_window_ >= burst_) {
      ++suppressed_;
      return;
    }
    ++logged_in_window_;
    held_back = suppressed_;
    suppressed_ = 0;
  }
  if (held_back) TROUPE_LOG_WARN("{}: {} ({} more not logged)", what_, detail, held_back);
  else TROUPE_LOG_WARN("{}: {}", what_, detail);
}

std::uint64_t RateLimitedWarning::count() const {
  std::lock_guard lock(mutex_);
  return count_;
}

}  // namespace troupe::detail
