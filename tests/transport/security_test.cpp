// TROUPE_TEST_LABELS: fast
// Transport security: CURVE and the ZAP handler on the control and call
// planes (members talk, strangers get nothing and are counted), what a
// refused client is told, the call plane's bound on outbound sockets, the
// data plane's message authenticators and its header parser.
//
// Each socket reads the process's membership when it is made, so a test
// plays member and stranger in one process by switching it between sockets.
#include <sodium.h>
#include <dirent.h>

#include <atomic>
#include <map>
#include <mutex>
#include <span>
#include <unistd.h>
#include <chrono>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <capnp/message.h>
#include <gtest/gtest.h>

#include "troupe/runtime/error.hpp"
#include "troupe/transport/internal/channels.hpp"
#include "troupe/transport/internal/control_socket.hpp"
#include "troupe/transport/internal/membership.hpp"
#include "troupe/transport/internal/ucx_wire.hpp"
#include "troupe/transport/internal/zmq_security.hpp"
#include "troupe/transport/internal/zmq_socket.hpp"
#include "troupe/transport/schema/control.capnp.h"
#include "troupe/transport/ucx.hpp"

namespace troupe::transport {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

// Restores "no membership" after each test.
class Security : public ::testing::Test {
 protected:
  void TearDown() override { set_membership(std::nullopt); }
  const ClusterSecret members = ClusterSecret::generate();
  const ClusterSecret others = ClusterSecret::generate();
};

void fill(capnp::MallocMessageBuilder& message, std::uint64_t request_id) {
  message.initRoot<wire::ControlMessage>().setRequestId(request_id);
}

std::uint64_t request_id_of(ReceivedMessage& message) {
  return message.root<wire::ControlMessage>().getRequestId();
}

template <class Pred>
bool eventually(Pred pred, std::chrono::milliseconds limit = 5s) {
  const auto deadline = Clock::now() + limit;
  while (Clock::now() < deadline) {
    if (pred()) return true;
    std::this_thread::sleep_for(10ms);
  }
  return pred();
}

// --- the control plane -------------------------------------------------------------

TEST_F(Security, MemberClientTalksToMemberServer) {
  set_membership(members);
  const auto before = zap_counters();
  ZmqControlServer server("127.0.0.1", 0);
  ControlDealer client("member", server.address());
  capnp::MallocMessageBuilder hello;
  fill(hello, 7);
  client.send(hello);
  auto received = server.receive(5s);
  ASSERT_TRUE(received);
  EXPECT_EQ(received->identity, "member");
  EXPECT_EQ(request_id_of(received->message), 7u);
  capnp::MallocMessageBuilder reply;
  fill(reply, 8);
  server.send_to("member", reply);
  auto answer = client.receive(5s);
  ASSERT_TRUE(answer);
  EXPECT_EQ(request_id_of(*answer), 8u);
  EXPECT_GT(zap_counters().admitted, before.admitted);
}

TEST_F(Security, StrangerWithAnotherSecretGetsNothingAndIsCounted) {
  set_membership(members);
  ZmqControlServer server("127.0.0.1", 0);
  const auto before = zap_counters();
  set_membership(others);
  ControlDealer stranger("stranger", server.address());
  capnp::MallocMessageBuilder hello;
  fill(hello, 1);
  stranger.send(hello);
  EXPECT_FALSE(server.receive(500ms));
  // Its HELLO does not decrypt with the members' server key: the handshake
  // fails before ZAP is asked, and the server's monitor counts it.
  EXPECT_TRUE(eventually([&] { return zap_counters().handshakes_failed > before.handshakes_failed; }));
  std::optional<ReceivedMessage> nothing;
  try {
    nothing = stranger.receive(200ms);
  } catch (const Error&) {
  }
  EXPECT_FALSE(nothing);
}

TEST_F(Security, ZapRefusesAClientThatKnowsOnlyTheServerKey) {
  set_membership(members);
  ZmqControlServer server("127.0.0.1", 0);
  const auto before = zap_counters();
  // A stranger who learnt the server's public key but not the members'
  // client key: the handshake reaches ZAP, which answers 400.
  zmq::socket_t stranger(zmq_context(), zmq::socket_type::dealer);
  stranger.set(zmq::sockopt::linger, 0);
  ClusterSecret::Key server_public = members.curve_server_public(), client_public{}, client_secret{};
  ::crypto_box_keypair(client_public.data(), client_secret.data());
  ASSERT_EQ(zmq_setsockopt(stranger.handle(), ZMQ_CURVE_SERVERKEY, server_public.data(), 32), 0);
  ASSERT_EQ(zmq_setsockopt(stranger.handle(), ZMQ_CURVE_PUBLICKEY, client_public.data(), 32), 0);
  ASSERT_EQ(zmq_setsockopt(stranger.handle(), ZMQ_CURVE_SECRETKEY, client_secret.data(), 32), 0);
  HandshakeWatch watch(stranger);
  stranger.connect("tcp://" + server.address());
  capnp::MallocMessageBuilder hello;
  fill(hello, 1);
  send_message(stranger, hello, zmq::send_flags::dontwait);
  EXPECT_FALSE(server.receive(500ms));
  EXPECT_TRUE(eventually([&] { return zap_counters().refused > before.refused; }));
  EXPECT_TRUE(eventually([&] {
    watch.poll();
    return watch.failure().find("400") != std::string::npos;
  })) << watch.failure();
}

TEST_F(Security, PlainClientToSecureServerIsRefusedWithAReason) {
  set_membership(members);
  ZmqControlServer server("127.0.0.1", 0);
  const auto before = zap_counters();
  set_membership(std::nullopt);
  ControlDealer plain("plain", server.address());
  capnp::MallocMessageBuilder hello;
  fill(hello, 1);
  plain.send(hello);
  EXPECT_FALSE(server.receive(300ms));
  // The client learns why (mechanism mismatch) instead of only timing out.
  std::optional<Error> refusal;
  const auto deadline = Clock::now() + 5s;
  while (!refusal && Clock::now() < deadline) {
    try {
      EXPECT_FALSE(plain.receive(100ms));
    } catch (const Error& e) {
      refusal = e;
    }
  }
  ASSERT_TRUE(refusal);
  EXPECT_EQ(refusal->code(), Errc::permission_denied);
  EXPECT_NE(refusal->message().find("TROUPE_TOKEN"), std::string::npos) << refusal->message();
  EXPECT_TRUE(eventually([&] { return zap_counters().handshakes_failed > before.handshakes_failed; }));
}

TEST_F(Security, ControlChannelWithoutTokenIsToldPermissionDenied) {
  set_membership(members);
  ZmqControlServer server("127.0.0.1", 0);
  set_membership(std::nullopt);
  ControlChannel channel(server.address(), "driver", nullptr);
  capnp::MallocMessageBuilder request;
  fill(request, 0);
  const auto start = Clock::now();
  try {
    (void)channel.request(request, 10s);
    ADD_FAILURE() << "a plain client got a reply from a secure head";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Errc::permission_denied) << e.message();
    EXPECT_NE(e.message().find("TROUPE_TOKEN"), std::string::npos) << e.message();
  }
  EXPECT_LT(Clock::now() - start, 9s) << "the refusal should end the wait early";
}

TEST_F(Security, ControlChannelTimeoutHintsAtTheToken) {
  // Nothing listens there: a plain timeout, whose message names the token.
  ControlChannel channel("127.0.0.1:1", "driver", nullptr);
  capnp::MallocMessageBuilder request;
  fill(request, 0);
  try {
    (void)channel.request(request, 200ms);
    ADD_FAILURE() << "a reply from nowhere";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Errc::timeout);
    EXPECT_NE(e.message().find("no reply from the head at tcp://127.0.0.1:1 within 200 ms"), std::string::npos)
        << e.message();
    EXPECT_NE(e.message().find("TROUPE_TOKEN"), std::string::npos) << e.message();
  }
}

// --- the call plane ----------------------------------------------------------------

// A CallPlane with its own io_context thread, counting what it receives.
struct Peer {
  Peer() : guard(context.get_executor()) {
    plane = std::make_unique<CallPlane>("127.0.0.1", context, [this](ReceivedMessage& message) {
      last_id = request_id_of(message);
      ++received;
    });
    plane->start();
    thread = std::thread([this] { context.run(); });
  }
  ~Peer() {
    plane->stop();
    guard.reset();
    context.stop();
    thread.join();
  }
  boost::asio::io_context context;
  boost::asio::executor_work_guard<boost::asio::io_context::executor_type> guard;
  std::unique_ptr<CallPlane> plane;
  std::atomic<int> received{0};
  std::atomic<std::uint64_t> last_id{0};
  std::thread thread;
};

void send_to(CallPlane& from, const Peer& to, std::uint64_t id) {
  capnp::MallocMessageBuilder message;
  fill(message, id);
  from.send(to.plane->address(), message);
}

TEST_F(Security, CallPlaneMembersTalkAndStrangersDoNot) {
  set_membership(members);
  Peer a, b;
  send_to(*a.plane, b, 11);
  EXPECT_TRUE(eventually([&] { return b.received.load() == 1; }));
  EXPECT_EQ(b.last_id.load(), 11u);

  set_membership(others);
  Peer stranger;
  set_membership(std::nullopt);
  Peer plain;
  const auto before = zap_counters();
  send_to(*stranger.plane, b, 12);
  send_to(*plain.plane, b, 13);
  EXPECT_TRUE(eventually([&] { return zap_counters().handshakes_failed >= before.handshakes_failed + 2; }));
  std::this_thread::sleep_for(200ms);
  EXPECT_EQ(b.received.load(), 1);
  // The members still talk.
  send_to(*a.plane, b, 14);
  EXPECT_TRUE(eventually([&] { return b.received.load() == 2; }));
}

int open_fds() {
  int count = 0;
  if (DIR* dir = ::opendir("/proc/self/fd")) {
    while (::readdir(dir) != nullptr) ++count;
    ::closedir(dir);
  }
  return count;
}

std::string fd_kinds() {
  std::map<std::string, int> kinds;
  if (DIR* dir = ::opendir("/proc/self/fd")) {
    while (auto* entry = ::readdir(dir)) {
      char target[256] = {};
      std::string path = std::string("/proc/self/fd/") + entry->d_name;
      if (::readlink(path.c_str(), target, sizeof target - 1) > 0) {
        std::string kind = target;
        kind = kind.substr(0, kind.find(':'));
        ++kinds[kind];
      }
    }
    ::closedir(dir);
  }
  std::string out;
  for (auto& [kind, n] : kinds) out += kind + "=" + std::to_string(n) + " ";
  return out;
}

TEST_F(Security, CallPlaneOutboundSocketsAreBoundedByLru) {
  Peer sender, first, last;
  const int baseline = open_fds();
  send_to(*sender.plane, first, 1);
  EXPECT_TRUE(eventually([&] { return first.received.load() == 1; }));
  // 2,000 distinct peers that do not exist (nothing listens on port 1).
  int peak = 0;
  for (int i = 0; i < 2000; ++i) {
    capnp::MallocMessageBuilder message;
    fill(message, 100 + i);
    sender.plane->send("tcp://127.0." + std::to_string(1 + i / 250) + "." + std::to_string(1 + i % 250) + ":1",
                       message);
    if (i % 100 == 0) peak = std::max(peak, open_fds());
  }
  EXPECT_LE(sender.plane->outbound_peers(), CallPlane::kDefaultMaxOutboundPeers);
  // Sockets: 256 kept + those closed but not yet reaped by ZeroMQ's reaper
  // thread, a few descriptors each. The reaper lags on a loaded machine
  // (2,607 seen beside a parallel ctest), so the bound is on growth: 2,000
  // peers kept open would hold well over 6,000 descriptors.
  EXPECT_LT(peak - baseline, 6 * 512) << "peak " << peak << ", baseline " << baseline;
  EXPECT_TRUE(eventually([&] { return open_fds() - baseline < 3 * 256 + 64; }))
      << open_fds() << " open, baseline " << baseline << "\n" << fd_kinds();
  // An evicted peer is reached again through a new socket.
  send_to(*sender.plane, first, 2);
  send_to(*sender.plane, last, 3);
  EXPECT_TRUE(eventually([&] { return first.received.load() == 2 && last.received.load() == 1; }));
}

// --- the data plane's headers ------------------------------------------------------

std::span<const std::byte> as_span(const ucx_wire::EncodedHeader& header) {
  return std::span(header.bytes.data(), header.size);
}

const std::string kRequester(120, 'a');

TEST(UcxWire, RequestRoundTripsWithAndWithoutAKey) {
  const ucx_wire::MessageKey key(ClusterSecret::generate().data_mac_key());
  ucx_wire::RequestHeader header;
  header.wait_ms = 5;
  header.request_id = 9;
  header.id_hi = 1;
  header.id_lo = 2;
  const auto data = std::as_bytes(std::span(kRequester));
  for (const ucx_wire::MessageKey* k : {&key, static_cast<const ucx_wire::MessageKey*>(nullptr)}) {
    const auto encoded = ucx_wire::encode_request(header, kRequester, k);
    const auto parsed = ucx_wire::parse_request(as_span(encoded), data, k);
    ASSERT_EQ(parsed.error, nullptr) << parsed.error;
    EXPECT_EQ(parsed.header.request_id, 9u);
    EXPECT_EQ(parsed.header.wait_ms, 5u);
    EXPECT_EQ(parsed.requester, kRequester);
  }
}

TEST(UcxWire, APushRequestIsAuthenticatedLikeAFetch) {
  const ucx_wire::MessageKey key(ClusterSecret::generate().data_mac_key());
  const ucx_wire::MessageKey other(ClusterSecret::generate().data_mac_key());
  ucx_wire::RequestHeader header;
  header.magic = ucx_wire::kPushRequestMagic;
  const auto data = std::as_bytes(std::span(kRequester));
  const auto parsed = ucx_wire::parse_request(as_span(ucx_wire::encode_request(header, kRequester, &key)), data, &key);
  ASSERT_EQ(parsed.error, nullptr) << parsed.error;
  EXPECT_TRUE(parsed.push);
  auto foreign = ucx_wire::parse_request(as_span(ucx_wire::encode_request(header, kRequester, &other)), data, &key);
  EXPECT_TRUE(foreign.error && foreign.unauthenticated);
  header.magic = 0x12345678;
  EXPECT_TRUE(ucx_wire::parse_request(as_span(ucx_wire::encode_request(header, kRequester, &key)), data, &key).error);
}

TEST(UcxWire, RequestWithoutAValidTagIsRefusedAsUnauthenticated) {
  const ucx_wire::MessageKey key(ClusterSecret::generate().data_mac_key());
  const ucx_wire::MessageKey other(ClusterSecret::generate().data_mac_key());
  ucx_wire::RequestHeader header;
  const auto data = std::as_bytes(std::span(kRequester));
  // No tag, another cluster's tag, a tag over another address.
  auto untagged = ucx_wire::parse_request(as_span(ucx_wire::encode_request(header, kRequester, nullptr)), data, &key);
  EXPECT_TRUE(untagged.error && untagged.unauthenticated);
  auto foreign = ucx_wire::parse_request(as_span(ucx_wire::encode_request(header, kRequester, &other)), data, &key);
  EXPECT_TRUE(foreign.error && foreign.unauthenticated);
  const std::string elsewhere(120, 'b');
  auto moved = ucx_wire::parse_request(as_span(ucx_wire::encode_request(header, elsewhere, &key)), data, &key);
  EXPECT_TRUE(moved.error && moved.unauthenticated);
  // A tagged request to an insecure plane is refused too.
  auto unexpected = ucx_wire::parse_request(as_span(ucx_wire::encode_request(header, kRequester, &key)), data, nullptr);
  EXPECT_TRUE(unexpected.error);
}

TEST(UcxWire, TruncatedAndOversizedInputsAreRefused) {
  const ucx_wire::MessageKey key(ClusterSecret::generate().data_mac_key());
  ucx_wire::RequestHeader request;
  ucx_wire::DataHeader data;
  data.total = 10;
  for (const ucx_wire::MessageKey* k : {&key, static_cast<const ucx_wire::MessageKey*>(nullptr)}) {
    const auto encoded_request = ucx_wire::encode_request(request, kRequester, k);
    const auto encoded_data = ucx_wire::encode_data(data, k);
    const auto address = std::as_bytes(std::span(kRequester));
    for (std::size_t n = 0; n < encoded_request.size; ++n)
      EXPECT_TRUE(ucx_wire::parse_request(as_span(encoded_request).first(n), address, k).error) << n;
    for (std::size_t n = 0; n < encoded_data.size; ++n)
      EXPECT_TRUE(ucx_wire::parse_data(as_span(encoded_data).first(n), 0, k).error) << n;
    std::vector<std::byte> longer(encoded_data.size + 1);
    std::memcpy(longer.data(), encoded_data.bytes.data(), encoded_data.size);
    EXPECT_TRUE(ucx_wire::parse_data(longer, 0, k).error);
    // Requester addresses out of bounds.
    const std::string tiny(ucx_wire::kMinAddressBytes - 1, 'x');
    const std::string huge(ucx_wire::kMaxAddressBytes + 1, 'x');
    for (const std::string* a : {&tiny, &huge}) {
      const auto tagged = ucx_wire::encode_request(request, *a, k);
      EXPECT_TRUE(ucx_wire::parse_request(as_span(tagged), std::as_bytes(std::span(*a)), k).error);
    }
    // Bytes outside the object, a length past the end, an unknown kind.
    EXPECT_EQ(ucx_wire::parse_data(as_span(encoded_data), 10, k).error, nullptr);
    EXPECT_TRUE(ucx_wire::parse_data(as_span(encoded_data), 11, k).error);
    ucx_wire::DataHeader past = data;
    past.offset = 8;
    EXPECT_TRUE(ucx_wire::parse_data(as_span(ucx_wire::encode_data(past, k)), 3, k).error);
    past.offset = ~std::uint64_t{0};
    EXPECT_TRUE(ucx_wire::parse_data(as_span(ucx_wire::encode_data(past, k)), 0, k).error);
    ucx_wire::DataHeader odd = data;
    odd.kind = 9;
    EXPECT_TRUE(ucx_wire::parse_data(as_span(ucx_wire::encode_data(odd, k)), 0, k).error);
    odd = data;
    odd.memory = 7;
    EXPECT_TRUE(ucx_wire::parse_data(as_span(ucx_wire::encode_data(odd, k)), 0, k).error);
  }
}

TEST(UcxWire, MetaTravelsInsideTheAuthenticatedHeader) {
  const ucx_wire::MessageKey key(ClusterSecret::generate().data_mac_key());
  ucx_wire::DataHeader data;
  data.total = 10;
  const std::string meta = "tensor envelope";
  for (const ucx_wire::MessageKey* k : {&key, static_cast<const ucx_wire::MessageKey*>(nullptr)}) {
    const auto encoded = ucx_wire::encode_data(data, k, meta);
    const auto parsed = ucx_wire::parse_data(as_span(encoded), 10, k);
    ASSERT_EQ(parsed.error, nullptr) << parsed.error;
    EXPECT_EQ(parsed.meta, meta);
    EXPECT_EQ(parsed.header.meta_length, meta.size());
    // Truncated anywhere: refused.
    for (std::size_t n = 0; n < encoded.size; ++n)
      EXPECT_TRUE(ucx_wire::parse_data(as_span(encoded).first(n), 0, k).error) << n;
    // Meta only on an ok message at offset 0.
    ucx_wire::DataHeader later = data;
    later.offset = 4;
    EXPECT_TRUE(ucx_wire::parse_data(as_span(ucx_wire::encode_data(later, k, meta)), 0, k).error);
    ucx_wire::DataHeader status = data;
    status.status = ucx_wire::kNotFound;
    status.total = 0;
    EXPECT_TRUE(ucx_wire::parse_data(as_span(ucx_wire::encode_data(status, k, meta)), 0, k).error);
  }
  // A changed meta byte breaks the tag; without a key, a meta length that
  // disagrees with the header's size is refused.
  auto tampered = ucx_wire::encode_data(data, &key, meta);
  tampered.bytes[sizeof(ucx_wire::DataHeader) + 2] ^= std::byte{1};
  const auto refused = ucx_wire::parse_data(as_span(tampered), 0, &key);
  EXPECT_TRUE(refused.error && refused.unauthenticated);
  auto lying = ucx_wire::encode_data(data, nullptr, meta);
  lying.bytes[offsetof(ucx_wire::DataHeader, meta_length)] = std::byte{3};
  EXPECT_TRUE(ucx_wire::parse_data(as_span(lying), 0, nullptr).error);
  EXPECT_THROW(ucx_wire::encode_data(data, &key, std::string(ucx_wire::kMaxMetaBytes + 1, 'm')), Error);
}

// --- the data plane between members and strangers -------------------------------

struct DataNode {
  explicit DataNode(const std::optional<ClusterSecret>& secret, DataPlaneOptions options = {}) {
    set_membership(secret);
    UcxOptions ucx;
    ucx.tls = "tcp,self";
    ucx.net_devices = "lo";
    worker = UcxWorker::create(UcxContext::create(ucx));
    plane = std::make_unique<DataPlane>(worker, std::move(options));
    set_membership(std::nullopt);
  }
  std::shared_ptr<UcxWorker> worker;
  std::unique_ptr<DataPlane> plane;
};

TEST_F(Security, DataPlaneMembersFetchAndStrangersAreRefused) {
  DataNode holder(members), member(members), stranger(others), plain(std::nullopt);
  const ObjectId id{1, 2};
  holder.plane->publish(id, ObjectBuffer::copy_of("the members' object"));

  auto fetched = member.plane->fetch(holder.plane->address(), id).get();
  EXPECT_EQ(fetched.view(), "the members' object");

  FetchOptions quick;
  quick.timeout = 500ms;
  for (DataNode* outsider : {&stranger, &plain}) {
    auto refused = outsider->plane->fetch(holder.plane->address(), id, quick);
    try {
      refused.get();
      ADD_FAILURE() << "a stranger fetched a member's object";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), Errc::timeout) << e.message();
    }
  }
  auto stats = holder.plane->stats().get();
  EXPECT_EQ(stats.unauthenticated_refused, 2u);
  EXPECT_EQ(stats.fetches_served, 1u);

  // A stranger's push is refused too; the holder keeps serving members.
  auto pushed = stranger.plane->push(member.plane->address(), ObjectId{3, 4}, ObjectBuffer::copy_of("junk"));
  try {
    pushed.get();  // an eager push leaves: the receiver drops it
  } catch (const Error&) {
  }
  EXPECT_TRUE(eventually([&] { return member.plane->stats().get().unauthenticated_refused >= 1; }));
  EXPECT_EQ(member.plane->stats().get().inbox_objects, 0u);
  EXPECT_EQ(member.plane->fetch(holder.plane->address(), id).get().view(), "the members' object");
}

// The call plane over UCX: every message (hello and call) carries the
// authenticator over its header and bytes; a stranger's and a plain
// process's are dropped and counted, never delivered, and a forged
// message (a member's header on other bytes) is dropped too.
TEST_F(Security, UcxCallMessagesOfStrangersAreDroppedAndMembersAreDelivered) {
  DataNode host(members), member(members), stranger(others), plain(std::nullopt);
  std::mutex mutex;
  std::vector<std::string> delivered, peers;
  DataPlane::MessageHandlers handlers;
  handlers.on_peer = [&](std::string name, std::string) {
    std::lock_guard lock(mutex);
    peers.push_back(std::move(name));
  };
  handlers.on_message = [&](ObjectBuffer bytes) {
    std::lock_guard lock(mutex);
    delivered.emplace_back(bytes.view());
  };
  host.plane->enable_messages("tcp://host:1", std::move(handlers));
  member.plane->enable_messages("tcp://member:2", {});
  stranger.plane->enable_messages("tcp://stranger:3", {});
  plain.plane->enable_messages("tcp://plain:4", {});
  for (DataNode* outsider : {&stranger, &plain})
    outsider->plane->send_message(host.plane->address(), ObjectBuffer::copy_of("a stranger's call"), nullptr);
  member.plane->send_message(host.plane->address(), ObjectBuffer::copy_of("a member's call"), nullptr);
  ASSERT_TRUE(eventually([&] {
    std::lock_guard lock(mutex);
    return !delivered.empty();
  }));
  // Each outsider's hello and message: four refusals.
  EXPECT_TRUE(eventually([&] { return host.plane->stats().get().unauthenticated_refused >= 4; }));
  std::this_thread::sleep_for(100ms);
  std::lock_guard lock(mutex);
  EXPECT_EQ(delivered, std::vector<std::string>{"a member's call"});
  EXPECT_EQ(peers, std::vector<std::string>{"tcp://member:2"});
  EXPECT_EQ(host.plane->stats().get().messages_received, 1u);

  // The authenticator covers the bytes: a member's header with other bytes fails.
  const ucx_wire::MessageKey key(members.data_mac_key());
  ucx_wire::MessageHeader header;
  header.stream = 7;
  header.seq = 1;
  const std::string bytes = "pay 1 coin";
  auto wire = ucx_wire::encode_message(header, {}, std::as_bytes(std::span(bytes)), &key);
  const std::string forged = "pay 9 coin";
  auto span = std::span(wire.bytes.data(), wire.size);
  EXPECT_EQ(ucx_wire::parse_message(span, std::as_bytes(std::span(bytes)), &key).error, nullptr);
  auto refused = ucx_wire::parse_message(span, std::as_bytes(std::span(forged)), &key);
  EXPECT_NE(refused.error, nullptr);
  EXPECT_TRUE(refused.unauthenticated);
  EXPECT_NE(ucx_wire::parse_message(span, std::as_bytes(std::span(bytes)), nullptr).error, nullptr)
      << "an authenticated message to an insecure plane is refused (wrong length)";
}

TEST_F(Security, DataPlaneBoundsParkedRequests) {
  DataPlaneOptions bounded;
  bounded.max_parked_requests = 2;
  DataNode holder(members, bounded), member(members);
  FetchOptions waiting;
  waiting.wait_for_publish = true;
  waiting.timeout = 3s;
  std::vector<std::future<ObjectBuffer>> parked;
  for (std::uint64_t i = 0; i < 2; ++i) parked.push_back(member.plane->fetch(holder.plane->address(), ObjectId{9, i}, waiting));
  std::this_thread::sleep_for(200ms);  // both parked at the holder
  auto third = member.plane->fetch(holder.plane->address(), ObjectId{9, 2}, waiting);
  try {
    third.get();
    ADD_FAILURE() << "a third request was parked";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Errc::transport) << e.message();
    EXPECT_NE(e.message().find("busy"), std::string::npos) << e.message();
  }
  EXPECT_EQ(holder.plane->stats().get().requests_busy, 1u);
  holder.plane->publish(ObjectId{9, 0}, ObjectBuffer::copy_of("a"));
  holder.plane->publish(ObjectId{9, 1}, ObjectBuffer::copy_of("b"));
  EXPECT_EQ(parked[0].get().view(), "a");
  EXPECT_EQ(parked[1].get().view(), "b");
}

TEST_F(Security, DataPlaneEndpointCacheIsBounded) {
  DataPlaneOptions bounded;
  bounded.max_endpoints = 2;
  DataNode consumer(std::nullopt, bounded);
  std::vector<std::unique_ptr<DataNode>> holders;
  for (std::uint64_t i = 0; i < 5; ++i) {
    holders.push_back(std::make_unique<DataNode>(std::nullopt));
    holders.back()->plane->publish(ObjectId{7, i}, ObjectBuffer::copy_of("x"));
    EXPECT_EQ(consumer.plane->fetch(holders.back()->plane->address(), ObjectId{7, i}).get().view(), "x");
    EXPECT_LE(consumer.plane->stats().get().endpoints, 2u);
  }
  // An evicted holder is reached again through a new endpoint.
  EXPECT_EQ(consumer.plane->fetch(holders.front()->plane->address(), ObjectId{7, 0}).get().view(), "x");
}

TEST(UcxListen, NodeIpSelectsItsInterface) {
  EXPECT_EQ(net_devices_for_ip("127.0.0.1"), "lo");
  EXPECT_EQ(net_devices_for_ip("tcp://127.0.0.1:4000"), "lo");
  EXPECT_EQ(net_devices_for_ip("0.0.0.0"), "");
  EXPECT_EQ(net_devices_for_ip("203.0.113.77"), "");  // no interface holds it
}

}  // namespace
}  // namespace troupe::transport
