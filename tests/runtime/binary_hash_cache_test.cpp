// The driver's binary-hash cache (runtime/src/cluster/binary_hash_cache.hpp):
// a restarted driver with an unchanged binary does not hash it again, and
// the cache never names a hash its binary does not have.
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include <gtest/gtest.h>

#include "cluster/binary_hash_cache.hpp"
#include "troupe/transport/content_hash.hpp"

namespace {

namespace fs = std::filesystem;
using troupe::detail::self_binary_hash;

class BinaryHashCacheTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char pattern[] = "/tmp/troupe-hash-cache-XXXXXX";
    ASSERT_NE(::mkdtemp(pattern), nullptr);
    dir_ = pattern;
    ::setenv("TROUPE_CACHE_DIR", (dir_ / "cache").c_str(), 1);
    ::unsetenv("TROUPE_BINARY_HASH_CACHE");
    expected_ = *troupe::transport::content_hash_of_file("/proc/self/exe");
  }
  void TearDown() override {
    ::unsetenv("TROUPE_CACHE_DIR");
    ::unsetenv("TROUPE_BINARY_HASH_CACHE");
    std::error_code ignored;
    fs::remove_all(dir_, ignored);
  }
  fs::path dir_;
  std::string expected_;
};

TEST_F(BinaryHashCacheTest, TheSecondStartReadsTheHashFromTheCache) {
  auto first = self_binary_hash();
  EXPECT_EQ(first.hash, expected_);
  EXPECT_FALSE(first.from_cache);
  auto second = self_binary_hash();
  EXPECT_EQ(second.hash, expected_);
  EXPECT_TRUE(second.from_cache);
  struct stat info{};
  ASSERT_EQ(::stat((dir_ / "cache").c_str(), &info), 0);
  EXPECT_EQ(info.st_mode & 077, 0u) << "the cache directory is private";
}

TEST_F(BinaryHashCacheTest, TurnedOffItHashesEveryTime) {
  (void)self_binary_hash();
  ::setenv("TROUPE_BINARY_HASH_CACHE", "0", 1);
  auto again = self_binary_hash();
  EXPECT_EQ(again.hash, expected_);
  EXPECT_FALSE(again.from_cache);
}

TEST_F(BinaryHashCacheTest, AnEntryForAnotherVersionOfTheFileIsNotUsed) {
  (void)self_binary_hash();
  // Rewrite the entry as if the binary had been rebuilt: another ctime.
  const fs::path file = dir_ / "cache" / "binary-hashes";
  std::ifstream in(file);
  std::string line;
  std::getline(in, line);
  in.close();
  ASSERT_FALSE(line.empty());
  const std::string wrong(64, 'a');
  std::ofstream(file, std::ios::trunc) << line.substr(0, line.rfind(' ')) << "1 " << wrong << "\n"
                                       << "garbage line\n";
  auto again = self_binary_hash();
  EXPECT_EQ(again.hash, expected_);
  EXPECT_FALSE(again.from_cache);
  EXPECT_TRUE(self_binary_hash().from_cache) << "the cache mended itself";
}

TEST_F(BinaryHashCacheTest, ACacheThatCannotBeWrittenIsIgnored) {
  // A file where the directory should be.
  std::ofstream(dir_ / "cache") << "not a directory";
  auto first = self_binary_hash();
  EXPECT_EQ(first.hash, expected_);
  EXPECT_FALSE(self_binary_hash().from_cache);
}

}  // namespace
