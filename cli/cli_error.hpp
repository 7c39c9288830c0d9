// Failures of the cluster commands that are not the user's typing: no
// cluster, an unreachable head, a port in use. main (see command.hpp) prints
// "Error: <message>" and exits with kExitFailure; input errors on the command
// line are UsageError (kExitUsage) instead.
#pragma once

#include <stdexcept>
#include <string>

#include "command.hpp"

namespace troupe::cli {

class CliError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace troupe::cli
