// ObjectRef<T>: the future of a value produced by an actor call (or a
// Promise). It returns at once, can be waited on, continued, combined, and
// passed as an argument to another actor call, where it is resolved before
// the method runs. Copies share one object; the object is freed when the
// last ref and the last call that needs it are gone.
//
// Errors travel in the ref: get() rethrows the typed troupe::Error
// (TaskError, ActorDiedError, CancelledError, ...) the producer failed with.
#pragma once

#include <chrono>
#include <cstddef>
#include <initializer_list>
#include <memory>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "troupe/runtime/object_state.hpp"

namespace troupe {

template <class T>
class ObjectRef;

template <class T>
struct is_object_ref : std::false_type {};
template <class T>
struct is_object_ref<ObjectRef<T>> : std::true_type {
  using value_type = T;
};
template <class T>
inline constexpr bool is_object_ref_v = is_object_ref<std::decay_t<T>>::value;

namespace detail {
template <class T>
ObjectRef<T> make_ref(StatePtr state);
template <class T>
T extract(const StatePtr& state);
}  // namespace detail

// Operations shared by every ObjectRef<T>.
class ObjectRefBase {
 public:
  ObjectRefBase() = default;
  explicit ObjectRefBase(detail::StatePtr state) : state_(std::move(state)) {}

  bool valid() const noexcept { return state_ != nullptr; }
  ObjectId id() const { return checked().id(); }
  // True once the value or an error is there (get() will not block).
  bool is_ready() const { return checked().is_ready(); }
  bool has_error() const { return checked().has_error(); }
  // Blocks until ready; returns false if `timeout` passed first.
  template <class Rep, class Period>
  bool wait_for(std::chrono::duration<Rep, Period> timeout) const {
    return checked().wait_until(std::chrono::steady_clock::now() +
                                std::chrono::duration_cast<std::chrono::steady_clock::duration>(timeout));
  }
  void wait() const { checked().wait(); }
  // Withdraws the call if it has not started: the ref then holds a
  // CancelledError and true is returned. A started (or finished) call runs
  // to completion and false is returned. Same in both modes: in a cluster,
  // a call already sent to its actor's host is withdrawn there, and
  // cancel() waits for the host's answer (one round trip; false if none
  // comes within 10 s).
  bool cancel() const { return checked().cancel(); }

  const detail::StatePtr& state() const noexcept { return state_; }

 protected:
  detail::ObjectState& checked() const;
  const detail::StatePtr& checked_state() const {
    checked();
    return state_;
  }
  template <class Rep, class Period>
  void wait_or_throw(std::chrono::duration<Rep, Period> timeout) const {
    if (!wait_for(timeout)) throw_timeout(std::chrono::duration_cast<std::chrono::microseconds>(timeout));
  }
  [[noreturn]] void throw_timeout(std::chrono::microseconds timeout) const;

  detail::StatePtr state_;
};

template <class T>
class [[nodiscard]] ObjectRef : public ObjectRefBase {
 public:
  using value_type = T;
  ObjectRef() = default;
  explicit ObjectRef(detail::StatePtr state) : ObjectRefBase(std::move(state)) {}

  // Blocks until the value is there; rethrows the producer's error.
  T get() const {
    checked().wait();
    return detail::extract<T>(state_);
  }
  // As get(), but throws TimeoutError once `timeout` has passed. The call
  // itself goes on; a later get() can still succeed.
  template <class Rep, class Period>
  T get(std::chrono::duration<Rep, Period> timeout) const {
    wait_or_throw(timeout);
    return detail::extract<T>(state_);
  }

  // Continues with fn(T) (fn() for ObjectRef<void>) once the value is there,
  // returning a ref to fn's result; if fn returns an ObjectRef<U>, the result
  // is flattened to ObjectRef<U>. An error skips fn and flows to the result.
  // fn runs on the runtime's thread pool, never on the thread that produced
  // the value and never inline in then().
  template <class F>
  auto then(F&& fn) const;

  template <class Archive>
  void save(Archive& ar) const;
  template <class Archive>
  void load(Archive& ar);
};

// A value (or error) set by hand; its ref() behaves like an actor call's
// result. An async actor method can return promise.ref() and fulfil it later
// from any thread. A promise dropped unfulfilled leaves a CancelledError.
template <class T>
class Promise {
 public:
  Promise() : state_(std::make_shared<detail::ObjectState>()) {}
  Promise(Promise&&) noexcept = default;
  Promise& operator=(Promise&& other) noexcept {
    abandon();
    state_ = std::move(other.state_);
    return *this;
  }
  Promise(const Promise&) = delete;
  Promise& operator=(const Promise&) = delete;
  ~Promise() { abandon(); }

  ObjectRef<T> ref() const { return ObjectRef<T>(state_); }

  template <class U = T>
    requires(!std::is_void_v<T>)
  bool set_value(U&& value) {
    return state_->set_value(detail::make_value<T>(std::forward<U>(value)));
  }
  bool set_value()
    requires std::is_void_v<T>
  {
    return state_->set_value(nullptr);
  }
  bool set_error(std::exception_ptr error) { return state_->set_error(std::move(error)); }

 private:
  void abandon();
  detail::StatePtr state_;
};

// Builds an already-completed ref.
template <class T>
ObjectRef<std::decay_t<T>> make_ready(T&& value) {
  Promise<std::decay_t<T>> promise;
  promise.set_value(std::forward<T>(value));
  return promise.ref();
}

// ---- combinators -----------------------------------------------------------

// Completes with every value, in order, once all are ready; with the first
// error (in completion order) as soon as one fails.
template <class T>
auto when_all(const std::vector<ObjectRef<T>>& refs);
// A braced list: when_all({a, b}) is when_all(std::vector{a, b}).
template <class T>
auto when_all(std::initializer_list<ObjectRef<T>> refs);
// Tuple form: when_all(a, b, c) -> ObjectRef<std::tuple<A, B, C>> (no void).
template <class... Ts>
  requires(sizeof...(Ts) >= 1)
ObjectRef<std::tuple<Ts...>> when_all(const ObjectRef<Ts>&... refs);

// Completes with the index of the first ref to complete (value or error).
// An empty vector gives an invalid_argument error.
template <class T>
ObjectRef<std::size_t> when_any(const std::vector<ObjectRef<T>>& refs);
template <class T>
ObjectRef<std::size_t> when_any(std::initializer_list<ObjectRef<T>> refs);

template <class T>
struct WaitResult {
  std::vector<ObjectRef<T>> ready;      // in input order
  std::vector<ObjectRef<T>> not_ready;  // in input order
};

// Ray's wait: blocks until at least `num_ready` refs are complete or `timeout`
// passes, and splits them. Never throws TimeoutError; check ready.size().
template <class T, class Rep, class Period>
WaitResult<T> wait(const std::vector<ObjectRef<T>>& refs, std::size_t num_ready,
                   std::chrono::duration<Rep, Period> timeout);
// A braced list: wait({a, b}, 2, 1s).
template <class T, class Rep, class Period>
WaitResult<T> wait(std::initializer_list<ObjectRef<T>> refs, std::size_t num_ready,
                   std::chrono::duration<Rep, Period> timeout);

}  // namespace troupe

#include "troupe/runtime/object_ref_impl.hpp"
