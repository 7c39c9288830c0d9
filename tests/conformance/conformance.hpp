// Shared helpers of the conformance checks (tests/conformance/main.cpp).
#pragma once

#include <chrono>
#include <string>

#include <troupe/troupe.hpp>

namespace troupe::conformance {

using namespace std::chrono_literals;

// Every wait in a check is bounded: a hang fails the check, it does not
// stall the suite. Generous, so a loaded machine does not fail a check.
inline constexpr std::chrono::seconds kWait{60};

inline const char* mode_name() { return troupe::mode() == troupe::Mode::cluster ? "cluster" : "local"; }

}  // namespace troupe::conformance
