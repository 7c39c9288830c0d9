// Helpers shared by the planner tests (planner_test.cpp, planner_v2_test.cpp):
// where the shared cases are (the copy in tests/scheduler/data/planner, and
// ../shared/planner when present) and how their paths and numbers compare.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#define EXPECT_CONTAINS(text, part) \
  EXPECT_NE(std::string(text).find(part), std::string::npos) << "missing \"" << (part) << "\" in: " << (text)

namespace troupe::scheduler::planner_testing {

namespace fs = std::filesystem;

inline constexpr double kInf = std::numeric_limits<double>::infinity();

inline bool close(double a, double b, double relative = 1e-9) { return std::abs(a - b) <= relative * std::abs(b); }

inline fs::path copied_planner_dir() {
  return fs::path(TROUPE_SOURCE_DIR) / "tests" / "scheduler" / "data" / "planner";
}

// shared/planner beside the repository ($TROUPE_SHARED_DIR/planner first),
// when it holds `cases_file`.
inline std::optional<fs::path> shared_planner_dir(std::string_view cases_file = "cases.json") {
  std::vector<fs::path> candidates;
  if (const char* shared = std::getenv("TROUPE_SHARED_DIR")) candidates.push_back(fs::path(shared) / "planner");
  candidates.push_back(fs::path(TROUPE_SOURCE_DIR).parent_path() / "shared" / "planner");
  for (const fs::path& dir : candidates) {
    if (fs::exists(dir / cases_file)) return dir;
  }
  return std::nullopt;
}

inline std::string read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// The cases files name files relative to the folder holding shared/:
// "shared/planner/models/vgg16.json" -> <planner dir>/models/vgg16.json.
inline fs::path resolve(const fs::path& planner_dir, const std::string& path) {
  const std::string prefix = "shared/planner/";
  EXPECT_EQ(path.rfind(prefix, 0), 0u) << path;
  return planner_dir / path.substr(prefix.size());
}

}  // namespace troupe::scheduler::planner_testing
