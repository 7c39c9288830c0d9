#include "call_server.hpp"

#include <capnp/message.h>
#include <kj/exception.h>

#include <atomic>

#include "executor/local_runtime.hpp"
#include "troupe/runtime/error.hpp"
#include "troupe/runtime/logging.hpp"
#include "troupe/transport/error.hpp"

namespace troupe::detail {
namespace {

// Far above any registered method's name and arity; a request past them
// is malformed.
constexpr std::size_t kMaxMethodNameBytes = 1024;
constexpr std::size_t kMaxCallArgs = 4096;
// Far above one tick's releases to one holder.
constexpr std::size_t kMaxReleaseIds = std::size_t{1} << 20;
// A deadline further than a year away is no deadline worth a timer (and
// keeps the time arithmetic far from overflow).
constexpr std::uint64_t kMaxTimeoutMs = 365ULL * 24 * 3600 * 1000;

// An ObjectRef parameter as the callee receives it: the state its ObjectRef
// wraps, filled by a fetch from the object's holder (take_arg).
class PassedRef final : public Value {
 public:
  explicit PassedRef(StatePtr state) : state_(std::move(state)) {}
  const std::type_info& type() const noexcept override { return typeid(PassedRef); }
  std::string encode() const override {
    throw_error(Errc::unsupported, "an ObjectRef parameter cannot be re-encoded; pass the ObjectRef on instead");
  }
  std::shared_ptr<ObjectState> passed_state() const override { return state_; }

 private:
  StatePtr state_;
};

}  // namespace

CallServer::CallServer(ReplySender send, std::shared_ptr<ObjectTable> table, std::shared_ptr<ObjectTransfer> transfer,
                       std::shared_ptr<OutboundCalls> outbound)
    : send_(std::move(send)),
      table_(std::move(table)),
      transfer_(std::move(transfer)),
      outbound_(std::move(outbound)) {}

void CallServer::on_call_message(transport::ReceivedMessage& message) noexcept {
  // The frame was bounds-, traversal- and nesting-checked on receipt; the
  // per-field schema walk of root<T>() costs ~3 us a message on the hot
  // path, so read it directly: a malformed field throws kj::Exception on
  // access, caught here for the whole message (a request answers it
  // itself where it can).
  try {
    dispatch(message.reader().getRoot<wire::CallMessage>());
  } catch (const kj::Exception& e) {
    dropped_.warn(std::string("it breaks the call schema: ") + e.getDescription().cStr());
  } catch (const std::exception& e) {
    dropped_.warn(e.what());
  } catch (...) {
    dropped_.warn("a non-standard exception");
  }
}

void CallServer::dispatch(wire::CallMessage::Reader root) {
  switch (root.which()) {
    case wire::CallMessage::REPLY: outbound_->on_reply(root.getReply()); break;
    case wire::CallMessage::REQUEST: on_request(root.getRequest()); break;
    case wire::CallMessage::RELEASE: {
      // A list of empty structs costs its sender nothing per element (found
      // by fuzz_call_server: reserving by the claimed count took 570 MB).
      auto wire_ids = root.getRelease().getIds();
      if (wire_ids.size() > kMaxReleaseIds)
        throw Error(Errc::protocol, "a release of " + std::to_string(wire_ids.size()) + " objects (at most " +
                                        std::to_string(kMaxReleaseIds) + ")");
      std::vector<ObjectId> ids;
      for (auto wire_id : wire_ids) {
        const auto id = troupe::from_wire<ObjectId>(wire_id);
        if (!id.nil()) ids.push_back(id);
      }
      table_->release(ids);
      break;
    }
    case wire::CallMessage::RETURN_LOANS: outbound_->on_return_loans(root.getReturnLoans()); break;
    case wire::CallMessage::CANCEL: {
      auto cancel = root.getCancel();
      if (!cancel.hasResultId()) throw Error(Errc::protocol, "a cancel that names no call result");
      // A call not started yet fails with CancelledError, and that is its
      // reply; one that started runs to the end and answers as usual. The
      // CancelAnswer (if asked for) follows the reply on the same connection.
      bool withdrawn = false;
      if (StatePtr result = table_->find(troupe::from_wire<ObjectId>(cancel.getResultId()))) withdrawn = result->cancel();
      std::string return_to = cancel.getReturnTo();
      if (return_to.empty()) break;
      if (auto why = check_peer_address(return_to); !why.empty())
        throw Error(Errc::protocol, "a cancel with no usable reply address: " + why);
      answer_cancel(return_to, cancel.getCallId(), withdrawn);
      break;
    }
    case wire::CallMessage::CANCEL_ANSWER: outbound_->on_cancel_answer(root.getCancelAnswer()); break;
    default:
      throw Error(Errc::protocol, "a message of unknown kind " + std::to_string(static_cast<int>(root.which())));
  }
}

std::string CallServer::check_request(wire::CallRequest::Reader request) {
  if (!request.hasCallerId() || troupe::from_wire<WorkerId>(request.getCallerId()).nil())
    return "the request names no caller";
  const auto method = request.getMethod();  // a kj::Exception here is answered by the caller of this
  if (method.size() == 0 || method.size() > kMaxMethodNameBytes)
    return "a method name of " + std::to_string(method.size()) + " bytes";
  const bool fetch = method == kFetchMethod;
  if (!fetch && (!request.hasResultId() || troupe::from_wire<ObjectId>(request.getResultId()).nil()))
    return "the request names no result id";
  auto args = request.getArgs();
  if (args.size() > kMaxCallArgs) return std::to_string(args.size()) + " arguments";
  for (unsigned i = 0; i < args.size(); ++i) {
    auto arg = args[i];
    std::string why;
    switch (arg.which()) {
      case wire::Arg::VALUE: (void)arg.getValue(); break;
      case wire::Arg::REF: why = ObjectTransfer::check_descriptor(arg.getRef()); break;
      case wire::Arg::PASS_REF: why = ObjectTransfer::check_descriptor(arg.getPassRef()); break;
      default: why = "of unknown kind " + std::to_string(static_cast<int>(arg.which()));
    }
    if (!why.empty()) return "argument " + std::to_string(i) + ": " + why;
  }
  auto refs = request.getRefs();
  if (refs.size() > kMaxCallArgs) return std::to_string(refs.size()) + " nested refs";
  for (unsigned i = 0; i < refs.size(); ++i)
    if (auto why = ObjectTransfer::check_descriptor(refs[i]); !why.empty())
      return "nested ref " + std::to_string(i) + ": " + why;
  if (fetch && (args.size() != 1 || !args[0].isRef()))
    return std::string(kFetchMethod) + " takes one object descriptor";
  return {};
}

void CallServer::answer_error(const std::string& address, std::uint64_t call_id, Errc code, std::string message) {
  auto result = std::make_shared<ObjectState>();
  result->set_error(make_error(code, std::move(message)));
  reply_to(address, call_id, ActorId{}, result, false);
}

void CallServer::answer_cancel(const std::string& address, std::uint64_t call_id, bool withdrawn) {
  capnp::MallocMessageBuilder message;
  auto answer = message.initRoot<wire::CallMessage>().initCancelAnswer();
  answer.setCallId(call_id);
  troupe::to_wire(answer.initActorId(), host_ && host_->actor() ? host_->actor_id() : ActorId{});
  answer.setWithdrawn(withdrawn);
  try {
    send_(address, message);
  } catch (const std::exception& e) {
    TROUPE_LOG_WARN("could not answer a cancel to {}: {}", address, e.what());
  }
}

void CallServer::serve_fetch(wire::CallRequest::Reader request) {
  const std::uint64_t call_id = request.getCallId();
  std::string return_to = request.getReturnTo();
  // The call producing it may not have arrived yet (it comes on another
  // connection): then the fetch is parked until it does (bounded in number
  // and time by the ObjectTable).
  StatePtr state;
  try {
    state = table_->find_or_wait(troupe::from_wire<ObjectId>(request.getArgs()[0].getRef().getId()));
  } catch (const Error& e) {
    return answer_error(return_to, call_id, e.code(), e.message());
  }
  auto self = shared_from_this();
  std::weak_ptr<ObjectState> weak = state;
  state->on_complete([self, weak, call_id, return_to] {
    if (auto s = weak.lock()) self->reply_to(return_to, call_id, ActorId{}, s, /*allow_ref=*/false);
  });
}

std::string CallServer::check_seq(const WorkerId& caller, std::uint64_t seq) {
  std::lock_guard lock(seq_mutex_);
  std::uint64_t& expected = next_seq_[caller];
  if (seq == expected) {
    ++expected;
    return {};
  }
  std::string why = seq < expected ? "a duplicate or late call" : "calls before it were lost";
  why = "call seq " + std::to_string(seq) + " from caller " + caller.hex() + " is out of order (expected " +
        std::to_string(expected) + ": " + why + "); not run";
  // After a gap, later calls of this caller count from this one on.
  if (seq > expected) expected = seq + 1;
  return why;
}

void CallServer::on_request(wire::CallRequest::Reader request) {
  const std::uint64_t call_id = request.getCallId();
  std::string return_to = request.getReturnTo();  // unreadable: dropped by on_call_message
  if (auto why = check_peer_address(return_to); !why.empty()) {
    dropped_.warn("a request with no usable reply address: " + why);
    return;
  }
  // From here on every refusal is answered.
  std::string why;
  try {
    why = check_request(request);
  } catch (const kj::Exception& e) {
    why = std::string("it breaks the call schema: ") + e.getDescription().cStr();
  }
  if (!why.empty()) return answer_error(return_to, call_id, Errc::protocol, "malformed call request: " + why);
  if (request.getMethod() == kFetchMethod) return serve_fetch(request);

  const ObjectId result_id = troupe::from_wire<ObjectId>(request.getResultId());
  auto result = std::make_shared<ObjectState>(result_id);
  auto fail = [&](Errc code, std::string message) {
    result->set_error(make_error(code, std::move(message)));
    reply_to(return_to, call_id, ActorId{}, result, false);
  };
  const LocalActor* hosted = host_ ? host_->actor().get() : nullptr;
  if (!hosted) return fail(Errc::not_found, "this process hosts no actor");
  const ActorId& hosted_id = host_->actor_id();
  if (troupe::from_wire<ActorId>(request.getActorId()) != hosted_id)
    return fail(Errc::actor_died, "this host runs actor " + hosted_id.hex() + ", not the one called");
  if (request.getActorIncarnation() != host_->incarnation())
    return fail(Errc::actor_died, "this host runs incarnation " + std::to_string(host_->incarnation()) + " of actor " +
                                      hosted_id.hex() + ", not incarnation " +
                                      std::to_string(request.getActorIncarnation()) + " the call was sent to");
  if (auto why = check_seq(troupe::from_wire<WorkerId>(request.getCallerId()), request.getSeq()); !why.empty())
    return fail(Errc::protocol, std::move(why));
  const MethodInfo* method = hosted->cls().find_method(request.getMethod().cStr());
  if (!method) return fail(Errc::not_registered, hosted->cls().name + " has no registered method '" +
                                                     std::string(request.getMethod().cStr()) + "'");
  if (method->arity != request.getArgs().size())
    return fail(Errc::invalid_argument, method->qualified + " takes " + std::to_string(method->arity) + " arguments");
  CallSpec spec;
  spec.method = method;
  spec.result = result;
  // The caller's deadline, from when this host got the call (so never
  // before the caller's own): past it, the call is withdrawn unrun.
  if (const std::uint64_t timeout_ms = request.getTimeoutMs(); timeout_ms > 0)
    spec.deadline = std::chrono::steady_clock::now() +
                    std::chrono::milliseconds(std::min<std::uint64_t>(timeout_ms, kMaxTimeoutMs));
  // The objects the caller lends this call: ObjectRef parameters and the
  // refs inside argument values, each fetched from its holder at once.
  auto nested = transfer_->resolve_nested(request.getRefs());
  std::vector<StatePtr> borrowed = nested ? *nested : std::vector<StatePtr>{};
  for (auto arg : request.getArgs()) {
    ArgSlot slot;
    switch (arg.which()) {
      case wire::Arg::VALUE: slot.value = std::make_shared<EncodedValue>(from_data(arg.getValue()), nested); break;
      case wire::Arg::REF: slot.ref = transfer_->resolve(arg.getRef(), nested); break;
      case wire::Arg::PASS_REF: {
        StatePtr state = transfer_->resolve(arg.getPassRef(), nested);
        state = ObjectTransfer::same_id(std::move(state), troupe::from_wire<ObjectId>(arg.getPassRef().getId()));
        borrowed.push_back(state);
        slot.value = std::make_shared<PassedRef>(std::move(state));
        slot.pass_ref = true;
        break;
      }
    }
    spec.args.push_back(std::move(slot));
  }
  table_->hold(result_id, result);
  auto self = shared_from_this();
  std::weak_ptr<ObjectState> weak = result;
  const ActorId actor = hosted_id;
  auto transfer = transfer_;
  result->on_complete([transfer, weak, result_id] {
    if (auto s = weak.lock()) transfer->publish(result_id, s);  // a consumer may ask as soon as the caller knows
  });
  // The answer goes out as soon as the result is there (as in local mode),
  // even while borrowed objects are still on their way: the reply then says
  // so (loansKept), and the caller keeps lending them until this process
  // has them all and says so (ReturnLoans, sent after the reply).
  struct Borrowing {
    std::mutex mutex;
    std::size_t left = 0;  // borrowed objects not here yet
    bool answered = false, kept = false, returned = false;
  };
  auto borrowing = std::make_shared<Borrowing>();
  borrowing->left = borrowed.size();
  auto arrived = [self, borrowing, call_id, return_to, actor] {
    bool send = false;
    {
      std::lock_guard lock(borrowing->mutex);
      --borrowing->left;
      send = borrowing->left == 0 && borrowing->answered && borrowing->kept && !borrowing->returned;
      if (send) borrowing->returned = true;
    }
    if (send) self->return_loans(return_to, call_id, actor);
  };
  const WorkerId caller = troupe::from_wire<WorkerId>(request.getCallerId());
  auto answer = [self, weak, borrowing, call_id, return_to, actor, caller] {
    auto s = weak.lock();
    if (!s) return;
    bool kept = false;
    {
      std::lock_guard lock(borrowing->mutex);
      kept = borrowing->kept = borrowing->left > 0;
    }
    self->reply_to(return_to, call_id, actor, s, /*allow_ref=*/true, kept, caller);
    bool send = false;
    {
      std::lock_guard lock(borrowing->mutex);
      borrowing->answered = true;
      send = borrowing->kept && borrowing->left == 0 && !borrowing->returned;
      if (send) borrowing->returned = true;
    }
    if (send) self->return_loans(return_to, call_id, actor);
  };
  for (auto& state : borrowed) state->on_complete(arrived);
  result->on_complete(answer);
  host_->actor()->submit_from(std::move(spec), caller_id(troupe::from_wire<WorkerId>(request.getCallerId())));
}

void CallServer::return_loans(const std::string& address, std::uint64_t call_id, const ActorId& actor_id) {
  capnp::MallocMessageBuilder message;
  auto loans = message.initRoot<wire::CallMessage>().initReturnLoans();
  loans.setCallId(call_id);
  troupe::to_wire(loans.initActorId(), actor_id);
  try {
    send_(address, message);
  } catch (const std::exception& e) {
    TROUPE_LOG_DEBUG("could not return loans to {}: {}", address, e.what());  // they expire there
  }
}

void CallServer::reply_to(const std::string& address, std::uint64_t call_id, ActorId actor_id,
                          const StatePtr& result, bool allow_ref, bool loans_kept, const WorkerId& caller) {
  capnp::MallocMessageBuilder message(kFirstSegmentWords);
  auto reply = message.initRoot<wire::CallMessage>().initReply();
  reply.setCallId(call_id);
  troupe::to_wire(reply.initActorId(), actor_id);
  reply.setLoansKept(loans_kept);
  if (result->has_error()) {
    fill_error(reply.initError(), result->error());
  } else {
    ObjectTransfer::Encoding encoding;
    try {
      if (allow_ref) {
        // A result's ObjectRefs go alongside it (`refs`), lent to the
        // caller until it has fetched them; such a result always goes inline.
        NestedRefEncoder nested;
        encoding = transfer_->encode_for_transfer(result->value());
        if (!nested.refs().empty()) {
          if (encoding.by_descriptor) {
            encoding.bytes = result->value()->encode();
            encoding.by_descriptor = false;
          }
          std::vector<StatePtr> borrowed;
          std::vector<ObjectId> lent;
          transfer_->describe_nested(
              nested, [&](unsigned n) { return reply.initRefs(n); }, borrowed, lent);
          if (!borrowed.empty() || !lent.empty())
            table_->keep_loans(caller, call_id, ActorId{}, std::move(borrowed), std::move(lent),
                               std::chrono::steady_clock::now() + outbound_->kept_loans_limit());
        }
      } else {
        const ValuePtr& value = result->value();
        encoding.bytes = value ? value->encode() : std::string();
      }
    } catch (...) {
      fill_error(reply.initError(), std::current_exception());
      encoding.by_descriptor = false;
    }
    if (reply.isError()) {
      // The value could not be encoded: the caller gets that error.
    } else if (encoding.by_descriptor) {
      transfer_->describe_here(reply.initRef(), result->id(), encoding.size_bytes);
    } else {
      reply.setValue(as_data(encoding.bytes));
    }
  }
  try {
    send_(address, message);
  } catch (const std::exception& e) {
    TROUPE_LOG_WARN("could not reply to {}: {}", address, e.what());
  }
}

}  // namespace troupe::detail
