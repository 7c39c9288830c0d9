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

// Declared at global scope only: TROUPE_ACTOR redeclares it where it is used
// and checks that it is this one (troupe::detail::check_actor_scope).
struct troupe_detail_scope_probe;

namespace troupe {

// Specialised by TROUPE_ACTOR for each registered class.
template <class A>
struct actor_traits;

// Names one overload of an overloaded method, for TROUPE_ACTOR's
// `(name, signature)` entries and for calls:
//   TROUPE_ACTOR(A, (), (f, int(int)), (f, int(std::string) const));
//   a.call<troupe::overload<int(int)>(&A::f)>(3);
template <class Signature, class C>
constexpr Signature C::*overload(Signature C::*method) noexcept {
  return method;
}

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
// True for the pointers TROUPE_ACTOR and call<> accept: non-static member
// functions (a static member function is a plain function pointer).
template <class M>
inline constexpr bool is_method_pointer_v = std::is_member_function_pointer_v<M>;
// What TROUPE_ACTOR registers for a name that is not one member function
// (after its static_assert has said so), so no second error follows.
struct NotAMethod {};
template <auto Method>
constexpr bool check_method_pointer() {
  using M = std::remove_cv_t<decltype(Method)>;  // a class-type argument is const
  if constexpr (std::is_same_v<M, NotAMethod>) {
    return false;
  } else {
    static_assert(!std::is_pointer_v<M>,
                  "troupe: static member functions cannot be actor methods: make it a non-static member "
                  "function, or call it directly (it needs no actor)");
    static_assert(std::is_pointer_v<M> || is_method_pointer_v<M>,
                  "troupe: only non-static member functions can be actor methods (a data member or "
                  "another kind of name was given)");
    return is_method_pointer_v<M>;
  }
}
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

// An actor call passes every parameter of its method: default arguments are
// not part of a member function pointer's type, so call<> cannot see them.
// The numbers show in the instantiation this diagnostic comes from.
template <std::size_t Expected, std::size_t Given>
constexpr bool check_argument_count() {
  static_assert(Expected == Given,
                "troupe: wrong number of arguments for this method or constructor (Expected parameters, "
                "Given arguments): pass every parameter: default arguments are not part of a method's type "
                "and cannot be left out of an actor call");
  return Expected == Given;
}

// TROUPE_ACTOR(Class, ...) was used in a namespace (or a class or block):
// the probe it declares is then not the global one.
template <class Probe>
constexpr bool check_actor_scope() {
  static_assert(std::is_same_v<Probe, ::troupe_detail_scope_probe>,
                "troupe: TROUPE_ACTOR must be used at global namespace scope: move it out of the "
                "namespace and name the class with its namespace, e.g. TROUPE_ACTOR(app::A, (int), f)");
  return true;
}

// The tag a TROUPE_ACTOR's once-per-class marker takes.
template <class A>
struct ActorTag {};

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
    if constexpr (check_method_pointer<Method>()) return checked_method<Method>(name);
    else return *this;
  }

  bool done() const { return true; }

 private:
  template <auto Method>
  ClassRegistrar& checked_method(const char* name) {
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

  ClassInfo* cls_ = nullptr;
};

}  // namespace detail
}  // namespace troupe

// ---- TROUPE_ACTOR(Class, (ctor arg types...), method, method, ...) ----------
// Registers an actor class, its constructor signature and its methods by name,
// e.g.  TROUPE_ACTOR(Counter, (int), add, reset);
// Use it once per class (one constructor signature), at global namespace
// scope (name a class in a namespace as app::Counter), where the class is
// complete, in every translation unit that calls troupe::actor<Class> (a
// header is fine: registering twice is harmless). Drivers and actor hosts run
// the same binary, so both see it. At most 64 methods. An overloaded method is
// listed with its signature, `(name, signature)`, and called through
// troupe::overload:
//   TROUPE_ACTOR(A, (), (f, int(int)), (f, int(const std::string&) const), g);
//   a.call<troupe::overload<int(int)>(&A::f)>(3);
// (it is registered under the name "f:int(int)"). Methods are called with every
// parameter: default arguments cannot be left out. Each misuse fails to compile
// with a message that names the fix (docs/errors.md, "Compile errors").
#define TROUPE_DETAIL_UNPAREN(...) __VA_ARGS__
#define TROUPE_DETAIL_CAT2(a, b) a##b
#define TROUPE_DETAIL_CAT(a, b) TROUPE_DETAIL_CAT2(a, b)
// 1 if x is parenthesised, e.g. (f, int(int)); else 0.
#define TROUPE_DETAIL_IS_PAREN(x) TROUPE_DETAIL_IS_PAREN_CHECK(TROUPE_DETAIL_IS_PAREN_PROBE x)
#define TROUPE_DETAIL_IS_PAREN_PROBE(...) ~, 1
#define TROUPE_DETAIL_IS_PAREN_CHECK(...) TROUPE_DETAIL_IS_PAREN_SECOND(__VA_ARGS__, 0, ~)
#define TROUPE_DETAIL_IS_PAREN_SECOND(a, b, ...) b
// &Class::m, or a static_assert that says how to list m when that is not one
// accessible member (an overloaded name, most often).
#define TROUPE_DETAIL_METHOD_POINTER(Class, m)                                                           \
  []<class C = Class>() consteval {                                                                      \
    static_assert(requires { &C::m; },                                                                  \
                  "troupe: TROUPE_ACTOR(" #Class ", ...) lists '" #m "', which is not exactly one public " \
                  "member function of " #Class ": if it is overloaded, list an overload as (" #m           \
                  ", signature), e.g. (" #m ", int(int) const), and call it as call<troupe::overload<"     \
                  "int(int) const>(&" #Class "::" #m ")>; a private or missing method cannot be listed");  \
    if constexpr (requires { &C::m; }) return &C::m;                                                    \
    else return ::troupe::detail::NotAMethod{};                                                         \
  }()
#define TROUPE_DETAIL_REG_METHOD(Class, x) \
  TROUPE_DETAIL_CAT(TROUPE_DETAIL_REG_METHOD_, TROUPE_DETAIL_IS_PAREN(x))(Class, x)
#define TROUPE_DETAIL_REG_METHOD_0(Class, m) .template method<TROUPE_DETAIL_METHOD_POINTER(Class, m)>(#m)
#define TROUPE_DETAIL_REG_METHOD_1(Class, entry) TROUPE_DETAIL_REG_OVERLOAD(Class, TROUPE_DETAIL_UNPAREN entry)
#define TROUPE_DETAIL_REG_OVERLOAD(Class, ...) TROUPE_DETAIL_REG_OVERLOAD_I(Class, __VA_ARGS__)
#define TROUPE_DETAIL_REG_OVERLOAD_I(Class, m, ...) \
  .template method<::troupe::overload<__VA_ARGS__>(&Class::m)>(#m ":" #__VA_ARGS__)
// Past 64 methods: "ClassRegistrar has no member named too_many_methods...".
#define TROUPE_DETAIL_FE_TOO_MANY(F, C, ...) \
  .too_many_methods_in_one_TROUPE_ACTOR_the_limit_is_64_split_the_class_or_register_a_facade()
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
#define TROUPE_DETAIL_FE_25(F, C, x, ...) F(C, x) TROUPE_DETAIL_FE_24(F, C, __VA_ARGS__)
#define TROUPE_DETAIL_FE_26(F, C, x, ...) F(C, x) TROUPE_DETAIL_FE_25(F, C, __VA_ARGS__)
#define TROUPE_DETAIL_FE_27(F, C, x, ...) F(C, x) TROUPE_DETAIL_FE_26(F, C, __VA_ARGS__)
#define TROUPE_DETAIL_FE_28(F, C, x, ...) F(C, x) TROUPE_DETAIL_FE_27(F, C, __VA_ARGS__)
#define TROUPE_DETAIL_FE_29(F, C, x, ...) F(C, x) TROUPE_DETAIL_FE_28(F, C, __VA_ARGS__)
#define TROUPE_DETAIL_FE_30(F, C, x, ...) F(C, x) TROUPE_DETAIL_FE_29(F, C, __VA_ARGS__)
#define TROUPE_DETAIL_FE_31(F, C, x, ...) F(C, x) TROUPE_DETAIL_FE_30(F, C, __VA_ARGS__)
#define TROUPE_DETAIL_FE_32(F, C, x, ...) F(C, x) TROUPE_DETAIL_FE_31(F, C, __VA_ARGS__)
#define TROUPE_DETAIL_FE_33(F, C, x, ...) F(C, x) TROUPE_DETAIL_FE_32(F, C, __VA_ARGS__)
#define TROUPE_DETAIL_FE_34(F, C, x, ...) F(C, x) TROUPE_DETAIL_FE_33(F, C, __VA_ARGS__)
#define TROUPE_DETAIL_FE_35(F, C, x, ...) F(C, x) TROUPE_DETAIL_FE_34(F, C, __VA_ARGS__)
#define TROUPE_DETAIL_FE_36(F, C, x, ...) F(C, x) TROUPE_DETAIL_FE_35(F, C, __VA_ARGS__)
#define TROUPE_DETAIL_FE_37(F, C, x, ...) F(C, x) TROUPE_DETAIL_FE_36(F, C, __VA_ARGS__)
#define TROUPE_DETAIL_FE_38(F, C, x, ...) F(C, x) TROUPE_DETAIL_FE_37(F, C, __VA_ARGS__)
#define TROUPE_DETAIL_FE_39(F, C, x, ...) F(C, x) TROUPE_DETAIL_FE_38(F, C, __VA_ARGS__)
#define TROUPE_DETAIL_FE_40(F, C, x, ...) F(C, x) TROUPE_DETAIL_FE_39(F, C, __VA_ARGS__)
#define TROUPE_DETAIL_FE_41(F, C, x, ...) F(C, x) TROUPE_DETAIL_FE_40(F, C, __VA_ARGS__)
#define TROUPE_DETAIL_FE_42(F, C, x, ...) F(C, x) TROUPE_DETAIL_FE_41(F, C, __VA_ARGS__)
#define TROUPE_DETAIL_FE_43(F, C, x, ...) F(C, x) TROUPE_DETAIL_FE_42(F, C, __VA_ARGS__)
#define TROUPE_DETAIL_FE_44(F, C, x, ...) F(C, x) TROUPE_DETAIL_FE_43(F, C, __VA_ARGS__)
#define TROUPE_DETAIL_FE_45(F, C, x, ...) F(C, x) TROUPE_DETAIL_FE_44(F, C, __VA_ARGS__)
#define TROUPE_DETAIL_FE_46(F, C, x, ...) F(C, x) TROUPE_DETAIL_FE_45(F, C, __VA_ARGS__)
#define TROUPE_DETAIL_FE_47(F, C, x, ...) F(C, x) TROUPE_DETAIL_FE_46(F, C, __VA_ARGS__)
#define TROUPE_DETAIL_FE_48(F, C, x, ...) F(C, x) TROUPE_DETAIL_FE_47(F, C, __VA_ARGS__)
#define TROUPE_DETAIL_FE_49(F, C, x, ...) F(C, x) TROUPE_DETAIL_FE_48(F, C, __VA_ARGS__)
#define TROUPE_DETAIL_FE_50(F, C, x, ...) F(C, x) TROUPE_DETAIL_FE_49(F, C, __VA_ARGS__)
#define TROUPE_DETAIL_FE_51(F, C, x, ...) F(C, x) TROUPE_DETAIL_FE_50(F, C, __VA_ARGS__)
#define TROUPE_DETAIL_FE_52(F, C, x, ...) F(C, x) TROUPE_DETAIL_FE_51(F, C, __VA_ARGS__)
#define TROUPE_DETAIL_FE_53(F, C, x, ...) F(C, x) TROUPE_DETAIL_FE_52(F, C, __VA_ARGS__)
#define TROUPE_DETAIL_FE_54(F, C, x, ...) F(C, x) TROUPE_DETAIL_FE_53(F, C, __VA_ARGS__)
#define TROUPE_DETAIL_FE_55(F, C, x, ...) F(C, x) TROUPE_DETAIL_FE_54(F, C, __VA_ARGS__)
#define TROUPE_DETAIL_FE_56(F, C, x, ...) F(C, x) TROUPE_DETAIL_FE_55(F, C, __VA_ARGS__)
#define TROUPE_DETAIL_FE_57(F, C, x, ...) F(C, x) TROUPE_DETAIL_FE_56(F, C, __VA_ARGS__)
#define TROUPE_DETAIL_FE_58(F, C, x, ...) F(C, x) TROUPE_DETAIL_FE_57(F, C, __VA_ARGS__)
#define TROUPE_DETAIL_FE_59(F, C, x, ...) F(C, x) TROUPE_DETAIL_FE_58(F, C, __VA_ARGS__)
#define TROUPE_DETAIL_FE_60(F, C, x, ...) F(C, x) TROUPE_DETAIL_FE_59(F, C, __VA_ARGS__)
#define TROUPE_DETAIL_FE_61(F, C, x, ...) F(C, x) TROUPE_DETAIL_FE_60(F, C, __VA_ARGS__)
#define TROUPE_DETAIL_FE_62(F, C, x, ...) F(C, x) TROUPE_DETAIL_FE_61(F, C, __VA_ARGS__)
#define TROUPE_DETAIL_FE_63(F, C, x, ...) F(C, x) TROUPE_DETAIL_FE_62(F, C, __VA_ARGS__)
#define TROUPE_DETAIL_FE_64(F, C, x, ...) F(C, x) TROUPE_DETAIL_FE_63(F, C, __VA_ARGS__)
#define TROUPE_DETAIL_FE_PICK(    _1, _2, _3, _4, _5, _6, _7, _8, _9, _10, _11, _12, _13, _14, _15, _16, _17, _18, _19, _20, _21, \
    _22, _23, _24, _25, _26, _27, _28, _29, _30, _31, _32, _33, _34, _35, _36, _37, _38, _39, _40, \
    _41, _42, _43, _44, _45, _46, _47, _48, _49, _50, _51, _52, _53, _54, _55, _56, _57, _58, _59, \
    _60, _61, _62, _63, _64, _65, _66, _67, _68, _69, _70, _71, _72, _73, _74, _75, _76, _77, _78, \
    _79, _80, _81, _82, _83, _84, _85, _86, _87, _88, _89, _90, _91, _92, _93, _94, _95, _96, NAME, \
    ...) \
  NAME
#define TROUPE_DETAIL_FOR_EACH(F, C, ...)    \
  TROUPE_DETAIL_FE_PICK(__VA_ARGS__,         \
                        TROUPE_DETAIL_FE_TOO_MANY, TROUPE_DETAIL_FE_TOO_MANY, \
                        TROUPE_DETAIL_FE_TOO_MANY, TROUPE_DETAIL_FE_TOO_MANY, \
                        TROUPE_DETAIL_FE_TOO_MANY, TROUPE_DETAIL_FE_TOO_MANY, \
                        TROUPE_DETAIL_FE_TOO_MANY, TROUPE_DETAIL_FE_TOO_MANY, \
                        TROUPE_DETAIL_FE_TOO_MANY, TROUPE_DETAIL_FE_TOO_MANY, \
                        TROUPE_DETAIL_FE_TOO_MANY, TROUPE_DETAIL_FE_TOO_MANY, \
                        TROUPE_DETAIL_FE_TOO_MANY, TROUPE_DETAIL_FE_TOO_MANY, \
                        TROUPE_DETAIL_FE_TOO_MANY, TROUPE_DETAIL_FE_TOO_MANY, \
                        TROUPE_DETAIL_FE_TOO_MANY, TROUPE_DETAIL_FE_TOO_MANY, \
                        TROUPE_DETAIL_FE_TOO_MANY, TROUPE_DETAIL_FE_TOO_MANY, \
                        TROUPE_DETAIL_FE_TOO_MANY, TROUPE_DETAIL_FE_TOO_MANY, \
                        TROUPE_DETAIL_FE_TOO_MANY, TROUPE_DETAIL_FE_TOO_MANY, \
                        TROUPE_DETAIL_FE_TOO_MANY, TROUPE_DETAIL_FE_TOO_MANY, \
                        TROUPE_DETAIL_FE_TOO_MANY, TROUPE_DETAIL_FE_TOO_MANY, \
                        TROUPE_DETAIL_FE_TOO_MANY, TROUPE_DETAIL_FE_TOO_MANY, \
                        TROUPE_DETAIL_FE_TOO_MANY, TROUPE_DETAIL_FE_TOO_MANY, TROUPE_DETAIL_FE_64, \
                        TROUPE_DETAIL_FE_63, TROUPE_DETAIL_FE_62, TROUPE_DETAIL_FE_61, \
                        TROUPE_DETAIL_FE_60, TROUPE_DETAIL_FE_59, TROUPE_DETAIL_FE_58, \
                        TROUPE_DETAIL_FE_57, TROUPE_DETAIL_FE_56, TROUPE_DETAIL_FE_55, \
                        TROUPE_DETAIL_FE_54, TROUPE_DETAIL_FE_53, TROUPE_DETAIL_FE_52, \
                        TROUPE_DETAIL_FE_51, TROUPE_DETAIL_FE_50, TROUPE_DETAIL_FE_49, \
                        TROUPE_DETAIL_FE_48, TROUPE_DETAIL_FE_47, TROUPE_DETAIL_FE_46, \
                        TROUPE_DETAIL_FE_45, TROUPE_DETAIL_FE_44, TROUPE_DETAIL_FE_43, \
                        TROUPE_DETAIL_FE_42, TROUPE_DETAIL_FE_41, TROUPE_DETAIL_FE_40, \
                        TROUPE_DETAIL_FE_39, TROUPE_DETAIL_FE_38, TROUPE_DETAIL_FE_37, \
                        TROUPE_DETAIL_FE_36, TROUPE_DETAIL_FE_35, TROUPE_DETAIL_FE_34, \
                        TROUPE_DETAIL_FE_33, TROUPE_DETAIL_FE_32, TROUPE_DETAIL_FE_31, \
                        TROUPE_DETAIL_FE_30, TROUPE_DETAIL_FE_29, TROUPE_DETAIL_FE_28, \
                        TROUPE_DETAIL_FE_27, TROUPE_DETAIL_FE_26, TROUPE_DETAIL_FE_25, \
                        TROUPE_DETAIL_FE_24, TROUPE_DETAIL_FE_23, TROUPE_DETAIL_FE_22, \
                        TROUPE_DETAIL_FE_21, TROUPE_DETAIL_FE_20, TROUPE_DETAIL_FE_19, \
                        TROUPE_DETAIL_FE_18, TROUPE_DETAIL_FE_17, TROUPE_DETAIL_FE_16, \
                        TROUPE_DETAIL_FE_15, TROUPE_DETAIL_FE_14, TROUPE_DETAIL_FE_13, \
                        TROUPE_DETAIL_FE_12, TROUPE_DETAIL_FE_11, TROUPE_DETAIL_FE_10, \
                        TROUPE_DETAIL_FE_9, TROUPE_DETAIL_FE_8, TROUPE_DETAIL_FE_7, \
                        TROUPE_DETAIL_FE_6, TROUPE_DETAIL_FE_5, TROUPE_DETAIL_FE_4, \
                        TROUPE_DETAIL_FE_3, TROUPE_DETAIL_FE_2, TROUPE_DETAIL_FE_1) \
  (F, C, __VA_ARGS__)

#define TROUPE_ACTOR(Class, CtorArgs, ...)                                                                \
  struct troupe_detail_scope_probe;                                                                      \
  static_assert(::troupe::detail::check_actor_scope<troupe_detail_scope_probe>());                       \
  [[maybe_unused]] static void TROUPE_ACTOR_is_used_once_per_class_with_one_constructor_signature(        \
      ::troupe::detail::ActorTag<Class>) {}                                                               \
  template <>                                                                                            \
  struct troupe::actor_traits<Class> {                                                                   \
    using constructor_args = std::tuple<TROUPE_DETAIL_UNPAREN CtorArgs>;                                 \
    static constexpr const char* name = #Class;                                                          \
  };                                                                                                     \
  [[maybe_unused]] static const bool TROUPE_DETAIL_CAT(troupe_actor_registered_, __LINE__) =             \
      ::troupe::detail::ClassRegistrar<Class>(#Class)                                                    \
          TROUPE_DETAIL_FOR_EACH(TROUPE_DETAIL_REG_METHOD, Class, __VA_ARGS__)                           \
              .done()
