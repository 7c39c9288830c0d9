// What a UcxWorker tick may return besides a deadline (internal to the
// data plane's files).
#pragma once

#include <chrono>

namespace troupe::transport {

// time_point::min(): UCX operations are in flight (sends waiting for room
// in a peer's FIFO, rendezvous transfers): keep polling, whatever the
// machine's load, since no event says when they can move on.
// kPollWhileIdle: messages came or left lately (DataPlaneOptions::
// message_poll_window): poll while this core is free, since an answer
// may be close, but sleep on the event fd when other threads wait for
// the core (an arriving message wakes the thread).
inline constexpr auto kPollWhileIdle = std::chrono::steady_clock::time_point::min() + std::chrono::nanoseconds(1);

}  // namespace troupe::transport
