// Type-erased, immutable values held by objects and passed to actor methods.
// In local mode a value stays a typed C++ object (no encoding, no copy of a
// Tensor's storage); across processes it travels as the bytes `encode` gives
// and is decoded on first typed access.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <typeindex>
#include <typeinfo>
#include <utility>
#include <vector>

#include "troupe/runtime/error.hpp"
#include "troupe/runtime/serialization.hpp"

namespace troupe::detail {

class ObjectState;

std::string type_name(const std::type_info& type);

class Value {
 public:
  virtual ~Value() = default;
  // typeid of the held C++ value, or typeid(void) for encoded bytes.
  virtual const std::type_info& type() const noexcept = 0;
  virtual std::string encode() const = 0;
  // Encoded form for values that are bytes (received from, or still held
  // by, another process; may fetch). nullptr for typed in-process values.
  virtual const std::string* bytes() const { return nullptr; }
  // True for a value that still lives in another process.
  virtual bool is_remote() const noexcept { return false; }
  // For a value that lives in another process: the value once fetched (may
  // fetch; may be a typed value, e.g. a Tensor over received memory).
  // nullptr for every other value.
  virtual std::shared_ptr<Value> resolved() const { return nullptr; }
  // For an ObjectRef parameter received from another process: the state the
  // callee's ObjectRef wraps (take_arg in registry.hpp). nullptr otherwise.
  virtual std::shared_ptr<ObjectState> passed_state() const { return nullptr; }
  // For bytes received from another process: the objects named by the
  // ObjectRefs inside them, which arrived with them (nullptr: none).
  virtual const std::vector<std::shared_ptr<ObjectState>>* nested_refs() const { return nullptr; }
};

// Cluster mode: ObjectRefs inside a value that crosses processes travel as
// the ids of objects sent alongside it (the call's or reply's `refs`).
// Encoding a ref records its state with the encoder the runtime set on this
// thread (NestedRefEncoder, runtime/src/cluster); decoding one finds it in
// the value's nested_refs(), made current by this scope around the decode.
class NestedRefDecodeScope {
 public:
  explicit NestedRefDecodeScope(const std::vector<std::shared_ptr<ObjectState>>* refs) noexcept;
  ~NestedRefDecodeScope();
  NestedRefDecodeScope(const NestedRefDecodeScope&) = delete;
  NestedRefDecodeScope& operator=(const NestedRefDecodeScope&) = delete;

 private:
  const std::vector<std::shared_ptr<ObjectState>>* previous_;
};

template <class T>
class TypedValue final : public Value {
 public:
  template <class... Args>
  explicit TypedValue(std::in_place_t, Args&&... args) : value(std::forward<Args>(args)...) {}
  const std::type_info& type() const noexcept override { return typeid(T); }
  std::string encode() const override { return troupe::serialize(value); }
  T value;
};

// Bytes received from another process; decoded lazily by value_as / take_value.
// `refs`: the objects its ObjectRefs name, received with it.
class EncodedValue final : public Value {
 public:
  explicit EncodedValue(std::string data) : data(std::move(data)) {}
  EncodedValue(std::string data, std::shared_ptr<const std::vector<std::shared_ptr<ObjectState>>> refs)
      : data(std::move(data)), refs(std::move(refs)) {}
  const std::type_info& type() const noexcept override { return typeid(void); }
  // Passed on as it came: its refs are recorded with the current encoder.
  std::string encode() const override;
  const std::string* bytes() const override { return &data; }
  const std::vector<std::shared_ptr<ObjectState>>* nested_refs() const override { return refs.get(); }
  std::string data;
  std::shared_ptr<const std::vector<std::shared_ptr<ObjectState>>> refs;
};

using ValuePtr = std::shared_ptr<Value>;

template <class T, class... Args>
ValuePtr make_value(Args&&... args) {
  return std::make_shared<TypedValue<T>>(std::in_place, std::forward<Args>(args)...);
}

[[noreturn]] void throw_type_mismatch(const std::type_info& expected, const std::type_info& got);

// Produces a T from a value: moved out when `value` is the only reference
// (an argument the call owns outright), copied when shared (an object other
// refs can still read), decoded when it holds bytes.
template <class T>
T take_value(ValuePtr& value) {
  if (!value) throw_error(Errc::internal, "missing value for " + type_name(typeid(T)));
  if (value->type() == typeid(T)) {
    auto* typed = static_cast<TypedValue<T>*>(value.get());
    if (value.use_count() == 1) return std::move(typed->value);
    return typed->value;
  }
  if (value->is_remote()) {
    if (std::shared_ptr<Value> fetched = value->resolved()) {
      if (fetched->type() == typeid(T)) return static_cast<TypedValue<T>*>(fetched.get())->value;  // shared: copy
      if (const std::string* encoded = fetched->bytes()) {
        NestedRefDecodeScope scope(fetched->nested_refs());
        return troupe::deserialize<T>(*encoded);
      }
      throw_type_mismatch(typeid(T), fetched->type());
    }
  }
  if (const std::string* encoded = value->bytes()) {
    NestedRefDecodeScope scope(value->nested_refs());
    return troupe::deserialize<T>(*encoded);
  }
  throw_type_mismatch(typeid(T), value->type());
}

// Reads a T without taking it (copies; decodes bytes).
template <class T>
T read_value(const ValuePtr& value) {
  ValuePtr shared = value;  // use_count > 1: never moves
  return take_value<T>(shared);
}

}  // namespace troupe::detail
