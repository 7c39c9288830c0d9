// TROUPE_TEST_LABELS: fast
// The UCX data plane: contexts and transports, fetch / push / publish between
// two workers in this process and between this process and a holder process
// (this binary re-executed), as a matrix of transport x size x memory type.
#include "troupe/transport/ucx.hpp"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <future>
#include <mutex>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "troupe/transport/error.hpp"

extern char** environ;

namespace troupe::transport {
namespace {

using namespace std::chrono_literals;

constexpr std::size_t KiB = 1024, MiB = 1024 * 1024;

struct Tls {
  const char* name;
  const char* tls;
};
constexpr Tls kShm{"shm", "posix,sysv,cma,self"};
constexpr Tls kTcp{"tcp", "tcp,self"};

// Deterministic, position- and seed-dependent bytes, so a shifted or mixed-up
// copy never compares equal.
ObjectBuffer pattern(std::size_t size, std::uint64_t seed) {
  ObjectBuffer buffer = ObjectBuffer::allocate_host(size);
  auto* bytes = static_cast<unsigned char*>(buffer.data);
  std::uint64_t x = seed * 0x9e3779b97f4a7c15ull + 1;
  std::size_t i = 0;
  for (; i + 8 <= size; i += 8) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    std::memcpy(bytes + i, &x, 8);
  }
  for (; i < size; ++i) bytes[i] = static_cast<unsigned char>(seed + i);
  return buffer;
}

bool same_bytes(const ObjectBuffer& a, const ObjectBuffer& b) {
  return a.size == b.size && a.memory == MemoryType::host && b.memory == MemoryType::host &&
         (a.size == 0 || std::memcmp(a.data, b.data, a.size) == 0);
}

Errc error_code(const std::exception_ptr& error) {
  try {
    std::rethrow_exception(error);
  } catch (const Error& e) {
    return e.code();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "not a troupe::Error: " << e.what();
  }
  return Errc::transport;
}

template <class Future>
Errc error_of(Future&& future) {
  try {
    future.get();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "  (error: %s)\n", e.what());
    return error_code(std::current_exception());
  }
  ADD_FAILURE() << "expected an error";
  return Errc::transport;
}

// One process's data-plane stack.
struct Node {
  explicit Node(const Tls& tls, DataPlaneOptions options = {}) {
    UcxOptions ucx;
    ucx.tls = tls.tls;
    context = UcxContext::create(ucx);
    worker = UcxWorker::create(context);
    plane = std::make_unique<DataPlane>(worker, std::move(options));
  }
  std::shared_ptr<UcxContext> context;
  std::shared_ptr<UcxWorker> worker;
  std::unique_ptr<DataPlane> plane;
};

// --- a holder in another process ---------------------------------------------------
//
// This binary re-executed with TROUPE_UCX_TEST_HOLDER=<UCX_TLS>: it publishes
// holder_object(i) for i in [0, 4), writes its worker address on fd 3, and
// exits when fd 4 reaches EOF (or it is killed). No UCX state crosses a fork.

constexpr std::size_t kHolderSizes[] = {0, 1, 8 * KiB, 1 * MiB};
ObjectId holder_key(int i) { return ObjectId{0x40, static_cast<std::uint64_t>(i)}; }

[[noreturn]] void run_holder(const char* tls) {
  int code = 0;
  try {
    Node node(Tls{"holder", tls});
    for (int i = 0; i < 4; ++i) node.plane->publish(holder_key(i), pattern(kHolderSizes[i], 100 + i));
    const std::string& address = node.plane->address();
    const std::uint32_t length = static_cast<std::uint32_t>(address.size());
    if (::write(3, &length, sizeof length) != sizeof length ||
        ::write(3, address.data(), address.size()) != static_cast<ssize_t>(address.size()))
      code = 2;
    char byte;
    while (code == 0 && ::read(4, &byte, 1) != 0) {
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ucx test holder: %s\n", e.what());
    code = 1;
  }
  ::_exit(code);
}

// Runs before gtest's main when this process is a holder.
[[maybe_unused]] const bool kHolderRole = [] {
  if (const char* tls = std::getenv("TROUPE_UCX_TEST_HOLDER")) run_holder(tls);
  return false;
}();

// --- a sender in another process, killed in the middle of its stream -------------
//
// This binary re-executed with TROUPE_UCX_TEST_SENDER=<a receiver's worker
// address, hex>: over shared memory it sends that receiver 4 KiB messages
// starting "<its pid>:", at most 64 in flight, until it is killed. With
// TROUPE_UCX_TEST_SAFE_EXIT set it takes SIGTERM as an actor host does
// (UcxWorker::exit_at_safe_points_on). It writes its worker address on fd 3
// once started, like a holder.

[[noreturn]] void run_sender(const char* hex_address) {
  int code = 0;
  try {
    if (std::getenv("TROUPE_UCX_TEST_SAFE_EXIT") != nullptr) UcxWorker::exit_at_safe_points_on(SIGTERM);
    std::string peer;
    for (std::size_t i = 0; hex_address[i] != 0 && hex_address[i + 1] != 0; i += 2)
      peer.push_back(static_cast<char>(std::stoi(std::string(hex_address + i, 2), nullptr, 16)));
    Node node(Tls{"sender", "posix,sysv,cma,self"});
    node.plane->enable_messages("tcp://sender:" + std::to_string(::getpid()), {});
    const std::string& address = node.plane->address();
    const std::uint32_t length = static_cast<std::uint32_t>(address.size());
    if (::write(3, &length, sizeof length) != sizeof length ||
        ::write(3, address.data(), address.size()) != static_cast<ssize_t>(address.size()))
      ::_exit(2);
    std::string text = std::to_string(::getpid()) + ":";
    text.resize(4 * KiB, 'm');
    std::atomic<int> in_flight{0};
    for (;;) {
      if (in_flight.load() >= 64) {
        std::this_thread::yield();
        continue;
      }
      ++in_flight;
      node.plane->send_message(peer, ObjectBuffer::copy_of(text), [&in_flight](std::exception_ptr) { --in_flight; });
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ucx test sender: %s\n", e.what());
    code = 1;
  }
  ::_exit(code);
}

[[maybe_unused]] const bool kSenderRole = [] {
  if (const char* address = std::getenv("TROUPE_UCX_TEST_SENDER")) run_sender(address);
  return false;
}();

class HolderProcess {
 public:
  // `role`: the environment variable that makes the child a holder (its
  // value the UCX_TLS) or a sender (its value the receiver's address).
  explicit HolderProcess(const char* tls, const char* role = "TROUPE_UCX_TEST_HOLDER",
                         std::vector<std::string> extra_env = {}) {
    int to_parent[2], to_child[2];
    if (::pipe2(to_parent, O_CLOEXEC) != 0 || ::pipe2(to_child, O_CLOEXEC) != 0) throw std::runtime_error("pipe");
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, to_parent[1], 3);
    posix_spawn_file_actions_adddup2(&actions, to_child[0], 4);
    std::vector<std::string> env_strings;
    for (char** e = environ; *e != nullptr; ++e)
      if (std::strncmp(*e, "TROUPE_UCX_TEST_", 16) != 0) env_strings.emplace_back(*e);
    env_strings.push_back(std::string(role) + "=" + tls);
    for (auto& extra : extra_env) env_strings.push_back(std::move(extra));
    std::vector<char*> env;
    for (auto& s : env_strings) env.push_back(s.data());
    env.push_back(nullptr);
    char exe[] = "/proc/self/exe";
    char* argv[] = {exe, nullptr};
    const int rc = ::posix_spawn(&pid_, "/proc/self/exe", &actions, nullptr, argv, env.data());
    posix_spawn_file_actions_destroy(&actions);
    ::close(to_parent[1]);
    ::close(to_child[0]);
    control_ = to_child[1];
    if (rc != 0) throw std::runtime_error("posix_spawn failed");
    std::uint32_t length = 0;
    if (::read(to_parent[0], &length, sizeof length) != sizeof length || length > 4096) {
      ::close(to_parent[0]);
      throw std::runtime_error("the holder process did not start");
    }
    address_.resize(length);
    std::size_t got = 0;
    while (got < length) {
      const ssize_t n = ::read(to_parent[0], address_.data() + got, length - got);
      if (n <= 0) break;
      got += static_cast<std::size_t>(n);
    }
    ::close(to_parent[0]);
  }
  ~HolderProcess() {
    if (control_ >= 0) ::close(control_);
    if (pid_ > 0) ::waitpid(pid_, nullptr, 0);
  }
  const std::string& address() const { return address_; }
  pid_t pid() const { return pid_; }
  void signal(int signal) const { ::kill(pid_, signal); }
  // Sends `signal`, waits for the exit; returns the wait status.
  int kill(int signal = SIGKILL) {
    ::kill(pid_, signal);
    int status = 0;
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
    return status;
  }

 private:
  pid_t pid_ = -1;
  int control_ = -1;
  std::string address_;
};

// --- contexts and transports -------------------------------------------------------

TEST(UcxContext, ReportsTheTransportsItWasAskedFor) {
  UcxOptions options;
  options.tls = kShm.tls;
  auto shm = UcxContext::create(options);
  EXPECT_NE(shm->transports().find("posix"), std::string::npos) << shm->transports();
  EXPECT_EQ(shm->transports().find("tcp"), std::string::npos) << shm->transports();
  EXPECT_EQ(shm->transports().find("self"), std::string::npos) << shm->transports();
  EXPECT_NE(shm->describe().find("cuda_native"), std::string::npos);

  options.tls = "tcp";
  options.net_devices = "lo";
  auto tcp = UcxContext::create(options);
  EXPECT_EQ(tcp->transports(), "tcp");
  EXPECT_FALSE(tcp->cuda_native());  // Debian's UCX has no CUDA transport
}

TEST(UcxContext, AnUnknownTransportIsUnsupported) {
  UcxOptions options;
  options.tls = "no_such_transport";
  try {
    UcxContext::create(options);
    FAIL() << "expected an error";
  } catch (const Error& error) {
    EXPECT_EQ(error.code(), Errc::unsupported) << error.what();
  }
}

// The error make_error_from_ucs builds, as a value.
Error error_from_ucs(int status, std::string_view context) {
  try {
    std::rethrow_exception(make_error_from_ucs(status, context));
  } catch (const Error& error) {
    return error;
  }
}

TEST(UcxContext, EveryUcsStatusBecomesATypedError) {
  EXPECT_EQ(error_from_ucs(-25 /*UCS_ERR_CONNECTION_RESET*/, "x").code(), Errc::object_lost);
  EXPECT_EQ(error_from_ucs(-80 /*UCS_ERR_ENDPOINT_TIMEOUT*/, "x").code(), Errc::object_lost);
  EXPECT_EQ(error_from_ucs(-20 /*UCS_ERR_TIMED_OUT*/, "x").code(), Errc::timeout);
  EXPECT_EQ(error_from_ucs(-16 /*UCS_ERR_CANCELED*/, "x").code(), Errc::cancelled);
  EXPECT_EQ(error_from_ucs(-5 /*UCS_ERR_INVALID_PARAM*/, "x").code(), Errc::invalid_argument);
  EXPECT_EQ(error_from_ucs(-14 /*UCS_ERR_NO_ELEM*/, "x").code(), Errc::unsupported);
  EXPECT_EQ(error_from_ucs(-6 /*UCS_ERR_UNREACHABLE*/, "x").code(), Errc::object_lost);
  EXPECT_EQ(error_from_ucs(-4 /*UCS_ERR_NO_MEMORY*/, "x").code(), Errc::transport);
  EXPECT_EQ(error_from_ucs(-6, "connecting").message(), "connecting: Destination is unreachable");
}

TEST(UcxWorker, RunsPostedTasksInOrderOnItsProgressThread) {
  UcxOptions options;
  options.tls = kShm.tls;
  auto worker = UcxWorker::create(UcxContext::create(options));
  EXPECT_FALSE(worker->address().empty());
  std::vector<int> order;
  std::promise<bool> done;
  for (int i = 0; i < 100; ++i) worker->post([&, i] { order.push_back(i); });
  worker->post([&] { done.set_value(worker->on_progress_thread()); });
  EXPECT_TRUE(done.get_future().get());
  ASSERT_EQ(order.size(), 100u);
  for (int i = 0; i < 100; ++i) EXPECT_EQ(order[i], i);
}

// --- the matrix: transport x size, host memory, two workers in this process ---------

struct MatrixCase {
  Tls tls;
  std::size_t size;
};
std::string case_name(const testing::TestParamInfo<MatrixCase>& info) {
  return std::string(info.param.tls.name) + "_" + std::to_string(info.param.size) + "B";
}

class UcxTransfer : public testing::TestWithParam<MatrixCase> {};

TEST_P(UcxTransfer, FetchDeliversTheExactBytes) {
  Node holder(GetParam().tls), consumer(GetParam().tls);
  const auto original = pattern(GetParam().size, 7);
  holder.plane->publish({1, 2}, original);
  auto fetched = consumer.plane->fetch(holder.plane->address(), {1, 2}).get();
  EXPECT_EQ(fetched.memory, MemoryType::host);
  EXPECT_TRUE(same_bytes(fetched, original));
  // Fetching again works (the endpoint is cached) and gives a separate copy.
  auto again = consumer.plane->fetch(holder.plane->address(), {1, 2}).get();
  EXPECT_TRUE(same_bytes(again, original));
  if (GetParam().size > 0) {
    EXPECT_NE(again.data, fetched.data);
  }
}

TEST_P(UcxTransfer, PushThenFetchNeedsNoRoundTrip) {
  Node holder(GetParam().tls), consumer(GetParam().tls);
  const auto original = pattern(GetParam().size, 9);
  holder.plane->publish({3, 4}, original);
  holder.plane->push(consumer.plane->address(), {3, 4}, original).get();
  // The push completed on the sender; wait until the consumer holds it.
  for (int i = 0; i < 2000 && consumer.plane->stats().get().inbox_objects == 0; ++i) std::this_thread::sleep_for(1ms);
  ASSERT_EQ(consumer.plane->stats().get().inbox_objects, 1u);
  auto fetched = consumer.plane->fetch(holder.plane->address(), {3, 4}).get();
  EXPECT_TRUE(same_bytes(fetched, original));
  const auto stats = consumer.plane->stats().get();
  EXPECT_EQ(stats.fetches_from_inbox, 1u);
  EXPECT_EQ(stats.inbox_objects, 0u);  // a pushed object is handed to one fetch
  EXPECT_EQ(holder.plane->stats().get().fetches_served, 0u);
}

// One trip per object: a fetch brings the object's meta (the runtime's
// envelope) and its bytes in answer to one request, the bytes by
// rendezvous from 64 KiB; a push carries the meta into the inbox too.
TEST_P(UcxTransfer, AFetchBringsMetaAndBytesInOneTrip) {
  Node holder(GetParam().tls), consumer(GetParam().tls);
  auto original = pattern(GetParam().size, 5);
  original.meta = std::string("\x01tensor-envelope\0with a zero", 29);
  holder.plane->publish({5, 6}, original);
  auto fetched = consumer.plane->fetch(holder.plane->address(), {5, 6}).get();
  EXPECT_TRUE(same_bytes(fetched, original));
  EXPECT_EQ(fetched.meta, original.meta);
  EXPECT_EQ(holder.plane->stats().get().fetches_served, 1u);  // one request answered: one trip

  holder.plane->push(consumer.plane->address(), {7, 8}, original).get();
  for (int i = 0; i < 2000 && consumer.plane->stats().get().inbox_objects == 0; ++i) std::this_thread::sleep_for(1ms);
  auto pushed = consumer.plane->fetch(holder.plane->address(), {7, 8}).get();
  EXPECT_TRUE(same_bytes(pushed, original));
  EXPECT_EQ(pushed.meta, original.meta);

  // Meta past the limit is refused at publish and at push.
  auto oversized = original;
  oversized.meta.assign(kMaxObjectMetaBytes + 1, 'm');
  EXPECT_THROW(holder.plane->publish({5, 7}, oversized), Error);
  EXPECT_EQ(error_of(holder.plane->push(consumer.plane->address(), {5, 7}, oversized)), Errc::invalid_argument);
}

INSTANTIATE_TEST_SUITE_P(
    Matrix, UcxTransfer,
    testing::Values(MatrixCase{kShm, 0}, MatrixCase{kShm, 1}, MatrixCase{kShm, 8 * KiB}, MatrixCase{kShm, 1 * MiB},
                    MatrixCase{kShm, 64 * MiB}, MatrixCase{kTcp, 0}, MatrixCase{kTcp, 1}, MatrixCase{kTcp, 8 * KiB},
                    MatrixCase{kTcp, 1 * MiB}, MatrixCase{kTcp, 64 * MiB}),
    case_name);

// --- errors and the rest of the contract (shm) --------------------------------------

TEST(UcxDataPlane, AnUnpublishedIdIsNotFound) {
  Node holder(kShm), consumer(kShm);
  EXPECT_EQ(error_of(consumer.plane->fetch(holder.plane->address(), {9, 9})), Errc::not_found);
  holder.plane->publish({9, 9}, pattern(10, 1));
  EXPECT_TRUE(holder.plane->unpublish({9, 9}));
  EXPECT_FALSE(holder.plane->unpublish({9, 9}));
  EXPECT_EQ(error_of(consumer.plane->fetch(holder.plane->address(), {9, 9})), Errc::not_found);
}

TEST(UcxDataPlane, AFetchThatGetsNoAnswerTimesOut) {
  Node holder(kShm), consumer(kShm);
  const auto start = std::chrono::steady_clock::now();
  FetchOptions options;
  options.timeout = 200ms;
  options.wait_for_publish = true;  // the holder parks the request: no answer comes
  EXPECT_EQ(error_of(consumer.plane->fetch(holder.plane->address(), {5, 5}, options)), Errc::timeout);
  const auto took = std::chrono::steady_clock::now() - start;
  EXPECT_GE(took, 190ms);
  EXPECT_LT(took, 2s);
}

TEST(UcxDataPlane, AParkedFetchCompletesWhenTheObjectIsPublished) {
  Node holder(kShm), consumer(kShm);
  FetchOptions options;
  options.wait_for_publish = true;
  auto pending = consumer.plane->fetch(holder.plane->address(), {6, 6}, options);
  std::this_thread::sleep_for(50ms);
  EXPECT_EQ(pending.wait_for(0s), std::future_status::timeout);
  const auto original = pattern(300 * KiB, 6);
  holder.plane->publish({6, 6}, original);
  EXPECT_TRUE(same_bytes(pending.get(), original));
}

TEST(UcxDataPlane, ManyConcurrentFetchesAllComplete) {
  Node holder(kShm), consumer(kShm);
  constexpr int kObjects = 64;
  std::vector<ObjectBuffer> originals;
  for (int i = 0; i < kObjects; ++i) {
    originals.push_back(pattern(i % 4 == 0 ? 512 * KiB : 3 * KiB + i, 1000 + i));
    holder.plane->publish({7, static_cast<std::uint64_t>(i)}, originals.back());
  }
  // Several threads, several fetches of every object each.
  std::atomic<int> good{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      std::vector<std::future<ObjectBuffer>> futures;
      for (int i = 0; i < kObjects; ++i)
        futures.push_back(consumer.plane->fetch(holder.plane->address(), {7, static_cast<std::uint64_t>(i)}));
      for (int i = 0; i < kObjects; ++i)
        if (same_bytes(futures[i].get(), originals[i])) ++good;
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(good.load(), 4 * kObjects);
}

TEST(UcxDataPlane, CallbacksRunOnTheProgressThread) {
  Node holder(kShm), consumer(kShm);
  holder.plane->publish({8, 1}, pattern(100, 1));
  std::promise<bool> on_thread;
  consumer.plane->fetch(holder.plane->address(), {8, 1}, {}, [&](ObjectBuffer, std::exception_ptr error) {
    on_thread.set_value(!error && consumer.worker->on_progress_thread());
  });
  EXPECT_TRUE(on_thread.get_future().get());
}

TEST(UcxDataPlane, AFullInboxRefusesAPushAndTheFetchGoesToTheHolder) {
  DataPlaneOptions small_inbox;
  small_inbox.inbox_max_bytes = 1 * MiB;
  Node holder(kShm), consumer(kShm, small_inbox);
  const auto big = pattern(2 * MiB, 3);  // rendezvous-sized: the pusher learns of the refusal
  holder.plane->publish({10, 1}, big);
  EXPECT_EQ(error_of(holder.plane->push(consumer.plane->address(), {10, 1}, big)), Errc::transport);
  EXPECT_EQ(consumer.plane->stats().get().pushes_refused, 1u);
  EXPECT_TRUE(same_bytes(consumer.plane->fetch(holder.plane->address(), {10, 1}).get(), big));
  EXPECT_EQ(holder.plane->stats().get().fetches_served, 1u);
}

TEST(UcxDataPlane, APushCompletesAFetchAlreadyWaiting) {
  Node holder(kShm), consumer(kShm);
  const auto original = pattern(2 * MiB, 12);
  FetchOptions options;
  options.wait_for_publish = true;  // the holder has nothing yet: the request parks
  auto pending = consumer.plane->fetch(holder.plane->address(), {12, 1}, options);
  std::this_thread::sleep_for(20ms);
  holder.plane->push(consumer.plane->address(), {12, 1}, original).get();
  EXPECT_TRUE(same_bytes(pending.get(), original));
  EXPECT_EQ(consumer.plane->stats().get().inbox_objects, 0u);
}

// Activations pushed: a third party (the caller) asks the holder to push an
// object to the consumer; it goes the moment it is published, and the
// consumer's fetch finds it waiting (no request to the holder).
TEST(UcxDataPlane, ARequestedPushReachesTheConsumerWhenPublished) {
  Node holder(kShm), consumer(kShm), caller(kShm);
  for (std::size_t size : {std::size_t{64}, 2 * MiB}) {
    const ObjectId id{20, size};
    auto original = pattern(size, 20);
    original.meta = "envelope";
    const auto before = consumer.plane->stats().get().fetches_from_inbox;
    caller.plane->request_push(holder.plane->address(), id, consumer.plane->address(), 5s);
    std::this_thread::sleep_for(20ms);  // parked at the holder: not published yet
    holder.plane->publish(id, original);
    for (int i = 0; i < 5000 && consumer.plane->stats().get().inbox_objects == 0; ++i) std::this_thread::sleep_for(1ms);
    ASSERT_EQ(consumer.plane->stats().get().inbox_objects, 1u) << size;
    auto fetched = consumer.plane->fetch(holder.plane->address(), id).get();
    EXPECT_TRUE(same_bytes(fetched, original));
    EXPECT_EQ(fetched.meta, "envelope");
    EXPECT_EQ(consumer.plane->stats().get().fetches_from_inbox, before + 1);
  }
  // Already published: pushed at once.
  const auto published = pattern(1000, 21);
  holder.plane->publish({21, 1}, published);
  caller.plane->request_push(holder.plane->address(), {21, 1}, consumer.plane->address(), 5s);
  for (int i = 0; i < 5000 && consumer.plane->stats().get().inbox_objects == 0; ++i) std::this_thread::sleep_for(1ms);
  EXPECT_TRUE(same_bytes(consumer.plane->fetch(holder.plane->address(), {21, 1}).get(), published));
  const auto stats = holder.plane->stats().get();
  EXPECT_EQ(stats.pushes_requested, 3u);
  EXPECT_EQ(stats.fetches_served, 0u);
}

// The consumer asked the holder itself before the object existed: the holder
// answers its fetch and does not push the same bytes a second time; a late
// push of an object already fetched is refused, not kept.
TEST(UcxDataPlane, AConsumerThatAlsoFetchesGetsTheBytesOnce) {
  Node holder(kShm), consumer(kShm), caller(kShm);
  const auto original = pattern(2 * MiB, 22);
  FetchOptions options;
  options.wait_for_publish = true;
  auto pending = consumer.plane->fetch(holder.plane->address(), {22, 1}, options);
  caller.plane->request_push(holder.plane->address(), {22, 1}, consumer.plane->address(), 5s);
  std::this_thread::sleep_for(30ms);  // both parked
  holder.plane->publish({22, 1}, original);
  EXPECT_TRUE(same_bytes(pending.get(), original));
  std::this_thread::sleep_for(30ms);
  auto stats = holder.plane->stats().get();
  EXPECT_EQ(stats.fetches_served, 1u);
  EXPECT_EQ(stats.pushes_requested, 0u);
  // A push that crosses the reply (requested after the fetch got it) is refused.
  caller.plane->request_push(holder.plane->address(), {22, 1}, consumer.plane->address(), 5s);
  for (int i = 0; i < 5000 && consumer.plane->stats().get().pushes_refused == 0; ++i) std::this_thread::sleep_for(1ms);
  EXPECT_EQ(consumer.plane->stats().get().pushes_refused, 1u);
  EXPECT_EQ(consumer.plane->stats().get().inbox_objects, 0u);
}

// A requested push and the consumer's own fetch racing each other, whatever
// their interleaving (push first, reply first, both in flight): the fetch
// gets the exact bytes and no second copy stays behind in the inbox.
TEST(UcxDataPlane, APushAndAFetchThatCrossLeaveNoCopyBehind) {
  Node holder(kShm), consumer(kShm), caller(kShm);
  for (std::uint64_t round = 0; round < 20; ++round) {
    const ObjectId id{24, round};
    const auto original = pattern(round % 2 == 0 ? 4 * MiB : 1000, 24 + round);
    holder.plane->publish(id, original);
    caller.plane->request_push(holder.plane->address(), id, consumer.plane->address(), 5s);
    if (round % 4 == 1) std::this_thread::sleep_for(1ms);
    EXPECT_TRUE(same_bytes(consumer.plane->fetch(holder.plane->address(), id).get(), original)) << round;
  }
  std::this_thread::sleep_for(100ms);  // late pushes land (or are refused) by now
  const auto stats = consumer.plane->stats().get();
  EXPECT_EQ(stats.inbox_objects, 0u);
  EXPECT_EQ(stats.inbox_bytes, 0u);
}

// A pushed object nobody fetches is dropped after inbox_ttl: no leak.
TEST(UcxDataPlane, AnUnclaimedRequestedPushIsDroppedAfterItsTtl) {
  DataPlaneOptions short_ttl;
  short_ttl.inbox_ttl = 200ms;
  Node holder(kShm), consumer(kShm, short_ttl), caller(kShm);
  holder.plane->publish({23, 1}, pattern(4096, 23));
  caller.plane->request_push(holder.plane->address(), {23, 1}, consumer.plane->address(), 5s);
  for (int i = 0; i < 5000 && consumer.plane->stats().get().inbox_objects == 0; ++i) std::this_thread::sleep_for(1ms);
  ASSERT_EQ(consumer.plane->stats().get().inbox_objects, 1u);
  for (int i = 0; i < 3000 && consumer.plane->stats().get().inbox_objects != 0; ++i) std::this_thread::sleep_for(1ms);
  EXPECT_EQ(consumer.plane->stats().get().inbox_objects, 0u);
  EXPECT_EQ(consumer.plane->stats().get().inbox_bytes, 0u);
  // A push request for an object never published is never answered and
  // never pushed: the holder forgets it at its deadline.
  caller.plane->request_push(holder.plane->address(), {23, 2}, consumer.plane->address(), 50ms);
  std::this_thread::sleep_for(150ms);
  EXPECT_EQ(holder.plane->stats().get().pushes_requested, 1u);
}

TEST(UcxDataPlane, AnAllocatorChoosesWhereFetchedBytesLand) {
  auto arena = std::make_shared<std::vector<char>>(4 * MiB);
  std::atomic<int> calls{0};
  DataPlaneOptions options;
  options.allocator = [&](std::size_t size, MemoryType memory) {
    ++calls;
    return ObjectBuffer::wrap(arena->data(), size, arena, memory);
  };
  Node holder(kShm), consumer(kShm, options);
  const auto original = pattern(3 * MiB, 13);
  holder.plane->publish({13, 1}, original);
  auto fetched = consumer.plane->fetch(holder.plane->address(), {13, 1}).get();
  EXPECT_EQ(fetched.data, arena->data());
  EXPECT_TRUE(same_bytes(fetched, original));
  EXPECT_EQ(calls.load(), 1);
}

TEST(UcxDataPlane, ReportsTheTransportsOfAPeerEndpoint) {
  Node shm_a(kShm), shm_b(kShm);
  const auto shm = shm_a.plane->peer_transports(shm_b.plane->address()).get();
  EXPECT_TRUE(shm.find("posix") != std::string::npos || shm.find("sysv") != std::string::npos) << shm;
  Node tcp_a(kTcp), tcp_b(kTcp);
  EXPECT_EQ(tcp_a.plane->peer_transports(tcp_b.plane->address()).get(), "tcp");
}

TEST(UcxDataPlane, ShuttingDownCancelsPendingFetches) {
  Node holder(kShm);
  std::future<ObjectBuffer> pending;
  {
    Node consumer(kShm);
    FetchOptions options;
    options.wait_for_publish = true;
    pending = consumer.plane->fetch(holder.plane->address(), {14, 1}, options);
    std::this_thread::sleep_for(20ms);
  }
  EXPECT_EQ(error_of(pending), Errc::cancelled);
}

// --- memory types -----------------------------------------------------------------

// CUDA destinations and sources, checked through the data plane itself: a
// fetch into device memory, then that device buffer published and fetched
// back into host memory (both staging directions when UCX is not
// CUDA-capable). Skips where this build or machine has no CUDA.
class UcxCudaTransfer : public testing::TestWithParam<std::size_t> {};

TEST_P(UcxCudaTransfer, DeviceMemoryRoundTripsByteExact) {
  DataPlaneOptions small_chunks;
  small_chunks.staging_chunk_bytes = 256 * KiB;  // several chunks in flight for the large sizes
  Node holder(kShm, small_chunks), consumer(kShm, small_chunks);
  const auto original = pattern(GetParam(), 21);
  holder.plane->publish({21, 1}, original);
  FetchOptions to_device;
  to_device.destination = MemoryType::cuda;
  ObjectBuffer on_device;
  try {
    on_device = consumer.plane->fetch(holder.plane->address(), {21, 1}, to_device).get();
  } catch (const Error& error) {
    if (error.code() == Errc::unsupported) GTEST_SKIP() << "no CUDA here: " << error.what();
    throw;
  }
  EXPECT_EQ(on_device.memory, MemoryType::cuda);
  EXPECT_EQ(on_device.size, original.size);
  consumer.plane->publish({21, 2}, on_device);
  auto back = holder.plane->fetch(consumer.plane->address(), {21, 2}).get();
  EXPECT_TRUE(same_bytes(back, original));
  // Device to device.
  auto device_copy = holder.plane->fetch(consumer.plane->address(), {21, 2}, to_device).get();
  EXPECT_EQ(device_copy.memory, MemoryType::cuda);
  holder.plane->publish({21, 3}, device_copy);
  EXPECT_TRUE(same_bytes(consumer.plane->fetch(holder.plane->address(), {21, 3}).get(), original));
}

INSTANTIATE_TEST_SUITE_P(Sizes, UcxCudaTransfer, testing::Values(0, 1, 8 * KiB, 1 * MiB, 64 * MiB));

// --- two processes ------------------------------------------------------------------

class UcxProcesses : public testing::TestWithParam<Tls> {};

TEST_P(UcxProcesses, FetchesFromAHolderProcess) {
  HolderProcess holder(GetParam().tls);
  Node consumer(GetParam());
  for (int i = 0; i < 4; ++i) {
    auto fetched = consumer.plane->fetch(holder.address(), holder_key(i)).get();
    EXPECT_TRUE(same_bytes(fetched, pattern(kHolderSizes[i], 100 + i))) << "object " << i;
  }
  EXPECT_EQ(error_of(consumer.plane->fetch(holder.address(), holder_key(99))), Errc::not_found);
}

TEST_P(UcxProcesses, AHolderKilledBeforeTheFetchFailsItWithinTheTimeout) {
  HolderProcess holder(GetParam().tls);
  holder.kill();
  Node consumer(GetParam());
  FetchOptions options;
  options.timeout = 5s;
  const auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(error_of(consumer.plane->fetch(holder.address(), holder_key(3), options)), Errc::object_lost);
  EXPECT_LT(std::chrono::steady_clock::now() - start, 6s);
}

TEST_P(UcxProcesses, AHolderThatDiesDuringAFetchFailsItAsObjectLost) {
  HolderProcess holder(GetParam().tls);
  Node consumer(GetParam());
  // Connected and working first.
  EXPECT_EQ(consumer.plane->fetch(holder.address(), holder_key(1)).get().size, 1u);
  FetchOptions options;
  options.timeout = 8s;
  options.wait_for_publish = true;  // parked at the holder: only its death ends it early
  auto pending = consumer.plane->fetch(holder.address(), holder_key(99), options);
  std::this_thread::sleep_for(50ms);
  const auto start = std::chrono::steady_clock::now();
  holder.kill();
  EXPECT_EQ(error_of(pending), Errc::object_lost);
  // Keepalive is 1 s by default (UcxOptions::keepalive_interval).
  EXPECT_LT(std::chrono::steady_clock::now() - start, 5s);
}

TEST_P(UcxProcesses, AMessageToAPeerThatDiedFailsItsSendInsteadOfHanging) {
  HolderProcess holder(GetParam().tls);
  Node sender(GetParam());
  sender.plane->enable_messages("tcp://sender:1", {});
  auto send = [&] {
    auto done = std::make_shared<std::promise<void>>();
    auto result = done->get_future();
    sender.plane->send_message(holder.address(), ObjectBuffer::copy_of("hello"), [done](std::exception_ptr error) {
      if (error) done->set_exception(error);
      else done->set_value();
    });
    return result;
  };
  ASSERT_EQ(send().wait_for(5s), std::future_status::ready);  // connected (the holder drops it: no handlers)
  holder.kill();
  // Messages already queued or sent after the death fail once UCX notices
  // (at once on a closed socket, else within the 1 s keepalive), not never.
  const auto start = std::chrono::steady_clock::now();
  Errc failure = Errc::ok;
  while (failure == Errc::ok && std::chrono::steady_clock::now() - start < 8s) {
    auto sent = send();
    ASSERT_EQ(sent.wait_for(8s), std::future_status::ready) << "a send to a dead peer hung";
    try {
      sent.get();
      std::this_thread::sleep_for(20ms);
    } catch (const Error& e) {
      failure = e.code();
    }
  }
  EXPECT_EQ(failure, Errc::object_lost);
  EXPECT_LT(std::chrono::steady_clock::now() - start, 6s);
}

// A peer that stops reading (SIGSTOP) cannot leave a send pending for
// good: what UCX still holds past message_send_timeout fails (timeout, or
// object_lost when UCX's keepalive gave up on the peer first), and the
// endpoint is replaced.
TEST_P(UcxProcesses, EveryMessageToAStoppedPeerEndsWithinTheSendTimeout) {
  HolderProcess holder(GetParam().tls);
  DataPlaneOptions options;
  options.message_send_timeout = 500ms;
  Node sender(GetParam(), options);
  sender.plane->enable_messages("tcp://sender:1", {});
  std::mutex mutex;
  std::condition_variable changed;
  int done = 0, timeouts = 0, lost = 0, other = 0;
  auto send = [&](std::size_t bytes) {
    sender.plane->send_message(holder.address(), ObjectBuffer::copy_of(std::string(bytes, 's')),
                               [&](std::exception_ptr error) {
                                 std::lock_guard lock(mutex);
                                 ++done;
                                 if (!error) {
                                 } else if (error_code(error) == Errc::timeout) {
                                   ++timeouts;
                                 } else if (error_code(error) == Errc::object_lost) {
                                   ++lost;
                                 } else {
                                   ++other;
                                 }
                                 changed.notify_all();
                               });
  };
  send(16);
  {
    std::unique_lock lock(mutex);
    ASSERT_TRUE(changed.wait_for(lock, 5s, [&] { return done == 1; })) << "the first message never left";
  }
  holder.signal(SIGSTOP);
  // More than the peer's FIFO or socket buffers take: some stay in UCX.
  constexpr int kMessages = 3000;
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < kMessages; ++i) send(8000);
  bool all_done;
  {
    std::unique_lock lock(mutex);
    all_done = changed.wait_for(lock, 10s, [&] { return done == kMessages + 1; });
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  holder.signal(SIGCONT);
  std::lock_guard lock(mutex);
  std::fprintf(stderr, "  %d of %d ended in %.2f s: %d timeout, %d object_lost, %d other errors\n", done - 1,
               kMessages, seconds, timeouts, lost, other);
  EXPECT_TRUE(all_done) << "sends to a stopped peer stayed pending";
  EXPECT_GT(timeouts + lost, 0) << "a stopped peer took every message";
  EXPECT_EQ(other, 0);
}

INSTANTIATE_TEST_SUITE_P(Transports, UcxProcesses, testing::Values(kShm, kTcp),
                         [](const testing::TestParamInfo<Tls>& info) { return std::string(info.param.name); });

// --- messages (the call plane over UCX) ---------------------------------------------

// What a receiver saw, in order.
struct Inbox {
  std::mutex mutex;
  std::condition_variable changed;
  std::vector<std::pair<std::string, std::string>> peers;  // (name, address)
  std::vector<std::string> messages;
  std::vector<std::size_t> peers_before_message;  // peers.size() when each message arrived
  DataPlane::MessageHandlers handlers() {
    DataPlane::MessageHandlers h;
    h.on_peer = [this](std::string name, std::string address) {
      std::lock_guard lock(mutex);
      peers.emplace_back(std::move(name), std::move(address));
    };
    h.on_message = [this](ObjectBuffer bytes) {
      EXPECT_EQ(reinterpret_cast<std::uintptr_t>(bytes.data) % 8, 0u) << "message bytes must be word-aligned";
      std::lock_guard lock(mutex);
      peers_before_message.push_back(peers.size());
      messages.emplace_back(bytes.view());
      changed.notify_all();
    };
    return h;
  }
  bool wait_for(std::size_t count, std::chrono::milliseconds timeout) {
    std::unique_lock lock(mutex);
    return changed.wait_for(lock, timeout, [&] { return messages.size() >= count; });
  }
};

TEST(UcxMessages, AStreamOpensWithAHelloThatNamesItsSender) {
  Node a(kShm), b(kShm);
  Inbox at_b;
  a.plane->enable_messages("tcp://a:1", {});
  b.plane->enable_messages("tcp://b:2", at_b.handlers());
  a.plane->send_message(b.plane->address(), ObjectBuffer::copy_of("first"), nullptr);
  ASSERT_TRUE(at_b.wait_for(1, 5s));
  std::lock_guard lock(at_b.mutex);
  ASSERT_EQ(at_b.peers.size(), 1u);
  EXPECT_EQ(at_b.peers[0].first, "tcp://a:1");
  EXPECT_EQ(at_b.peers[0].second, a.plane->address());
  EXPECT_EQ(at_b.peers_before_message[0], 1u) << "the hello comes before the stream's first message";
  EXPECT_EQ(at_b.messages[0], "first");
}

class UcxMessageOrder : public testing::TestWithParam<Tls> {};

// Each sending thread's messages arrive in the order it sent them, all of
// them, once, whatever their sizes (eager fragments of the large ones
// included), with several threads sending at once.
TEST_P(UcxMessageOrder, ManyConcurrentSendersKeepEachSendersOrder) {
  Node a(GetParam()), b(GetParam());
  Inbox at_b;
  a.plane->enable_messages("tcp://a:1", {});
  b.plane->enable_messages("tcp://b:2", at_b.handlers());
  constexpr int kThreads = 4, kEach = 3000;
  std::atomic<int> failed{0};
  std::vector<std::thread> senders;
  for (int t = 0; t < kThreads; ++t) {
    senders.emplace_back([&, t] {
      for (int i = 0; i < kEach; ++i) {
        std::string text = std::to_string(t) + ":" + std::to_string(i) + ":";
        // Mostly small, some past UCX's eager fragment size.
        text.resize(i % 97 == 0 ? 200 * KiB : 16 + i % 300, 'x');
        a.plane->send_message(b.plane->address(), ObjectBuffer::copy_of(text), [&](std::exception_ptr error) {
          if (error) ++failed;
        });
      }
    });
  }
  for (auto& s : senders) s.join();
  ASSERT_TRUE(at_b.wait_for(kThreads * kEach, 30s)) << at_b.messages.size() << " arrived";
  EXPECT_EQ(failed.load(), 0);
  std::lock_guard lock(at_b.mutex);
  EXPECT_EQ(at_b.messages.size(), static_cast<std::size_t>(kThreads * kEach));
  std::vector<int> next(kThreads, 0);
  for (const auto& m : at_b.messages) {
    const int t = std::stoi(m);
    const int i = std::stoi(m.substr(m.find(':') + 1));
    ASSERT_EQ(i, next[t]) << "thread " << t << "'s messages out of order";
    ++next[t];
  }
  EXPECT_EQ(at_b.peers.size(), 1u) << "one stream: one endpoint per peer";
}

INSTANTIATE_TEST_SUITE_P(Transports, UcxMessageOrder, testing::Values(kShm, kTcp),
                         [](const testing::TestParamInfo<Tls>& info) { return std::string(info.param.name); });

// Why a UCX host must not be SIGKILLed in the middle of a send (the hang of
// ClusterCalls.CallsMadeWhileTheActorIsKilledEachEnd over UCX): senders write
// straight into the receiver's shared-memory FIFO (claim an element, fill it,
// mark it written), and the receiver reads the elements in order, so one
// sender killed between claim and mark leaves the receiver waiting on that
// element for good, deaf over shared memory to every peer, new ones included
// (their wire-up reply cannot come in, so their first send stays pending).
// Each round starts a sender process that floods this receiver with 4 KiB
// messages, waits until they flow, and kills it; the next round's sender
// must be heard within 5 s. Returns the first round whose sender was not
// heard, or -1.
int first_deaf_round(int rounds, bool safe_exit) {
  Node receiver(kShm);
  std::mutex mutex;
  std::condition_variable changed;
  std::map<long, long> heard;  // sender pid -> messages
  DataPlane::MessageHandlers handlers;
  handlers.on_message = [&](ObjectBuffer bytes) {
    const long pid = std::atol(static_cast<const char*>(bytes.data));
    std::lock_guard lock(mutex);
    ++heard[pid];
    changed.notify_all();
  };
  receiver.plane->enable_messages("tcp://receiver:1", std::move(handlers));
  std::string hex;
  for (unsigned char c : receiver.plane->address()) {
    char pair[3];
    std::snprintf(pair, sizeof pair, "%02x", c);
    hex += pair;
  }
  std::mt19937 random(14);
  for (int round = 0; round < rounds; ++round) {
    std::vector<std::string> env;
    if (safe_exit) env.emplace_back("TROUPE_UCX_TEST_SAFE_EXIT=1");
    HolderProcess sender(hex.c_str(), "TROUPE_UCX_TEST_SENDER", env);
    const long pid = sender.pid();
    {
      std::unique_lock lock(mutex);
      if (!changed.wait_for(lock, 5s, [&] { return heard[pid] >= 200; })) {
        std::fprintf(stderr, "  round %d: the new sender was not heard (%ld messages)\n", round, heard[pid]);
        lock.unlock();
        sender.kill();
        return round;
      }
    }
    std::this_thread::sleep_for(std::chrono::microseconds(random() % 3000));
    const int status = sender.kill(safe_exit ? SIGTERM : SIGKILL);
    EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << "round " << round << ": status " << status;
  }
  return -1;
}

// A probe for the hazard with plain SIGKILL (not run by default: it
// depends on where the kill lands, and the window is a few hundred
// nanoseconds per message: in 160 kills on the 2-core machine it never
// hit, so it shows the hazard only when it fails).
TEST(UcxMessages, DISABLED_ASenderSigkilledInTheMiddleOfASendCanLeaveItsReceiverDeaf) {
  EXPECT_GE(first_deaf_round(40, false), 0) << "every round's sender was heard this time";
}

// The fix: killed through exit_at_safe_points (how the node manager kills
// an actor host: SIGTERM, a SIGKILL at the progress thread's next safe
// point), a sender never leaves a half-written message behind.
TEST(UcxMessages, ASenderKilledAtASafePointNeverLeavesItsReceiverDeaf) {
  EXPECT_EQ(first_deaf_round(40, true), -1);
}

// A receiver asleep on its event fd (past the poll window) is woken by an
// arriving message: it does not wait for a timer (1 ms steps, or 100 ms).
TEST_P(UcxMessageOrder, AnIdleReceiverIsWokenByAMessage) {
  Node a(GetParam()), b(GetParam());
  Inbox at_b;
  a.plane->enable_messages("tcp://a:1", {});
  b.plane->enable_messages("tcp://b:2", at_b.handlers());
  a.plane->send_message(b.plane->address(), ObjectBuffer::copy_of("connect"), nullptr);
  ASSERT_TRUE(at_b.wait_for(1, 5s));
  std::vector<double> micros;
  for (int i = 0; i < 15; ++i) {
    std::this_thread::sleep_for(30ms);  // both threads past their poll windows, asleep
    const auto start = std::chrono::steady_clock::now();
    a.plane->send_message(b.plane->address(), ObjectBuffer::copy_of("wake"), nullptr);
    ASSERT_TRUE(at_b.wait_for(static_cast<std::size_t>(i) + 2, 5s));
    micros.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count());
  }
  std::sort(micros.begin(), micros.end());
  std::fprintf(stderr, "  idle receiver woken: median %.0f us, max %.0f us\n", micros[micros.size() / 2], micros.back());
  EXPECT_LT(micros[micros.size() / 2], 900.0) << "the message waited for a timer, not a wake-up";
}

// The progress thread polls only briefly after the last message
// (DataPlaneOptions::message_poll_window), then sleeps on the event fd:
// a process whose plane is idle uses (almost) no CPU.
TEST(UcxMessages, AnIdlePlaneUsesAlmostNoCpu) {
  Node a(kShm), b(kShm);
  Inbox at_b;
  a.plane->enable_messages("tcp://a:1", {});
  b.plane->enable_messages("tcp://b:2", at_b.handlers());
  for (int i = 0; i < 200; ++i) a.plane->send_message(b.plane->address(), ObjectBuffer::copy_of("ping"), nullptr);
  ASSERT_TRUE(at_b.wait_for(200, 5s));
  std::this_thread::sleep_for(100ms);  // past the poll window
  auto cpu = [] {
    timespec t{};
    ::clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return std::chrono::seconds(t.tv_sec) + std::chrono::nanoseconds(t.tv_nsec);
  };
  const auto cpu_before = cpu();
  const auto wall_before = std::chrono::steady_clock::now();
  std::this_thread::sleep_for(2s);
  const double used = std::chrono::duration<double>(cpu() - cpu_before).count() /
                      std::chrono::duration<double>(std::chrono::steady_clock::now() - wall_before).count();
  std::fprintf(stderr, "  idle CPU of two planes: %.3f%% of a core\n", used * 100);
  EXPECT_LT(used, 0.05);
}

}  // namespace
}  // namespace troupe::transport
