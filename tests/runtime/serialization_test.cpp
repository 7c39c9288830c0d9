// Decoding of values that crossed a process boundary (troupe::deserialize and
// its BoundedInputArchive): everything cereal's binary archive reads still
// round-trips, and a length that claims more than the bytes hold (a "length
// bomb") is refused with Errc::serialization before anything large is
// allocated. The largest single allocation during a decode is measured by
// replacing the global operator new of this test binary.
#include "troupe/runtime/serialization.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <list>
#include <map>
#include <new>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <variant>
#include <vector>

// ---- allocation probe ------------------------------------------------------------

namespace {
std::atomic<bool> g_probing{false};
std::atomic<std::size_t> g_largest{0};

void note(std::size_t size) {
  if (!g_probing.load(std::memory_order_relaxed)) return;
  std::size_t seen = g_largest.load(std::memory_order_relaxed);
  while (size > seen && !g_largest.compare_exchange_weak(seen, size)) {
  }
}
void* allocate(std::size_t size) {
  note(size);
  if (void* p = std::malloc(size ? size : 1)) return p;
  throw std::bad_alloc();
}
}  // namespace

void* operator new(std::size_t size) { return allocate(size); }
void* operator new[](std::size_t size) { return allocate(size); }
void* operator new(std::size_t size, const std::nothrow_t&) noexcept {
  note(size);
  return std::malloc(size ? size : 1);
}
void* operator new[](std::size_t size, const std::nothrow_t&) noexcept {
  note(size);
  return std::malloc(size ? size : 1);
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }

namespace {

using troupe::Errc;

// Largest single allocation made while `f` runs.
template <class F>
std::size_t largest_allocation_in(F&& f) {
  g_largest = 0;
  g_probing = true;
  try {
    f();
  } catch (...) {
    g_probing = false;
    throw;
  }
  g_probing = false;
  return g_largest.load();
}

template <class T>
Errc decode_error_of(const std::string& bytes, std::string* message = nullptr) {
  try {
    (void)troupe::deserialize<T>(bytes);
  } catch (const troupe::Error& e) {
    if (message) *message = e.message();
    return e.code();
  }
  return Errc::ok;
}

// A cereal size tag (u64) claiming `count`, then `filler` bytes: a 30-byte
// argument with `count` = 2^40 is the bomb of the issue.
std::string claim(std::uint64_t count, std::size_t filler = 22) {
  std::string out(reinterpret_cast<const char*>(&count), sizeof count);
  out.append(filler, '\x01');
  return out;
}

struct Wide {  // 32 KiB in memory, 8 KiB at least on the wire
  std::string parts[1024];
  template <class Archive>
  void serialize(Archive& ar) {
    for (auto& part : parts) ar(part);
  }
};

struct Node {  // a recursive type
  std::vector<Node> children;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(children);
  }
  friend bool operator==(const Node&, const Node&) = default;
};

template <class T>
void expect_round_trip(const T& value) {
  EXPECT_EQ(troupe::deserialize<T>(troupe::serialize(value)), value);
}

TEST(BoundedDecoding, RoundTripsWhatCerealEncodes) {
  expect_round_trip(std::string("hello"));
  expect_round_trip(std::string());
  expect_round_trip(std::vector<int>{1, 2, 3});
  expect_round_trip(std::vector<double>{});
  expect_round_trip(std::vector<bool>{true, false, true});
  expect_round_trip(std::vector<std::string>{"a", "", "ccc"});
  expect_round_trip(std::vector<std::vector<std::int64_t>>{{1, 2}, {}, {3}});
  expect_round_trip(std::map<std::string, std::vector<float>>{{"x", {1.5f}}, {"y", {}}});
  expect_round_trip(std::unordered_map<int, std::string>{{1, "one"}, {2, "two"}});
  expect_round_trip(std::set<std::string>{"b", "a"});
  expect_round_trip(std::deque<std::string>{"d", "e"});
  expect_round_trip(std::list<std::vector<int>>{{1}, {2, 3}});
  expect_round_trip(std::optional<std::string>("maybe"));
  expect_round_trip(std::variant<int, std::string>(std::string("v")));
  expect_round_trip(std::pair<int, std::string>(7, "seven"));
  expect_round_trip(std::tuple<int, std::vector<std::string>, double>(1, {"t"}, 2.5));
  Node tree{{Node{{Node{}, Node{}}}, Node{}}};
  expect_round_trip(tree);
}

TEST(BoundedDecoding, LargeValuesStillDecode) {
  std::vector<std::int32_t> big(1 << 20);
  for (std::size_t i = 0; i < big.size(); ++i) big[i] = static_cast<std::int32_t>(i * 7);
  expect_round_trip(big);
  expect_round_trip(std::string(3 << 20, 'x'));
  std::vector<std::string> many(100000, "abc");
  expect_round_trip(many);
}

TEST(BoundedDecoding, TensorsRoundTrip) {
  auto t = troupe::Tensor::from_vector<float>({1.f, 2.f, 3.f, 4.f, 5.f, 6.f}, {2, 3});
  auto back = troupe::deserialize<troupe::Tensor>(troupe::serialize(t));
  ASSERT_EQ(back.shape(), t.shape());
  EXPECT_EQ(std::memcmp(back.raw_data(), t.raw_data(), t.nbytes()), 0);
}

// A 30-byte payload that claims 2^40 elements is refused at once, for every
// container shape, with a bounded allocation.
TEST(BoundedDecoding, ThirtyByteLengthBombIsRefusedWithMemoryBounded) {
  const std::string bomb = claim(std::uint64_t{1} << 40);
  ASSERT_EQ(bomb.size(), 30u);
  const auto start = std::chrono::steady_clock::now();
  std::size_t largest = largest_allocation_in([&] {
    std::string why;
    EXPECT_EQ(decode_error_of<std::string>(bomb, &why), Errc::serialization);
    EXPECT_NE(why.find("length bomb refused"), std::string::npos) << why;
    EXPECT_NE(why.find("1099511627776"), std::string::npos) << why;
    EXPECT_EQ(decode_error_of<std::vector<std::int64_t>>(bomb), Errc::serialization);
    EXPECT_EQ(decode_error_of<std::vector<char>>(bomb), Errc::serialization);
    EXPECT_EQ(decode_error_of<std::vector<bool>>(bomb), Errc::serialization);
    EXPECT_EQ(decode_error_of<std::vector<std::string>>(bomb), Errc::serialization);
    EXPECT_EQ(decode_error_of<std::vector<std::vector<double>>>(bomb), Errc::serialization);
    EXPECT_EQ(decode_error_of<std::vector<Wide>>(bomb), Errc::serialization);
    EXPECT_EQ((decode_error_of<std::map<std::string, int>>(bomb)), Errc::serialization);
    EXPECT_EQ((decode_error_of<std::unordered_map<int, int>>(bomb)), Errc::serialization);
    EXPECT_EQ(decode_error_of<std::set<int>>(bomb), Errc::serialization);
    EXPECT_EQ(decode_error_of<std::deque<std::string>>(bomb), Errc::serialization);
    EXPECT_EQ(decode_error_of<std::list<int>>(bomb), Errc::serialization);
    EXPECT_EQ(decode_error_of<Node>(bomb), Errc::serialization);
  });
  EXPECT_LT(largest, std::size_t{64} << 10) << "a decode allocated " << largest << " bytes at once";
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
}

// Claims that fit the 1-byte-per-element rule but not the element's real
// size: a vector of 2^20 int64 in 1 MiB, a nested vector whose inner
// claims are each just small enough, a vector of 32 KiB structs.
TEST(BoundedDecoding, ClaimsWithinTheBytesGrowOnlyAsElementsDecode) {
  const std::string payload = claim((std::uint64_t{1} << 20) - 16, (1 << 20) - 8);
  std::size_t largest = largest_allocation_in([&] {
    EXPECT_EQ(decode_error_of<std::vector<std::int64_t>>(payload), Errc::serialization);
    EXPECT_EQ(decode_error_of<std::vector<Wide>>(payload), Errc::serialization);
  });
  // At most the payload's own size (plus the archive's bookkeeping).
  EXPECT_LE(largest, std::size_t{2} << 20);

  // Outer claims 3, each inner claims 2^30 bytes of a 40-byte payload.
  std::string nested = claim(3, 0);
  for (int i = 0; i < 3; ++i) nested += claim(std::uint64_t{1} << 30, 0);
  largest = largest_allocation_in(
      [&] { EXPECT_EQ(decode_error_of<std::vector<std::vector<char>>>(nested), Errc::serialization); });
  EXPECT_LT(largest, std::size_t{64} << 10);
}

TEST(BoundedDecoding, TensorBombIsRefusedBeforeItsStorageIsAllocated) {
  // tag 1, f32, host, rank 2, 2^20 x 2^20 elements, no bytes.
  std::string bytes;
  bytes.push_back(1);
  bytes.push_back(0);
  bytes.push_back(0);
  const std::uint32_t rank = 2;
  bytes.append(reinterpret_cast<const char*>(&rank), sizeof rank);
  const std::int64_t extent = std::int64_t{1} << 20;
  for (int i = 0; i < 2; ++i) bytes.append(reinterpret_cast<const char*>(&extent), sizeof extent);
  std::string why;
  const std::size_t largest =
      largest_allocation_in([&] { EXPECT_EQ(decode_error_of<troupe::Tensor>(bytes, &why), Errc::serialization); });
  EXPECT_NE(why.find("length bomb refused"), std::string::npos) << why;
  EXPECT_LT(largest, std::size_t{64} << 10);
}

TEST(BoundedDecoding, TruncatedInputIsASerializationError) {
  const std::string whole = troupe::serialize(std::vector<std::string>{"alpha", "beta"});
  for (std::size_t n = 0; n < whole.size(); ++n)
    EXPECT_EQ(decode_error_of<std::vector<std::string>>(whole.substr(0, n)), Errc::serialization) << n;
}

TEST(BoundedDecoding, DeepNestingIsRefusedNotAStackOverflow) {
  // Node{Node{Node{...}}}: each level a count of 1, 100000 levels deep.
  std::string deep;
  for (int i = 0; i < 100000; ++i) deep += claim(1, 0);
  deep += claim(0, 0);
  std::string why;
  EXPECT_EQ(decode_error_of<Node>(deep, &why), Errc::serialization);
  EXPECT_NE(why.find("nested deeper"), std::string::npos) << why;
}

}  // namespace
