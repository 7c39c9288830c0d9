// StateStore: where the head keeps what it must not lose (issue 12): one
// record per node, actor, placement group, job, driver and stored binary,
// keyed by (kind, key), its value a compact binary blob (RecordWriter
// below). The head writes the records a message changed before it answers
// that message (Head::Impl::commit), so what a peer was told survives a
// crash of the head; a head started on the same store recovers them.
//
// Backends (docs/fault-tolerance.md, "The head's state and recovery"):
//   - SQLite in WAL mode, synchronous=FULL: one file under --state-dir,
//     embedded, no server; the default.
//   - Redis (hiredis): a hash per kind under a prefix, written in a
//     MULTI/EXEC transaction; a server on another machine lets a standby
//     head take over (--state-store redis://HOST:PORT[/prefix]).
//
// Contract: apply() makes every change of its batch durable (as far as the
// backend goes: fsync of the WAL for SQLite, the server's acknowledgement
// for Redis), all or nothing, before it returns; it throws troupe::Error
// (Errc::transport) when the store cannot be written, and the head then
// holds its replies back and retries. One thread uses a store at a time.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "troupe/runtime/error.hpp"
#include "troupe/runtime/ids.hpp"

namespace troupe::head {

// What a record is about; the character is its stored kind.
enum class RecordKind : char {
  node = 'n',
  actor = 'a',
  group = 'g',
  job = 'j',
  driver = 'd',
  binary = 'b',
  meta = 'm',  // the store's own facts ("stopped": the last head stopped cleanly)
};

struct StateRecord {
  RecordKind kind;
  std::string key;
  std::string value;
};

struct StateChange {
  RecordKind kind;
  std::string key;
  std::optional<std::string> value;  // nullopt: erase
};

class StateStore {
 public:
  virtual ~StateStore() = default;
  // Writes every change, atomically and durably (see the contract above).
  virtual void apply(const std::vector<StateChange>& changes) = 0;
  // Every record, in no particular order.
  virtual std::vector<StateRecord> load_all() = 0;
  // Erases every record.
  virtual void clear() = 0;
  // "sqlite:/path/state.db" or "redis://host:port/prefix", for logs.
  virtual std::string describe() const = 0;
  // Called on every turn of the head's loop: keeps this head the store's
  // one owner (Redis renews its lease, rate-limited). Throws troupe::Error
  // (Errc::permission_denied) when another head owns the store now; apply()
  // throws the same. The head then stops: it no longer speaks for the cluster.
  virtual void keep_alive() {}
};

// The SQLite store in `dir` (created 0700 if missing): dir/head-state.db.
std::unique_ptr<StateStore> open_sqlite_store(const std::filesystem::path& dir);
// The Redis store at `url` (redis://HOST:PORT[/prefix]); `default_prefix`
// when the URL names none. Throws troupe::Error (invalid_argument for a bad
// URL, transport when the server cannot be reached).
// The head owns a Redis store through a lease of `lease` (kRedisLease when
// zero), renewed every lease/4; a second head on the same server and prefix
// waits one lease for it, then is refused (Errc::invalid_argument).
inline constexpr std::chrono::milliseconds kRedisLease{10000};
std::unique_ptr<StateStore> open_redis_store(const std::string& url, const std::string& default_prefix,
                                             std::chrono::milliseconds lease = {});
// `spec`: "redis://..." or "sqlite:DIR" or a plain directory (SQLite).
std::unique_ptr<StateStore> open_state_store(const std::string& spec, const std::string& default_prefix,
                                             std::chrono::milliseconds redis_lease = {});

// A record's value: fixed-width little-endian integers and length-prefixed
// strings, in an order each kind's encoder and decoder agree on.
class RecordWriter {
 public:
  RecordWriter& u64(std::uint64_t value) {
    char bytes[8];
    for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>((value >> (8 * i)) & 0xff);
    out_.append(bytes, 8);
    return *this;
  }
  RecordWriter& i64(std::int64_t value) { return u64(static_cast<std::uint64_t>(value)); }
  RecordWriter& f64(double value) {
    std::uint64_t bits;
    std::memcpy(&bits, &value, sizeof bits);
    return u64(bits);
  }
  RecordWriter& str(std::string_view value) {
    u64(value.size());
    out_.append(value.data(), value.size());
    return *this;
  }
  template <typename Tag>
  RecordWriter& id(const BasicId<Tag>& value) {
    return u64(value.hi()).u64(value.lo());
  }
  std::string take() { return std::move(out_); }

 private:
  std::string out_;
};

// Reads what RecordWriter wrote; throws troupe::Error (Errc::protocol) when
// the record ends early (a damaged or foreign store).
class RecordReader {
 public:
  explicit RecordReader(std::string_view in) : in_(in) {}
  std::uint64_t u64() {
    need(8);
    std::uint64_t value = 0;
    for (int i = 0; i < 8; ++i) value |= static_cast<std::uint64_t>(static_cast<unsigned char>(in_[pos_ + i])) << (8 * i);
    pos_ += 8;
    return value;
  }
  std::int64_t i64() { return static_cast<std::int64_t>(u64()); }
  double f64() {
    std::uint64_t bits = u64();
    double value;
    std::memcpy(&value, &bits, sizeof value);
    return value;
  }
  std::string str() {
    std::uint64_t size = u64();
    need(size);
    std::string value(in_.substr(pos_, size));
    pos_ += size;
    return value;
  }
  template <typename Id>
  Id id() {
    std::uint64_t hi = u64();
    std::uint64_t lo = u64();
    return Id(hi, lo);
  }
  bool done() const { return pos_ == in_.size(); }

 private:
  void need(std::uint64_t size) const {
    if (size > in_.size() - pos_) throw Error(Errc::protocol, "a head state record ends early");
  }
  std::string_view in_;
  std::size_t pos_ = 0;
};

}  // namespace troupe::head
