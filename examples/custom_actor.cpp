// custom_actor: how to write your own actor. A key-value store that lives in
// the runtime, called through typed futures.
#include <chrono>
#include <iostream>
#include <map>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <troupe/troupe.hpp>

using namespace std::chrono_literals;

// 1. An actor is a plain class. Its state needs no locks: calls to one actor
//    run one at a time, in the order each caller made them.
class KvStore {
 public:
  explicit KvStore(std::string owner) : owner_(std::move(owner)) {}

  void put(const std::string& key, std::string value) { data_[key] = std::move(value); }

  // An exception thrown here reaches the caller as troupe::TaskError.
  std::string get(const std::string& key) const {
    auto it = data_.find(key);
    if (it == data_.end()) throw std::out_of_range("no key '" + key + "' in " + owner_ + "'s store");
    return it->second;
  }

  std::string slow_get(const std::string& key, int delay_ms) const {
    std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
    return get(key);
  }

  int size() const { return static_cast<int>(data_.size()); }

 private:
  std::string owner_;
  std::map<std::string, std::string> data_;
};

// 2. Register the class, its constructor's parameter types and the methods
//    callers may use, once, at global scope.
TROUPE_ACTOR(KvStore, (std::string), put, get, slow_get, size);

int main(int argc, char** argv) {
  troupe::init(argc, argv);  // local mode; reads and removes --troupe-* flags

  // 3. Create it. A name makes it findable from anywhere in the job.
  troupe::ActorOptions options;
  options.name = "kv";
  auto store = troupe::actor<KvStore>(options, std::string("alice"));

  // 4. Calls return ObjectRefs at once; when_all waits for a batch of them.
  std::vector<troupe::ObjectRef<void>> writes;
  for (const char* fruit : {"apple", "banana", "cherry"}) {
    writes.push_back(store.call<&KvStore::put>(std::string(fruit), std::string(fruit) + " pie"));
  }
  troupe::when_all(writes).get();

  // 5. Look the actor up by name, e.g. from code that was not handed `store`.
  auto same = troupe::get_actor<KvStore>("kv");
  std::cout << "kv holds " << same.call<&KvStore::size>().get() << " keys\n";

  // 6. A ref can be an argument: the copy waits for the get, with no round
  //    trip through this thread.
  auto apple = same.call<&KvStore::get>(std::string("apple"));
  same.call<&KvStore::put>(std::string("apple copy"), apple).get();
  std::cout << "apple copy = " << same.call<&KvStore::get>(std::string("apple copy")).get() << '\n';

  // 7. Errors travel in the ref and are thrown by get(), typed.
  try {
    (void)store.call<&KvStore::get>(std::string("durian")).get();
  } catch (const troupe::TaskError& e) {
    std::cout << "TaskError (" << e.remote_type() << "): " << e.message() << '\n';
  }

  // 8. get(timeout) throws TimeoutError when the deadline passes; the call
  //    itself goes on, and a later get() still has its value.
  auto slow = store.call<&KvStore::slow_get>(std::string("banana"), 300);
  try {
    (void)slow.get(50ms);
  } catch (const troupe::TimeoutError& e) {
    std::cout << "TimeoutError: " << e.message() << '\n';
  }
  std::cout << "banana = " << slow.get(5s) << " (after waiting longer)\n";

  troupe::shutdown();  // kills the actors; pending calls fail with CancelledError
  return 0;
}
