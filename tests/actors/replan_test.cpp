// Live re-planning's pure parts (troupe/actors/replan.hpp): what changed in
// the cluster, whether that forces or invites a new plan, whether the new
// plan is worth moving to, and the move of a re-plan onto placements; plus
// the ClusterWatcher over local mode's one node.
// (tests/cluster/replan_test.cpp re-plans a running job across real nodes.)
// TROUPE_TEST_LABELS: fast
#include "troupe/actors/replan.hpp"

#include <gtest/gtest.h>

#include <chrono>
#include <string>

#include "troupe/troupe.hpp"

namespace {

using namespace std::chrono_literals;
namespace sched = troupe::scheduler;
using troupe::actors::ClusterChange;
using troupe::actors::ReplanNeed;

// Eight equal compute-bound layers with tiny activations: more and faster
// GPUs always help.
sched::ModelProfile even_model() {
  sched::ModelProfile model;
  model.name = "even";
  for (int l = 0; l < 8; ++l) model.layers.push_back({"l" + std::to_string(l), 1e12, 1e9, 1e3});
  return model;
}

sched::ClusterNode node(std::string name, int gpus, std::string type, double tflops) {
  sched::ClusterNode out{std::move(name), 450, {}};
  for (int g = 0; g < gpus; ++g) out.gpus.push_back({type, tflops, 40});
  return out;
}

sched::ClusterSpec cluster_of(std::vector<sched::ClusterNode> nodes) {
  return sched::ClusterSpec{"test", 12.5, std::move(nodes), {}};
}

sched::Plan plan_over(const sched::ClusterSpec& cluster) {
  const auto result = sched::plan_pipeline(even_model(), cluster);
  EXPECT_TRUE(result.feasible()) << result.reason;
  return result.plan;
}

bool uses_node(const sched::Plan& plan, const std::string& name) {
  for (const auto& stage : plan.stages) {
    if (stage.node == name) return true;
  }
  return false;
}

TEST(ClusterChange, NamesTheNodesThatJoinedWereLostOrChangedTheirGpus) {
  const auto before = cluster_of({node("a", 2, "T4-16GB", 65), node("b", 1, "A100-40GB", 312)});
  const auto after = cluster_of({node("a", 2, "T4-16GB", 65), node("b", 2, "A100-40GB", 312), node("c", 1, "H100-80GB", 700)});
  const ClusterChange change = troupe::actors::cluster_change(before, after);
  EXPECT_EQ(change.joined, std::vector<std::string>{"c"});
  EXPECT_EQ(change.changed, std::vector<std::string>{"b"});
  EXPECT_TRUE(change.lost.empty());
  EXPECT_EQ(change.describe(before, after),
            "node c joined (1 GPU: H100-80GB); node b changed (1 GPU: A100-40GB -> 2 GPUs: A100-40GB, A100-40GB)");

  const ClusterChange back = troupe::actors::cluster_change(after, before);
  EXPECT_EQ(back.lost, std::vector<std::string>{"c"});
  EXPECT_TRUE(troupe::actors::cluster_change(before, before).empty());
  EXPECT_EQ(troupe::actors::cluster_change(before, before).describe(before, before), "no change");
}

TEST(ReplanNeed, LosingANodeThePlanUsesForcesARePlanAndLosingAnotherDoesNot) {
  const auto both = cluster_of({node("fast", 2, "A100-40GB", 312), node("spare", 1, "T4-16GB", 65)});
  const sched::Plan plan = plan_over(cluster_of({node("fast", 2, "A100-40GB", 312)}));
  ASSERT_TRUE(uses_node(plan, "fast"));

  const auto without_fast = cluster_of({node("spare", 1, "T4-16GB", 65)});
  std::string why;
  EXPECT_EQ(troupe::actors::replan_need(even_model(), plan, without_fast,
                                        troupe::actors::cluster_change(both, without_fast), false, {}, &why),
            ReplanNeed::forced);
  EXPECT_EQ(why, "node fast of stage 0 is lost");

  const auto without_spare = cluster_of({node("fast", 2, "A100-40GB", 312)});
  EXPECT_EQ(troupe::actors::replan_need(even_model(), plan, without_spare,
                                        troupe::actors::cluster_change(both, without_spare), false, {}, &why),
            ReplanNeed::none);
  EXPECT_EQ(why, "only nodes the plan does not use were lost");

  // A GPU the plan uses is gone from a node that stays.
  const auto fewer = cluster_of({node("fast", 1, "A100-40GB", 312), node("spare", 1, "T4-16GB", 65)});
  const auto change = troupe::actors::cluster_change(both, fewer);
  EXPECT_EQ(change.changed, std::vector<std::string>{"fast"});
  if (plan.stages.size() == 2) {
    EXPECT_EQ(troupe::actors::replan_need(even_model(), plan, fewer, change, false), ReplanNeed::forced);
  }
  // A dead stage forces one whatever the membership says; so does a cluster without GPUs.
  EXPECT_EQ(troupe::actors::replan_need(even_model(), plan, both, {}, true), ReplanNeed::forced);
  EXPECT_EQ(troupe::actors::replan_need(even_model(), plan, cluster_of({}), {}, false), ReplanNeed::forced);
  EXPECT_EQ(troupe::actors::replan_need(even_model(), plan, both, {}, false), ReplanNeed::none);
}

TEST(ReplanNeed, AJoinInvitesARePlanUnlessThePolicySaysNo) {
  const auto one = cluster_of({node("a", 1, "T4-16GB", 65)});
  const auto two = cluster_of({node("a", 1, "T4-16GB", 65), node("b", 2, "A100-40GB", 312)});
  const sched::Plan plan = plan_over(one);
  const auto change = troupe::actors::cluster_change(one, two);
  EXPECT_EQ(troupe::actors::replan_need(even_model(), plan, two, change, false), ReplanNeed::better);
  EXPECT_EQ(troupe::actors::replan_need(even_model(), plan, two, change, false, {.on_join = false}), ReplanNeed::none);
}

TEST(DecideReplan, AFasterNodeJoiningIsAdoptedAndTheNewPlanUsesIt) {
  const auto one = cluster_of({node("t4s", 2, "T4-16GB", 65)});
  const auto two = cluster_of({node("t4s", 2, "T4-16GB", 65), node("a100s", 2, "A100-40GB", 312)});
  const sched::Plan plan = plan_over(one);
  const auto decision = troupe::actors::decide_replan(even_model(), plan, one, two, false);
  EXPECT_EQ(decision.need, ReplanNeed::better);
  ASSERT_TRUE(decision.adopt) << decision.reason;
  EXPECT_TRUE(uses_node(decision.candidate.plan, "a100s")) << troupe::actors::plan_summary(decision.candidate.plan);
  EXPECT_LT(decision.candidate.plan.bottleneck_s, plan.bottleneck_s * 0.95);
  EXPECT_EQ(decision.change.joined, std::vector<std::string>{"a100s"});
}

TEST(DecideReplan, ANodeThatDoesNotPayForTheMoveIsNotAdopted) {
  // Two A100s run the model; a slow GPU joining cannot cut the bottleneck by 5%.
  const auto one = cluster_of({node("a100s", 2, "A100-40GB", 312)});
  const auto two = cluster_of({node("a100s", 2, "A100-40GB", 312), node("slow", 1, "K80", 1)});
  const sched::Plan plan = plan_over(one);
  const auto decision = troupe::actors::decide_replan(even_model(), plan, one, two, false);
  EXPECT_EQ(decision.need, ReplanNeed::better);
  EXPECT_FALSE(decision.adopt) << decision.reason;
  EXPECT_TRUE(decision.candidate.feasible());
  EXPECT_NE(decision.reason.find("gain worth moving for"), std::string::npos) << decision.reason;
  // With no bar, an equal or better plan is taken.
  const auto eager = troupe::actors::decide_replan(even_model(), plan, one, two, false, {.min_gain = 0});
  EXPECT_TRUE(eager.adopt) << eager.reason;
}

TEST(DecideReplan, LosingThePlansNodeMovesToWhatIsLeftOrSaysThatNothingIs) {
  const auto two = cluster_of({node("t4s", 2, "T4-16GB", 65), node("a100s", 2, "A100-40GB", 312)});
  const sched::Plan plan = plan_over(two);
  ASSERT_TRUE(uses_node(plan, "a100s"));
  const auto left = cluster_of({node("t4s", 2, "T4-16GB", 65)});
  const auto decision = troupe::actors::decide_replan(even_model(), plan, two, left, false);
  EXPECT_EQ(decision.need, ReplanNeed::forced);
  ASSERT_TRUE(decision.adopt) << decision.reason;
  EXPECT_FALSE(uses_node(decision.candidate.plan, "a100s"));
  EXPECT_GT(decision.candidate.plan.bottleneck_s, plan.bottleneck_s);  // forced: taken even though slower

  const auto none = troupe::actors::decide_replan(even_model(), plan, two, cluster_of({}), false);
  EXPECT_EQ(none.need, ReplanNeed::forced);
  EXPECT_FALSE(none.adopt);
  EXPECT_FALSE(none.candidate.feasible());
  EXPECT_NE(none.reason.find("no alive node has a GPU"), std::string::npos) << none.reason;

  // Nothing changed: no plan is computed.
  const auto same = troupe::actors::decide_replan(even_model(), plan, two, two, false);
  EXPECT_EQ(same.need, ReplanNeed::none);
  EXPECT_FALSE(same.adopt);
  EXPECT_EQ(same.reason, "keeping the plan: no change");
}

TEST(PlanSummary, ListsEachStagesLayersNodeAndGpu) {
  sched::Plan plan;
  plan.stages = {{"n1", 0, 0, 3, "A100-40GB"}, {"n2", 1, 4, 7, "T4-16GB"}};
  EXPECT_EQ(troupe::actors::plan_summary(plan), "0-3 on n1 GPU 0 A100-40GB | 4-7 on n2 GPU 1 T4-16GB");
}

class LocalReplan : public ::testing::Test {
 protected:
  void SetUp() override { troupe::init({.num_threads = 4, .gpus = "T4-16GB:1,A100-40GB:2"}); }
  void TearDown() override { troupe::shutdown(); }
};

TEST_F(LocalReplan, TheWatcherSeesTheLocalNodeAndAStageLossRePlacesTheNewPlanOnIt) {
  troupe::actors::ClusterWatcher watcher({.interval = 20ms});
  const auto view = watcher.current();
  ASSERT_EQ(view.cluster.nodes.size(), 1u);
  EXPECT_EQ(view.cluster.nodes[0].name, "local");
  EXPECT_EQ(view.cluster.nodes[0].gpus.size(), 3u);
  // Local membership never changes: polls go on, the version stays.
  const auto later = watcher.wait_for_change(view.version, 200ms);
  EXPECT_EQ(later.version, view.version);
  EXPECT_GE(watcher.polls(), 3u);
  EXPECT_EQ(watcher.last_error(), "");

  // A stage died: forced, the same optimal plan, placed again on the same
  // node and types once the old group is gone.
  const sched::Plan plan = plan_over(view.cluster);
  const auto first = troupe::actors::place_plan(plan, view.cluster);
  first.group.ready().get(30s);
  const auto decision = troupe::actors::decide_replan(even_model(), plan, view.cluster, later.cluster, true);
  ASSERT_TRUE(decision.adopt) << decision.reason;
  EXPECT_EQ(troupe::actors::plan_summary(decision.candidate.plan), troupe::actors::plan_summary(plan));
  troupe::remove_placement_group(first.group);
  const auto again = troupe::actors::place_plan(decision.candidate.plan, later.cluster);
  again.group.ready().get(30s);
  for (std::size_t k = 0; k < again.bundles.size(); ++k) {
    EXPECT_EQ(again.bundles[k].amounts.at("node:local"), sched::kNodeResourceRequest);
    EXPECT_EQ(again.bundles[k].gpu_type, decision.candidate.plan.stages[k].gpu_type);
  }
}

TEST(ClusterWatcher, RefusesAPollIntervalUnder10MsAndWorksOnlyAfterInit) {
  EXPECT_THROW(troupe::actors::ClusterWatcher({.interval = 1ms}), troupe::Error);
  EXPECT_THROW(troupe::actors::ClusterWatcher({.interval = 100ms}), troupe::Error);  // no init()
}

}  // namespace
