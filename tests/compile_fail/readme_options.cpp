// The README's designated initializers of option structs compile without a
// warning under -Wall -Wextra -Werror (every member has a default).
// expect-success
// flags: -Wall -Wextra -Werror
#include <chrono>

#include <troupe/actors/pipeline.hpp>
#include <troupe/actors/plan_placement.hpp>
#include <troupe/actors/tensor_parallel.hpp>
#include <troupe/troupe.hpp>

using namespace std::chrono_literals;

int main() {
  troupe::ActorOptions restarts{.max_restarts = 1};
  troupe::ActorOptions named{.name = "c", .max_concurrency = 1};
  troupe::ActorOptions gpu{.resources = {{"GPU", 1}}, .gpu_type = "H100"};
  troupe::ActorOptions retries{.max_task_retries = 2, .backpressure = troupe::Backpressure::fail};
  troupe::CallOptions deadline{.timeout = 2s};
  troupe::CallOptions resend{.max_task_retries = 1};
  troupe::InitOptions init{.num_threads = 4};
  troupe::ResourceSpec bundle{.amounts = {{"CPU", 1}}};
  troupe::ResourceSpec gpu_bundle{.gpu_memory = 1};
  troupe::actors::StageSpec stage{.optimizer = troupe::actors::OptimizerSpec::make_adam(1e-3f)};
  troupe::actors::StageSpec seeded{.seed = 7};
  troupe::actors::OptimizerSpec optimizer{.kind = troupe::actors::OptimizerSpec::Kind::adam};
  troupe::actors::PipelineOptions pipeline{.max_recoveries = 2};
  troupe::actors::CheckpointSpec checkpoint{.every = 5};
  troupe::actors::ShardSpec shard{.count = 2};
  troupe::actors::PlacePlanOptions plan{.pin_nodes = false};
  troupe::actors::LiveClusterOptions live{.intra_node_gbps = 10.0};
  return restarts.max_restarts + named.max_concurrency + static_cast<int>(gpu.resources.size()) +
         retries.max_task_retries + static_cast<int>(deadline.timeout.count()) + resend.max_task_retries.value_or(0) +
         init.num_threads + static_cast<int>(bundle.amounts.size() + gpu_bundle.gpu_memory) +
         static_cast<int>(stage.sizes.size() + seeded.seed) + static_cast<int>(optimizer.kind) +
         pipeline.max_recoveries + static_cast<int>(checkpoint.every) + shard.count + plan.pin_nodes +
         static_cast<int>(live.intra_node_gbps);
}
