// ObjectTable: the objects this process serves to others, by id.
//   - held: results of the calls it ran (an actor host), kept until their
//     owner releases them (a `release` message), and objects it lends to
//     a callee (ObjectRef parameters), kept until that call is answered;
//   - wanted: fetches of an object not produced yet (the call producing it
//     comes on another connection), parked until it is held;
//   - loans: how many calls in flight borrow each lent entry;
//   - releases: the ids this process no longer needs from other processes,
//     batched per holder until the next tick sends them.
//
// Contract: every method may be called from any thread (one mutex). An
// entry leaving the table (released, or its last loan ended) is reported
// to `on_drop` while that mutex is held, so that a publish racing with the
// drop can be undone in order (drop_unless_lent). Parked fetches are
// completed outside the mutex.
#pragma once

#include <chrono>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "troupe/runtime/object_state.hpp"
#include "wire_util.hpp"

namespace troupe::detail {

class ObjectTable {
 public:
  using Drop = std::function<void(const ObjectId&)>;
  explicit ObjectTable(Drop on_drop) : on_drop_(std::move(on_drop)) {}

  // Holds `state` under `id` (until released) and completes the fetches
  // parked for it.
  void hold(const ObjectId& id, const StatePtr& state);
  // The state held under `id`, or a new one parked until it is held.
  // Peers choose the ids: at most kMaxParked states wait at a time (past
  // that, Error(not_found)), and expire_waits() fails those that waited
  // too long.
  StatePtr find_or_wait(const ObjectId& id);
  static constexpr std::size_t kMaxParked = 16384;
  // Fails with object_lost the parked states that waited `max_wait` or
  // more (their object was never produced here).
  void expire_waits(std::chrono::steady_clock::duration max_wait);
  std::size_t parked() const;
  // The state held under `id`, or null.
  StatePtr find(const ObjectId& id);
  // Lends `ref` under `id` for one more call; the first loan holds it (and
  // completes parked fetches). Returns whether this was the first loan.
  bool lend(const ObjectId& id, const StatePtr& ref);
  bool is_lent(const ObjectId& id);
  // Reports `id` to on_drop unless it is lent (a loan that ended while its
  // object was being published).
  void drop_unless_lent(const ObjectId& id);
  // Ends one loan of each id; an entry whose last loan ended leaves.
  void end_loans(const std::vector<ObjectId>& lent);
  // Loans kept past a call's reply (CallReply.loansKept, or a reply's
  // refs): `borrowed` stays referenced and `lent` served until
  // return_loans names (key, call_id) (with `borrower`, the actor that
  // borrowed, or nil for a reply's receiver), or until `deadline` (every
  // fetch of them has ended by then).
  void keep_loans(const WorkerId& key, std::uint64_t call_id, const ActorId& borrower,
                  std::vector<StatePtr> borrowed, std::vector<ObjectId> lent,
                  std::chrono::steady_clock::time_point deadline);
  // Ends the loans kept for (key, call_id) if `borrower` is who borrowed
  // them; false if there were none (returned already, or a forgery).
  bool return_loans(const WorkerId& key, std::uint64_t call_id, const ActorId& borrower);
  void expire_loans(std::chrono::steady_clock::time_point now);
  std::size_t kept_loans() const;
  // The owner released these: they leave (held or parked).
  void release(const std::vector<ObjectId>& ids);

  // Remembers that `id`, held at `location`, is no longer needed here.
  void queue_release(const ObjectId& id, const std::string& location);
  // The releases queued since the last call, per holder address.
  std::map<std::string, std::vector<ObjectId>> take_releases();

  void clear();

 private:
  std::vector<StatePtr> hold_locked(const ObjectId& id, const StatePtr& state);

  Drop on_drop_;
  mutable std::mutex mutex_;
  std::map<ObjectId, StatePtr> table_;
  struct Wanted {
    std::vector<StatePtr> states;
    std::chrono::steady_clock::time_point since;
  };
  std::map<ObjectId, Wanted> wanted_;  // fetched before produced
  std::size_t parked_ = 0;             // states in wanted_
  std::map<ObjectId, int> loans_;                     // table_ entries lent to callees: count
  std::map<std::string, std::vector<ObjectId>> releases_;
  struct KeptLoans {
    ActorId borrower;
    std::vector<StatePtr> borrowed;
    std::vector<ObjectId> lent;
    std::chrono::steady_clock::time_point deadline;
  };
  std::map<std::pair<WorkerId, std::uint64_t>, KeptLoans> kept_;
};

}  // namespace troupe::detail
