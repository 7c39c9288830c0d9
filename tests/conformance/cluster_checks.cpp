// Promises of the cluster-facing API that must hold the same in both modes
// (issue 13): named placement groups (unique, listed, looked up), an actor
// ending itself (exit_actor), its incarnation, its GPUs in both numberings,
// per-actor and per-job environment variables, name namespaces.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "conformance/conformance.hpp"

namespace conformance_cluster {

// Looks placement groups up from inside an actor (in a cluster: another
// process of the same job).
class GroupFinder {
 public:
  GroupFinder() = default;
  std::string find(const std::string& name) {
    auto group = troupe::get_placement_group(name);
    group.ready().get(troupe::conformance::kWait);
    return group.name() + "/" + std::to_string(group.bundle_count());
  }
  long count_named(const std::string& name) {
    auto all = troupe::placement_groups();
    return std::count_if(all.begin(), all.end(), [&](const troupe::PlacementGroup& g) { return g.name() == name; });
  }
};

// Knows which instance it is, and can end itself.
class Mortal {
 public:
  Mortal() : born_as_(troupe::actor_incarnation()) {}
  int incarnation() const { return troupe::actor_incarnation(); }
  int born_as() const { return born_as_; }
  long leave(long value) {
    troupe::exit_actor();
    return value * 2;  // exit_actor() returns; this result is delivered
  }
  long echo(long value) { return value; }
  std::vector<int> visible_gpus() const { return troupe::visible_gpu_ids(); }
  std::vector<int> node_gpus() const { return troupe::node_gpu_ids(); }
  std::string env(const std::string& name) const {
    const char* value = std::getenv(name.c_str());
    return value ? value : "<unset>";
  }
  // The same variable as seen by an actor this actor creates.
  std::string child_env(const std::string& name) const {
    auto child = troupe::actor<Mortal>();
    return child.call<&Mortal::env>(name).get(troupe::conformance::kWait);
  }

 private:
  int born_as_;
};

// Holds its caller for a while.
class Napper {
 public:
  Napper() = default;
  long nap(long ms) {
    std::this_thread::sleep_for(std::chrono::milliseconds(ms));
    return ms;
  }
};

// Calls a Napper it looks up by name (in a cluster: from another process).
class NapCaller {
 public:
  NapCaller() = default;
  // Two calls at once through a handle looked up by name: "ok/ok", or how
  // the second failed.
  std::string two_calls(const std::string& name) {
    auto napper = troupe::get_actor<Napper>(name);
    auto first = napper.call<&Napper::nap>(400L);
    std::string second;
    try {
      second = std::to_string(napper.call<&Napper::nap>(1L).get(troupe::conformance::kWait));
    } catch (const troupe::Error& e) {
      second = std::string(troupe::to_string(e.code()));
    }
    return std::to_string(first.get(troupe::conformance::kWait)) + "/" + second;
  }
};

}  // namespace conformance_cluster

TROUPE_ACTOR(conformance_cluster::Napper, (), nap);
TROUPE_ACTOR(conformance_cluster::NapCaller, (), two_calls);
TROUPE_ACTOR(conformance_cluster::GroupFinder, (), find, count_named);
TROUPE_ACTOR(conformance_cluster::Mortal, (), incarnation, born_as, leave, echo, visible_gpus, node_gpus, env,
             child_env);

namespace {

using conformance_cluster::GroupFinder;
using conformance_cluster::NapCaller;
using conformance_cluster::Napper;
using conformance_cluster::Mortal;
using namespace troupe::conformance;

troupe::ResourceSpec one_cpu() { return troupe::ResourceSpec{{{"CPU", 1}}, {}, 0}; }

// Waits (bounded) until `done` holds.
template <class F>
bool eventually(F done) {
  const auto until = std::chrono::steady_clock::now() + kWait;
  while (std::chrono::steady_clock::now() < until) {
    if (done()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return done();
}

TEST(ClusterPlacementGroups, ADuplicateNameIsRefusedAndAGroupIsFoundByNameUntilRemoved) {
  const std::string name = "conformance-cluster-pg-names";
  auto group = troupe::placement_group({one_cpu()}, troupe::PlacementStrategy::pack, name);
  group.ready().get(kWait);
  EXPECT_EQ(group.name(), name);
  try {
    (void)troupe::placement_group({one_cpu()}, troupe::PlacementStrategy::pack, name);
    FAIL() << "a second group named " << name << " was accepted (" << mode_name() << ")";
  } catch (const troupe::Error& e) {
    EXPECT_EQ(e.code(), troupe::Errc::invalid_argument) << e.what();
    EXPECT_NE(std::string(e.what()).find(name), std::string::npos) << e.what();
  }
  auto found = troupe::get_placement_group(name);
  EXPECT_EQ(found.id(), group.id()) << mode_name();
  EXPECT_EQ(found.bundle_count(), 1u);
  auto all = troupe::placement_groups();
  EXPECT_EQ(std::count_if(all.begin(), all.end(), [&](const troupe::PlacementGroup& g) { return g.name() == name; }),
            1)
      << mode_name();
  // Another process of the job (an actor) finds it too.
  auto finder = troupe::actor<GroupFinder>();
  EXPECT_EQ(finder.call<&GroupFinder::find>(name).get(kWait), name + "/1") << mode_name();
  EXPECT_EQ(finder.call<&GroupFinder::count_named>(name).get(kWait), 1) << mode_name();

  troupe::remove_placement_group(group);
  try {
    (void)troupe::get_placement_group(name);
    FAIL() << "a removed group was still found by name (" << mode_name() << ")";
  } catch (const troupe::Error& e) {
    EXPECT_EQ(e.code(), troupe::Errc::not_found) << e.what();
  }
  EXPECT_EQ(finder.call<&GroupFinder::count_named>(name).get(kWait), 0) << mode_name();
  // The name is free again.
  auto again = troupe::placement_group({one_cpu()}, troupe::PlacementStrategy::pack, name);
  again.ready().get(kWait);
  EXPECT_EQ(troupe::get_placement_group(name).core(), again.core()) << mode_name();
  troupe::remove_placement_group(again);
}

TEST(ClusterActorExit, TheExitingCallReturnsLaterCallsFailAndTheActorIsNotRestarted) {
  auto mortal = troupe::actor<Mortal>({.max_restarts = 3});
  EXPECT_EQ(mortal.call<&Mortal::echo>(1L).get(kWait), 1);
  auto last = mortal.call<&Mortal::leave>(21L);
  EXPECT_EQ(last.get(kWait), 42) << "the call that exits delivers its result (" << mode_name() << ")";
  // Calls made after it fail with ActorDiedError saying it exited, and keep
  // failing: max_restarts does not bring it back.
  ASSERT_TRUE(eventually([&] { return mortal.state() == troupe::ActorState::dead; }))
      << mode_name() << ": " << troupe::to_string(mortal.state()) << " " << mortal.status_message();
  try {
    (void)mortal.call<&Mortal::echo>(2L).get(kWait);
    FAIL() << "a call after exit_actor() succeeded (" << mode_name() << ")";
  } catch (const troupe::ActorDiedError& e) {
    EXPECT_NE(std::string(e.what()).find("exit_actor"), std::string::npos) << e.what();
  }
  EXPECT_NE(mortal.status_message().find("exit_actor"), std::string::npos) << mortal.status_message();
  EXPECT_EQ(mortal.restarts(), 0) << mode_name();
  EXPECT_EQ(mortal.state(), troupe::ActorState::dead);
}

TEST(ClusterActorExit, ExitActorOutsideAnActorMethodIsRefused) {
  try {
    troupe::exit_actor();
    FAIL() << "exit_actor() outside an actor returned";
  } catch (const troupe::Error& e) {
    EXPECT_EQ(e.code(), troupe::Errc::invalid_argument) << e.what();
  }
  EXPECT_THROW((void)troupe::actor_incarnation(), troupe::Error);
}

TEST(ClusterActorIncarnation, AnActorKnowsHowOftenItWasRestarted) {
  auto mortal = troupe::actor<Mortal>({.max_restarts = 2});
  EXPECT_EQ(mortal.call<&Mortal::incarnation>().get(kWait), 0) << mode_name();
  EXPECT_EQ(mortal.call<&Mortal::born_as>().get(kWait), 0) << mode_name();
  for (int restart = 1; restart <= 2; ++restart) {
    troupe::kill(mortal, /*no_restart=*/false);
    // Calls made while it restarts may fail (no retries); ask until the new
    // instance answers.
    int seen = -1;
    ASSERT_TRUE(eventually([&] {
      try {
        seen = mortal.call<&Mortal::incarnation>().get(kWait);
      } catch (const troupe::ActorDiedError&) {
        return false;
      }
      return seen == restart;
    })) << mode_name() << ": incarnation " << seen << " after " << restart << " restarts";
    EXPECT_EQ(mortal.call<&Mortal::born_as>().get(kWait), restart) << "the constructor sees it too";
    EXPECT_EQ(mortal.restarts(), restart) << "the handle says the same";
  }
}

TEST(ClusterActorGpus, VisibleIdsAreTheProcessesDeviceOrdinalsAndNodeIdsAreTheHandles) {
  // Without GPUs both views are empty.
  auto cpu_only = troupe::actor<Mortal>();
  EXPECT_TRUE(cpu_only.call<&Mortal::visible_gpus>().get(kWait).empty());
  EXPECT_TRUE(cpu_only.call<&Mortal::node_gpus>().get(kWait).empty());
  EXPECT_TRUE(troupe::visible_gpu_ids().empty()) << "outside actors";
  EXPECT_TRUE(troupe::node_gpu_ids().empty()) << "outside actors";
  const auto total = troupe::cluster_resources();
  const auto gpus = total.count("GPU") ? static_cast<int>(total.at("GPU")) : 0;
  if (gpus < 1) GTEST_SKIP() << "no GPUs declared in " << mode_name() << " mode; the GPU part is not checked";
  // One actor per GPU, so some get a node index other than 0.
  std::vector<troupe::ActorHandle<Mortal>> actors;
  for (int i = 0; i < std::min(gpus, 4); ++i) actors.push_back(troupe::actor<Mortal>({.resources = {{"GPU", 1}}}));
  for (auto& actor : actors) {
    const auto visible = actor.call<&Mortal::visible_gpus>().get(kWait);
    const auto node = actor.call<&Mortal::node_gpus>().get(kWait);
    ASSERT_EQ(node.size(), 1u);
    EXPECT_EQ(node, actor.gpu_ids()) << "node_gpu_ids() inside is ActorHandle::gpu_ids() outside";
    ASSERT_EQ(visible.size(), 1u);
    if (troupe::mode() == troupe::Mode::cluster) {
      EXPECT_EQ(visible, std::vector<int>{0}) << "the host sees only its GPU, as device 0";
    } else {
      EXPECT_EQ(visible, node) << "local mode: the process sees every GPU";
    }
  }
}

TEST(ClusterActorEnv, AnActorsOwnVariablesAreSetInItsHostInAClusterAndRefusedWhenReserved) {
  // Names the runtime sets itself are refused in both modes.
  for (const char* reserved : {"CUDA_VISIBLE_DEVICES", "TROUPE_ADDRESS", "", "A=B"}) {
    troupe::ActorOptions options;
    options.env = {{reserved, "x"}};
    EXPECT_THROW((void)troupe::actor<Mortal>(options), troupe::Error) << "'" << reserved << "'";
  }
  troupe::ActorOptions options;
  options.env = {{"CONFORMANCE_ACTOR_ENV", "from-options"}};
  auto actor = troupe::actor<Mortal>(options);
  const auto seen = actor.call<&Mortal::env>(std::string("CONFORMANCE_ACTOR_ENV")).get(kWait);
  if (troupe::mode() == troupe::Mode::local) {
    // Local mode: every actor shares the driver's process; nothing is set.
    EXPECT_EQ(seen, "<unset>");
  } else {
    EXPECT_EQ(seen, "from-options");
  }
}

TEST(ClusterActorEnv, TheJobsSubmitEnvReachesItsActorsAndTheirActors) {
  const char* driver = std::getenv("CONFORMANCE_JOB_ENV");
  if (driver == nullptr) GTEST_SKIP() << "not run by `troupe submit --env CONFORMANCE_JOB_ENV=...`";
  auto actor = troupe::actor<Mortal>();
  EXPECT_EQ(actor.call<&Mortal::env>(std::string("CONFORMANCE_JOB_ENV")).get(kWait), driver) << mode_name();
  EXPECT_EQ(actor.call<&Mortal::child_env>(std::string("CONFORMANCE_JOB_ENV")).get(kWait), driver) << mode_name();
  // An actor's own value wins over the job's.
  troupe::ActorOptions options;
  options.env = {{"CONFORMANCE_JOB_ENV", "from-options"}};
  auto own = troupe::actor<Mortal>(options);
  EXPECT_EQ(own.call<&Mortal::env>(std::string("CONFORMANCE_JOB_ENV")).get(kWait),
            troupe::mode() == troupe::Mode::cluster ? "from-options" : driver);
}

TEST(ClusterActorNamespaces, ANameLivesInItsNamespaceAndTheJobsOwnIsTheDefault) {
  const std::string name = "conformance-cluster-ns-actor";
  auto mine = troupe::actor<Mortal>({.name = name});
  troupe::ActorOptions shared_options;
  shared_options.name = name;
  shared_options.namespace_ = "conformance-shared";
  auto shared = troupe::actor<Mortal>(shared_options);  // the same name in another namespace
  EXPECT_EQ(troupe::get_actor<Mortal>(name).id(), mine.id()) << mode_name();
  EXPECT_EQ(troupe::get_actor<Mortal>(name, "conformance-shared").id(), shared.id()) << mode_name();
  EXPECT_THROW((void)troupe::get_actor<Mortal>(name, "conformance-elsewhere"), troupe::Error);
  try {
    (void)troupe::actor<Mortal>(shared_options);
    FAIL() << "a second actor of the same name and namespace was accepted (" << mode_name() << ")";
  } catch (const troupe::Error& e) {
    EXPECT_EQ(e.code(), troupe::Errc::invalid_argument) << e.what();
    EXPECT_NE(std::string(e.what()).find("conformance-shared"), std::string::npos) << e.what();
  }
  // Once it is dead its name is free again.
  troupe::kill(shared);
  ASSERT_TRUE(eventually([&] {
    try {
      (void)troupe::get_actor<Mortal>(name, "conformance-shared");
      return false;
    } catch (const troupe::Error&) {
      return true;
    }
  })) << mode_name();
  auto again = troupe::actor<Mortal>(shared_options);
  EXPECT_EQ(troupe::get_actor<Mortal>(name, "conformance-shared").id(), again.id()) << mode_name();
  troupe::kill(again);
  troupe::kill(mine);
}

// A handle looked up by name calls the actor under its creator's
// caller-side options (max_pending_calls with Backpressure::fail here), in
// another process too (issue 12).
TEST(ClusterActorLookup, AHandleLookedUpByNameKeepsTheCreatorsCallOptions) {
  const std::string name = "conformance-cluster-napper";
  troupe::ActorOptions options;
  options.name = name;
  options.max_pending_calls = 1;
  options.backpressure = troupe::Backpressure::fail;
  auto napper = troupe::actor<Napper>(options);
  auto caller = troupe::actor<NapCaller>();
  EXPECT_EQ(caller.call<&NapCaller::two_calls>(name).get(kWait), "400/overloaded") << mode_name();
  troupe::kill(caller);
  troupe::kill(napper);
}

}  // namespace
