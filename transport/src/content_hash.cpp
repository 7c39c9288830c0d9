#include "troupe/transport/content_hash.hpp"

#include <sodium.h>

#include <array>
#include <fstream>

#include "sodium_util.hpp"
#include "troupe/runtime/error.hpp"

namespace troupe::transport {
namespace {

constexpr std::size_t kHashBytes = 32;

using detail::ensure_sodium;
using detail::hex_of;

}  // namespace

std::string content_hash(std::string_view data) {
  ensure_sodium();
  std::array<unsigned char, kHashBytes> out{};
  ::crypto_generichash(out.data(), out.size(), reinterpret_cast<const unsigned char*>(data.data()), data.size(),
                       nullptr, 0);
  return hex_of(out.data(), out.size());
}

std::optional<std::string> content_hash_of_file(const std::filesystem::path& path) {
  ensure_sodium();
  std::ifstream in(path, std::ios::binary);
  if (!in) return std::nullopt;
  crypto_generichash_state state;
  ::crypto_generichash_init(&state, nullptr, 0, kHashBytes);
  std::array<char, 1 << 16> buffer;
  while (in) {
    in.read(buffer.data(), buffer.size());
    auto got = in.gcount();
    if (got > 0)
      ::crypto_generichash_update(&state, reinterpret_cast<const unsigned char*>(buffer.data()),
                                  static_cast<unsigned long long>(got));
  }
  if (in.bad()) return std::nullopt;
  std::array<unsigned char, kHashBytes> out{};
  ::crypto_generichash_final(&state, out.data(), out.size());
  return hex_of(out.data(), out.size());
}

bool valid_hash_name(std::string_view hash) {
  if (hash.size() != 2 * kHashBytes) return false;
  for (char c : hash) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

}  // namespace troupe::transport
