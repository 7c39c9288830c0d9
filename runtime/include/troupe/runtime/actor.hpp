// Actors: stateful objects that live in the runtime (local mode: one
// process, each actor on its own serial executor of a thread pool; cluster
// mode: one actor host process per actor) and are driven by method calls
// that return ObjectRefs at once.
//
//   class Counter { public: explicit Counter(int start); int add(int x); };
//   TROUPE_ACTOR(Counter, (int), add);
//
//   auto counter = troupe::actor<Counter>({.name = "c", .max_concurrency = 1}, 5);
//   troupe::ObjectRef<int> r = counter.call<&Counter::add>(3);   // returns at once
//   auto s = counter.call<&Counter::add>(r);                    // r resolved first
//   int v = s.get();
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "troupe/runtime/ids.hpp"
#include "troupe/runtime/object_ref.hpp"
#include "troupe/runtime/registry.hpp"

namespace troupe {

enum class ActorState { pending, alive, restarting, dead };
std::string_view to_string(ActorState state) noexcept;

// What one actor or one placement-group bundle needs. Names are Ray's:
// "CPU", "GPU" (fractions allowed), "memory" (bytes) and any custom name.
struct ResourceSpec {
  std::map<std::string, double> amounts{};
  std::string gpu_type{};     // "H100" matches "H100-80GB" and "NVIDIA H100 80GB HBM3"
  std::uint64_t gpu_memory = 0;  // bytes of GPU memory the GPU must have
};

enum class PlacementStrategy { pack, spread, strict_pack, strict_spread };
std::string_view to_string(PlacementStrategy strategy) noexcept;

namespace detail {
class GroupCore;
class ActorCore;
}  // namespace detail

// A reservation of resource bundles across nodes (Ray's placement group).
// Actors created with `placement_group` + `bundle_index` use the bundle's
// reserved resources, so a pipeline's stages land exactly where planned.
class PlacementGroup {
 public:
  PlacementGroup() = default;
  explicit PlacementGroup(std::shared_ptr<detail::GroupCore> core) : core_(std::move(core)) {}
  bool valid() const noexcept { return core_ != nullptr; }
  // Completes once every bundle is reserved. While the group cannot be
  // placed it stays pending and `pending_reason()` says why.
  ObjectRef<void> ready() const;
  std::string pending_reason() const;
  std::size_t bundle_count() const;
  std::string id() const;
  // The name it was created with ("" for none).
  std::string name() const;
  const std::shared_ptr<detail::GroupCore>& core() const noexcept { return core_; }

 private:
  std::shared_ptr<detail::GroupCore> core_;
};

// A non-empty `name` names one group of this job until the group is removed
// (as Ray): a second group of the same name is refused with
// Error(invalid_argument), in both modes.
PlacementGroup placement_group(std::vector<ResourceSpec> bundles,
                               PlacementStrategy strategy = PlacementStrategy::pack,
                               std::string name = {});
// Releases the reservation; actors placed in it are killed.
void remove_placement_group(const PlacementGroup& group);
// The group of this job named `name` that is not removed (Ray's
// get_placement_group), wherever it was created: in the driver or in one of
// the job's actors. Throws Error(not_found) when there is none. Its ready()
// completes as the creator's does.
PlacementGroup get_placement_group(std::string_view name);
// This job's groups that are not removed, in creation order.
std::vector<PlacementGroup> placement_groups();

// What a call does when its actor already has max_pending_calls calls
// pending (queued, sent or running) from this process.
enum class Backpressure {
  block,  // the caller waits for room (until the call's deadline, if any)
  fail,   // the call fails at once with OverloadedError (Errc::overloaded)
};

struct ActorOptions {
  std::string name{};                       // unique among live actors; "" = anonymous
  std::map<std::string, double> resources{};  // e.g. {{"GPU", 1}}; default: none
  std::string gpu_type{};                   // implies GPU >= 1
  std::uint64_t gpu_memory = 0;             // bytes; implies GPU >= 1
  std::uint64_t memory = 0;                 // host bytes reserved
  int max_restarts = 0;                     // -1: unlimited
  int max_concurrency = 1;                  // calls that may run at once (>1: opt in, no order)
  PlacementGroup placement_group{};         // optional
  int bundle_index = -1;                    // with placement_group; -1 = any bundle
  // Calls in flight when the actor restarts: 0 fails them with
  // ActorDiedError (at-most-once); N > 0 resends each up to N times to the
  // new incarnation, in their order (at-least-once: a call may run twice);
  // -1 resends without limit. Ray's max_task_retries.
  int max_task_retries = 0;
  // Calls of one caller process pending at once (not yet answered); past
  // it `backpressure` applies. The actor's host bounds each caller's queue
  // by the same number (a call past it is answered OverloadedError).
  std::size_t max_pending_calls = kDefaultMaxPendingCalls;
  Backpressure backpressure = Backpressure::block;
  // issue 13 (cluster): variables set in the environment of the actor's host
  // process, over its job's (`troupe submit --env`). Cluster mode only: in
  // local mode every actor shares the driver's process and nothing is set.
  // Names may not be empty, hold '=', start with TROUPE_ or be
  // CUDA_VISIBLE_DEVICES (the runtime sets those).
  std::map<std::string, std::string> env = {};
  // The namespace of `name` (Ray's namespace): "" is the job's own (names
  // seen only by the job, as before); any other namespace is shared by
  // every job of the cluster. get_actor(name, namespace_) looks there.
  std::string namespace_ = {};
  // The actor gets max_concurrency threads of its own (CAF's detached
  // actors): its constructor and methods run only there, so methods that
  // block (sleep, I/O, locks) never hold the shared pool's threads.
  bool detached = false;

  static constexpr std::size_t kDefaultMaxPendingCalls = 100000;
};

// Per-call options: `handle.with_options({.timeout = 2s}).call<&C::m>(...)`
// (Ray's `.options()`, torch.distributed.rpc's `timeout=`).
struct CallOptions {
  // The call fails with TimeoutError once this much time has passed since
  // it was made (zero: no deadline), wherever it is: waiting for room,
  // queued, sent or running. A call that has not started by then is
  // withdrawn and never runs; one that started runs on, its result dropped.
  std::chrono::milliseconds timeout{0};
  // Overrides ActorOptions::max_task_retries for these calls.
  std::optional<int> max_task_retries{};
};

namespace detail {

struct ArgSlot {
  ValuePtr value;  // set for plain values and for refs passed through unresolved
  StatePtr ref;    // set for a ref to resolve before the call (and, with pass_ref, the ref passed)
  // An ObjectRef parameter: `value` holds the ObjectRef itself, `ref` its
  // state. Cluster mode sends it as a descriptor the callee wraps, unresolved.
  bool pass_ref = false;
  // A ref whose value holds ObjectRefs (a parameter of a type like
  // std::vector<ObjectRef<T>>): cluster mode resolves it in the caller and
  // sends the value with its refs, since such a value cannot be fetched
  // from its holder by a third process.
  bool resolve_here = false;
};

// Whether values of type T may hold ObjectRefs, for the standard types
// serialization.hpp covers (a user type holding refs is not seen).
template <class T>
struct may_hold_refs : std::false_type {};
template <class T>
struct may_hold_refs<ObjectRef<T>> : std::true_type {};
template <template <class...> class C, class... Ts>
struct may_hold_refs<C<Ts...>> : std::bool_constant<(may_hold_refs<std::remove_cv_t<Ts>>::value || ...)> {};
template <class T, std::size_t N>
struct may_hold_refs<std::array<T, N>> : may_hold_refs<T> {};

struct CallSpec {
  const MethodInfo* method = nullptr;
  std::vector<ArgSlot> args;
  StatePtr result;
  // From CallOptions: when the call fails with TimeoutError (max: never),
  // and the resends left after a restart (unset: the actor's
  // max_task_retries; -1: no limit).
  std::chrono::steady_clock::time_point deadline = std::chrono::steady_clock::time_point::max();
  std::optional<int> retries;
  std::uint64_t order = 0;  // set by a cluster submitter: the call's place among this caller's calls
};

// One actor as a backend sees it. Local mode implements it with an
// in-process mailbox; cluster mode with a connection to the actor's host.
class ActorCore {
 public:
  virtual ~ActorCore() = default;
  virtual ActorId id() const noexcept = 0;
  virtual const std::string& name() const noexcept = 0;
  virtual const ClassInfo& cls() const noexcept = 0;
  virtual ActorState state() const = 0;
  virtual std::string status_message() const = 0;
  virtual int restarts() const = 0;
  virtual std::vector<int> gpu_ids() const = 0;
  // Never throws for a dead actor: the call's ref holds ActorDiedError.
  virtual void submit(CallSpec call) = 0;
  virtual void kill(bool no_restart) = 0;
};

std::shared_ptr<ActorCore> create_actor(const ClassInfo& cls, std::vector<ArgSlot> ctor_args,
                                        ActorOptions options);
std::shared_ptr<ActorCore> find_actor(std::string_view name, std::string_view name_space = {});
std::shared_ptr<ActorCore> find_actor(const ActorId& id);

template <class P, class Arg>
ArgSlot make_arg(Arg&& arg) {
  using D = stored_t<P>;
  using A = std::decay_t<Arg>;
  if constexpr (is_object_ref_v<D>) {
    static_assert(std::is_same_v<A, D>,
                  "troupe: this parameter is an ObjectRef; pass an ObjectRef of the same type");
    if (!arg.valid()) throw_error(Errc::invalid_argument, "an empty ObjectRef was passed as an argument");
    StatePtr state = arg.state();
    return {make_value<D>(std::forward<Arg>(arg)), std::move(state), /*pass_ref=*/true};
  } else if constexpr (is_object_ref_v<A>) {
    using T = typename A::value_type;
    constexpr bool converts = std::is_same_v<T, D> || std::is_convertible_v<T, D>;
    static_assert(converts,
                  "troupe: an ObjectRef<T> argument must hold a value that converts to the parameter's type");
    if (!arg.valid()) throw_error(Errc::invalid_argument, "an empty ObjectRef was passed as an argument");
    if constexpr (!converts) {
      return {};
    } else if constexpr (std::is_same_v<T, D>) {
      if (arg.state()->is_ready() && !arg.state()->has_error()) return {arg.state()->value(), arg.state()};
      return {nullptr, arg.state(), false, may_hold_refs<D>::value};
    } else {
      // Resolved, then converted as a plain call would convert the value
      // (int -> long): the call waits for the converted ref, in either mode.
      ObjectRef<D> converted = arg.then([](T value) -> D { return static_cast<D>(std::move(value)); });
      return {nullptr, converted.state()};
    }
  } else {
    static_assert(std::is_constructible_v<D, Arg&&>,
                  "troupe: argument type does not convert to the method's parameter type");
    return {make_value<D>(std::forward<Arg>(arg)), nullptr};
  }
}

template <class Params, class... Args>
std::vector<ArgSlot> make_args(Args&&... args) {
  std::vector<ArgSlot> slots;
  if constexpr (check_argument_count<std::tuple_size_v<Params>, sizeof...(Args)>()) {
    slots.reserve(sizeof...(Args));
    [&]<std::size_t... I>(std::index_sequence<I...>) {
      (slots.push_back(make_arg<std::tuple_element_t<I, Params>>(std::forward<Args>(args))), ...);
    }(std::index_sequence_for<Args...>{});
  }
  return slots;
}

[[noreturn]] void throw_not_registered(const char* what, const std::type_info& type);
[[noreturn]] void throw_no_actor();

}  // namespace detail

// A handle to an actor of class A: cheap to copy, passable to other actors.
template <class A>
class ActorHandle {
 public:
  ActorHandle() = default;
  explicit ActorHandle(std::shared_ptr<detail::ActorCore> core) : core_(std::move(core)) {}

  // Calls a registered method; returns at once (unless the actor already
  // has max_pending_calls calls pending from this process and its
  // backpressure is `block`: then it waits for room). Each argument may be
  // a value or an ObjectRef<T> of the parameter's type, which is resolved
  // before the method runs (a parameter declared ObjectRef<T> receives the
  // ref itself). Calls from one caller run in the order they were made
  // (max_concurrency 1).
  template <auto Method, class... Args>
    requires(detail::check_method_pointer<Method>())
  auto call(Args&&... args) const {
    using Traits = detail::method_traits<decltype(Method)>;
    static_assert(std::is_base_of_v<typename Traits::class_type, A>,
                  "troupe: the method does not belong to this actor's class");
    using Result = detail::method_result_t<typename Traits::return_type>;
    const detail::MethodInfo* method = detail::MethodSlot<A, Method>::info;
    if (method == nullptr) detail::throw_not_registered("method", typeid(A));
    detail::CallSpec spec;
    spec.method = method;
    spec.args = detail::make_args<typename Traits::params>(std::forward<Args>(args)...);
    spec.result = std::make_shared<detail::ObjectState>();
    if (options_.timeout.count() > 0) spec.deadline = std::chrono::steady_clock::now() + options_.timeout;
    spec.retries = options_.max_task_retries;
    ObjectRef<Result> ref(spec.result);
    checked().submit(std::move(spec));
    return ref;
  }

  // A handle to the same actor whose calls take `options` (a deadline,
  // retries). Cheap; the options are not part of a handle passed to
  // another process.
  [[nodiscard]] ActorHandle with_options(CallOptions options) const {
    ActorHandle copy(*this);
    copy.options_ = std::move(options);
    return copy;
  }
  const CallOptions& call_options() const noexcept { return options_; }

  bool valid() const noexcept { return core_ != nullptr; }
  // The actor's id, unique in the cluster (and across restarts of the actor).
  ActorId id() const { return checked().id(); }
  const std::string& name() const { return checked().name(); }
  ActorState state() const { return checked().state(); }
  // Why a pending actor is not placed yet, or why a dead one died.
  std::string status_message() const { return checked().status_message(); }
  int restarts() const { return checked().restarts(); }
  std::vector<int> gpu_ids() const { return checked().gpu_ids(); }
  const std::shared_ptr<detail::ActorCore>& core() const noexcept { return core_; }

  template <class Archive>
  void save(Archive& ar) const {
    const ActorId id = checked().id();
    ar(id.hi(), id.lo());
  }
  template <class Archive>
  void load(Archive& ar) {
    std::uint64_t hi = 0, lo = 0;
    ar(hi, lo);
    const ActorId actor_id{hi, lo};
    core_ = detail::find_actor(actor_id);
    if (!core_) throw_error(Errc::not_found, "no actor with id " + actor_id.hex());
  }

 private:
  detail::ActorCore& checked() const {
    if (!core_) detail::throw_no_actor();
    return *core_;
  }
  std::shared_ptr<detail::ActorCore> core_;
  CallOptions options_;
};

// Creates an actor: placement and construction happen asynchronously; calls
// made meanwhile queue up. Constructor arguments may be ObjectRefs too: one
// not ready yet delays the construction, never this call (if it fails, the
// actor dies). Throws Error(invalid_argument) for a duplicate name or bad
// options (in cluster mode, with a constructor argument pending, a
// duplicate name kills the actor instead, once the argument is there).
template <class A, class... Args>
ActorHandle<A> actor(ActorOptions options, Args&&... args) {
  constexpr bool registered = requires { typename actor_traits<A>::constructor_args; };
  static_assert(registered,
                "troupe::actor<A>: A is not an actor class in this translation unit: register the class with "
                "TROUPE_ACTOR(A, (constructor args), methods...) at global scope, before this call (a header "
                "the callers include is fine)");
  if constexpr (registered) {
    const detail::ClassInfo* cls = detail::ClassSlot<A>::info;
    if (cls == nullptr) detail::throw_not_registered("actor class", typeid(A));
    auto slots = detail::make_args<typename actor_traits<A>::constructor_args>(std::forward<Args>(args)...);
    return ActorHandle<A>(detail::create_actor(*cls, std::move(slots), std::move(options)));
  } else {
    return ActorHandle<A>();
  }
}
template <class A, class... Args>
ActorHandle<A> actor(Args&&... args) {
  return actor<A>(ActorOptions{}, std::forward<Args>(args)...);
}

// Looks up a live named actor in `name_space` ("": the job's own, see
// ActorOptions::namespace_). Throws Error(not_found) when there is none,
// Error(invalid_argument) when it is of another class.
template <class A>
ActorHandle<A> get_actor(std::string_view name, std::string_view name_space = {}) {
  auto core = detail::find_actor(name, name_space);
  if (!core) {
    throw_error(Errc::not_found, "no live actor named '" + std::string(name) + "'" +
                                     (name_space.empty() ? std::string() : " in namespace '" + std::string(name_space) + "'"));
  }
  if (core->cls().type != &typeid(A) && *core->cls().type != typeid(A)) {
    throw_error(Errc::invalid_argument, "actor '" + std::string(name) + "' is a " + core->cls().name);
  }
  return ActorHandle<A>(std::move(core));
}

// Kills an actor: queued and running calls fail with ActorDiedError. With
// no_restart = false an actor with restarts left is rebuilt from its
// constructor arguments and serves later calls (Ray's ray.kill semantics);
// calls with retries left (max_task_retries) are then served by the new
// instance instead of failing.
template <class A>
void kill(const ActorHandle<A>& handle, bool no_restart = true) {
  if (!handle.valid()) detail::throw_no_actor();
  handle.core()->kill(no_restart);
}

}  // namespace troupe
