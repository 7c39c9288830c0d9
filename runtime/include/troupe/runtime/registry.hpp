// The actor class registry: class name -> constructor, method name -> invoker.
// Every process running the same binary builds the same registry at static
// initialisation, which is what lets an actor host process construct an
// actor and dispatch a call that arrives by name. Users register classes
// with TROUPE_ACTOR (actor.hpp), not with these functions directly.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <typeinfo>
#include <unordered_map>
#include <utility>
#include <vector>

#include "troupe/runtime/object_ref.hpp"

namespace troupe {

// Specialised by TROUPE_ACTOR for each registered class.
template <class A>
struct actor_traits;

namespace detail {

using ArgValues = std::vector<ValuePtr>;

// What running a method produced: a value, or (for a method that returns an
// ObjectRef) the state that will hold it.
struct InvokeResult {
  ValuePtr value;
  StatePtr pending;
};

struct MethodInfo {
  std::string name;        // "add"
  std::string qualified;   // "Counter.add"
  std::size_t arity = 0;
  InvokeResult (*invoke)(void* self, ArgValues& args) = nullptr;
};

struct ClassInfo {
  std::string name;
  const std::type_info* type = nullptr;
  std::size_t ctor_arity = 0;
  void* (*construct)(ArgValues& args) = nullptr;
  void (*destroy)(void* self) = nullptr;
  std::unordered_map<std::string, std::unique_ptr<MethodInfo>> methods;

  const MethodInfo* find_method(std::string_view method) const;
};

// Registry lookups; the returned pointers live as long as the process.
const ClassInfo* find_class(std::string_view name);
std::vector<std::string> registered_classes();
ClassInfo& register_class(std::string name, const std::type_info& type, std::size_t ctor_arity,
                          void* (*construct)(ArgValues&), void (*destroy)(void*));
const MethodInfo& register_method(ClassInfo& cls, std::string name, std::size_t arity,
                                  InvokeResult (*invoke)(void*, ArgValues&));

// Per-type slots the call sites read to find their registry entries.
template <class A>
struct ClassSlot {
  static inline const ClassInfo* info = nullptr;
};
// Keyed by the class too: an inherited method (&Base::f) registered by two
// classes has an entry per class, each invoking through its own class.
template <class A, auto Method>
struct MethodSlot {
  static inline const MethodInfo* info = nullptr;
};

template <class M>
struct method_traits;
#define TROUPE_DETAIL_METHOD_TRAITS(QUALS)                       \
  template <class C, class R, class... P>                        \
  struct method_traits<R (C::*)(P...) QUALS> {                   \
    using class_type = C;                                        \
    using return_type = R;                                       \
    using params = std::tuple<P...>;                             \
    static constexpr std::size_t arity = sizeof...(P);           \
  };
TROUPE_DETAIL_METHOD_TRAITS()
TROUPE_DETAIL_METHOD_TRAITS(const)
TROUPE_DETAIL_METHOD_TRAITS(noexcept)
TROUPE_DETAIL_METHOD_TRAITS(const noexcept)
#undef TROUPE_DETAIL_METHOD_TRAITS

// A parameter type that can be filled from another actor or process: a value
// or const reference (a mutable reference would write into nothing).
template <class P>
inline constexpr bool is_passable_param_v =
    !(std::is_lvalue_reference_v<P> && !std::is_const_v<std::remove_reference_t<P>>);

template <class T>
using stored_t = std::remove_cvref_t<T>;

// The value type an ObjectRef result of a method with return type R holds.
template <class R>
struct result_of_return {
  using type = stored_t<R>;
};
template <class T>
struct result_of_return<ObjectRef<T>> {
  using type = T;
};
template <class R>
using method_result_t = typename result_of_return<stored_t<R>>::type;

// An argument whose bytes (from another process) could not be decoded: the
// caller's input was bad, not the method, so the call fails with
// Errc::serialization rather than as the method's task_failed.
class ArgumentDecodeError final : public Error {
 public:
  using Error::Error;
};

// One argument of a method or constructor. An ObjectRef parameter that came
// from another process arrives as the state it wraps (Value::passed_state).
template <class P>
P take_arg(ValuePtr& value) {
  if constexpr (is_object_ref_v<P>) {
    if (value) {
      if (StatePtr state = value->passed_state()) return P(std::move(state));
    }
  }
  try {
    return take_value<P>(value);
  } catch (const Error& e) {
    if (e.code() == Errc::serialization) throw ArgumentDecodeError(e.code(), e.message());
    throw;
  }
}

// `self` points to the actor, an A: it becomes the method's class C (a base
// of A, maybe not at offset zero) through A, which adjusts the pointer.
template <class A, auto Method>
InvokeResult invoke_method(void* self, ArgValues& args) {
  using Traits = method_traits<decltype(Method)>;
  using C = typename Traits::class_type;
  using R = typename Traits::return_type;
  C* object = static_cast<A*>(self);
  return [&]<std::size_t... I>(std::index_sequence<I...>) -> InvokeResult {
    if constexpr (std::is_void_v<R>) {
      (object->*Method)(take_arg<stored_t<std::tuple_element_t<I, typename Traits::params>>>(args[I])...);
      return {nullptr, nullptr};
    } else if constexpr (is_object_ref_v<R>) {
      auto ref = (object->*Method)(take_arg<stored_t<std::tuple_element_t<I, typename Traits::params>>>(args[I])...);
      if (!ref.valid()) throw_error(Errc::invalid_argument, "async method returned an empty ObjectRef");
      return {nullptr, ref.state()};
    } else {
      return {make_value<stored_t<R>>(
                  (object->*Method)(take_arg<stored_t<std::tuple_element_t<I, typename Traits::params>>>(args[I])...)),
              nullptr};
    }
  }(std::make_index_sequence<Traits::arity>{});
}

template <class A>
void* construct_actor(ArgValues& args) {
  using Params = typename actor_traits<A>::constructor_args;
  return [&]<std::size_t... I>(std::index_sequence<I...>) -> void* {
    return new A(take_arg<stored_t<std::tuple_element_t<I, Params>>>(args[I])...);
  }(std::make_index_sequence<std::tuple_size_v<Params>>{});
}

template <class A>
void destroy_actor(void* self) {
  delete static_cast<A*>(self);
}

template <class T>
inline constexpr bool check_serializable() {
  static_assert(is_serializable_v<stored_t<T>>,
                "troupe: every actor method argument and result must be serializable "
                "(arithmetic, std::string, standard containers, troupe::Tensor, or a type "
                "with a cereal serialize() member)");
  return true;
}

// Builder used by TROUPE_ACTOR.
template <class A>
class ClassRegistrar {
 public:
  explicit ClassRegistrar(const char* name) {
    using Params = typename actor_traits<A>::constructor_args;
    []<std::size_t... I>(std::index_sequence<I...>) {
      (check_serializable<std::tuple_element_t<I, Params>>(), ...);
    }(std::make_index_sequence<std::tuple_size_v<Params>>{});
    cls_ = &register_class(name, typeid(A), std::tuple_size_v<Params>, &construct_actor<A>, &destroy_actor<A>);
    ClassSlot<A>::info = cls_;
  }

  template <auto Method>
  ClassRegistrar& method(const char* name) {
    using Traits = method_traits<decltype(Method)>;
    static_assert(std::is_base_of_v<typename Traits::class_type, A>,
                  "troupe: a registered method must belong to the actor class");
    []<std::size_t... I>(std::index_sequence<I...>) {
      static_assert((is_passable_param_v<std::tuple_element_t<I, typename Traits::params>> && ...),
                    "troupe: actor method parameters must be values or const references");
      (check_serializable<std::tuple_element_t<I, typename Traits::params>>(), ...);
    }(std::make_index_sequence<Traits::arity>{});
    using Result = method_result_t<typename Traits::return_type>;
    if constexpr (!std::is_void_v<Result>) check_serializable<Result>();
    MethodSlot<A, Method>::info = &register_method(*cls_, name, Traits::arity, &invoke_method<A, Method>);
    return *this;
  }

  bool done() const { return true; }

 private:
  ClassInfo* cls_ = nullptr;
};

}  // namespace detail
}  // namespace troupe

// ---- TROUPE_ACTOR(Class, (ctor arg types...), method, method, ...) ----------
// Registers an actor class, its constructor signature and its methods by name,
// e.g.  TROUPE_ACTOR(Counter, (int), add, reset);
// Use it once per class, at global namespace scope, in a .cpp of the binary
// (drivers and actor hosts run the same binary, so both see it). Overloaded
// methods cannot be named this way; give them distinct names.
#define TROUPE_DETAIL_UNPAREN(...) __VA_ARGS__
#define TROUPE_DETAIL_CAT2(a, b) a##b
#define TROUPE_DETAIL_CAT(a, b) TROUPE_DETAIL_CAT2(a, b)
#define TROUPE_DETAIL_REG_METHOD(Class, m) .template method<&Class::m>(#m)
#define TROUPE_DETAIL_FE_1(F, C, x) F(C, x)
#define TROUPE_DETAIL_FE_2(F, C, x, ...) F(C, x) TROUPE_DETAIL_FE_1(F, C, __VA_ARGS__)
#define TROUPE_DETAIL_FE_3(F, C, x, ...) F(C, x) TROUPE_DETAIL_FE_2(F, C, __VA_ARGS__)
#define TROUPE_DETAIL_FE_4(F, C, x, ...) F(C, x) TROUPE_DETAIL_FE_3(F, C, __VA_ARGS__)
#define TROUPE_DETAIL_FE_5(F, C, x, ...) F(C, x) TROUPE_DETAIL_FE_4(F, C, __VA_ARGS__)
#define TROUPE_DETAIL_FE_6(F, C, x, ...) F(C, x) TROUPE_DETAIL_FE_5(F, C, __VA_ARGS__)
#define TROUPE_DETAIL_FE_7(F, C, x, ...) F(C, x) TROUPE_DETAIL_FE_6(F, C, __VA_ARGS__)
#define TROUPE_DETAIL_FE_8(F, C, x, ...) F(C, x) TROUPE_DETAIL_FE_7(F, C, __VA_ARGS__)
#define TROUPE_DETAIL_FE_9(F, C, x, ...) F(C, x) TROUPE_DETAIL_FE_8(F, C, __VA_ARGS__)
#define TROUPE_DETAIL_FE_10(F, C, x, ...) F(C, x) TROUPE_DETAIL_FE_9(F, C, __VA_ARGS__)
#define TROUPE_DETAIL_FE_11(F, C, x, ...) F(C, x) TROUPE_DETAIL_FE_10(F, C, __VA_ARGS__)
#define TROUPE_DETAIL_FE_12(F, C, x, ...) F(C, x) TROUPE_DETAIL_FE_11(F, C, __VA_ARGS__)
#define TROUPE_DETAIL_FE_13(F, C, x, ...) F(C, x) TROUPE_DETAIL_FE_12(F, C, __VA_ARGS__)
#define TROUPE_DETAIL_FE_14(F, C, x, ...) F(C, x) TROUPE_DETAIL_FE_13(F, C, __VA_ARGS__)
#define TROUPE_DETAIL_FE_15(F, C, x, ...) F(C, x) TROUPE_DETAIL_FE_14(F, C, __VA_ARGS__)
#define TROUPE_DETAIL_FE_16(F, C, x, ...) F(C, x) TROUPE_DETAIL_FE_15(F, C, __VA_ARGS__)
#define TROUPE_DETAIL_FE_17(F, C, x, ...) F(C, x) TROUPE_DETAIL_FE_16(F, C, __VA_ARGS__)
#define TROUPE_DETAIL_FE_18(F, C, x, ...) F(C, x) TROUPE_DETAIL_FE_17(F, C, __VA_ARGS__)
#define TROUPE_DETAIL_FE_19(F, C, x, ...) F(C, x) TROUPE_DETAIL_FE_18(F, C, __VA_ARGS__)
#define TROUPE_DETAIL_FE_20(F, C, x, ...) F(C, x) TROUPE_DETAIL_FE_19(F, C, __VA_ARGS__)
#define TROUPE_DETAIL_FE_21(F, C, x, ...) F(C, x) TROUPE_DETAIL_FE_20(F, C, __VA_ARGS__)
#define TROUPE_DETAIL_FE_22(F, C, x, ...) F(C, x) TROUPE_DETAIL_FE_21(F, C, __VA_ARGS__)
#define TROUPE_DETAIL_FE_23(F, C, x, ...) F(C, x) TROUPE_DETAIL_FE_22(F, C, __VA_ARGS__)
#define TROUPE_DETAIL_FE_24(F, C, x, ...) F(C, x) TROUPE_DETAIL_FE_23(F, C, __VA_ARGS__)
#define TROUPE_DETAIL_FE_PICK(_1, _2, _3, _4, _5, _6, _7, _8, _9, _10, _11, _12, _13, _14, _15, _16, \
                              _17, _18, _19, _20, _21, _22, _23, _24, NAME, ...)                     \
  NAME
#define TROUPE_DETAIL_FOR_EACH(F, C, ...)                                                              \
  TROUPE_DETAIL_FE_PICK(__VA_ARGS__, TROUPE_DETAIL_FE_24, TROUPE_DETAIL_FE_23, TROUPE_DETAIL_FE_22,   \
                        TROUPE_DETAIL_FE_21, TROUPE_DETAIL_FE_20, TROUPE_DETAIL_FE_19,                \
                        TROUPE_DETAIL_FE_18, TROUPE_DETAIL_FE_17, TROUPE_DETAIL_FE_16,                \
                        TROUPE_DETAIL_FE_15, TROUPE_DETAIL_FE_14, TROUPE_DETAIL_FE_13,                \
                        TROUPE_DETAIL_FE_12, TROUPE_DETAIL_FE_11, TROUPE_DETAIL_FE_10,                \
                        TROUPE_DETAIL_FE_9, TROUPE_DETAIL_FE_8, TROUPE_DETAIL_FE_7, TROUPE_DETAIL_FE_6, \
                        TROUPE_DETAIL_FE_5, TROUPE_DETAIL_FE_4, TROUPE_DETAIL_FE_3, TROUPE_DETAIL_FE_2, \
                        TROUPE_DETAIL_FE_1)                                                            \
  (F, C, __VA_ARGS__)

#define TROUPE_ACTOR(Class, CtorArgs, ...)                                                  \
  template <>                                                                              \
  struct troupe::actor_traits<Class> {                                                     \
    using constructor_args = std::tuple<TROUPE_DETAIL_UNPAREN CtorArgs>;                   \
    static constexpr const char* name = #Class;                                            \
  };                                                                                       \
  [[maybe_unused]] static const bool TROUPE_DETAIL_CAT(troupe_actor_registered_, __LINE__) = \
      ::troupe::detail::ClassRegistrar<Class>(#Class)                                      \
          TROUPE_DETAIL_FOR_EACH(TROUPE_DETAIL_REG_METHOD, Class, __VA_ARGS__)             \
              .done()
