// The harness every bench/*_bench.cpp shares: command-line flags, timing,
// sample statistics, and reporting each metric beside its baseline, either
// as an aligned table (default) or as one JSON object per line (--json):
//
//   {"bench": "local_call", "metric": "latency_p50", "value": 41.2,
//    "unit": "us", "baseline": 12.0, "ratio": 3.43}
//
// `baseline` is the same metric measured for the bench's baseline in the same
// run and `ratio` = value / baseline (null for both when a metric has none).
//
// The machines this runs on are small, shared and noisy: measure in several
// repeats, interleave the measured system with its baseline, and report the
// median over repeats (`median_of`).
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace troupe::bench {

using Clock = std::chrono::steady_clock;

inline double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}
inline double micros_since(Clock::time_point start) {
  return std::chrono::duration<double, std::micro>(Clock::now() - start).count();
}

// Flags common to every bench; a bench may add its own integer flags.
struct Options {
  bool json = false;   // --json: one JSON object per metric per line
  bool quick = false;  // --quick: few iterations, for CI smoke runs
  int iterations = 0;  // --iterations N: measured iterations per repeat; 0 = bench default
  int repeats = 0;     // --repeats N: repeats to take the median over; 0 = bench default

  // `iterations` if given, else `quick_default` under --quick, else `full_default`.
  int iterations_or(int full_default, int quick_default) const;
  int repeats_or(int full_default, int quick_default) const;
};

// Parses the common flags plus the bench's own. --help prints usage and
// exits 0; an unknown or malformed flag prints usage and exits 2.
class Cli {
 public:
  Cli(std::string name, std::string description);
  // Registers `--flag N`; `value` holds the default and receives the parsed value.
  Cli& add_int(std::string flag, int* value, std::string help);
  Options parse(int argc, char** argv);

 private:
  struct IntFlag {
    std::string flag;
    int* value;
    std::string help;
  };
  void print_usage(std::FILE* out) const;

  std::string name_;
  std::string description_;
  std::vector<IntFlag> int_flags_;
};

// A set of measurements (any unit) and their statistics. Percentiles use the
// nearest-rank method on a sorted copy.
class Samples {
 public:
  void reserve(std::size_t n) { values_.reserve(n); }
  void add(double value) { values_.push_back(value); }
  std::size_t size() const noexcept { return values_.size(); }
  bool empty() const noexcept { return values_.empty(); }
  const std::vector<double>& values() const noexcept { return values_; }

  double percentile(double p) const;  // p in [0, 100]
  double p50() const { return percentile(50); }
  double p99() const { return percentile(99); }
  double median() const { return percentile(50); }
  double mean() const;
  double min() const;
  double max() const;

 private:
  std::vector<double> values_;
};

// Runs `fn` `count` times, unmeasured, so caches, allocators, thread wake-up
// paths and lazily built state are warm before measuring.
void warm_up(int count, const std::function<void()>& fn);

// Median over `repeats` calls of `measure`, each returning one figure.
double median_of(int repeats, const std::function<double()>& measure);

enum class Better { lower, higher };

// Collects metrics and prints them: at once, one line each, under --json;
// as one aligned table from print_table() otherwise.
class Reporter {
 public:
  Reporter(std::string bench, const Options& options);

  // Column headings of the table, e.g. "troupe" and "asio pool".
  void set_labels(std::string value_label, std::string baseline_label);

  // `baseline` is the same metric for the baseline, measured in this run.
  void add(std::string metric, double value, std::string unit, Better better,
           std::optional<double> baseline = std::nullopt);
  // A free-text note printed under the table (ignored under --json).
  void note(std::string text);
  // Prints the table (no-op under --json).
  void print_table() const;

 private:
  struct Row {
    std::string metric;
    double value;
    std::string unit;
    Better better;
    std::optional<double> baseline;
  };
  std::string bench_;
  bool json_;
  std::string value_label_ = "value";
  std::string baseline_label_ = "baseline";
  std::vector<Row> rows_;
  std::vector<std::string> notes_;
};

// Keeps the compiler from optimising away a value or the work behind it.
template <class T>
inline void do_not_optimize(const T& value) {
  asm volatile("" : : "r,m"(value) : "memory");
}

// Throughput (calls/s) of `callers` threads started together, each running
// per_caller(index, n / callers).
template <class PerCaller>
double measure_parallel(int callers, int n, PerCaller&& per_caller) {
  const int per_thread = std::max(1, n / callers);
  std::atomic<int> ready{0};
  std::atomic<bool> go{false};
  std::vector<std::thread> threads;
  for (int c = 0; c < callers; ++c) {
    threads.emplace_back([&, c] {
      ready.fetch_add(1);
      while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
      per_caller(c, per_thread);
    });
  }
  while (ready.load() < callers) std::this_thread::yield();
  const auto start = Clock::now();
  go.store(true, std::memory_order_release);
  for (auto& thread : threads) thread.join();
  return per_thread * callers / seconds_since(start);
}

// Median of a list of figures.
double median(const std::vector<double>& values);

// Pipes between a bench and the baseline process it forks. Each returns
// false on EOF, an error, or (timeout_ms >= 0) when the time runs out.
bool write_all(int fd, const void* data, std::size_t size);
// Reads exactly `size` bytes, waiting at most `timeout_ms` in all (-1: forever).
bool read_all(int fd, void* data, std::size_t size, int timeout_ms = -1);
// A u32 length, then the bytes (at most 1 MiB).
bool write_blob(int fd, const void* data, std::size_t size);
bool read_blob(int fd, std::string& out, int timeout_ms = -1);
inline bool write_blob(int fd, const std::string& blob) { return write_blob(fd, blob.data(), blob.size()); }

}  // namespace troupe::bench
