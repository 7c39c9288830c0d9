// A short-lived request/reply client of the head, for CLI commands: one
// control connection (transport::ControlDealer) with a random identity,
// every request bounded by a timeout.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include <capnp/message.h>

#include "troupe/transport/control_socket.hpp"
#include "troupe/transport/framing.hpp"
#include "troupe/transport/schema/control.capnp.h"

namespace troupe::cli {

// The head answered with `error :ErrorInfo`.
class RemoteError : public std::runtime_error {
 public:
  RemoteError(std::uint16_t code, std::string message)
      : std::runtime_error(std::move(message)), code_(code) {}
  std::uint16_t code() const noexcept { return code_; }

 private:
  std::uint16_t code_;
};

class ControlClient {
 public:
  explicit ControlClient(std::string head_address,
                         std::chrono::milliseconds timeout = std::chrono::seconds(10));

  // Sets the message's requestId, sends it and waits for the reply carrying
  // the same id (other messages are dropped). Throws CliError when no reply
  // comes within the timeout ("no answer from the head at ... within 10 s"),
  // RemoteError when the head replies `error`.
  transport::ReceivedMessage request(capnp::MallocMessageBuilder& message);

  const std::string& head_address() const noexcept { return head_address_; }
  void set_timeout(std::chrono::milliseconds timeout) { timeout_ = timeout; }

 private:
  std::string head_address_;
  std::chrono::milliseconds timeout_;
  std::unique_ptr<transport::ControlDealer> connection_;
  std::uint64_t next_request_id_ = 1;
};

}  // namespace troupe::cli
