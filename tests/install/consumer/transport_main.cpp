// Built out of tree against an installed troupe, linking troupe::transport
// alone (tests/install/run_install_test.sh): the transport's headers and the
// generated schema headers are installed and usable without the runtime.
#include <cstdio>
#include <string>

#include <capnp/message.h>
#include <troupe/transport/content_hash.hpp>
#include <troupe/transport/schema/common.capnp.h>

int main() {
  capnp::MallocMessageBuilder message;
  auto id = message.initRoot<troupe::wire::ObjectId>();
  id.setHi(1);
  id.setLo(2);
  const std::string hash = troupe::transport::content_hash("troupe");
  const bool ok = id.asReader().getLo() == 2 && troupe::transport::valid_hash_name(hash);
  std::printf("transport_consumer: %s\n", ok ? "OK" : "WRONG RESULT");
  return ok ? 0 : 1;
}
