#include "text.hpp"

#include <cctype>
#include <cmath>
#include <cstdint>

#include <fmt/format.h>

#include "troupe/scheduler/resources.hpp"

namespace troupe::scheduler::detail {

std::string format_number(double value) {
  const double nearest = std::round(value);
  if (std::fabs(value - nearest) < kEpsilon && std::fabs(nearest) < 9.0e15) {
    return fmt::format("{}", static_cast<std::int64_t>(nearest));
  }
  return fmt::format("{:.6g}", value);
}

std::string format_amount(std::string_view name, double amount) {
  return name == kMemory ? format_bytes(amount) : format_number(amount);
}

std::string format_bytes(double bytes) {
  struct Unit {
    const char* suffix;
    double size;
  };
  static constexpr Unit units[] = {{"TiB", 1099511627776.0}, {"GiB", 1073741824.0},
                                   {"MiB", 1048576.0},       {"KiB", 1024.0}};
  if (bytes < 0 || !std::isfinite(bytes)) return format_number(bytes) + "B";
  // The largest unit not above the value: whole when exact, else two decimals.
  for (const Unit& unit : units) {
    if (bytes < unit.size) continue;
    if (std::fmod(bytes, unit.size) == 0.0) {
      return fmt::format("{}{}", format_number(bytes / unit.size), unit.suffix);
    }
    return fmt::format("{:.2f}{}", bytes / unit.size, unit.suffix);
  }
  return format_number(bytes) + "B";
}

std::string to_lower(std::string_view text) {
  std::string out(text);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

std::string_view trim(std::string_view text) {
  while (!text.empty() && std::isspace(static_cast<unsigned char>(text.front()))) {
    text.remove_prefix(1);
  }
  while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back()))) {
    text.remove_suffix(1);
  }
  return text;
}

bool iequals(std::string_view a, std::string_view b) noexcept {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(a[i])) !=
        std::tolower(static_cast<unsigned char>(b[i]))) {
      return false;
    }
  }
  return true;
}

std::vector<std::string> model_tokens(std::string_view model) {
  std::vector<std::string> tokens;
  std::string current;
  for (char c : model) {
    if (std::isspace(static_cast<unsigned char>(c)) || c == '-' || c == '_') {
      if (!current.empty()) tokens.push_back(std::move(current));
      current.clear();
    } else {
      current += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    }
  }
  if (!current.empty()) tokens.push_back(std::move(current));
  return tokens;
}

}  // namespace troupe::scheduler::detail
