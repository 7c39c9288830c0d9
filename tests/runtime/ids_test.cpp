// troupe's typed 128-bit ids: text form, parsing, randomness, hashing and
// the Cap'n Proto wire form.
#include "troupe/runtime/ids.hpp"

#include <set>
#include <type_traits>
#include <unordered_set>

#include <gtest/gtest.h>

namespace troupe {
namespace {

TEST(Ids, HexIsThirtyTwoLowerCaseDigitsHiThenLo) {
  const ActorId id{0x0123456789abcdefULL, 0xfedcba9876543210ULL};
  EXPECT_EQ(id.hex(), "0123456789abcdeffedcba9876543210");
  EXPECT_EQ(id.short_hex(), "0123456789ab");
}

TEST(Ids, ParseReadsWhatHexWroteInEitherCase) {
  const auto id = NodeId::random();
  EXPECT_EQ(NodeId::parse(id.hex()), id);
  auto upper = id.hex();
  for (auto& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  EXPECT_EQ(NodeId::parse(upper), id);
}

TEST(Ids, ParseRefusesAnythingButThirtyTwoHexDigits) {
  EXPECT_FALSE(JobId::parse(""));
  EXPECT_FALSE(JobId::parse("0123"));
  EXPECT_FALSE(JobId::parse("0123456789abcdeffedcba987654321"));    // 31
  EXPECT_FALSE(JobId::parse("0123456789abcdeffedcba98765432100"));  // 33
  EXPECT_FALSE(JobId::parse("0123456789abcdeffedcba987654321g"));
  EXPECT_FALSE(JobId::parse("../../../../etc/passwd-0123456789"));
}

TEST(Ids, TheDefaultIdIsNilAndRandomIdsNeverAre) {
  EXPECT_TRUE(WorkerId{}.nil());
  EXPECT_FALSE(static_cast<bool>(WorkerId{}));
  std::set<WorkerId> seen;
  for (int i = 0; i < 10000; ++i) {
    const auto id = WorkerId::random();
    ASSERT_FALSE(id.nil());
    ASSERT_TRUE(seen.insert(id).second) << "a random id repeated: " << id;
  }
}

TEST(Ids, IdsOfDifferentEntitiesAreDifferentTypes) {
  static_assert(!std::is_convertible_v<ActorId, NodeId>);
  static_assert(!std::is_convertible_v<ObjectId, ActorId>);
  static_assert(std::is_trivially_copyable_v<ActorId>);
  SUCCEED();
}

TEST(Ids, OrderIsHiThenLoAndHashesSpreadSequentialIds) {
  EXPECT_LT((ObjectId{1, 9}), (ObjectId{2, 0}));
  EXPECT_LT((ObjectId{1, 1}), (ObjectId{1, 2}));
  std::unordered_set<std::size_t> hashes;
  for (std::uint64_t i = 0; i < 1000; ++i) hashes.insert(std::hash<ObjectId>{}(ObjectId{42, i}));
  EXPECT_EQ(hashes.size(), 1000u);
}

// The shape of a Cap'n Proto id struct's builder and reader (hi, lo); the
// transport's tests run the same conversion on the real schema.
struct FakeWireId {
  std::uint64_t hi = 0, lo = 0;
  void setHi(std::uint64_t v) { hi = v; }
  void setLo(std::uint64_t v) { lo = v; }
  std::uint64_t getHi() const { return hi; }
  std::uint64_t getLo() const { return lo; }
};
struct FakeBuilder {
  FakeWireId* target;
  void setHi(std::uint64_t v) { target->setHi(v); }
  void setLo(std::uint64_t v) { target->setLo(v); }
};

TEST(Ids, WireFormIsHiAndLoAndRoundTrips) {
  FakeWireId wire;
  const ActorId id{0x1111, 0x2222};
  to_wire(FakeBuilder{&wire}, id);
  EXPECT_EQ(wire.hi, 0x1111u);
  EXPECT_EQ(wire.lo, 0x2222u);
  EXPECT_EQ(from_wire<ActorId>(wire), id);
}

}  // namespace
}  // namespace troupe
