// TransportError and the two functions that convert KJ and ZeroMQ failures.
#include "troupe/transport/error.hpp"

#include <cerrno>

#include <gtest/gtest.h>
#include <kj/exception.h>
#include <zmq.hpp>

namespace troupe::transport {
namespace {

TransportError caught(auto&& action) {
  try {
    action();
  } catch (const TransportError& error) {
    return error;
  }
  ADD_FAILURE() << "expected a TransportError";
  return TransportError(TransportErrc::transport, "none");
}

kj::Exception kj_exception(kj::Exception::Type type) {
  return kj::Exception(type, __FILE__, __LINE__, kj::heapString("Message ends prematurely."));
}

zmq::error_t zmq_error(int number) {
  errno = number;  // zmq::error_t takes zmq_errno(), which is errno
  return zmq::error_t();
}

TEST(TransportError, CodesMatchTroupeErrcValues) {
  // troupe::Errc: timeout = 3, protocol = 12, transport = 13.
  EXPECT_EQ(static_cast<int>(TransportErrc::timeout), 3);
  EXPECT_EQ(static_cast<int>(TransportErrc::protocol), 12);
  EXPECT_EQ(static_cast<int>(TransportErrc::transport), 13);
}

TEST(TransportError, KeepsTheMessageAndNamesTheCodeInWhat) {
  TransportError error(TransportErrc::protocol, "bad frame");
  EXPECT_EQ(error.code(), TransportErrc::protocol);
  EXPECT_EQ(error.message(), "bad frame");
  EXPECT_STREQ(error.what(), "protocol: bad frame");
}

TEST(TransportError, FailedKjExceptionsAreProtocolErrors) {
  auto error = caught([] { throw_from_kj(kj_exception(kj::Exception::Type::FAILED), "decoding"); });
  EXPECT_EQ(error.code(), TransportErrc::protocol);
  EXPECT_EQ(error.message(), "decoding: Message ends prematurely.");
}

TEST(TransportError, DisconnectedKjExceptionsAreTransportErrors) {
  auto error =
      caught([] { throw_from_kj(kj_exception(kj::Exception::Type::DISCONNECTED), "reading"); });
  EXPECT_EQ(error.code(), TransportErrc::transport);
}

TEST(TransportError, ZeroMqWouldBlockIsATimeout) {
  EXPECT_EQ(caught([] { throw_from_zmq(zmq_error(EAGAIN), "send"); }).code(),
            TransportErrc::timeout);
}

TEST(TransportError, ZeroMqMessageSizeIsAProtocolError) {
  EXPECT_EQ(caught([] { throw_from_zmq(zmq_error(EMSGSIZE), "recv"); }).code(),
            TransportErrc::protocol);
}

TEST(TransportError, OtherZeroMqErrorsAreTransportErrors) {
  auto error = caught([] { throw_from_zmq(zmq_error(EHOSTUNREACH), "send"); });
  EXPECT_EQ(error.code(), TransportErrc::transport);
  EXPECT_EQ(error.message().rfind("send: ", 0), 0u) << error.message();
}

}  // namespace
}  // namespace troupe::transport
