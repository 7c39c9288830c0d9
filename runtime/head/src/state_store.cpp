#include "state_store.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <hiredis/hiredis.h>
#include <sqlite3.h>

#include "troupe/node/files.hpp"

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

// One hash per kind: <prefix>:<kind char> maps key -> value. A batch is one
// MULTI ... EXEC, pipelined: one round trip.
class RedisStateStore final : public StateStore {
 public:
  RedisStateStore(std::string host, int port, std::string prefix)
      : host_(std::move(host)), port_(port), prefix_(std::move(prefix)) {
    connect();
  }
  ~RedisStateStore() override {
    if (context_ != nullptr) redisFree(context_);
  }

  void apply(const std::vector<StateChange>& changes) override {
    if (changes.empty()) return;
    for (int attempt = 0;; ++attempt) {
      try {
        if (context_ == nullptr) connect();
        append({"MULTI"});
        for (const auto& change : changes) {
          if (change.value) append({"HSET", hash_of(change.kind), change.key, *change.value});
          else append({"HDEL", hash_of(change.kind), change.key});
        }
        append({"EXEC"});
        // MULTI's +OK, one +QUEUED per change, then EXEC's array.
        for (std::size_t i = 0; i < changes.size() + 1; ++i) check(read_reply(), false);
        redisReply* exec = read_reply();
        bool aborted = exec->type != REDIS_REPLY_ARRAY;
        std::string why = exec->type == REDIS_REPLY_ERROR ? std::string(exec->str, exec->len) : "EXEC aborted";
        freeReplyObject(exec);
        if (aborted) throw Error(Errc::transport, "redis " + where() + ": " + why);
        return;
      } catch (const Error&) {
        // A dropped connection (a server restart): reconnect once, resend.
        redisFree(context_);
        context_ = nullptr;
        if (attempt >= 1) throw;
      }
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
    std::vector<const char*> argv;
    std::vector<std::size_t> lengths;
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
  redisContext* context_ = nullptr;
};

}  // namespace

std::unique_ptr<StateStore> open_sqlite_store(const std::filesystem::path& dir) {
  return std::make_unique<SqliteStateStore>(dir);
}

std::unique_ptr<StateStore> open_redis_store(const std::string& url, const std::string& default_prefix) {
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
  return std::make_unique<RedisStateStore>(host, port, prefix);
}

std::unique_ptr<StateStore> open_state_store(const std::string& spec, const std::string& default_prefix) {
  if (spec.rfind("redis://", 0) == 0) return open_redis_store(spec, default_prefix);
  if (spec.rfind("sqlite:", 0) == 0) return open_sqlite_store(spec.substr(7));
  return open_sqlite_store(spec);
}

}  // namespace troupe::head
