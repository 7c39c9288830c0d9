// The one way troupe includes Boost.Asio. Boost 1.74's awaitable.hpp uses
// std::exchange without including <utility>, which breaks under C++20; this
// wrapper includes it first. Include this header, never Asio's directly.
#pragma once

#include <utility>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/steady_timer.hpp>
