// RateLimitedWarning: a warning a peer can trigger at will (a malformed
// message), logged at most `burst` times per `interval`; what it held back
// is counted and said in the next line it logs. Any thread (one mutex).
#pragma once

#include <chrono>
#include <cstdint>
#include <mutex>
#include <string>
#include <string_view>

namespace troupe::detail {

class RateLimitedWarning {
 public:
  explicit RateLimitedWarning(std::string what, int burst = 10,
                              std::chrono::steady_clock::duration interval = std::chrono::seconds(10));
  // Counts one occurrence and logs "<what>: <detail>" unless the burst for
  // this interval is spent.
  void warn(std::string_view detail);
  // Occurrences so far, logged or not.
  std::uint64_t count() const;

 private:
  const std::string what_;
  const int burst_;
  const std::chrono::steady_clock::duration interval_;
  mutable std::mutex mutex_;
  std::chrono::steady_clock::time_point window_start_{};
  int logged_in_window_ = 0;
  std::uint64_t suppressed_ = 0;
  std::uint64_t count_ = 0;
};

}  // namespace troupe::detail
