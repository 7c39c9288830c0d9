// The transport raises troupe::Error: the functions that convert KJ, ZeroMQ
// and UCX failures give the one Errc, and the typed subclass for its code.
#include "troupe/transport/error.hpp"

#include <cerrno>

#include <gtest/gtest.h>
#include <kj/exception.h>
#include <zmq.hpp>

namespace troupe::transport {
namespace {

Error caught(auto&& action) {
  try {
    action();
  } catch (const Error& error) {
    return error;
  }
  ADD_FAILURE() << "expected a troupe::Error";
  return Error(Errc::transport, "none");
}

kj::Exception kj_exception(kj::Exception::Type type) {
  return kj::Exception(type, __FILE__, __LINE__, kj::heapString("Message ends prematurely."));
}

zmq::error_t zmq_error(int number) {
  errno = number;  // zmq::error_t takes zmq_errno(), which is errno
  return zmq::error_t();
}

TEST(TransportErrors, AZeroMqTimeoutIsTheTypedTimeoutErrorUsersCatch) {
  EXPECT_THROW(throw_from_zmq(zmq_error(EAGAIN), "recv"), TimeoutError);
}

TEST(TransportErrors, AUcxCancellationIsTheTypedCancelledError) {
  EXPECT_THROW(throw_from_ucs(-16 /* UCS_ERR_CANCELED */, "fetch"), CancelledError);
}

TEST(TransportErrors, KeepsTheMessageAndNamesTheCodeInWhat) {
  Error error(Errc::protocol, "bad frame");
  EXPECT_EQ(error.code(), Errc::protocol);
  EXPECT_EQ(error.message(), "bad frame");
  EXPECT_STREQ(error.what(), "protocol: bad frame");
}

TEST(TransportErrors, FailedKjExceptionsAreProtocolErrors) {
  auto error = caught([] { throw_from_kj(kj_exception(kj::Exception::Type::FAILED), "decoding"); });
  EXPECT_EQ(error.code(), Errc::protocol);
  EXPECT_EQ(error.message(), "decoding: Message ends prematurely.");
}

TEST(TransportErrors, DisconnectedKjExceptionsAreTransportErrors) {
  auto error =
      caught([] { throw_from_kj(kj_exception(kj::Exception::Type::DISCONNECTED), "reading"); });
  EXPECT_EQ(error.code(), Errc::transport);
}

TEST(TransportErrors, ZeroMqWouldBlockIsATimeout) {
  EXPECT_EQ(caught([] { throw_from_zmq(zmq_error(EAGAIN), "send"); }).code(),
            Errc::timeout);
}

TEST(TransportErrors, ZeroMqMessageSizeIsAProtocolError) {
  EXPECT_EQ(caught([] { throw_from_zmq(zmq_error(EMSGSIZE), "recv"); }).code(),
            Errc::protocol);
}

TEST(TransportErrors, OtherZeroMqErrorsAreTransportErrors) {
  auto error = caught([] { throw_from_zmq(zmq_error(EHOSTUNREACH), "send"); });
  EXPECT_EQ(error.code(), Errc::transport);
  EXPECT_EQ(error.message().rfind("send: ", 0), 0u) << error.message();
}

}  // namespace
}  // namespace troupe::transport
