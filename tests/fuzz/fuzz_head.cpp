// Fuzz target: control-plane messages into the head, driven in one process
// as tests/head/head_test.cpp drives it (troupe::head::Head over a
// transport::InProcessControlServer, a fake clock). An input is a sequence
// of messages, each
//   u8 sender (one of a few node, driver, CLI and actor-host identities),
//   u8 clock step (x 50 ms: heartbeats expire, drivers are reaped),
//   u16 frame length (little endian), then the frame;
// each frame goes through the framing checks as on receipt, then
// Head::handle, then Head::tick (placement, timeouts). The head starts
// fresh for every input, so an input is a reproducible conversation
// (register a node, create an actor, update it, kill it, ...). Contract
// checked: nothing escapes handle() or tick(), nothing crashes or hangs.
// Job binaries: a submitJob or uploadBinary runs only with bytes that match
// their content hash, which a fuzzer cannot forge, so no process is ever
// started (the seeds hold no matching pair).
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <unistd.h>

#include "troupe/head/head.hpp"
#include "troupe/runtime/error.hpp"
#include "troupe/runtime/ids.hpp"
#include "troupe/runtime/logging.hpp"
#include "troupe/transport/framing.hpp"
#include "troupe/transport/internal/control_socket.hpp"

namespace {

std::filesystem::path session;
troupe::head::Clock::time_point now{};

// The senders an input can speak as: the same ids the seeds use.
const std::string kSenders[] = {
    "node-" + troupe::NodeId{0, 1}.hex(),  // the head's own node
    "node-" + troupe::NodeId{0x1111, 0x2222}.hex(),
    "node-" + troupe::NodeId{0x3333, 0x4444}.hex(),
    "drv-" + troupe::WorkerId{8, 8}.hex(),
    "cli-fuzz",
    "act-" + troupe::ActorId{0x5555, 0x6666}.hex(),
};

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  troupe::log::set_level("off");
  session = std::filesystem::temp_directory_path() / ("troupe-fuzz-head-" + std::to_string(::getpid()));
  std::filesystem::create_directories(session / "binaries");
  std::atexit([] {
    std::error_code ignored;
    std::filesystem::remove_all(session, ignored);
  });
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  troupe::head::HeadConfig config;
  config.heartbeat_ms = 500;
  config.heartbeat_misses = 6;
  config.session_dir = session;
  config.head_node_id = troupe::NodeId{0, 1};
  config.clock = [] { return now; };
  auto server = std::make_unique<troupe::transport::InProcessControlServer>();
  auto* channel = server.get();
  troupe::head::Head head(config, std::move(server));
  constexpr std::size_t kHeader = 4;
  while (size >= kHeader) {
    const std::string& sender = kSenders[data[0] % (sizeof kSenders / sizeof kSenders[0])];
    now += std::chrono::milliseconds(50 * data[1]);
    std::size_t length = data[2] | (std::size_t{data[3]} << 8);
    data += kHeader;
    size -= kHeader;
    if (length > size) length = size;
    try {
      auto message = troupe::transport::ReceivedMessage::copy_of(data, length);
      head.handle(sender, message);
    } catch (const troupe::Error& e) {
      if (e.code() != troupe::Errc::protocol) std::abort();  // only the framing may refuse, with protocol
    }
    head.tick();
    (void)channel->take_sent();
    data += length;
    size -= length;
  }
  return 0;
}
