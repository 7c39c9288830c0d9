// HeadContext (runtime/head/src/head_context.hpp): what the head holds back
// while its state store cannot be written stays bounded.
#include "head_context.hpp"

#include <capnp/message.h>
#include <gtest/gtest.h>

#include "troupe/transport/internal/control_socket.hpp"
#include "troupe/transport/schema/control.capnp.h"

namespace {

using troupe::head::HeadContext;
namespace wire = troupe::wire;

TEST(HeadContext, MessagesHeldForAStoreThatCannotBeWrittenAreCapped) {
  troupe::transport::InProcessControlServer server;
  HeadContext context;
  context.server = &server;
  context.hold_sends = true;
  const std::size_t sent = HeadContext::kMaxHeld + 500;
  for (std::size_t i = 0; i < sent; ++i) {
    capnp::MallocMessageBuilder message;
    message.initRoot<wire::ControlMessage>().setRequestId(i + 1);
    context.send_to("peer", message);
  }
  EXPECT_EQ(context.held.size(), HeadContext::kMaxHeld);
  EXPECT_EQ(context.held_dropped, 500u);
  // The first ones are kept, in order: what was held is sent as it was.
  EXPECT_EQ(context.held.front().second->getRoot<wire::ControlMessage>().getRequestId(), 1u);
  context.hold_sends = false;
  context.release_held();
  EXPECT_TRUE(context.held.empty());
  EXPECT_EQ(server.take_sent().size(), HeadContext::kMaxHeld);
}

}  // namespace
