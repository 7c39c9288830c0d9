#include "troupe/node/ids.hpp"

#include <cstdio>
#include <random>

namespace troupe::node {

std::string Id128::hex() const {
  char buffer[33];
  std::snprintf(buffer, sizeof buffer, "%016llx%016llx", static_cast<unsigned long long>(hi),
                static_cast<unsigned long long>(lo));
  return buffer;
}

std::optional<Id128> Id128::parse(std::string_view hex) {
  if (hex.size() != 32) return std::nullopt;
  Id128 id;
  for (std::size_t i = 0; i < 32; ++i) {
    char c = hex[i];
    int digit;
    if (c >= '0' && c <= '9') digit = c - '0';
    else if (c >= 'a' && c <= 'f') digit = c - 'a' + 10;
    else if (c >= 'A' && c <= 'F') digit = c - 'A' + 10;
    else return std::nullopt;
    std::uint64_t& half = i < 16 ? id.hi : id.lo;
    half = (half << 4) | static_cast<std::uint64_t>(digit);
  }
  return id;
}

Id128 Id128::random() {
  thread_local std::mt19937_64 engine{[] {
    std::random_device device;
    std::seed_seq seed{device(), device(), device(), device()};
    return std::mt19937_64(seed);
  }()};
  Id128 id;
  do {
    id.hi = engine();
    id.lo = engine();
  } while (id.zero());
  return id;
}

}  // namespace troupe::node
