// Framing of Cap'n Proto messages over ZeroMQ: round trips of every
// top-level message over inproc and tcp, and the checks that keep a
// malformed or oversized frame from reaching a reader.
#include "troupe/transport/framing.hpp"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <capnp/any.h>
#include <capnp/dynamic.h>
#include <capnp/serialize.h>
#include <gtest/gtest.h>
#include <kj/string.h>

#include <troupe/transport/schema/call.capnp.h>
#include <troupe/transport/schema/common.capnp.h>
#include <troupe/transport/schema/control.capnp.h>

namespace troupe::transport {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

constexpr auto kReplyWait = 2000ms;  // generous; a round trip takes well under 1 ms

// --- messages -----------------------------------------------------------------

void fill_register_node(wire::ControlMessage::Builder message) {
  message.setRequestId(7);
  auto node = message.initRegisterNode();
  node.setProtocolVersion(wire::PROTOCOL_VERSION);
  node.initNodeId().setHi(1);
  node.getNodeId().setLo(2);
  node.setAddress("tcp://10.0.0.5:7001");
  node.setHostname("gpu-node-5");
  node.setNumCpus(96);
  node.setMemoryBytes(std::uint64_t{512} << 30);
  auto gpus = node.initGpus(2);
  for (unsigned i = 0; i < 2; ++i) {
    gpus[i].setIndex(i);
    gpus[i].setModel("NVIDIA H100 80GB HBM3");
    gpus[i].setMemoryBytes(std::uint64_t{80} << 30);
    gpus[i].setSmCount(132);
    gpus[i].setCcMajor(9);
    gpus[i].setCcMinor(0);
    gpus[i].initPeers(1).set(0, 1 - i);
  }
  auto resources = node.initResources(1);
  resources[0].setName("GPU:H100");
  resources[0].setAmount(2.0);
  const kj::byte ucx[] = {0xde, 0xad, 0xbe, 0xef};
  node.setUcxAddress(kj::arrayPtr(ucx, sizeof(ucx)));
  auto transports = node.initTransports(2);
  transports.set(0, "shm");
  transports.set(1, "rc");
}

void expect_register_node(wire::ControlMessage::Reader message) {
  EXPECT_EQ(message.getRequestId(), 7u);
  ASSERT_EQ(message.which(), wire::ControlMessage::REGISTER_NODE);
  auto node = message.getRegisterNode();
  EXPECT_EQ(node.getProtocolVersion(), wire::PROTOCOL_VERSION);
  EXPECT_EQ(node.getNodeId().getHi(), 1u);
  EXPECT_EQ(node.getNodeId().getLo(), 2u);
  EXPECT_EQ(node.getAddress(), "tcp://10.0.0.5:7001");
  EXPECT_EQ(node.getHostname(), "gpu-node-5");
  EXPECT_EQ(node.getNumCpus(), 96u);
  ASSERT_EQ(node.getGpus().size(), 2u);
  EXPECT_EQ(node.getGpus()[1].getModel(), "NVIDIA H100 80GB HBM3");
  EXPECT_EQ(node.getGpus()[1].getCcMajor(), 9u);
  ASSERT_EQ(node.getGpus()[1].getPeers().size(), 1u);
  EXPECT_EQ(node.getGpus()[1].getPeers()[0], 0u);
  ASSERT_EQ(node.getResources().size(), 1u);
  EXPECT_EQ(node.getResources()[0].getName(), "GPU:H100");
  EXPECT_EQ(node.getResources()[0].getAmount(), 2.0);
  EXPECT_EQ(node.getUcxAddress().size(), 4u);
  ASSERT_EQ(node.getTransports().size(), 2u);
  EXPECT_EQ(node.getTransports()[1], "rc");
}

void fill_call_request(wire::CallMessage::Builder message, std::size_t value_bytes) {
  auto request = message.initRequest();
  request.setCallId(42);
  request.initActorId().setLo(9);
  request.initCallerId().setHi(3);
  request.setSeq(5);
  request.setMethod("forward");
  auto args = request.initArgs(3);
  auto value = args[0].initValue(value_bytes);
  for (std::size_t i = 0; i < value_bytes; ++i) value[i] = static_cast<kj::byte>(i * 31);
  auto ref = args[1].initRef();
  ref.initId().setLo(100);
  ref.setOwnerAddress("tcp://10.0.0.6:7100");
  ref.setSizeBytes(1 << 20);
  ref.setRemote();
  auto pass = args[2].initPassRef();
  pass.initId().setLo(101);
  const kj::byte small[] = {1, 2, 3};
  pass.setInlineData(kj::arrayPtr(small, sizeof(small)));
  request.setReturnTo("tcp://10.0.0.1:7200");
  request.initResultId().setLo(102);
}

void expect_call_request(wire::CallMessage::Reader message, std::size_t value_bytes) {
  ASSERT_EQ(message.which(), wire::CallMessage::REQUEST);
  auto request = message.getRequest();
  EXPECT_EQ(request.getCallId(), 42u);
  EXPECT_EQ(request.getActorId().getLo(), 9u);
  EXPECT_EQ(request.getCallerId().getHi(), 3u);
  EXPECT_EQ(request.getSeq(), 5u);
  EXPECT_EQ(request.getMethod(), "forward");
  auto args = request.getArgs();
  ASSERT_EQ(args.size(), 3u);
  ASSERT_EQ(args[0].which(), wire::Arg::VALUE);
  auto value = args[0].getValue();
  ASSERT_EQ(value.size(), value_bytes);
  for (std::size_t i = 0; i < value_bytes; ++i) {
    if (value[i] != static_cast<kj::byte>(i * 31)) {
      ADD_FAILURE() << "value byte " << i << " differs";
      break;
    }
  }
  ASSERT_EQ(args[1].which(), wire::Arg::REF);
  EXPECT_EQ(args[1].getRef().getId().getLo(), 100u);
  EXPECT_EQ(args[1].getRef().getSizeBytes(), 1u << 20);
  EXPECT_TRUE(args[1].getRef().isRemote());
  ASSERT_EQ(args[2].which(), wire::Arg::PASS_REF);
  ASSERT_TRUE(args[2].getPassRef().isInlineData());
  EXPECT_EQ(args[2].getPassRef().getInlineData().size(), 3u);
  EXPECT_EQ(request.getReturnTo(), "tcp://10.0.0.1:7200");
  EXPECT_EQ(request.getResultId().getLo(), 102u);
}

void fill_call_error_reply(wire::CallMessage::Builder message) {
  auto reply = message.initReply();
  reply.setCallId(42);
  auto error = reply.initError();
  error.setCode(1);  // task_failed
  error.setRemoteType("std::out_of_range");
  error.setMessage("index 7 out of range");
}

kj::Array<capnp::word> flat_register_node() {
  capnp::MallocMessageBuilder builder;
  fill_register_node(builder.initRoot<wire::ControlMessage>());
  return capnp::messageToFlatArray(builder);
}

// A frame that refers to `bytes` without copying (ZeroMQ's constant message),
// so the test controls its alignment.
zmq::message_t frame_over(const void* bytes, std::size_t size) {
  return zmq::message_t(const_cast<void*>(bytes), size, nullptr);
}

Errc error_code_of(auto&& action) {
  try {
    action();
  } catch (const Error& error) {
    return error.code();
  }
  ADD_FAILURE() << "expected a troupe::Error";
  return Errc::transport;
}

// --- sockets ------------------------------------------------------------------

enum class Link { inproc, tcp };

std::string bind_endpoint(Link link, int n) {
  return link == Link::inproc ? "inproc://framing-" + std::to_string(n) : "tcp://127.0.0.1:*";
}

// A connected pair: `server` binds (REP or ROUTER), `client` connects.
struct SocketPair {
  SocketPair(Link link, zmq::socket_type server_type, zmq::socket_type client_type)
      : server(context, server_type), client(context, client_type) {
    static int counter = 0;
    server.set(zmq::sockopt::linger, 0);
    client.set(zmq::sockopt::linger, 0);
    server.bind(bind_endpoint(link, ++counter));
    client.connect(server.get(zmq::sockopt::last_endpoint));
  }
  zmq::context_t context;
  zmq::socket_t server;
  zmq::socket_t client;
};

std::string link_name(const testing::TestParamInfo<Link>& info) {
  return info.param == Link::inproc ? "inproc" : "tcp";
}

// --- round trips --------------------------------------------------------------

class FramingRoundTrip : public testing::TestWithParam<Link> {};

TEST_P(FramingRoundTrip, CarriesAControlRequestAndItsReplyOverReqRep) {
  SocketPair pair(GetParam(), zmq::socket_type::rep, zmq::socket_type::req);
  {
    capnp::MallocMessageBuilder builder;
    fill_register_node(builder.initRoot<wire::ControlMessage>());
    send_message(pair.client, builder);
  }
  auto request = recv_message(pair.server, kReplyWait);
  ASSERT_TRUE(request.has_value());
  expect_register_node(request->root<wire::ControlMessage>());
  {
    capnp::MallocMessageBuilder builder;
    auto reply = builder.initRoot<wire::ControlMessage>();
    reply.setRequestId(7);
    auto body = reply.initRegisterNodeReply();
    body.setHeartbeatIntervalMs(500);
    body.setEventsAddress("tcp://10.0.0.1:7002");
    send_message(pair.server, builder);
  }
  auto reply = recv_message(pair.client, kReplyWait);
  ASSERT_TRUE(reply.has_value());
  auto root = reply->root<wire::ControlMessage>();
  EXPECT_EQ(root.getRequestId(), 7u);
  ASSERT_EQ(root.which(), wire::ControlMessage::REGISTER_NODE_REPLY);
  EXPECT_EQ(root.getRegisterNodeReply().getHeartbeatIntervalMs(), 500u);
  EXPECT_EQ(root.getRegisterNodeReply().getEventsAddress(), "tcp://10.0.0.1:7002");
}

TEST_P(FramingRoundTrip, CarriesEveryControlMessageKindOverDealerRouter) {
  SocketPair pair(GetParam(), zmq::socket_type::router, zmq::socket_type::dealer);

  // One message per union member, each tagged with its ordinal as requestId.
  const auto schema = capnp::Schema::from<wire::ControlMessage>();
  const auto members = schema.getUnionFields();
  for (auto field : members) {
    capnp::MallocMessageBuilder builder;
    auto root = builder.initRoot<wire::ControlMessage>();
    root.setRequestId(field.getIndex() + 1);
    auto dynamic = capnp::toDynamic(root);
    if (field.getType().isStruct()) {
      dynamic.init(field);
    } else {
      dynamic.set(field, capnp::VOID);
    }
    send_message(pair.client, builder);
  }
  std::string identity;
  for (auto field : members) {
    auto routed = recv_routed(pair.server, kReplyWait);
    ASSERT_TRUE(routed.has_value());
    identity = routed->identity;
    auto root = routed->message.root<wire::ControlMessage>();
    EXPECT_EQ(root.getRequestId(), field.getIndex() + 1u);
    KJ_IF_MAYBE(active, capnp::toDynamic(root).which()) {
      EXPECT_EQ(active->getIndex(), field.getIndex());
    } else {
      ADD_FAILURE() << "no union member set";
    }
  }

  // And back to the peer by its identity.
  capnp::MallocMessageBuilder builder;
  auto error = builder.initRoot<wire::ControlMessage>();
  error.setRequestId(99);
  error.initError().setCode(10);  // unschedulable
  error.getError().setMessage("no node has 4 x GPU:B200");
  send_routed(pair.server, identity, builder);
  auto reply = recv_message(pair.client, kReplyWait);
  ASSERT_TRUE(reply.has_value());
  auto root = reply->root<wire::ControlMessage>();
  ASSERT_EQ(root.which(), wire::ControlMessage::ERROR);
  EXPECT_EQ(root.getError().getCode(), 10u);
  EXPECT_EQ(root.getError().getMessage(), "no node has 4 x GPU:B200");
}

TEST_P(FramingRoundTrip, CarriesEveryCallMessageKindOverDealerRouter) {
  SocketPair pair(GetParam(), zmq::socket_type::router, zmq::socket_type::dealer);
  {
    capnp::MallocMessageBuilder builder;
    fill_call_request(builder.initRoot<wire::CallMessage>(), 16);
    send_message(pair.client, builder);
  }
  {
    capnp::MallocMessageBuilder builder;
    auto cancel = builder.initRoot<wire::CallMessage>().initCancel();
    cancel.setCallId(42);
    send_message(pair.client, builder);
  }
  {
    capnp::MallocMessageBuilder builder;
    auto release = builder.initRoot<wire::CallMessage>().initRelease();
    release.initIds(2)[1].setLo(102);
    send_message(pair.client, builder);
  }

  auto request = recv_routed(pair.server, kReplyWait);
  ASSERT_TRUE(request.has_value());
  expect_call_request(request->message.root<wire::CallMessage>(), 16);
  auto cancel = recv_routed(pair.server, kReplyWait);
  ASSERT_TRUE(cancel.has_value());
  auto cancel_root = cancel->message.root<wire::CallMessage>();
  ASSERT_EQ(cancel_root.which(), wire::CallMessage::CANCEL);
  EXPECT_EQ(cancel_root.getCancel().getCallId(), 42u);
  auto release = recv_routed(pair.server, kReplyWait);
  ASSERT_TRUE(release.has_value());
  auto release_root = release->message.root<wire::CallMessage>();
  ASSERT_EQ(release_root.which(), wire::CallMessage::RELEASE);
  ASSERT_EQ(release_root.getRelease().getIds().size(), 2u);
  EXPECT_EQ(release_root.getRelease().getIds()[1].getLo(), 102u);

  {
    capnp::MallocMessageBuilder builder;
    fill_call_error_reply(builder.initRoot<wire::CallMessage>());
    send_routed(pair.server, request->identity, builder);
  }
  {
    capnp::MallocMessageBuilder builder;
    auto reply = builder.initRoot<wire::CallMessage>().initReply();
    reply.setCallId(43);
    reply.initRef().initId().setLo(102);
    send_routed(pair.server, request->identity, builder);
  }
  auto error_reply = recv_message(pair.client, kReplyWait);
  ASSERT_TRUE(error_reply.has_value());
  auto error_root = error_reply->root<wire::CallMessage>();
  ASSERT_EQ(error_root.which(), wire::CallMessage::REPLY);
  ASSERT_EQ(error_root.getReply().which(), wire::CallReply::ERROR);
  EXPECT_EQ(error_root.getReply().getError().getCode(), 1u);
  EXPECT_EQ(error_root.getReply().getError().getRemoteType(), "std::out_of_range");
  auto ref_reply = recv_message(pair.client, kReplyWait);
  ASSERT_TRUE(ref_reply.has_value());
  auto ref_root = ref_reply->root<wire::CallMessage>();
  ASSERT_EQ(ref_root.getReply().which(), wire::CallReply::REF);
  EXPECT_EQ(ref_root.getReply().getRef().getId().getLo(), 102u);
}

TEST_P(FramingRoundTrip, CarriesInlineValuesOfEverySize) {
  SocketPair pair(GetParam(), zmq::socket_type::router, zmq::socket_type::dealer);
  // Empty, one byte, around the UCX eager limit, and past 1 MiB.
  for (std::size_t size : {std::size_t{0}, std::size_t{1}, std::size_t{8192},
                           (std::size_t{1} << 20) + 3}) {
    SCOPED_TRACE("value of " + std::to_string(size) + " bytes");
    capnp::MallocMessageBuilder builder;
    fill_call_request(builder.initRoot<wire::CallMessage>(), size);
    send_message(pair.client, builder);
    auto received = recv_routed(pair.server, kReplyWait);
    ASSERT_TRUE(received.has_value());
    expect_call_request(received->message.root<wire::CallMessage>(), size);
  }
}

INSTANTIATE_TEST_SUITE_P(Links, FramingRoundTrip, testing::Values(Link::inproc, Link::tcp),
                         link_name);

// --- alignment ----------------------------------------------------------------

TEST(Framing, ReadsAlignedFramesInPlace) {
  auto flat = flat_register_node();
  const auto bytes = flat.asBytes();
  ReceivedMessage message(frame_over(bytes.begin(), bytes.size()));
  EXPECT_FALSE(message.was_copied());
  EXPECT_EQ(message.reader().getSegment(0).begin(), flat.begin() + 1);  // after the segment table
  expect_register_node(message.root<wire::ControlMessage>());
}

TEST(Framing, CopiesUnalignedFrames) {
  auto flat = flat_register_node();
  const auto bytes = flat.asBytes();
  std::vector<kj::byte> storage(bytes.size() + 1);
  kj::byte* unaligned = storage.data() + 1;  // vector storage is aligned, so +1 is not
  ASSERT_NE(reinterpret_cast<std::uintptr_t>(unaligned) % alignof(capnp::word), 0u);
  std::memcpy(unaligned, bytes.begin(), bytes.size());

  ReceivedMessage message(frame_over(unaligned, bytes.size()));
  EXPECT_TRUE(message.was_copied());
  std::memset(storage.data(), 0, storage.size());  // the copy must not depend on the frame
  expect_register_node(message.root<wire::ControlMessage>());
}

TEST(Framing, CopiesUnalignedFramesReceivedFromASocket) {
  // inproc hands the receiver the sender's buffer, so an unaligned constant
  // frame arrives unaligned.
  auto flat = flat_register_node();
  const auto bytes = flat.asBytes();
  std::vector<kj::byte> storage(bytes.size() + 3);
  kj::byte* unaligned = storage.data() + 3;
  std::memcpy(unaligned, bytes.begin(), bytes.size());

  SocketPair pair(Link::inproc, zmq::socket_type::pair, zmq::socket_type::pair);
  auto frame = frame_over(unaligned, bytes.size());
  ASSERT_TRUE(pair.client.send(frame, zmq::send_flags::none));
  auto message = recv_message(pair.server, kReplyWait);
  ASSERT_TRUE(message.has_value());
  EXPECT_TRUE(message->was_copied());
  expect_register_node(message->root<wire::ControlMessage>());
}

TEST(Framing, KeepsReadersValidWhenTheMessageMoves) {
  // A message this small is stored inside zmq::message_t itself.
  SocketPair pair(Link::inproc, zmq::socket_type::pair, zmq::socket_type::pair);
  capnp::MallocMessageBuilder builder;
  builder.initRoot<wire::ControlMessage>().setAck();
  builder.getRoot<wire::ControlMessage>().setRequestId(5);
  send_message(pair.client, builder);
  auto received = recv_message(pair.server, kReplyWait);
  ASSERT_TRUE(received.has_value());
  auto root = received->root<wire::ControlMessage>();
  ReceivedMessage moved = std::move(*received);
  received.reset();
  EXPECT_EQ(root.getRequestId(), 5u);
  EXPECT_EQ(moved.root<wire::ControlMessage>().which(), wire::ControlMessage::ACK);
}

// --- limits -------------------------------------------------------------------

TEST(Framing, RejectsFramesThatAreNotWholeWords) {
  auto flat = flat_register_node();
  const auto bytes = flat.asBytes();
  try {
    ReceivedMessage message(frame_over(bytes.begin(), bytes.size() - 3));
    FAIL() << "a frame of " << bytes.size() - 3 << " bytes was accepted";
  } catch (const Error& error) {
    EXPECT_EQ(error.code(), Errc::protocol);
    EXPECT_NE(error.message().find("whole number of words"), std::string::npos) << error.what();
  }
}

TEST(Framing, RejectsEmptyFrames) {
  EXPECT_EQ(error_code_of([] { ReceivedMessage message{zmq::message_t()}; }),
            Errc::protocol);
}

TEST(Framing, RejectsFramesAboveMaxFrameBytesBeforeParsing) {
  // Garbage that would also fail to parse: the size check must come first.
  std::vector<std::uint64_t> garbage(1024, ~std::uint64_t{0});
  FramingLimits limits;
  limits.max_frame_bytes = 4096;
  try {
    ReceivedMessage message(frame_over(garbage.data(), garbage.size() * sizeof(std::uint64_t)),
                            limits);
    FAIL() << "an oversized frame was accepted";
  } catch (const Error& error) {
    EXPECT_EQ(error.code(), Errc::protocol);
    EXPECT_NE(error.message().find("max_frame_bytes"), std::string::npos) << error.what();
  }
}

TEST(Framing, RejectsMessagesBeyondTheTraversalLimit) {
  capnp::MallocMessageBuilder builder;
  fill_call_request(builder.initRoot<wire::CallMessage>(), 4096);
  auto flat = capnp::messageToFlatArray(builder);
  const auto bytes = flat.asBytes();
  FramingLimits limits;
  limits.traversal_limit_words = 256;  // the value alone is 512 words
  EXPECT_EQ(error_code_of([&] { ReceivedMessage message(frame_over(bytes.begin(), bytes.size()), limits); }),
            Errc::protocol);
  // The same frame within the default limits is fine.
  ReceivedMessage message(frame_over(bytes.begin(), bytes.size()));
  expect_call_request(message.root<wire::CallMessage>(), 4096);
}

TEST(Framing, RejectsMessagesNestedBeyondTheLimit) {
  // ControlMessage > ClusterState > List(NodeInfo) > RegisterNode > List(GpuInfo) > peers
  capnp::MallocMessageBuilder builder;
  auto state = builder.initRoot<wire::ControlMessage>().initClusterState();
  state.initNodes(1)[0].initNode().initGpus(1)[0].initPeers(2);
  auto flat = capnp::messageToFlatArray(builder);
  const auto bytes = flat.asBytes();
  FramingLimits limits;
  limits.nesting_limit = 4;
  EXPECT_EQ(error_code_of([&] { ReceivedMessage message(frame_over(bytes.begin(), bytes.size()), limits); }),
            Errc::protocol);
  limits.nesting_limit = 8;
  ReceivedMessage message(frame_over(bytes.begin(), bytes.size()), limits);
  EXPECT_EQ(message.root<wire::ControlMessage>()
                .getClusterState().getNodes()[0].getNode().getGpus()[0].getPeers().size(),
            2u);
}

TEST(Framing, RejectsTrailingBytesAfterTheMessage) {
  capnp::MallocMessageBuilder builder;
  fill_register_node(builder.initRoot<wire::ControlMessage>());
  const auto words = capnp::computeSerializedSizeInWords(builder);
  std::vector<capnp::word> storage(words + 1);
  auto flat = capnp::messageToFlatArray(builder);
  std::memcpy(storage.data(), flat.begin(), flat.asBytes().size());
  EXPECT_EQ(error_code_of([&] {
              ReceivedMessage message(
                  frame_over(storage.data(), storage.size() * sizeof(capnp::word)));
            }),
            Errc::protocol);
}

TEST(Framing, ZeroMqDropsFramesAboveMaxFrameBytes) {
  FramingLimits limits;
  limits.max_frame_bytes = 1024;
  zmq::context_t context;
  zmq::socket_t server(context, zmq::socket_type::pair);
  zmq::socket_t client(context, zmq::socket_type::pair);
  server.set(zmq::sockopt::linger, 0);
  client.set(zmq::sockopt::linger, 0);
  apply_socket_limits(server, limits);
  server.bind("tcp://127.0.0.1:*");
  client.connect(server.get(zmq::sockopt::last_endpoint));

  capnp::MallocMessageBuilder builder;
  fill_call_request(builder.initRoot<wire::CallMessage>(), 4096);
  send_message(client, builder);
  EXPECT_FALSE(recv_message(server, 100ms, limits).has_value());
}

// --- malformed input ----------------------------------------------------------

TEST(Framing, RejectsTextWithoutItsNulTerminator) {
  auto flat = flat_register_node();
  auto bytes = flat.asBytes();
  const std::string hostname = "gpu-node-5";
  auto* at = std::search(bytes.begin(), bytes.end(), hostname.begin(), hostname.end());
  ASSERT_NE(at, bytes.end());
  at[hostname.size()] = 'x';  // overwrite the NUL

  // Structurally the message is fine; only the schema-aware check catches it.
  ReceivedMessage message(frame_over(bytes.begin(), bytes.size()));
  EXPECT_EQ(error_code_of([&] { message.root<wire::ControlMessage>(); }),
            Errc::protocol);
}

TEST(Framing, RejectsPointersOfTheWrongKind) {
  // A CallRequest whose `method` (Text) pointer points at a struct: only
  // visible when the message is read through the schema.
  capnp::MallocMessageBuilder builder;
  auto root = builder.initRoot<wire::CallMessage>();
  fill_call_request(root, 0);
  const auto method = capnp::Schema::from<wire::CallRequest>().getFieldByName("method");
  capnp::AnyStruct::Builder raw = root.getRequest();
  raw.getPointerSection()[method.getProto().getSlot().getOffset()]
      .initAs<wire::ObjectId>()
      .setLo(1);
  auto flat = capnp::messageToFlatArray(builder);
  ReceivedMessage message(frame_over(flat.begin(), flat.asBytes().size()));
  EXPECT_EQ(error_code_of([&] { message.root<wire::CallMessage>(); }), Errc::protocol);
}

TEST(Framing, TurnsGarbageIntoProtocolErrors) {
  std::mt19937_64 random(20240611);
  FramingLimits limits;
  limits.traversal_limit_words = 1024;  // bounds what printing an accepted message costs
  int accepted = 0;
  for (int round = 0; round < 3000; ++round) {
    std::vector<std::uint64_t> raw(1 + random() % 48);
    for (auto& word : raw) word = random();
    // Most rounds get a valid one-segment table, so the pointers are what is tested.
    if (round % 4 != 0) {
      const auto segment_words = static_cast<std::uint32_t>(raw.size() - 1);
      raw[0] = std::uint64_t{segment_words} << 32;
    }
    // Sparse garbage: many zero words make pointers more likely to look valid.
    if (round % 2 == 0) {
      for (std::size_t i = 1; i < raw.size(); ++i) {
        if (random() % 3 != 0) raw[i] &= 0x0000'00ff'0000'00ffu;
      }
    }
    try {
      auto message = ReceivedMessage::copy_of(raw.data(), raw.size() * sizeof(std::uint64_t), limits);
      auto control = message.root<wire::ControlMessage>();
      auto call = message.root<wire::CallMessage>();
      // Validated messages read without throwing, all the way down.
      EXPECT_NO_THROW((void)kj::str(capnp::toDynamic(control)));
      EXPECT_NO_THROW((void)kj::str(capnp::toDynamic(call)));
      ++accepted;
    } catch (const Error& error) {
      EXPECT_EQ(error.code(), Errc::protocol) << error.what();
    }
  }
  RecordProperty("accepted", accepted);
}

TEST(Framing, TurnsCorruptedMessagesIntoProtocolErrors) {
  // Valid messages with a few bytes changed reach much deeper into the
  // decoder than random bytes do.
  capnp::MallocMessageBuilder control_builder;
  fill_register_node(control_builder.initRoot<wire::ControlMessage>());
  capnp::MallocMessageBuilder call_builder;
  fill_call_request(call_builder.initRoot<wire::CallMessage>(), 5);
  const auto originals = {capnp::messageToFlatArray(control_builder),
                          capnp::messageToFlatArray(call_builder)};

  std::mt19937_64 random(77);
  FramingLimits limits;
  limits.traversal_limit_words = 4096;
  int accepted = 0;
  int rejected = 0;
  for (const auto& original : originals) {
    const auto bytes = original.asBytes();
    for (int round = 0; round < 2000; ++round) {
      std::vector<std::uint64_t> raw(bytes.size() / sizeof(std::uint64_t));
      std::memcpy(raw.data(), bytes.begin(), bytes.size());
      auto* data = reinterpret_cast<kj::byte*>(raw.data());
      for (int flips = 1 + random() % 3; flips > 0; --flips) {
        // Skip the segment table: its damage is covered above.
        data[8 + random() % (bytes.size() - 8)] = static_cast<kj::byte>(random());
      }
      try {
        auto message = ReceivedMessage::copy_of(raw.data(), bytes.size(), limits);
        auto control = message.root<wire::ControlMessage>();
        auto call = message.root<wire::CallMessage>();
        EXPECT_NO_THROW((void)kj::str(capnp::toDynamic(control)));
        EXPECT_NO_THROW((void)kj::str(capnp::toDynamic(call)));
        ++accepted;
      } catch (const Error& error) {
        EXPECT_EQ(error.code(), Errc::protocol) << error.what();
        ++rejected;
      }
    }
  }
  // Both outcomes occur, or the test exercises less than it claims.
  EXPECT_GT(accepted, 0);
  EXPECT_GT(rejected, 0);
}

// --- receiving ----------------------------------------------------------------

TEST(Framing, RecvReturnsNulloptAfterTheTimeout) {
  SocketPair pair(Link::inproc, zmq::socket_type::router, zmq::socket_type::dealer);
  auto start = Clock::now();
  EXPECT_FALSE(recv_message(pair.client, 50ms).has_value());
  auto waited = Clock::now() - start;
  EXPECT_GE(waited, 50ms);
  EXPECT_LT(waited, 250ms);

  start = Clock::now();
  EXPECT_FALSE(recv_routed(pair.server, 50ms).has_value());
  waited = Clock::now() - start;
  EXPECT_GE(waited, 50ms);
  EXPECT_LT(waited, 250ms);

  start = Clock::now();
  EXPECT_FALSE(recv_message(pair.client, 0ms).has_value());
  EXPECT_LT(Clock::now() - start, 20ms);
}

TEST(Framing, RecvRejectsABadFrameAndStaysInStep) {
  SocketPair pair(Link::inproc, zmq::socket_type::pair, zmq::socket_type::pair);
  const char odd[12] = {};
  pair.client.send(zmq::buffer(odd, sizeof(odd)));
  pair.client.send(zmq::str_buffer("one"), zmq::send_flags::sndmore);
  pair.client.send(zmq::str_buffer("two"));
  capnp::MallocMessageBuilder builder;
  fill_register_node(builder.initRoot<wire::ControlMessage>());
  send_message(pair.client, builder);

  EXPECT_EQ(error_code_of([&] { (void)recv_message(pair.server, kReplyWait); }),
            Errc::protocol);
  EXPECT_EQ(error_code_of([&] { (void)recv_message(pair.server, kReplyWait); }),
            Errc::protocol);
  auto good = recv_message(pair.server, kReplyWait);
  ASSERT_TRUE(good.has_value());
  expect_register_node(good->root<wire::ControlMessage>());
}

TEST(Framing, RecvRoutedRejectsExtraFramesAndStaysInStep) {
  SocketPair pair(Link::inproc, zmq::socket_type::router, zmq::socket_type::dealer);
  pair.client.send(zmq::str_buffer(""), zmq::send_flags::sndmore);  // a REQ-style delimiter
  capnp::MallocMessageBuilder builder;
  fill_register_node(builder.initRoot<wire::ControlMessage>());
  auto flat = capnp::messageToFlatArray(builder);
  pair.client.send(zmq::buffer(flat.asBytes().begin(), flat.asBytes().size()));
  send_message(pair.client, builder);

  EXPECT_EQ(error_code_of([&] { (void)recv_routed(pair.server, kReplyWait); }),
            Errc::protocol);
  auto good = recv_routed(pair.server, kReplyWait);
  ASSERT_TRUE(good.has_value());
  expect_register_node(good->message.root<wire::ControlMessage>());
}

TEST(Framing, RecvAppliesTheGivenLimits) {
  SocketPair pair(Link::inproc, zmq::socket_type::pair, zmq::socket_type::pair);
  capnp::MallocMessageBuilder builder;
  fill_call_request(builder.initRoot<wire::CallMessage>(), 4096);
  send_message(pair.client, builder);
  FramingLimits limits;
  limits.max_frame_bytes = 1024;
  EXPECT_EQ(error_code_of([&] { (void)recv_message(pair.server, kReplyWait, limits); }),
            Errc::protocol);
}

// --- sending ------------------------------------------------------------------

TEST(Framing, SendThatWouldBlockIsATimeout) {
  zmq::context_t context;
  zmq::socket_t lonely(context, zmq::socket_type::dealer);  // no peer: nowhere to queue
  lonely.set(zmq::sockopt::linger, 0);
  capnp::MallocMessageBuilder builder;
  builder.initRoot<wire::ControlMessage>().setAck();
  EXPECT_EQ(error_code_of([&] { send_message(lonely, builder, zmq::send_flags::dontwait); }),
            Errc::timeout);
  lonely.set(zmq::sockopt::sndtimeo, 20);
  EXPECT_EQ(error_code_of([&] { send_message(lonely, builder); }), Errc::timeout);
}

TEST(Framing, SendToAnUnknownPeerIsATransportErrorOnMandatoryRouters) {
  zmq::context_t context;
  zmq::socket_t router(context, zmq::socket_type::router);
  router.set(zmq::sockopt::linger, 0);
  router.set(zmq::sockopt::router_mandatory, 1);
  capnp::MallocMessageBuilder builder;
  builder.initRoot<wire::ControlMessage>().setAck();
  EXPECT_EQ(error_code_of([&] { send_routed(router, "nobody", builder); }),
            Errc::transport);
}

}  // namespace
}  // namespace troupe::transport
