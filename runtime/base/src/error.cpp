#include "troupe/runtime/error.hpp"

#include <cxxabi.h>

#include <cstdlib>
#include <memory>
#include <typeinfo>

namespace troupe {

std::string_view to_string(Errc code) noexcept {
  switch (code) {
    case Errc::ok: return "ok";
    case Errc::task_failed: return "task_failed";
    case Errc::actor_died: return "actor_died";
    case Errc::timeout: return "timeout";
    case Errc::cancelled: return "cancelled";
    case Errc::node_lost: return "node_lost";
    case Errc::object_lost: return "object_lost";
    case Errc::invalid_argument: return "invalid_argument";
    case Errc::not_found: return "not_found";
    case Errc::not_registered: return "not_registered";
    case Errc::unschedulable: return "unschedulable";
    case Errc::serialization: return "serialization";
    case Errc::protocol: return "protocol";
    case Errc::transport: return "transport";
    case Errc::cuda: return "cuda";
    case Errc::unsupported: return "unsupported";
    case Errc::internal: return "internal";
    case Errc::permission_denied: return "permission_denied";
    case Errc::overloaded: return "overloaded";
  }
  return "unknown";
}

Errc errc_from_wire(std::uint16_t code) noexcept {
  if (code > wire_code(Errc::overloaded)) return Errc::protocol;
  return static_cast<Errc>(code);
}

namespace {
std::string format_what(Errc code, const std::string& message, const std::string& remote_type) {
  std::string out(to_string(code));
  out += ": ";
  if (!remote_type.empty()) {
    out += remote_type;
    out += ": ";
  }
  out += message;
  return out;
}

std::string demangle(const char* name) {
  int status = 0;
  std::unique_ptr<char, void (*)(void*)> out(abi::__cxa_demangle(name, nullptr, nullptr, &status),
                                             std::free);
  return status == 0 && out ? std::string(out.get()) : std::string(name);
}
}  // namespace

Error::Error(Errc code, std::string message, std::string remote_type)
    : std::runtime_error(format_what(code, message, remote_type)),
      code_(code),
      message_(std::move(message)),
      remote_type_(std::move(remote_type)) {}

std::exception_ptr make_error(Errc code, std::string message, std::string remote_type) {
  switch (code) {
    case Errc::task_failed:
      return std::make_exception_ptr(TaskError(std::move(message), std::move(remote_type)));
    case Errc::actor_died:
      return std::make_exception_ptr(ActorDiedError(std::move(message)));
    case Errc::timeout:
      return std::make_exception_ptr(TimeoutError(std::move(message)));
    case Errc::cancelled:
      return std::make_exception_ptr(CancelledError(std::move(message)));
    case Errc::overloaded:
      return std::make_exception_ptr(OverloadedError(std::move(message)));
    default:
      return std::make_exception_ptr(Error(code, std::move(message), std::move(remote_type)));
  }
}

void throw_error(Errc code, std::string message, std::string remote_type) {
  std::rethrow_exception(make_error(code, std::move(message), std::move(remote_type)));
}

ErrorInfo describe(const std::exception_ptr& error) {
  ErrorInfo info;
  if (!error) {
    info.code = Errc::ok;
    return info;
  }
  const std::type_info* type = abi::__cxa_current_exception_type();
  try {
    std::rethrow_exception(error);
  } catch (const Error& e) {
    info.code = e.code();
    info.type = e.remote_type().empty() ? demangle(typeid(e).name()) : e.remote_type();
    info.message = e.message();
  } catch (const std::exception& e) {
    info.code = Errc::task_failed;
    info.type = demangle(typeid(e).name());
    info.message = e.what();
  } catch (...) {
    type = abi::__cxa_current_exception_type();
    info.code = Errc::task_failed;
    info.type = type ? demangle(type->name()) : "unknown";
    info.message = "non-standard exception";
  }
  return info;
}

namespace detail {
void check_failed(const char* expr, const char* file, int line, std::string_view why) {
  std::string msg = "check failed: ";
  msg += expr;
  msg += " at ";
  msg += file;
  msg += ":" + std::to_string(line) + ": ";
  msg += why;
  throw Error(Errc::internal, std::move(msg));
}
}  // namespace detail

}  // namespace troupe
