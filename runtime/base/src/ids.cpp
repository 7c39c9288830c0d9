#include "troupe/runtime/ids.hpp"

#include <unistd.h>

#include <cstdio>
#include <random>

namespace troupe::detail {

void random_id_bits(std::uint64_t& hi, std::uint64_t& lo) noexcept {
  // One engine per thread, seeded from the OS; reseeded in a forked child so
  // parent and child never draw the same ids.
  struct Engine {
    pid_t pid = -1;
    std::mt19937_64 engine;
  };
  thread_local Engine state;
  if (state.pid != ::getpid()) {
    std::random_device device;
    std::seed_seq seed{device(), device(), device(), device(), device(), device()};
    state.engine.seed(seed);
    state.pid = ::getpid();
  }
  do {
    hi = state.engine();
    lo = state.engine();
  } while (hi == 0 && lo == 0);
}

std::string id_hex(std::uint64_t hi, std::uint64_t lo) {
  char buffer[33];
  std::snprintf(buffer, sizeof buffer, "%016llx%016llx", static_cast<unsigned long long>(hi),
                static_cast<unsigned long long>(lo));
  return buffer;
}

bool parse_id_hex(std::string_view text, std::uint64_t& hi, std::uint64_t& lo) noexcept {
  if (text.size() != 32) return false;
  std::uint64_t words[2] = {0, 0};
  for (std::size_t i = 0; i < 32; ++i) {
    const char c = text[i];
    int digit;
    if (c >= '0' && c <= '9') digit = c - '0';
    else if (c >= 'a' && c <= 'f') digit = c - 'a' + 10;
    else if (c >= 'A' && c <= 'F') digit = c - 'A' + 10;
    else return false;
    words[i / 16] = (words[i / 16] << 4) | static_cast<std::uint64_t>(digit);
  }
  hi = words[0];
  lo = words[1];
  return true;
}

}  // namespace troupe::detail
