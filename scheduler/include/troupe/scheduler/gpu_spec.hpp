// Declared GPUs ("H100-80GB:2,T4-16GB:1") and GPU model matching.
//
// A GPU spec declares the GPUs of a node that has none (or whose GPUs should
// be described by hand), for tests, CPU-only machines and cluster files. The
// worker passes it on the command line; detection of real GPUs happens in the
// runtime and fills the same GpuInfo type.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "troupe/scheduler/resources.hpp"

namespace troupe::scheduler {

// Parses a comma-separated list of MODEL[:COUNT] items into GPUs with
// declared = true and indexes 0..n-1 in the order written:
//   "H100-80GB:2,T4-16GB:1" -> H100-80GB (0), H100-80GB (1), T4-16GB (2).
// COUNT defaults to 1 and must be a whole number in 1..1024. Whitespace
// around items, models and counts is ignored; an empty or all-blank spec
// means no GPUs. MODEL may hold letters, digits, '-', '_', '.' and inner
// spaces. Memory comes from nominal_gpu_memory_bytes(MODEL).
// Throws SpecError naming the bad item for: an empty item ("H100,,T4", a
// trailing comma), an empty model (":2"), a count that is not a positive
// whole number ("H100:x", "H100:-1", "H100:0"), more than one ':' or a
// character not allowed in a model name.
std::vector<GpuInfo> parse_gpu_spec(std::string_view spec);

// The inverse for people and command lines: runs of consecutive GPUs with the
// same model become MODEL:COUNT ("H100-80GB:2,T4-16GB:1"); "" for no GPUs.
// parse_gpu_spec(format_gpu_spec(g)) gives back the models and order of g;
// memory survives when the model name carries it ("-80GB") or is in the
// table of known models.
std::string format_gpu_spec(const std::vector<GpuInfo>& gpus);

// Nominal device memory of a GPU model, in bytes, or 0 when unknown:
//  1. a token "<N>GB" in the name ("H100-80GB", "NVIDIA H100 80GB HBM3",
//     "V100-SXM2-16GB") gives N GiB: vendors' "80GB" is a label for roughly
//     80 GiB, and GiB keeps whole numbers (80 * 2^30);
//  2. else the first token naming a known model: H100 80, H200 141, A100 40,
//     A800 80, A40 48, A30 24, A10/A10G 24, V100 16, P100 16, T4 16, L4 24,
//     L40/L40S 48, RTX4090 24, RTX3090 24, A6000 48 (GiB);
//  3. else 0.
std::uint64_t nominal_gpu_memory_bytes(std::string_view model);

// Whether a GPU of `model` satisfies a request for `gpu_type`. Matching is
// case-insensitive on tokens (split at spaces, '-' and '_'): the type's tokens
// must appear consecutively among the model's. So "H100" matches "H100-80GB",
// "h100" and "NVIDIA H100 80GB HBM3"; "H100-80GB" matches the last one too;
// "A10" does not match "A100-40GB". An empty (or all-separator) type matches
// every model.
bool gpu_model_matches(std::string_view model, std::string_view gpu_type);

}  // namespace troupe::scheduler
