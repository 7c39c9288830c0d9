#include "bench_util.hpp"

#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <numeric>

#include <nlohmann/json.hpp>

namespace troupe::bench {
namespace {

// Rounds to `digits` significant digits so JSON lines stay readable.
double round_significant(double value, int digits) {
  if (value == 0 || !std::isfinite(value)) return value;
  const double scale = std::pow(10.0, digits - 1 - static_cast<int>(std::floor(std::log10(std::fabs(value)))));
  return std::round(value * scale) / scale;
}

// Fixed-width text for a figure: enough digits to compare, no exponent for
// the magnitudes benches produce.
std::string format_figure(double value) {
  char buffer[64];
  const double magnitude = std::fabs(value);
  if (magnitude >= 1e5) {
    std::snprintf(buffer, sizeof buffer, "%.0f", value);
  } else if (magnitude >= 100) {
    std::snprintf(buffer, sizeof buffer, "%.1f", value);
  } else {
    std::snprintf(buffer, sizeof buffer, "%.2f", value);
  }
  return buffer;
}

}  // namespace

int Options::iterations_or(int full_default, int quick_default) const {
  if (iterations > 0) return iterations;
  return quick ? quick_default : full_default;
}

int Options::repeats_or(int full_default, int quick_default) const {
  if (repeats > 0) return repeats;
  return quick ? quick_default : full_default;
}

Cli::Cli(std::string name, std::string description)
    : name_(std::move(name)), description_(std::move(description)) {}

Cli& Cli::add_int(std::string flag, int* value, std::string help) {
  int_flags_.push_back({std::move(flag), value, std::move(help)});
  return *this;
}

void Cli::print_usage(std::FILE* out) const {
  std::fprintf(out, "usage: %s [--json] [--quick] [--iterations N] [--repeats N]", name_.c_str());
  for (const auto& flag : int_flags_) std::fprintf(out, " [%s N]", flag.flag.c_str());
  std::fprintf(out, "\n\n%s\n\n", description_.c_str());
  std::fprintf(out,
               "  --json          one JSON object per metric per line:\n"
               "                  {\"bench\",\"metric\",\"value\",\"unit\",\"baseline\",\"ratio\"},\n"
               "                  ratio = value / baseline\n"
               "  --quick         few iterations and repeats (CI smoke run)\n"
               "  --iterations N  measured iterations per repeat\n"
               "  --repeats N     repeats; figures are medians over repeats\n");
  for (const auto& flag : int_flags_) {
    std::fprintf(out, "  %-15s %s (default %d)\n", (flag.flag + " N").c_str(), flag.help.c_str(), *flag.value);
  }
  std::fprintf(out, "  --help          this text\n");
}

Options Cli::parse(int argc, char** argv) {
  Options options;
  auto fail = [&](const std::string& why) {
    std::fprintf(stderr, "%s: %s\n", name_.c_str(), why.c_str());
    print_usage(stderr);
    std::exit(2);
  };
  auto parse_positive = [&](const std::string& flag, const char* text) {
    if (text == nullptr) fail(flag + " needs a value");
    errno = 0;
    char* end = nullptr;
    long value = std::strtol(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || value <= 0 || value > 1'000'000'000) {
      fail(flag + " needs a positive integer, got '" + text + "'");
    }
    return static_cast<int>(value);
  };
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    std::string inline_value;
    bool has_inline = false;
    if (auto eq = arg.find('='); arg.rfind("--", 0) == 0 && eq != std::string::npos) {
      inline_value = arg.substr(eq + 1);
      arg = arg.substr(0, eq);
      has_inline = true;
    }
    auto next_value = [&]() -> const char* {
      if (has_inline) return inline_value.c_str();
      return i + 1 < argc ? argv[++i] : nullptr;
    };
    if (arg == "--help" || arg == "-h") {
      print_usage(stdout);
      std::exit(0);
    } else if (arg == "--json") {
      options.json = true;
    } else if (arg == "--quick") {
      options.quick = true;
    } else if (arg == "--iterations") {
      options.iterations = parse_positive(arg, next_value());
    } else if (arg == "--repeats") {
      options.repeats = parse_positive(arg, next_value());
    } else {
      auto flag = std::find_if(int_flags_.begin(), int_flags_.end(), [&](const IntFlag& f) { return f.flag == arg; });
      if (flag == int_flags_.end()) fail("unknown flag '" + arg + "'");
      *flag->value = parse_positive(arg, next_value());
    }
  }
  return options;
}

double Samples::percentile(double p) const {
  if (values_.empty()) return 0;
  std::vector<double> sorted = values_;
  std::sort(sorted.begin(), sorted.end());
  // Nearest rank: the smallest value with at least p% of samples at or below it.
  const double rank = std::ceil(std::clamp(p, 0.0, 100.0) / 100.0 * static_cast<double>(sorted.size()));
  const auto index = static_cast<std::size_t>(std::max(1.0, rank)) - 1;
  return sorted[std::min(index, sorted.size() - 1)];
}

double Samples::mean() const {
  if (values_.empty()) return 0;
  return std::accumulate(values_.begin(), values_.end(), 0.0) / static_cast<double>(values_.size());
}

double Samples::min() const { return values_.empty() ? 0 : *std::min_element(values_.begin(), values_.end()); }
double Samples::max() const { return values_.empty() ? 0 : *std::max_element(values_.begin(), values_.end()); }

void warm_up(int count, const std::function<void()>& fn) {
  for (int i = 0; i < count; ++i) fn();
}

double median_of(int repeats, const std::function<double()>& measure) {
  Samples figures;
  for (int i = 0; i < std::max(1, repeats); ++i) figures.add(measure());
  return figures.median();
}

Reporter::Reporter(std::string bench, const Options& options) : bench_(std::move(bench)), json_(options.json) {}

void Reporter::set_labels(std::string value_label, std::string baseline_label) {
  value_label_ = std::move(value_label);
  baseline_label_ = std::move(baseline_label);
}

void Reporter::add(std::string metric, double value, std::string unit, Better better,
                   std::optional<double> baseline) {
  if (json_) {
    nlohmann::ordered_json line;
    line["bench"] = bench_;
    line["metric"] = metric;
    line["value"] = round_significant(value, 6);
    line["unit"] = unit;
    if (baseline && *baseline != 0) {
      line["baseline"] = round_significant(*baseline, 6);
      line["ratio"] = round_significant(value / *baseline, 4);
    } else {
      line["baseline"] = baseline ? nlohmann::ordered_json(*baseline) : nlohmann::ordered_json(nullptr);
      line["ratio"] = nullptr;
    }
    std::printf("%s\n", line.dump().c_str());
    std::fflush(stdout);
  }
  rows_.push_back({std::move(metric), value, std::move(unit), better, baseline});
}

void Reporter::note(std::string text) { notes_.push_back(std::move(text)); }

void Reporter::print_table() const {
  if (json_) return;
  struct Cells {
    std::string metric, value, baseline, ratio, unit, better;
  };
  std::vector<Cells> lines;
  lines.push_back({"metric", value_label_, baseline_label_, "ratio", "unit", "better"});
  for (const auto& row : rows_) {
    Cells cells{row.metric, format_figure(row.value), "-", "-", row.unit,
                row.better == Better::lower ? "lower" : "higher"};
    if (row.baseline) {
      cells.baseline = format_figure(*row.baseline);
      if (*row.baseline != 0) {
        char ratio[32];
        std::snprintf(ratio, sizeof ratio, "%.2fx", row.value / *row.baseline);
        cells.ratio = ratio;
      }
    }
    lines.push_back(std::move(cells));
  }
  std::size_t w[6] = {};
  for (const auto& c : lines) {
    w[0] = std::max(w[0], c.metric.size());
    w[1] = std::max(w[1], c.value.size());
    w[2] = std::max(w[2], c.baseline.size());
    w[3] = std::max(w[3], c.ratio.size());
    w[4] = std::max(w[4], c.unit.size());
    w[5] = std::max(w[5], c.better.size());
  }
  std::printf("== %s ==\n", bench_.c_str());
  for (std::size_t i = 0; i < lines.size(); ++i) {
    const auto& c = lines[i];
    // Figures right-aligned, text left-aligned.
    std::printf("  %-*s  %*s  %*s  %*s  %-*s  %-*s\n", static_cast<int>(w[0]), c.metric.c_str(),
                static_cast<int>(w[1]), c.value.c_str(), static_cast<int>(w[2]), c.baseline.c_str(),
                static_cast<int>(w[3]), c.ratio.c_str(), static_cast<int>(w[4]), c.unit.c_str(),
                static_cast<int>(w[5]), c.better.c_str());
    if (i == 0) {
      std::size_t total = w[0] + w[1] + w[2] + w[3] + w[4] + w[5] + 10;
      std::printf("  %s\n", std::string(total, '-').c_str());
    }
  }
  std::printf("  ratio = %s / %s; 'better' says which direction of value (and of ratio) is better.\n",
              value_label_.c_str(), baseline_label_.c_str());
  for (const auto& text : notes_) std::printf("  %s\n", text.c_str());
  std::fflush(stdout);
}

double median(const std::vector<double>& values) {
  Samples samples;
  for (double v : values) samples.add(v);
  return samples.median();
}

bool write_all(int fd, const void* data, std::size_t size) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    ssize_t n = ::write(fd, p, size);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    p += n;
    size -= static_cast<std::size_t>(n);
  }
  return true;
}

bool read_all(int fd, void* data, std::size_t size, int timeout_ms) {
  char* p = static_cast<char*>(data);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (size > 0) {
    if (timeout_ms >= 0) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) return false;
      pollfd item{fd, POLLIN, 0};
      int r = ::poll(&item, 1, static_cast<int>(left.count()));
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) return false;
    }
    ssize_t n = ::read(fd, p, size);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    p += n;
    size -= static_cast<std::size_t>(n);
  }
  return true;
}

bool write_blob(int fd, const void* data, std::size_t size) {
  const std::uint32_t length = static_cast<std::uint32_t>(size);
  return write_all(fd, &length, sizeof length) && write_all(fd, data, size);
}

bool read_blob(int fd, std::string& out, int timeout_ms) {
  std::uint32_t length = 0;
  if (!read_all(fd, &length, sizeof length, timeout_ms) || length > (1u << 20)) return false;
  out.resize(length);
  return read_all(fd, out.data(), length, timeout_ms);
}

}  // namespace troupe::bench
