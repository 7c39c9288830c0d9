#include "troupe/runtime/registry.hpp"

#include <cxxabi.h>

#include <algorithm>
#include <cstdlib>
#include <map>
#include <mutex>

namespace troupe::detail {
namespace {

struct Registry {
  std::mutex mutex;
  std::map<std::string, std::unique_ptr<ClassInfo>, std::less<>> classes;
};

Registry& registry() {
  static Registry instance;  // built on first use: safe during static init
  return instance;
}

}  // namespace

std::string type_name(const std::type_info& type) {
  int status = 0;
  std::unique_ptr<char, void (*)(void*)> out(abi::__cxa_demangle(type.name(), nullptr, nullptr, &status),
                                             std::free);
  return status == 0 && out ? std::string(out.get()) : std::string(type.name());
}

void throw_type_mismatch(const std::type_info& expected, const std::type_info& got) {
  throw_error(Errc::serialization, "value type mismatch: expected " + type_name(expected) + ", got " +
                                       type_name(got));
}

const MethodInfo* ClassInfo::find_method(std::string_view method) const {
  auto it = methods.find(std::string(method));
  return it == methods.end() ? nullptr : it->second.get();
}

const ClassInfo* find_class(std::string_view name) {
  auto& r = registry();
  std::lock_guard lock(r.mutex);
  auto it = r.classes.find(name);
  return it == r.classes.end() ? nullptr : it->second.get();
}

std::vector<std::string> registered_classes() {
  auto& r = registry();
  std::lock_guard lock(r.mutex);
  std::vector<std::string> names;
  for (const auto& [name, info] : r.classes) names.push_back(name);
  return names;
}

ClassInfo& register_class(std::string name, const std::type_info& type, std::size_t ctor_arity,
                          void* (*construct)(ArgValues&), void (*destroy)(void*)) {
  auto& r = registry();
  std::lock_guard lock(r.mutex);
  auto it = r.classes.find(name);
  if (it != r.classes.end()) {
    TROUPE_CHECK(*it->second->type == type, "two different classes registered as actor '" + name + "'");
    return *it->second;
  }
  auto info = std::make_unique<ClassInfo>();
  info->name = name;
  info->type = &type;
  info->ctor_arity = ctor_arity;
  info->construct = construct;
  info->destroy = destroy;
  auto& ref = *info;
  r.classes.emplace(std::move(name), std::move(info));
  return ref;
}

const MethodInfo& register_method(ClassInfo& cls, std::string name, std::size_t arity,
                                  InvokeResult (*invoke)(void*, ArgValues&)) {
  auto& r = registry();
  std::lock_guard lock(r.mutex);
  auto& slot = cls.methods[name];
  if (!slot) {
    slot = std::make_unique<MethodInfo>();
    slot->qualified = cls.name + "." + name;
    slot->name = std::move(name);
    slot->arity = arity;
    slot->invoke = invoke;
  }
  return *slot;
}

}  // namespace troupe::detail
