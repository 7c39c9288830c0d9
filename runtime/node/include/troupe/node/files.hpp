// Whole-file reads and writes for the daemons' session directory (binaries,
// actor specs, pid files), shared by the head, the node manager and the CLI.
#pragma once

#include <filesystem>
#include <optional>
#include <string>

namespace troupe::node {

// Writes through a temporary file and rename, so readers never see half.
// Throws Error(invalid_argument) when it cannot write, or
// std::filesystem::filesystem_error from the rename.
void write_file_atomic(const std::filesystem::path& path, const std::string& contents, int mode = 0644);
// The whole file, or nullopt when it cannot be opened.
std::optional<std::string> read_file(const std::filesystem::path& path);

}  // namespace troupe::node
