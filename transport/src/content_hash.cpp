#include "troupe/transport/content_hash.hpp"

#include <cstdint>
#include <cstdio>
#include <cstring>

namespace troupe::transport {
namespace {

inline std::uint64_t mix(std::uint64_t h) {
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdULL;
  h ^= h >> 33;
  h *= 0xc4ceb9fe1a85ec53ULL;
  h ^= h >> 33;
  return h;
}

}  // namespace

std::string content_hash(std::string_view data) {
  std::uint64_t a = 0x9e3779b97f4a7c15ULL ^ data.size();
  std::uint64_t b = 0xc2b2ae3d27d4eb4fULL + data.size();
  std::size_t i = 0;
  for (; i + 16 <= data.size(); i += 16) {
    std::uint64_t w1, w2;
    std::memcpy(&w1, data.data() + i, 8);
    std::memcpy(&w2, data.data() + i + 8, 8);
    a = (a ^ w1) * 0x87c37b91114253d5ULL;
    a = (a << 31) | (a >> 33);
    b = (b ^ w2) * 0x4cf5ad432745937fULL;
    b = (b << 33) | (b >> 31);
    a += b;
    b += a;
  }
  if (i + 8 <= data.size()) {
    std::uint64_t w;
    std::memcpy(&w, data.data() + i, 8);
    a = (a ^ w) * 0x87c37b91114253d5ULL;
    i += 8;
  }
  std::uint64_t tail = 0;
  std::memcpy(&tail, data.data() + i, data.size() - i);
  a = mix(a ^ tail);
  b = mix(b + a);
  a += b;
  char buffer[33];
  std::snprintf(buffer, sizeof buffer, "%016llx%016llx", static_cast<unsigned long long>(a),
                static_cast<unsigned long long>(b));
  return buffer;
}

bool valid_hash_name(std::string_view hash) {
  if (hash.empty() || hash.size() > 128) return false;
  for (char c : hash) {
    bool ok = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

}  // namespace troupe::transport
