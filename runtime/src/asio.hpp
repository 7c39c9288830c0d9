// The one way the runtime's sources include Boost.Asio (private: no public
// header uses Asio, so users do not inherit Boost). Boost 1.74's
// awaitable.hpp uses std::exchange without including <utility>, which breaks
// under C++20; this wrapper includes it first. Include this header, never
// Asio's directly.
#pragma once

#include <utility>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/steady_timer.hpp>
