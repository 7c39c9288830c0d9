// The raw UCX baseline of cluster_call_bench: active messages between two
// forked processes (a client and an echo server), each with its own
// ucp_context/ucp_worker (UCP_FEATURE_AM), worker addresses exchanged over a
// socketpair, replies sent with ucp_am_send_nbx from the server's
// ucp_worker_set_am_recv_handler handler, both sides busy-polling
// ucp_worker_progress. UCX picks the transport (UCX_TLS, if set, is honoured);
// on one machine that is shared memory.
//
// Both children sleep in read() between measurements, so their busy-polling
// only ever overlaps with their own measurement, never with troupe's. This
// process never initialises UCX itself (its memory hooks would then sit
// under troupe's allocations too).
//
// Construct it before this process starts any thread (fork() copies only the
// calling thread).
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <string>

namespace troupe::bench {

class UcxAmBaseline {
 public:
  struct Latency {
    double p50 = 0, p99 = 0, mean = 0;  // microseconds per round trip
  };

  // Forks the two processes, connects them and warms the path up. Throws
  // std::runtime_error (with UCX's reason) if UCX cannot be set up.
  UcxAmBaseline(std::size_t request_bytes, std::size_t reply_bytes);
  ~UcxAmBaseline();
  UcxAmBaseline(const UcxAmBaseline&) = delete;
  UcxAmBaseline& operator=(const UcxAmBaseline&) = delete;

  // The transport(s) UCX chose for the client's endpoint, e.g.
  // "posix/memory (am lane), cma/memory (rma)" and the UCX version.
  const std::string& transport() const noexcept { return transport_; }

  // `iterations` sequential round trips (send, poll until the reply).
  Latency latency(int iterations);
  // Sends n messages, then polls until the n replies arrived; messages/s.
  double throughput(int n);

  void stop();

 private:
  pid_t server_ = -1;
  pid_t client_ = -1;
  int control_fd_ = -1;
  std::string transport_;
};

}  // namespace troupe::bench
