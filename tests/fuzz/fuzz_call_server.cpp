// Fuzz target: call-plane messages into an actor host's call server, in one
// process (tests/runtime/call_server_harness.hpp: the registered actor
// Probe, its ActorHost, the CallServer, replies captured). Each input is
// one frame as the call plane receives it: the framing checks run first
// (transport::ReceivedMessage, as on receipt; a refused frame is fine),
// then CallServer::on_call_message, which must never throw, crash or
// hang whatever the frame holds — requests, replies, cancels, releases,
// `__fetch`es, with any ids, seqs, addresses, descriptors and argument
// bytes (decoded by the actor's methods: strings, vectors, maps,
// tensors). After each input the harness forgets what the input left
// (held results, parked fetches, captured replies), so inputs stay
// independent and memory flat.
#include <cstddef>
#include <cstdint>
#include <memory>

#include "runtime/call_server_harness.hpp"
#include "troupe/runtime/logging.hpp"

namespace {
troupe::testing::CallServerHarness* harness = nullptr;
}

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  troupe::log::set_level("off");
  harness = new troupe::testing::CallServerHarness();  // lives as long as the process
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  harness->reset_server();  // seqs restart: a seed's seq 0 is the expected one
  try {
    harness->deliver_bytes(data, size);
  } catch (const troupe::Error& e) {
    if (e.code() != troupe::Errc::protocol) std::abort();  // only the framing may refuse, with protocol
  }
  harness->table().clear();
  harness->clear_replies();
  return 0;
}
