// Template definitions for object_ref.hpp, which includes this file at its
// end. Not a public entry point; included alone it brings object_ref.hpp in
// first (both are #pragma once, so either order sees the declarations).
#pragma once

#include <atomic>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <optional>

#include "troupe/runtime/object_ref.hpp"

namespace troupe {
namespace detail {

// Completes `to` with whatever `from` completes with.
void forward_state(const StatePtr& from, StatePtr to);
// What a then() continuation that threw `thrown` leaves in its result: a
// TaskError naming the exception's type and what(), as for a method.
std::exception_ptr continuation_error(const std::exception_ptr& thrown);

// An ObjectRef inside a value that crosses processes (cluster mode): the
// encoder the runtime set on this thread records `state` to send alongside
// (throws Error(unsupported) where none is set: the value is not leaving in
// a call's arguments or reply); decoding finds the object that arrived with
// the value (NestedRefDecodeScope, value.hpp), else throws
// Error(serialization).
void encode_nested_ref(const StatePtr& state);
StatePtr decode_nested_ref(const ObjectId& id);

// While alive on a runtime pool thread, the pool has one more thread, so a
// method that blocks on another actor's result cannot starve the pool.
class BlockingRegion {
 public:
  BlockingRegion();
  ~BlockingRegion();
  BlockingRegion(const BlockingRegion&) = delete;
  BlockingRegion& operator=(const BlockingRegion&) = delete;

 private:
  std::shared_ptr<void> token_;
};

template <class T>
ObjectRef<T> make_ref(StatePtr state) {
  return ObjectRef<T>(std::move(state));
}

template <class T>
T extract(const StatePtr& state) {
  state->rethrow_if_error();
  if constexpr (std::is_void_v<T>) {
    return;
  } else {
    return read_value<T>(state->value());
  }
}

template <class T>
std::vector<StatePtr> states_of(const std::vector<ObjectRef<T>>& refs) {
  std::vector<StatePtr> out;
  out.reserve(refs.size());
  for (const auto& ref : refs) {
    if (!ref.valid()) throw_error(Errc::invalid_argument, "an ObjectRef in the list is empty");
    out.push_back(ref.state());
  }
  return out;
}

}  // namespace detail

template <class T>
template <class F>
auto ObjectRef<T>::then(F&& fn) const {
  using Fn = std::decay_t<F>;
  using R = typename std::conditional_t<std::is_void_v<T>, std::invoke_result<Fn>,
                                        std::invoke_result<Fn, T>>::type;
  using Result = typename std::conditional_t<is_object_ref_v<R>, std::type_identity<std::decay_t<R>>,
                                             std::type_identity<ObjectRef<R>>>::type;
  checked();
  auto out = std::make_shared<detail::ObjectState>();
  std::weak_ptr<detail::ObjectState> weak_src = state_;
  state_->on_complete([weak_src, out, fn = Fn(std::forward<F>(fn))]() mutable {
    auto src = weak_src.lock();
    if (!src) return;  // unreachable: the completing object is alive
    detail::post_task([src = std::move(src), out, fn = std::move(fn)]() mutable {
      if (src->has_error()) {
        out->set_error(src->error());
        return;
      }
      // What fn throws becomes a TaskError (docs/errors.md); the input's
      // own errors (a value that does not decode) flow on unchanged.
      auto run = [&](auto&&... value) {
        try {
          if constexpr (is_object_ref_v<R>) {
            R inner = std::invoke(fn, std::forward<decltype(value)>(value)...);
            if (!inner.valid()) {
              out->set_error(make_error(Errc::invalid_argument, "then(): continuation returned an empty ObjectRef"));
              return;
            }
            detail::forward_state(inner.state(), out);
          } else if constexpr (std::is_void_v<R>) {
            std::invoke(fn, std::forward<decltype(value)>(value)...);
            out->set_value(nullptr);
          } else {
            out->set_value(detail::make_value<R>(std::invoke(fn, std::forward<decltype(value)>(value)...)));
          }
        } catch (...) {
          out->set_error(detail::continuation_error(std::current_exception()));
        }
      };
      if constexpr (std::is_void_v<T>) {
        run();
      } else {
        std::optional<T> value;
        try {
          value.emplace(detail::extract<T>(src));
        } catch (...) {
          out->set_error(std::current_exception());
          return;
        }
        run(std::move(*value));
      }
    });
  });
  return Result(std::move(out));
}

template <class T>
template <class Archive>
void ObjectRef<T>::save(Archive& ar) const {
  detail::encode_nested_ref(checked_state());
  const ObjectId& object_id = state_->id();
  ar(object_id.hi(), object_id.lo());
}

template <class T>
template <class Archive>
void ObjectRef<T>::load(Archive& ar) {
  std::uint64_t hi = 0, lo = 0;
  ar(hi, lo);
  state_ = detail::decode_nested_ref(ObjectId(hi, lo));
}

template <class T>
void Promise<T>::abandon() {
  if (state_ && !state_->is_ready()) {
    state_->set_error(make_error(Errc::cancelled, "promise dropped before it was fulfilled"));
  }
}

template <class T>
auto when_all(const std::vector<ObjectRef<T>>& refs) {
  using Result = std::conditional_t<std::is_void_v<T>, void, std::vector<T>>;
  auto inputs = detail::states_of(refs);
  auto out_state = std::make_shared<detail::ObjectState>();
  ObjectRef<Result> out(out_state);
  if (inputs.empty()) {
    if constexpr (std::is_void_v<T>) out_state->set_value(nullptr);
    else out_state->set_value(detail::make_value<std::vector<T>>());
    return out;
  }
  struct Join {
    std::vector<detail::StatePtr> inputs;
    std::atomic<std::size_t> remaining;
    detail::StatePtr out;
  };
  auto join = std::make_shared<Join>();
  join->remaining = inputs.size();
  join->out = out_state;
  join->inputs = std::move(inputs);
  for (std::size_t i = 0; i < join->inputs.size(); ++i) {
    join->inputs[i]->on_complete([join, i] {
      const auto& input = join->inputs[i];
      if (input->has_error()) {
        join->out->set_error(input->error());
      } else if (join->remaining.fetch_sub(1) == 1 && !join->out->is_ready()) {
        if constexpr (std::is_void_v<T>) {
          join->out->set_value(nullptr);
        } else {
          try {
            std::vector<T> values;
            values.reserve(join->inputs.size());
            for (const auto& s : join->inputs) values.push_back(detail::read_value<T>(s->value()));
            join->out->set_value(detail::make_value<std::vector<T>>(std::move(values)));
          } catch (...) {
            join->out->set_error(std::current_exception());
          }
        }
      }
    });
  }
  return out;
}

template <class T>
auto when_all(std::initializer_list<ObjectRef<T>> refs) {
  return when_all(std::vector<ObjectRef<T>>(refs));
}

template <class... Ts>
  requires(sizeof...(Ts) >= 1)
ObjectRef<std::tuple<Ts...>> when_all(const ObjectRef<Ts>&... refs) {
  static_assert((!std::is_void_v<Ts> && ...), "when_all(a, b, ...): ObjectRef<void> has no value to put in a tuple; use the vector form");
  std::vector<detail::StatePtr> inputs{refs.state()...};
  for (const auto& s : inputs)
    if (!s) throw_error(Errc::invalid_argument, "when_all: an ObjectRef is empty");
  struct Join {
    std::vector<detail::StatePtr> inputs;
    std::atomic<std::size_t> remaining;
    detail::StatePtr out;
  };
  auto out = std::make_shared<detail::ObjectState>();
  auto join = std::make_shared<Join>();
  join->remaining = inputs.size();
  join->out = out;
  join->inputs = std::move(inputs);
  for (std::size_t i = 0; i < join->inputs.size(); ++i) {
    join->inputs[i]->on_complete([join, i] {
      const auto& input = join->inputs[i];
      if (input->has_error()) {
        join->out->set_error(input->error());
      } else if (join->remaining.fetch_sub(1) == 1 && !join->out->is_ready()) {
        try {
          auto values = [&]<std::size_t... I>(std::index_sequence<I...>) {
            return std::tuple<Ts...>(detail::read_value<Ts>(join->inputs[I]->value())...);
          }(std::index_sequence_for<Ts...>{});
          join->out->set_value(detail::make_value<std::tuple<Ts...>>(std::move(values)));
        } catch (...) {
          join->out->set_error(std::current_exception());
        }
      }
    });
  }
  return ObjectRef<std::tuple<Ts...>>(std::move(out));
}

template <class T>
ObjectRef<std::size_t> when_any(const std::vector<ObjectRef<T>>& refs) {
  auto inputs = detail::states_of(refs);
  if (inputs.empty()) throw_error(Errc::invalid_argument, "when_any of an empty list");
  auto out = std::make_shared<detail::ObjectState>();
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    inputs[i]->on_complete([out, i] {
      if (!out->is_ready()) out->set_value(detail::make_value<std::size_t>(i));
    });
  }
  return ObjectRef<std::size_t>(std::move(out));
}

template <class T>
ObjectRef<std::size_t> when_any(std::initializer_list<ObjectRef<T>> refs) {
  return when_any(std::vector<ObjectRef<T>>(refs));
}

template <class T, class Rep, class Period>
WaitResult<T> wait(std::initializer_list<ObjectRef<T>> refs, std::size_t num_ready,
                   std::chrono::duration<Rep, Period> timeout) {
  return wait(std::vector<ObjectRef<T>>(refs), num_ready, timeout);
}

template <class T, class Rep, class Period>
WaitResult<T> wait(const std::vector<ObjectRef<T>>& refs, std::size_t num_ready,
                   std::chrono::duration<Rep, Period> timeout) {
  auto inputs = detail::states_of(refs);
  const std::size_t want = std::min(num_ready, inputs.size());
  struct Waiter {
    std::mutex mutex;
    std::condition_variable cv;
    std::size_t done = 0;
  };
  auto waiter = std::make_shared<Waiter>();
  for (auto& input : inputs) {
    input->on_complete([waiter] {
      std::lock_guard lock(waiter->mutex);
      ++waiter->done;
      waiter->cv.notify_all();
    });
  }
  {
    const auto deadline = std::chrono::steady_clock::now() +
                          std::chrono::duration_cast<std::chrono::steady_clock::duration>(timeout);
    std::unique_lock lock(waiter->mutex);
    if (waiter->done < want) {
      detail::BlockingRegion region;
      waiter->cv.wait_until(lock, deadline, [&] { return waiter->done >= want; });
    }
  }
  WaitResult<T> result;
  for (const auto& ref : refs) (ref.is_ready() ? result.ready : result.not_ready).push_back(ref);
  return result;
}

}  // namespace troupe
