#include "control_client.hpp"

#include "troupe/runtime/error.hpp"
#include "troupe/runtime/ids.hpp"

namespace troupe::cli {
namespace {
bool g_membership_configured = false;
std::string g_token_file_flag;
}  // namespace

void set_token_file_flag(const std::string& path) { g_token_file_flag = path; }

void set_cli_membership(std::optional<transport::ClusterSecret> secret) {
  transport::set_membership(std::move(secret));
  g_membership_configured = true;
}

void ensure_cli_membership(const std::string& head_address) {
  if (g_membership_configured) return;
  if (!g_token_file_flag.empty()) {
    set_cli_membership(transport::read_token_file(g_token_file_flag));
  } else {
    set_cli_membership(transport::find_token(head_address).secret);
  }
}

ControlClient::ControlClient(std::string head_address, std::chrono::milliseconds timeout)
    : head_address_(std::move(head_address)), timeout_(timeout) {
  ensure_cli_membership(head_address_);
  try {
    // Any name unique among the head's peers will do; a random worker id is one.
    connection_ = std::make_unique<transport::ControlDealer>("cli-" + WorkerId::random().hex(), head_address_);
  } catch (const Error& error) {
    throw_error(error.code(), "bad head address \"" + head_address_ + "\": " + error.message());
  }
}

transport::ReceivedMessage ControlClient::request(capnp::MallocMessageBuilder& message, std::string_view refusal) {
  auto root = message.getRoot<wire::ControlMessage>();
  std::uint64_t id = next_request_id_++;
  root.setRequestId(id);
  try {
    connection_->send(message);
  } catch (const Error& error) {
    throw_error(error.code(), "cannot send to the head at " + head_address_ + ": " + error.message());
  }
  auto deadline = std::chrono::steady_clock::now() + timeout_;
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      throw TimeoutError("no answer from the head at " + head_address_ + " within " +
                         std::to_string(timeout_.count() / 1000.0).substr(0, 4) +
                         " s (is the cluster running? `troupe start --head`" +
                         (transport::secure() ? std::string(")")
                                              : std::string("; if it is secure, this command needs its token: "
                                                            "--token-file or TROUPE_TOKEN)")));
    }
    std::optional<transport::ReceivedMessage> reply;
    try {
      reply = connection_->receive(left);
    } catch (const Error& error) {
      throw_error(error.code(), "bad reply from the head at " + head_address_ + ": " + error.message());
    }
    if (!reply) continue;
    auto reader = reply->root<wire::ControlMessage>();
    if (reader.getRequestId() != id) continue;
    if (reader.isError()) {
      auto error = reader.getError();
      std::string text = error.getMessage().cStr();
      throw_error(errc_from_wire(error.getCode()), refusal.empty() ? text : std::string(refusal) + ": " + text);
    }
    return std::move(*reply);
  }
}

}  // namespace troupe::cli
