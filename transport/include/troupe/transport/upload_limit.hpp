// The largest job binary one upload can carry.
#pragma once

#include <cstddef>

namespace troupe::transport {

// A job binary travels in one control-plane frame (a driver's uploadBinary,
// `troupe submit`): at most FramingLimits::max_frame_bytes (256 MiB) less
// 1 MiB for the rest of the message (framing.cpp checks the two agree).
// Senders check it first, since the head's socket drops a larger frame
// unread and the sender would only see a timeout.
inline constexpr std::size_t kMaxBinaryBytes = (std::size_t{256} << 20) - (std::size_t{1} << 20);

}  // namespace troupe::transport
