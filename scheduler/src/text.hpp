// Private text helpers shared by the scheduler's sources: number and byte
// formatting for messages, case folding and tokenizing of GPU model names.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace troupe::scheduler::detail {

// A quantity for messages: whole numbers without a fraction ("4"), others
// with up to six significant digits ("0.25"). "memory" goes through
// format_bytes.
std::string format_amount(std::string_view name, double amount);
std::string format_number(double value);
std::string format_bytes(double bytes);

std::string to_lower(std::string_view text);
std::string_view trim(std::string_view text);
bool iequals(std::string_view a, std::string_view b) noexcept;

// Lower-cased tokens of a GPU model name, split on spaces, '-' and '_':
// "NVIDIA H100 80GB HBM3" -> {"nvidia", "h100", "80gb", "hbm3"}.
std::vector<std::string> model_tokens(std::string_view model);

}  // namespace troupe::scheduler::detail
