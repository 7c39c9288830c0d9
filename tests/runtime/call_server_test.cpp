// An actor host's call server in one process (call_server_harness.hpp): good
// calls are answered, and hostile input — length bombs, malformed requests,
// frames that break the schema, unknown kinds, floods of parked fetches —
// is answered with an error where the message says where to, else dropped,
// and the host keeps serving.
#include "runtime/call_server_harness.hpp"

#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

namespace troupe::testing {
namespace {

struct Answer {
  bool ok = false;
  std::string value;  // encoded, when ok
  Errc code = Errc::ok;
  std::string message;
};

Answer read_reply(const CallServerHarness::Reply& reply) {
  capnp::FlatArrayMessageReader reader(reply.words);
  auto body = reader.getRoot<wire::CallMessage>().getReply();
  Answer out;
  if (body.isValue()) {
    out.ok = true;
    out.value.assign(reinterpret_cast<const char*>(body.getValue().begin()), body.getValue().size());
  } else if (body.isError()) {
    out.code = errc_from_wire(body.getError().getCode());
    out.message = body.getError().getMessage().cStr();
  }
  return out;
}

class CallServerTest : public ::testing::Test {
 protected:
  // Sends a call and returns its one answer.
  Answer call(const std::string& method, const std::vector<std::string>& args) {
    capnp::MallocMessageBuilder message;
    harness_.build_call(message, method, args, ++call_id_);
    harness_.deliver(message);
    harness_.took_seq();
    auto replies = harness_.take_replies(1);
    EXPECT_EQ(replies.size(), 1u);
    if (replies.empty()) return {};
    EXPECT_EQ(replies[0].address, CallServerHarness::kReturnTo);
    return read_reply(replies[0]);
  }

  // The host still answers a good call.
  void expect_serving() {
    Answer answer = call("add", {serialize(3)});
    ASSERT_TRUE(answer.ok) << answer.message;
    EXPECT_EQ(deserialize<int>(answer.value), 8);
  }

  // Delivers `message` built by the caller (no seq taken) and returns the
  // answer, or nullopt-like (ok=false, code ok) when none came.
  Answer deliver_refused(capnp::MallocMessageBuilder& message, std::size_t expected_replies = 1) {
    harness_.deliver(message);
    auto replies = harness_.take_replies(expected_replies, std::chrono::milliseconds(expected_replies ? 20000 : 200));
    EXPECT_EQ(replies.size(), expected_replies);
    return replies.empty() ? Answer{} : read_reply(replies[0]);
  }

  CallServerHarness harness_;
  std::uint64_t call_id_ = 0;
};

TEST_F(CallServerTest, AnswersAGoodCall) {
  expect_serving();
  Answer answer = call("concat", {serialize(std::string("a")), serialize(std::vector<std::string>{"b", "c"})});
  ASSERT_TRUE(answer.ok) << answer.message;
  EXPECT_EQ(deserialize<std::string>(answer.value), "abc");
}

TEST_F(CallServerTest, TheAnswerDoesNotWaitForALentObjectAndTheLoansAreReturnedOnceItArrives) {
  // A call that borrows an object its caller has not produced yet (a ref
  // inside an argument, held by "this" process, so the fetch parks): the
  // method's answer goes out at once, saying the loans are kept; once the
  // object arrives, a ReturnLoans naming the call follows.
  const ObjectId lent = ObjectId::random();
  capnp::MallocMessageBuilder message;
  harness_.build_call(message, "add", {serialize(1)}, ++call_id_);
  auto refs = message.getRoot<wire::CallMessage>().getRequest().initRefs(1);
  to_wire(refs[0].initId(), lent);
  refs[0].setOwnerAddress(CallServerHarness::kOwnAddress);
  refs[0].setRemote();
  harness_.deliver(message);
  harness_.took_seq();
  auto replies = harness_.take_replies(1);
  ASSERT_EQ(replies.size(), 1u);
  {
    capnp::FlatArrayMessageReader reader(replies[0].words);
    auto reply = reader.getRoot<wire::CallMessage>().getReply();
    ASSERT_TRUE(reply.isValue());
    EXPECT_EQ(deserialize<int>(read_reply(replies[0]).value), 6);
    EXPECT_TRUE(reply.getLoansKept());
  }
  EXPECT_EQ(harness_.reply_count(), 0u);  // nothing more until the object is there
  auto value = std::make_shared<detail::ObjectState>(lent);
  value->set_value(detail::make_value<int>(9));
  harness_.table().hold(lent, value);
  replies = harness_.take_replies(1);
  ASSERT_EQ(replies.size(), 1u);
  capnp::FlatArrayMessageReader reader(replies[0].words);
  auto root = reader.getRoot<wire::CallMessage>();
  ASSERT_TRUE(root.isReturnLoans());
  EXPECT_EQ(root.getReturnLoans().getCallId(), call_id_);
  EXPECT_EQ(from_wire<ActorId>(root.getReturnLoans().getActorId()), harness_.actor_id());
  // Without borrowed objects still on their way, the loans end with the reply.
  capnp::MallocMessageBuilder plain;
  harness_.build_call(plain, "add", {serialize(2)}, ++call_id_);
  harness_.deliver(plain);
  harness_.took_seq();
  replies = harness_.take_replies(1);
  ASSERT_EQ(replies.size(), 1u);
  capnp::FlatArrayMessageReader plain_reader(replies[0].words);
  EXPECT_FALSE(plain_reader.getRoot<wire::CallMessage>().getReply().getLoansKept());
}

TEST(ObjectTableLoans, KeptLoansEndOnTheirBorrowersReturnOrTheirDeadline) {
  std::vector<ObjectId> dropped;
  detail::ObjectTable table([&](const ObjectId& id) { dropped.push_back(id); });
  const ObjectId a = ObjectId::random(), b = ObjectId::random();
  auto state_a = std::make_shared<detail::ObjectState>(a);
  auto state_b = std::make_shared<detail::ObjectState>(b);
  table.lend(a, state_a);
  table.lend(b, state_b);
  const WorkerId me = WorkerId::random();
  const ActorId callee = ActorId::random();
  const auto now = std::chrono::steady_clock::now();
  table.keep_loans(me, 1, callee, {state_a}, {a}, now + std::chrono::hours(1));
  table.keep_loans(me, 2, callee, {state_b}, {b}, now + std::chrono::milliseconds(1));
  EXPECT_EQ(table.kept_loans(), 2u);
  EXPECT_FALSE(table.return_loans(me, 1, ActorId::random()));  // not its borrower: refused
  EXPECT_TRUE(table.find(a));
  EXPECT_TRUE(table.return_loans(me, 1, callee));
  EXPECT_FALSE(table.find(a));
  EXPECT_FALSE(table.return_loans(me, 1, callee));  // once
  table.expire_loans(now + std::chrono::seconds(1));
  EXPECT_FALSE(table.find(b));
  EXPECT_EQ(table.kept_loans(), 0u);
  EXPECT_EQ(dropped, (std::vector<ObjectId>{a, b}));
}

TEST_F(CallServerTest, LengthBombArgumentGetsASerializationErrorAndTheHostServesOn) {
  std::string bomb(8, '\0');
  const std::uint64_t claim = std::uint64_t{1} << 40;
  std::memcpy(bomb.data(), &claim, sizeof claim);
  bomb.append(22, '\x01');
  for (const char* method : {"count", "nested"}) {
    Answer answer = call(method, {bomb});
    EXPECT_FALSE(answer.ok);
    EXPECT_EQ(answer.code, Errc::serialization) << answer.message;
    EXPECT_NE(answer.message.find("length bomb refused"), std::string::npos) << answer.message;
  }
  Answer answer = call("concat", {bomb, serialize(std::vector<std::string>{})});
  EXPECT_EQ(answer.code, Errc::serialization) << answer.message;
  expect_serving();
}

TEST_F(CallServerTest, MalformedRequestsAreAnsweredWithProtocolAndTakeNoSeq) {
  struct Case {
    const char* name;
    void (*spoil)(wire::CallRequest::Builder);
  };
  const Case cases[] = {
      {"no caller", [](wire::CallRequest::Builder r) { to_wire(r.initCallerId(), WorkerId{}); }},
      {"no result id", [](wire::CallRequest::Builder r) { to_wire(r.initResultId(), ObjectId{}); }},
      {"empty method", [](wire::CallRequest::Builder r) { r.setMethod(""); }},
      {"huge method", [](wire::CallRequest::Builder r) { r.setMethod(std::string(5000, 'm')); }},
      {"descriptor without id",
       [](wire::CallRequest::Builder r) {
         auto d = r.initArgs(1)[0].initRef();
         d.setOwnerAddress("tcp://127.0.0.1:9");
         d.setRemote();
       }},
      {"descriptor with a bad owner",
       [](wire::CallRequest::Builder r) {
         auto d = r.initArgs(1)[0].initPassRef();
         to_wire(d.initId(), ObjectId::random());
         d.setOwnerAddress("ipc:///etc/passwd");
         d.setRemote();
       }},
      {"inline size mismatch",
       [](wire::CallRequest::Builder r) {
         auto d = r.initArgs(1)[0].initRef();
         to_wire(d.initId(), ObjectId::random());
         d.setSizeBytes(99);
         d.setInlineData(capnp::Data::Reader(reinterpret_cast<const capnp::byte*>("abcd"), 4));
       }},
      {"fetch without a descriptor", [](wire::CallRequest::Builder r) { r.setMethod("__fetch"); }},
  };
  for (const auto& c : cases) {
    capnp::MallocMessageBuilder message;
    harness_.build_call(message, "add", {serialize(1)}, ++call_id_);
    c.spoil(message.getRoot<wire::CallMessage>().getRequest());
    Answer answer = deliver_refused(message);
    EXPECT_EQ(answer.code, Errc::protocol) << c.name << ": " << answer.message;
    EXPECT_NE(answer.message.find("malformed call request"), std::string::npos) << c.name << ": " << answer.message;
  }
  expect_serving();  // seq 0: none of the refused requests took one
}

TEST_F(CallServerTest, RequestsTheActorCannotServeAreAnswered) {
  Answer answer = call("no_such_method", {});
  EXPECT_EQ(answer.code, Errc::not_registered) << answer.message;
  answer = call("add", {});
  EXPECT_EQ(answer.code, Errc::invalid_argument) << answer.message;
  answer = call("add", {std::string("\x01", 1)});  // 1 byte for an int
  EXPECT_EQ(answer.code, Errc::serialization) << answer.message;
  expect_serving();
}

TEST_F(CallServerTest, ARequestWithNoUsableReplyAddressIsDroppedAndCounted) {
  for (const char* address : {"", "inproc://x", "tcp://no-port", "tcp://a b:1"}) {
    capnp::MallocMessageBuilder message;
    harness_.build_call(message, "add", {serialize(1)}, ++call_id_);
    message.getRoot<wire::CallMessage>().getRequest().setReturnTo(address);
    const auto before = harness_.server().dropped();
    deliver_refused(message, 0);
    EXPECT_EQ(harness_.server().dropped(), before + 1) << address;
  }
  capnp::MallocMessageBuilder message;
  harness_.build_call(message, "add", {serialize(1)}, ++call_id_);
  message.getRoot<wire::CallMessage>().getRequest().setReturnTo(std::string(300, 'x'));
  deliver_refused(message, 0);
  expect_serving();
}

// The call plane reads the schema lazily: a text that lacks its NUL byte
// raises kj::Exception on access. The method's is answered (the reply
// address is readable); the reply address's own is dropped.
TEST_F(CallServerTest, TextWithoutItsNulBreaksOnlyItsOwnMessage) {
  auto corrupt_text = [](kj::Array<capnp::word>& words, const std::string& text) {
    auto bytes = words.asBytes();
    std::string flat(reinterpret_cast<const char*>(bytes.begin()), bytes.size());
    const auto at = flat.find(text + '\0');
    ASSERT_NE(at, std::string::npos);
    bytes[at + text.size()] = 'X';
  };
  {
    capnp::MallocMessageBuilder message;
    harness_.build_call(message, "nested", {serialize(std::vector<std::vector<std::string>>{})}, ++call_id_);
    auto words = capnp::messageToFlatArray(message);
    corrupt_text(words, "nested");
    harness_.deliver_bytes(words.asBytes().begin(), words.asBytes().size());
    auto replies = harness_.take_replies(1);
    ASSERT_EQ(replies.size(), 1u);
    Answer answer = read_reply(replies[0]);
    EXPECT_EQ(answer.code, Errc::protocol) << answer.message;
    EXPECT_NE(answer.message.find("breaks the call schema"), std::string::npos) << answer.message;
  }
  {
    capnp::MallocMessageBuilder message;
    harness_.build_call(message, "add", {serialize(1)}, ++call_id_);
    auto words = capnp::messageToFlatArray(message);
    corrupt_text(words, CallServerHarness::kReturnTo);
    const auto before = harness_.server().dropped();
    harness_.deliver_bytes(words.asBytes().begin(), words.asBytes().size());
    EXPECT_EQ(harness_.server().dropped(), before + 1);
    EXPECT_EQ(harness_.reply_count(), 0u);
  }
  expect_serving();
}

TEST_F(CallServerTest, MalformedCancelsReleasesAndRepliesAreDropped) {
  {
    capnp::MallocMessageBuilder message;
    auto cancel = message.initRoot<wire::CallMessage>().initCancel();
    cancel.setCallId(1);
    const auto before = harness_.server().dropped();
    harness_.deliver(message);
    EXPECT_EQ(harness_.server().dropped(), before + 1);
  }
  {
    capnp::MallocMessageBuilder message;
    auto release = message.initRoot<wire::CallMessage>().initRelease();
    release.initIds(3);  // nil ids: ignored
    harness_.deliver(message);
  }
  {
    // A reply with a remote descriptor that names no owner, for no call.
    capnp::MallocMessageBuilder message;
    auto reply = message.initRoot<wire::CallMessage>().initReply();
    reply.setCallId(77);
    auto ref = reply.initRef();
    to_wire(ref.initId(), ObjectId::random());
    ref.setRemote();
    const auto before = harness_.server().dropped();
    harness_.deliver(message);
    EXPECT_EQ(harness_.server().dropped(), before + 1);
  }
  {
    // A reply for a call never made is ignored.
    capnp::MallocMessageBuilder message;
    auto reply = message.initRoot<wire::CallMessage>().initReply();
    reply.setCallId(78);
    reply.setValue(capnp::Data::Reader(reinterpret_cast<const capnp::byte*>("x"), 1));
    harness_.deliver(message);
  }
  expect_serving();
}

// Found by fuzz_call_server: a 104-byte release whose id list holds ~35
// million empty structs (free for the sender in Cap'n Proto) made the host
// reserve 570 MB. It is refused without allocating by the claimed count.
TEST_F(CallServerTest, AReleaseOfMillionsOfEmptyIdsIsDropped) {
  const unsigned char frame[] = {
      0x00, 0x00, 0x00, 0x00, 0x0c, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01, 0x00, 0x03, 0x00,
      0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x04, 0x00, 0x00, 0x00,
      0x02, 0x00, 0x00, 0x00, 0x09, 0x00, 0x00, 0x00, 0x28, 0x00, 0x00, 0x11, 0x27, 0x11, 0xca, 0x00, 0x00, 0x00,
      0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x08, 0x00, 0x00, 0x00, 0x02, 0x00, 0x7a, 0x00,
      0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x07, 0x00, 0x07, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
      0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00};
  const auto before = harness_.server().dropped();
  const auto start = std::chrono::steady_clock::now();
  harness_.deliver_bytes(frame, sizeof frame);
  EXPECT_EQ(harness_.server().dropped(), before + 1);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
  expect_serving();
}

TEST_F(CallServerTest, ParkedFetchesAreBoundedInNumber) {
  const std::size_t limit = detail::ObjectTable::kMaxParked;
  for (std::size_t i = 0; i <= limit; ++i) {
    capnp::MallocMessageBuilder message;
    auto request = message.initRoot<wire::CallMessage>().initRequest();
    request.setCallId(1000 + i);
    to_wire(request.initCallerId(), WorkerId{1, 1});
    request.setMethod("__fetch");
    request.setReturnTo(CallServerHarness::kReturnTo);
    auto d = request.initArgs(1)[0].initRef();
    to_wire(d.initId(), ObjectId::random());  // never produced here
    d.setOwnerAddress(CallServerHarness::kOwnAddress);
    d.setRemote();
    harness_.deliver(message);
  }
  EXPECT_EQ(harness_.table().parked(), limit);
  auto replies = harness_.take_replies(1);
  ASSERT_EQ(replies.size(), 1u);  // only the one past the limit is answered now
  Answer answer = read_reply(replies[0]);
  EXPECT_EQ(answer.code, Errc::not_found) << answer.message;
  // Waits expire.
  harness_.table().expire_waits(std::chrono::seconds(0));
  EXPECT_EQ(harness_.table().parked(), 0u);
  replies = harness_.take_replies(limit);
  EXPECT_EQ(replies.size(), limit);
  if (!replies.empty()) {
    EXPECT_EQ(read_reply(replies[0]).code, Errc::object_lost);
  }
  expect_serving();
}

TEST_F(CallServerTest, GarbageFramesNeverStopTheServer) {
  // Framing refuses most; whatever it lets through, the server survives.
  std::uint64_t state = 12345;
  auto next = [&] {
    state = state * 6364136223846793005ULL + 1442695040888963407ULL;
    return static_cast<std::uint8_t>(state >> 56);
  };
  capnp::MallocMessageBuilder good;
  harness_.build_call(good, "concat", {serialize(std::string("x")), serialize(std::vector<std::string>{"y"})}, 1);
  auto words = capnp::messageToFlatArray(good);
  for (int round = 0; round < 2000; ++round) {
    auto copy = kj::heapArray<capnp::word>(words.asPtr());
    auto bytes = copy.asBytes();
    for (int flips = 0; flips < 4; ++flips) bytes[next() % bytes.size()] = next();
    try {
      harness_.deliver_bytes(bytes.begin(), bytes.size());
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), Errc::protocol);  // refused by framing, as on receipt
    }
  }
  harness_.take_replies(0, std::chrono::milliseconds(200));
  harness_.clear_replies();
  // A fresh caller's seq starts at 0 again only for a new caller: use the
  // harness's, whose seq the mutated copies may have taken. Any answer
  // (value or seq error) proves the host serves.
  capnp::MallocMessageBuilder message;
  harness_.build_call(message, "add", {serialize(3)}, 999);
  to_wire(message.getRoot<wire::CallMessage>().getRequest().initCallerId(), WorkerId::random());
  message.getRoot<wire::CallMessage>().getRequest().setSeq(0);
  harness_.deliver(message);
  auto replies = harness_.take_replies(1);
  ASSERT_GE(replies.size(), 1u);
}

// A call with a deadline (timeoutMs) still queued when it passes is
// withdrawn and answered `timeout`, long before the call ahead of it ends.
TEST_F(CallServerTest, ACallNotStartedByItsTimeoutIsWithdrawnAndAnsweredTimeout) {
  capnp::MallocMessageBuilder nap;
  harness_.build_call(nap, "nap", {serialize(3000)}, 1);
  harness_.deliver_posted(nap);
  harness_.took_seq();
  capnp::MallocMessageBuilder late;
  harness_.build_call(late, "add", {serialize(1)}, 2);
  late.getRoot<wire::CallMessage>().getRequest().setTimeoutMs(100);
  harness_.deliver(late);
  harness_.took_seq();
  auto first = harness_.take_replies(1, std::chrono::milliseconds(2500));
  ASSERT_EQ(first.size(), 1u) << "the withdrawn call was not answered before the nap ended";
  capnp::FlatArrayMessageReader reader(first[0].words);
  EXPECT_EQ(reader.getRoot<wire::CallMessage>().getReply().getCallId(), 2u);
  Answer answer = read_reply(first[0]);
  EXPECT_EQ(answer.code, Errc::timeout) << answer.message;
  auto second = harness_.take_replies(1);
  ASSERT_EQ(second.size(), 1u);
  EXPECT_TRUE(read_reply(second[0]).ok);
  expect_serving();
}

// One caller's queue at the host is bounded by the actor's
// max_pending_calls: past it a call is answered `overloaded`, never dropped.
TEST(CallServerBounds, ACallerPastMaxPendingCallsIsAnsweredOverloaded) {
  CallServerHarness harness(5, 1, ActorOptions{.max_pending_calls = 2});
  capnp::MallocMessageBuilder nap;
  harness.build_call(nap, "nap", {serialize(1500)}, 1);
  harness.deliver_posted(nap);
  harness.took_seq();
  for (std::uint64_t id = 2; id <= 6; ++id) {
    capnp::MallocMessageBuilder call;
    harness.build_call(call, "add", {serialize(1)}, id);
    harness.deliver_posted(call);
    harness.took_seq();
  }
  auto replies = harness.take_replies(6);
  ASSERT_EQ(replies.size(), 6u) << "a call went unanswered";
  int overloaded = 0, values = 0;
  for (auto& reply : replies) {
    Answer answer = read_reply(reply);
    if (answer.ok) ++values;
    else if (answer.code == Errc::overloaded) ++overloaded;
    else ADD_FAILURE() << to_string(answer.code) << ": " << answer.message;
  }
  EXPECT_GE(overloaded, 3);
  EXPECT_EQ(values + overloaded, 6);
}

}  // namespace
}  // namespace troupe::testing
