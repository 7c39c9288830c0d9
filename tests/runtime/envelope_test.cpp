// The data plane's object envelope (runtime/src/cluster/envelope.hpp): what a
// holder publishes decodes back, and every malformed envelope a peer could
// send is Error(protocol), decided before anything is allocated for it.
#include "cluster/envelope.hpp"

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "troupe/runtime/error.hpp"

namespace troupe::detail {
namespace {

std::string tensor_header(std::uint8_t dtype, std::uint8_t memory, std::uint32_t rank,
                          const std::vector<std::int64_t>& extents) {
  std::string out(1, static_cast<char>(EnvelopeForm::tensor));
  out.push_back(static_cast<char>(dtype));
  out.push_back(static_cast<char>(memory));
  out.append(reinterpret_cast<const char*>(&rank), sizeof rank);
  out.append(reinterpret_cast<const char*>(extents.data()), extents.size() * sizeof(std::int64_t));
  return out;
}

Errc error_of(const std::string& bytes, std::string* message = nullptr) {
  try {
    (void)decode_envelope(bytes);
  } catch (const Error& e) {
    if (message) *message = e.message();
    return e.code();
  }
  return Errc::ok;
}

TEST(Envelope, WhatAHolderPublishesDecodes) {
  Envelope plain = decode_envelope(plain_envelope("abc"));
  EXPECT_EQ(plain.form, EnvelopeForm::plain);
  EXPECT_EQ(plain.value, "abc");
  EXPECT_TRUE(decode_envelope(plain_envelope("")).value.empty());

  Envelope tensor = decode_envelope(tensor_envelope(TensorMeta{0, 1, {2, 3}, 24}));
  ASSERT_EQ(tensor.form, EnvelopeForm::tensor);
  EXPECT_EQ(tensor.tensor.dtype, 0);
  EXPECT_EQ(tensor.tensor.memory, 1);
  EXPECT_EQ(tensor.tensor.shape, (std::vector<std::int64_t>{2, 3}));
  EXPECT_EQ(tensor.tensor.nbytes, 24u);
  EXPECT_NO_THROW(check_tensor_payload(tensor.tensor, 24));
  EXPECT_THROW(check_tensor_payload(tensor.tensor, 23), Error);

  Envelope scalar = decode_envelope(tensor_envelope(TensorMeta{4, 0, {}, 8}));
  EXPECT_EQ(scalar.tensor.nbytes, 8u);

  Envelope error = decode_envelope(error_envelope(make_error(Errc::task_failed, "boom", "E")));
  ASSERT_EQ(error.form, EnvelopeForm::error);
  auto info = describe(error.error);
  EXPECT_EQ(info.code, Errc::task_failed);
  EXPECT_EQ(info.message, "boom");
}

TEST(Envelope, MalformedEnvelopesAreProtocolErrors) {
  const std::int64_t big = std::int64_t{1} << 40;
  struct Case {
    const char* name;
    std::string bytes;
  };
  std::string not_words = error_envelope(make_error(Errc::timeout, "x"));
  not_words.pop_back();
  std::string garbage_error(1, static_cast<char>(EnvelopeForm::error));
  garbage_error.append(16, '\xff');
  const Case cases[] = {
      {"empty", ""},
      {"unknown form", std::string(1, '\x07')},
      {"truncated tensor header", tensor_header(0, 0, 1, {}).substr(0, 4)},
      {"unknown dtype", tensor_header(9, 0, 1, {4})},
      {"unknown memory type", tensor_header(0, 2, 1, {4})},
      {"rank over the limit", tensor_header(0, 0, 65, std::vector<std::int64_t>(65, 1))},
      {"rank the bytes do not hold", tensor_header(0, 0, 3, {4})},
      {"huge rank", tensor_header(0, 0, 0xffffffffu, {})},
      {"bytes past the shape", tensor_header(0, 0, 1, {4}) + "x"},
      {"negative extent", tensor_header(0, 0, 2, {4, -1})},
      {"element count overflow", tensor_header(0, 0, 2, {big, big})},
      {"byte count overflow", tensor_header(4, 0, 1, {std::numeric_limits<std::int64_t>::max() / 2})},
      {"error not a whole number of words", not_words},
      {"error that is no message", garbage_error},
      {"empty error", std::string(1, static_cast<char>(EnvelopeForm::error))},
  };
  for (const auto& c : cases) {
    std::string why;
    EXPECT_EQ(error_of(c.bytes, &why), Errc::protocol) << c.name;
    EXPECT_FALSE(why.empty()) << c.name;
  }
}

TEST(Envelope, AnErrorThatSaysOkIsAProtocolError) {
  Envelope envelope = decode_envelope(error_envelope(make_error(Errc::ok, "not really")));
  EXPECT_EQ(describe(envelope.error).code, Errc::protocol);
}

}  // namespace
}  // namespace troupe::detail
