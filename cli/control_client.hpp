// A short-lived request/reply client of the head, for CLI commands: one
// control connection (transport::ControlDealer) with a random identity,
// every request bounded by a timeout.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include <capnp/message.h>

#include "troupe/transport/internal/control_socket.hpp"
#include "troupe/transport/internal/membership.hpp"
#include "troupe/transport/framing.hpp"
#include "troupe/transport/schema/control.capnp.h"

namespace troupe::cli {

// The CLI's membership (the cluster secret its sockets present). `--token-file`
// of a command sets the file; otherwise the first ControlClient looks the
// token up for its head (transport::find_token: TROUPE_TOKEN,
// TROUPE_TOKEN_FILE, this machine's session of that head). `troupe start`
// sets the secret it made or read with set_cli_membership.
void set_token_file_flag(const std::string& path);
void set_cli_membership(std::optional<transport::ClusterSecret> secret);
void ensure_cli_membership(const std::string& head_address);

class ControlClient {
 public:
  explicit ControlClient(std::string head_address,
                         std::chrono::milliseconds timeout = std::chrono::seconds(10));

  // Sets the message's requestId, sends it and waits for the reply carrying
  // the same id (other messages are dropped). Throws troupe::Error: timeout
  // when no reply comes within the timeout ("no answer from the head at ...
  // within 10 s"), the transport's code when sending or decoding fails, and,
  // when the head replies `error`, the error the head's ErrorInfo describes
  // (make_error of its code), its message prefixed by "<refusal>: " when
  // `refusal` is given.
  transport::ReceivedMessage request(capnp::MallocMessageBuilder& message, std::string_view refusal = {});

  const std::string& head_address() const noexcept { return head_address_; }
  void set_timeout(std::chrono::milliseconds timeout) { timeout_ = timeout; }

 private:
  std::string head_address_;
  std::chrono::milliseconds timeout_;
  std::unique_ptr<transport::ControlDealer> connection_;
  std::uint64_t next_request_id_ = 1;
};

}  // namespace troupe::cli
