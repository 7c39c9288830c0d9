#include "troupe/scheduler/gpu_spec.hpp"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <utility>

#include <fmt/format.h>

#include "text.hpp"

namespace troupe::scheduler {

namespace {

constexpr std::uint64_t kGiB = std::uint64_t{1} << 30;
constexpr int kMaxGpusPerItem = 1024;

struct KnownModel {
  std::string_view token;  // lower case, as model_tokens() yields it
  std::uint64_t gib;
};

// Defaults for model names without a memory token. The smallest common
// variant wins (A100 -> 40, V100 -> 16): claiming less memory than a GPU has
// only makes the scheduler more careful.
constexpr KnownModel kKnownModels[] = {
    {"h100", 80},    {"h200", 141},   {"h800", 80},  {"a100", 40},  {"a800", 80},
    {"a40", 48},     {"a30", 24},     {"a10", 24},   {"a10g", 24},  {"v100", 16},
    {"p100", 16},    {"t4", 16},      {"l4", 24},    {"l40", 48},   {"l40s", 48},
    {"rtx4090", 24}, {"rtx3090", 24}, {"a6000", 48}, {"b200", 192},
};

bool allowed_in_model(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.' ||
         c == ' ';
}

// "80gb" -> 80; anything else -> 0.
std::uint64_t gib_from_token(std::string_view token) {
  if (token.size() < 3 || token.substr(token.size() - 2) != "gb") return 0;
  const std::string_view digits = token.substr(0, token.size() - 2);
  std::uint64_t value = 0;
  auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), value);
  if (ec != std::errc{} || end != digits.data() + digits.size()) return 0;
  return value;
}

}  // namespace

std::uint64_t nominal_gpu_memory_bytes(std::string_view model) {
  const std::vector<std::string> tokens = detail::model_tokens(model);
  for (const std::string& token : tokens) {
    if (std::uint64_t gib = gib_from_token(token); gib > 0 && gib < (1u << 20)) return gib * kGiB;
  }
  for (const std::string& token : tokens) {
    for (const KnownModel& known : kKnownModels) {
      if (token == known.token) return known.gib * kGiB;
    }
  }
  return 0;
}

bool gpu_model_matches(std::string_view model, std::string_view gpu_type) {
  const std::vector<std::string> want = detail::model_tokens(gpu_type);
  if (want.empty()) return true;
  const std::vector<std::string> have = detail::model_tokens(model);
  return std::search(have.begin(), have.end(), want.begin(), want.end()) != have.end();
}

std::vector<GpuInfo> parse_gpu_spec(std::string_view spec) {
  std::vector<GpuInfo> gpus;
  if (detail::trim(spec).empty()) return gpus;
  std::size_t start = 0;
  while (true) {
    const std::size_t comma = spec.find(',', start);
    const std::string_view raw =
        spec.substr(start, comma == std::string_view::npos ? std::string_view::npos : comma - start);
    const std::string_view item = detail::trim(raw);
    auto bad = [&](std::string_view why) {
      return SpecError(fmt::format("bad GPU spec item \"{}\" in \"{}\": {} (expected MODEL[:COUNT], "
                                   "e.g. \"H100-80GB:2,T4-16GB:1\")",
                                   item, spec, why));
    };
    if (item.empty()) throw bad("empty item");

    std::string_view model = item;
    std::string_view count_text;
    if (const std::size_t colon = item.find(':'); colon != std::string_view::npos) {
      model = detail::trim(item.substr(0, colon));
      count_text = detail::trim(item.substr(colon + 1));
      if (count_text.find(':') != std::string_view::npos) throw bad("more than one ':'");
      if (count_text.empty()) throw bad("missing count after ':'");
    }
    if (model.empty()) throw bad("missing GPU model before ':'");
    if (auto it = std::find_if_not(model.begin(), model.end(), allowed_in_model);
        it != model.end()) {
      throw bad(fmt::format("character '{}' is not allowed in a GPU model", *it));
    }

    int count = 1;
    if (!count_text.empty()) {
      auto [end, ec] = std::from_chars(count_text.data(), count_text.data() + count_text.size(), count);
      if (ec != std::errc{} || end != count_text.data() + count_text.size() || count < 1 ||
          count > kMaxGpusPerItem) {
        throw bad(fmt::format("count \"{}\" is not a whole number from 1 to {}", count_text,
                              kMaxGpusPerItem));
      }
    }

    const std::uint64_t memory = nominal_gpu_memory_bytes(model);
    for (int i = 0; i < count; ++i) {
      GpuInfo gpu;
      gpu.index = static_cast<int>(gpus.size());
      gpu.model = std::string(model);
      gpu.memory_bytes = memory;
      gpu.declared = true;
      gpus.push_back(std::move(gpu));
    }
    if (comma == std::string_view::npos) break;
    start = comma + 1;
  }
  return gpus;
}

std::string format_gpu_spec(const std::vector<GpuInfo>& gpus) {
  std::string out;
  for (std::size_t i = 0; i < gpus.size();) {
    std::size_t run = 1;
    while (i + run < gpus.size() && gpus[i + run].model == gpus[i].model) ++run;
    if (!out.empty()) out += ',';
    out += fmt::format("{}:{}", gpus[i].model, run);
    i += run;
  }
  return out;
}

}  // namespace troupe::scheduler
