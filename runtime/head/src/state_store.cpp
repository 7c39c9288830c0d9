#include "state_store.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <csignal>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>

#include <hiredis/hiredis.h>
#include <sqlite3.h>

#include "troupe/node/files.hpp"
#include "troupe/runtime/logging.hpp"

namespace troupe::head {
namespace {

// --- SQLite -------------------------------------------------------------------------

class SqliteStateStore final : public StateStore {
 public:
  explicit SqliteStateStore(const std::filesystem::path& dir) : path_(dir / "head-state.db") {
    node::ensure_private_directory(dir);
    lock_owner(dir / "head-state.lock");
    // Private (it holds the hosts' keys): SQLite would create it 0644, and
    // gives its -wal and -shm files the database's mode.
    if (int fd = ::open(path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600); fd >= 0) ::close(fd);
    if (sqlite3_open_v2(path_.c_str(), &db_, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX,
                        nullptr) != SQLITE_OK) {
      std::string why = db_ != nullptr ? sqlite3_errmsg(db_) : "out of memory";
      sqlite3_close(db_);
      db_ = nullptr;
      throw Error(Errc::transport, "cannot open the head's state store " + path_.string() + ": " + why);
    }
    sqlite3_busy_timeout(db_, 5000);
    // WAL: a commit appends to the log and fsyncs it (synchronous=FULL),
    // one fsync per transaction; readers never block the writer.
    exec("PRAGMA journal_mode=WAL");
    exec("PRAGMA synchronous=FULL");
    exec("CREATE TABLE IF NOT EXISTS records (kind INTEGER NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL, "
         "PRIMARY KEY (kind, key)) WITHOUT ROWID");
    put_ = prepare("INSERT OR REPLACE INTO records (kind, key, value) VALUES (?1, ?2, ?3)");
    erase_ = prepare("DELETE FROM records WHERE kind = ?1 AND key = ?2");
  }
  ~SqliteStateStore() override {
    sqlite3_finalize(put_);
    sqlite3_finalize(erase_);
    sqlite3_close(db_);
    if (lock_fd_ >= 0) ::close(lock_fd_);  // releases the lock
  }

  void apply(const std::vector<StateChange>& changes) override {
    if (changes.empty()) return;
    exec("BEGIN IMMEDIATE");
    try {
      for (const auto& change : changes) {
        sqlite3_stmt* statement = change.value ? put_ : erase_;
        sqlite3_reset(statement);
        sqlite3_bind_int(statement, 1, static_cast<int>(change.kind));
        sqlite3_bind_text(statement, 2, change.key.data(), static_cast<int>(change.key.size()), SQLITE_STATIC);
        if (change.value) {
          sqlite3_bind_blob(statement, 3, change.value->data(), static_cast<int>(change.value->size()),
                            SQLITE_STATIC);
        }
        if (sqlite3_step(statement) != SQLITE_DONE) fail("write");
      }
      exec("COMMIT");
    } catch (...) {
      sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
      throw;
    }
  }

  std::vector<StateRecord> load_all() override {
    std::vector<StateRecord> records;
    sqlite3_stmt* statement = prepare("SELECT kind, key, value FROM records");
    int rc;
    while ((rc = sqlite3_step(statement)) == SQLITE_ROW) {
      StateRecord record;
      record.kind = static_cast<RecordKind>(sqlite3_column_int(statement, 0));
      record.key.assign(reinterpret_cast<const char*>(sqlite3_column_text(statement, 1)),
                        static_cast<std::size_t>(sqlite3_column_bytes(statement, 1)));
      record.value.assign(static_cast<const char*>(sqlite3_column_blob(statement, 2)),
                          static_cast<std::size_t>(sqlite3_column_bytes(statement, 2)));
      records.push_back(std::move(record));
    }
    sqlite3_finalize(statement);
    if (rc != SQLITE_DONE) fail("read");
    return records;
  }

  void clear() override { exec("DELETE FROM records"); }

  std::string describe() const override { return "sqlite:" + path_.string(); }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    throw Error(Errc::transport, "the head's state store " + path_.string() + ": cannot " + what + ": " +
                                     sqlite3_errmsg(db_));
  }
  void exec(const char* sql) {
    if (sqlite3_exec(db_, sql, nullptr, nullptr, nullptr) != SQLITE_OK) fail(std::string("run ") + sql);
  }
  sqlite3_stmt* prepare(const char* sql) {
    sqlite3_stmt* statement = nullptr;
    if (sqlite3_prepare_v2(db_, sql, -1, &statement, nullptr) != SQLITE_OK) fail(std::string("prepare ") + sql);
    return statement;
  }

  // One head per store: two heads writing one store would each overwrite
  // the other's view of the cluster. An exclusive flock, held for this
  // store's life and released by the kernel whatever ends the process, so a
  // killed head never blocks its restart. The file names the holder's pid.
  void lock_owner(const std::filesystem::path& lock_path) {
    lock_fd_ = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (lock_fd_ < 0)
      throw Error(Errc::transport, "cannot open " + lock_path.string() + ": " + std::strerror(errno));
    if (::flock(lock_fd_, LOCK_EX | LOCK_NB) != 0) {
      const int why = errno;
      char holder[32] = {};
      (void)::pread(lock_fd_, holder, sizeof holder - 1, 0);
      ::close(lock_fd_);
      lock_fd_ = -1;
      if (why == EWOULDBLOCK) {
        std::string pid(holder);
        while (!pid.empty() && (pid.back() == '\n' || pid.back() == ' ')) pid.pop_back();
        throw Error(Errc::invalid_argument,
                    "another head" + (pid.empty() ? std::string() : " (pid " + pid + ")") +
                        " is using the state store " + path_.string() +
                        "; stop it first (troupe stop), or give this head its own --state-dir");
      }
      throw Error(Errc::transport, "cannot lock " + lock_path.string() + ": " + std::strerror(why));
    }
    const std::string pid = std::to_string(::getpid()) + "\n";
    if (::ftruncate(lock_fd_, 0) == 0) (void)::pwrite(lock_fd_, pid.data(), pid.size(), 0);
  }

  std::filesystem::path path_;
  int lock_fd_ = -1;
  sqlite3* db_ = nullptr;
  sqlite3_stmt* put_ = nullptr;
  sqlite3_stmt* erase_ = nullptr;
};

// --- Redis ----------------------------------------------------------------------------

// One hash per kind: <prefix>:<kind char> maps key -> value.
//
// One head per store, as SQLite's flock gives: the head owns the store
// through a lease, the key <prefix>:owner holding "HOST PID RANDOM" with a
// time to live (kLeaseMs by default). Every batch is one Lua script that
// checks the owner, renews the lease and writes the changes, atomically in
// the server: a head whose lease another head took over cannot write one
// more record (it gets Errc::permission_denied and stops). keep_alive()
// renews the lease between batches. A head that stops releases it; one
// that dies leaves it to expire, unless the next head runs on the same host
// and finds the holder's pid gone: it then takes over at once.
class RedisStateStore final : public StateStore {
 public:
  RedisStateStore(std::string host, int port, std::string prefix, std::chrono::milliseconds lease)
      : host_(std::move(host)), port_(port), prefix_(std::move(prefix)), lease_(lease) {
    connect();
    try {
      acquire();
    } catch (...) {
      // No destructor runs for a store that never was: close the connection here.
      redisFree(context_);
      context_ = nullptr;
      throw;
    }
  }
  ~RedisStateStore() override {
    try {
      if (context_ == nullptr) connect();
      append({"EVAL", kReleaseScript, "1", owner_key(), token_});
      freeReplyObject(read_reply());
    } catch (const std::exception&) {
      // the lease expires by itself
    }
    if (context_ != nullptr) redisFree(context_);
  }

  void apply(const std::vector<StateChange>& changes) override {
    if (changes.empty()) return;
    // EVAL script 1 owner-key token lease-ms then (op, hash, key, value) per change.
    std::vector<std::string> words{"EVAL", kApplyScript, "2", owner_key(), epoch_key(), token_,
                                   std::to_string(lease_.count()), epoch_};
    words.reserve(words.size() + 4 * changes.size());
    for (const auto& change : changes) {
      words.push_back(change.value ? "S" : "D");
      words.push_back(hash_of(change.kind));
      words.push_back(change.key);
      words.push_back(change.value ? *change.value : std::string());
    }
    for (int attempt = 0;; ++attempt) {
      try {
        if (context_ == nullptr) connect();
        append(words);
        redisReply* reply = read_reply();
        check_owner_reply(reply);
        renewed_ = std::chrono::steady_clock::now();
        return;
      } catch (const Error& error) {
        if (error.code() == Errc::permission_denied) throw;
        // A dropped connection (a server restart): reconnect once, resend.
        redisFree(context_);
        context_ = nullptr;
        if (attempt >= 1) throw;
      }
    }
  }

  void keep_alive() override {
    if (std::chrono::steady_clock::now() - renewed_ < lease_ / 4) return;
    try {
      if (context_ == nullptr) connect();
      append({"EVAL", kRenewScript, "2", owner_key(), epoch_key(), token_, std::to_string(lease_.count()), epoch_});
      check_owner_reply(read_reply());
      renewed_ = std::chrono::steady_clock::now();
    } catch (const Error& error) {
      if (error.code() == Errc::permission_denied) throw;
      // The server is away: the next batch or renewal tries again (and
      // finds out then if another head took the store meanwhile).
      if (context_ != nullptr) redisFree(context_);
      context_ = nullptr;
    }
  }

  std::vector<StateRecord> load_all() override {
    if (context_ == nullptr) connect();
    std::vector<StateRecord> records;
    for (RecordKind kind : {RecordKind::node, RecordKind::actor, RecordKind::group, RecordKind::job,
                            RecordKind::driver, RecordKind::binary, RecordKind::meta}) {
      append({"HGETALL", hash_of(kind)});
      redisReply* reply = read_reply();
      if (reply->type == REDIS_REPLY_ARRAY) {
        for (std::size_t i = 0; i + 1 < reply->elements; i += 2) {
          records.push_back({kind, std::string(reply->element[i]->str, reply->element[i]->len),
                             std::string(reply->element[i + 1]->str, reply->element[i + 1]->len)});
        }
      }
      freeReplyObject(reply);
    }
    return records;
  }

  void clear() override {
    if (context_ == nullptr) connect();
    for (RecordKind kind : {RecordKind::node, RecordKind::actor, RecordKind::group, RecordKind::job,
                            RecordKind::driver, RecordKind::binary, RecordKind::meta}) {
      append({"DEL", hash_of(kind)});
      check(read_reply(), true);
    }
  }

  std::string describe() const override { return "redis://" + where() + "/" + prefix_; }

 private:
  // KEYS[1] the owner key, KEYS[2] the epoch key; ARGV[1] our token,
  // ARGV[2] the lease in ms, ARGV[3] the epoch we took the store in. A
  // lapsed lease (this head stalled) is taken again if no other head took
  // the store since (the epoch is ours still); another owner fences us.
#define TROUPE_REDIS_OWNER_CHECK                                                                                           \
  "local owner = redis.call('GET', KEYS[1]) "                                                                \
  "if owner == false and redis.call('GET', KEYS[2]) == ARGV[3] then "                                         \
  "  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) owner = ARGV[1] end "                                 \
  "if owner ~= ARGV[1] then return redis.error_reply('TROUPE_NOT_OWNER ' .. tostring(owner)) end "            \
  "redis.call('PEXPIRE', KEYS[1], ARGV[2]) "
  static constexpr const char* kApplyScript =
      TROUPE_REDIS_OWNER_CHECK
      "for i = 4, #ARGV, 4 do "
      "  if ARGV[i] == 'S' then redis.call('HSET', ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]) "
      "  else redis.call('HDEL', ARGV[i + 1], ARGV[i + 2]) end "
      "end "
      "return 'OK'";
  static constexpr const char* kRenewScript = TROUPE_REDIS_OWNER_CHECK "return 'OK'";
#undef TROUPE_REDIS_OWNER_CHECK
  // Takes a free store: {1, epoch} (a new epoch), or {0, holder}.
  static constexpr const char* kAcquireScript =
      "local owner = redis.call('GET', KEYS[1]) "
      "if owner ~= false then return {0, owner} end "
      "redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) "
      "return {1, tostring(redis.call('INCR', KEYS[2]))}";
  static constexpr const char* kReleaseScript =
      "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end return 'OK'";
  // Deletes the lease only if it still names that (dead) holder.
  static constexpr const char* kTakeOverScript =
      "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end return 'OK'";

  std::string owner_key() const { return prefix_ + ":owner"; }
  std::string epoch_key() const { return prefix_ + ":owner-epoch"; }

  // "HOST PID" of a token, for messages.
  static std::string holder_of(const std::string& token) {
    auto last = token.rfind(' ');
    return last == std::string::npos ? token : token.substr(0, last);
  }

  static std::string my_host() {
    char name[256] = {};
    if (::gethostname(name, sizeof name - 1) != 0) return "unknown";
    return name;
  }

  // The holder ran on this host and its process is gone (killed, crashed).
  static bool holder_is_dead_here(const std::string& token) {
    std::istringstream in(token);
    std::string host;
    long pid = 0;
    if (!(in >> host >> pid) || host != my_host() || pid <= 0 || pid == ::getpid()) return false;
    return ::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH;
  }

  void acquire() {
    unsigned char random[8];
    std::ifstream("/dev/urandom", std::ios::binary).read(reinterpret_cast<char*>(random), sizeof random);
    char hex[17];
    for (int i = 0; i < 8; ++i) std::snprintf(hex + 2 * i, 3, "%02x", random[i]);
    token_ = my_host() + " " + std::to_string(::getpid()) + " " + hex;
    // A live holder renews its lease every lease/4: waiting one lease (and
    // a little) tells a live head from a dead one.
    const auto until = std::chrono::steady_clock::now() + lease_ + std::chrono::milliseconds(500);
    bool told = false;
    for (;;) {
      append({"EVAL", kAcquireScript, "2", owner_key(), epoch_key(), token_, std::to_string(lease_.count())});
      redisReply* reply = read_reply();
      if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2 || reply->element[0]->type != REDIS_REPLY_INTEGER ||
          reply->element[1]->type != REDIS_REPLY_STRING) {
        std::string why = reply->type == REDIS_REPLY_ERROR ? std::string(reply->str, reply->len) : "unexpected reply";
        freeReplyObject(reply);
        throw Error(Errc::transport, "redis " + where() + ": taking the state store: " + why);
      }
      const bool got = reply->element[0]->integer == 1;
      std::string value(reply->element[1]->str, reply->element[1]->len);
      freeReplyObject(reply);
      if (got) {
        epoch_ = std::move(value);
        renewed_ = std::chrono::steady_clock::now();
        return;
      }
      std::string holder = std::move(value);
      if (holder_is_dead_here(holder)) {
        TROUPE_LOG_WARN("head: the previous head on {} ({}) is gone; taking its state store over", describe(),
                        holder_of(holder));
        append({"EVAL", kTakeOverScript, "1", owner_key(), holder});
        freeReplyObject(read_reply());
        continue;
      }
      if (std::chrono::steady_clock::now() >= until) {
        throw Error(Errc::invalid_argument,
                    "another head (" + holder_of(holder) + ") is using the state store " + describe() +
                        "; stop it first (troupe stop), or give this head its own prefix "
                        "(--state-store redis://HOST:PORT/PREFIX)");
      }
      if (!told) {
        told = true;
        TROUPE_LOG_INFO("head: the state store {} is held by another head ({}); waiting up to {} ms for its lease",
                        describe(), holder_of(holder), lease_.count());
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  }

  // An OK, or the owner script's refusal (permission_denied), or another error (transport).
  void check_owner_reply(redisReply* reply) {
    const bool error = reply->type == REDIS_REPLY_ERROR;
    std::string why = error ? std::string(reply->str, reply->len) : std::string();
    freeReplyObject(reply);
    if (!error) return;
    const std::string refusal = "TROUPE_NOT_OWNER ";
    if (auto at = why.find(refusal); at != std::string::npos) {
      std::string holder = why.substr(at + refusal.size());
      throw Error(Errc::permission_denied,
                  "this head no longer owns the state store " + describe() + ": " +
                      (holder == "false" ? std::string("its lease expired")
                                         : "another head (" + holder_of(holder) + ") took it over"));
    }
    throw Error(Errc::transport, "redis " + where() + ": " + why);
  }

  std::string where() const { return host_ + ":" + std::to_string(port_); }
  std::string hash_of(RecordKind kind) const { return prefix_ + ":" + std::string(1, static_cast<char>(kind)); }

  void connect() {
    timeval timeout{5, 0};
    context_ = redisConnectWithTimeout(host_.c_str(), port_, timeout);
    if (context_ == nullptr || context_->err != 0) {
      std::string why = context_ != nullptr ? context_->errstr : "out of memory";
      if (context_ != nullptr) redisFree(context_);
      context_ = nullptr;
      throw Error(Errc::transport, "cannot reach the head's state store at redis://" + where() + ": " + why);
    }
    redisSetTimeout(context_, timeout);
  }

  void append(std::initializer_list<std::string_view> words) {
    append(std::vector<std::string_view>(words.begin(), words.end()));
  }
  void append(const std::vector<std::string>& words) {
    append(std::vector<std::string_view>(words.begin(), words.end()));
  }
  void append(const std::vector<std::string_view>& words) {
    std::vector<const char*> argv;
    std::vector<std::size_t> lengths;
    argv.reserve(words.size());
    lengths.reserve(words.size());
    for (auto word : words) {
      argv.push_back(word.data());
      lengths.push_back(word.size());
    }
    if (redisAppendCommandArgv(context_, static_cast<int>(argv.size()), argv.data(), lengths.data()) != REDIS_OK) {
      throw Error(Errc::transport, "redis " + where() + ": " + context_->errstr);
    }
  }

  redisReply* read_reply() {
    void* reply = nullptr;
    if (redisGetReply(context_, &reply) != REDIS_OK || reply == nullptr) {
      throw Error(Errc::transport, "redis " + where() + ": " + (context_->err != 0 ? context_->errstr : "no reply"));
    }
    return static_cast<redisReply*>(reply);
  }

  void check(redisReply* reply, bool any) {
    bool error = reply->type == REDIS_REPLY_ERROR;
    std::string why = error ? std::string(reply->str, reply->len) : std::string();
    freeReplyObject(reply);
    (void)any;
    if (error) throw Error(Errc::transport, "redis " + where() + ": " + why);
  }

  std::string host_;
  int port_;
  std::string prefix_;
  std::chrono::milliseconds lease_;
  std::string token_;
  std::string epoch_;  // the owner epoch this head took the store in
  std::chrono::steady_clock::time_point renewed_{};
  redisContext* context_ = nullptr;
};

}  // namespace

std::unique_ptr<StateStore> open_sqlite_store(const std::filesystem::path& dir) {
  return std::make_unique<SqliteStateStore>(dir);
}

std::unique_ptr<StateStore> open_redis_store(const std::string& url, const std::string& default_prefix,
                                             std::chrono::milliseconds lease) {
  const std::string scheme = "redis://";
  if (url.rfind(scheme, 0) != 0) throw Error(Errc::invalid_argument, "a Redis store is redis://HOST:PORT[/prefix]");
  std::string rest = url.substr(scheme.size());
  std::string prefix = default_prefix;
  if (auto slash = rest.find('/'); slash != std::string::npos) {
    if (slash + 1 < rest.size()) prefix = rest.substr(slash + 1);
    rest = rest.substr(0, slash);
  }
  auto colon = rest.rfind(':');
  std::string host = colon == std::string::npos ? rest : rest.substr(0, colon);
  int port = 6379;
  if (colon != std::string::npos) {
    try {
      port = std::stoi(rest.substr(colon + 1));
    } catch (const std::exception&) {
      port = -1;
    }
  }
  if (host.empty() || port <= 0 || port > 65535)
    throw Error(Errc::invalid_argument, "bad Redis state store \"" + url + "\" (want redis://HOST:PORT[/prefix])");
  if (prefix.empty()) prefix = "troupe";
  if (lease.count() <= 0) lease = kRedisLease;
  return std::make_unique<RedisStateStore>(host, port, prefix, lease);
}

std::unique_ptr<StateStore> open_state_store(const std::string& spec, const std::string& default_prefix,
                                             std::chrono::milliseconds redis_lease) {
  if (spec.rfind("redis://", 0) == 0) return open_redis_store(spec, default_prefix, redis_lease);
  if (spec.rfind("sqlite:", 0) == 0) return open_sqlite_store(spec.substr(7));
  return open_sqlite_store(spec);
}

}  // namespace troupe::head
