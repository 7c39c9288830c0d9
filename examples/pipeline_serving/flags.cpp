// pipeline_serving: the command line.
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <string>
#include <type_traits>

#include "serving.hpp"

namespace serving {

const char* const kUsage =
    "usage: pipeline_serving [--model FILE] [--cluster FILE] [--gpu-table FILE] [--requests N]\n"
    "                        [--inflight N] [--batch N] [--check N] [--intra-gbps G] [--inter-gbps G]\n"
    "                        [--seed N] [--replans N] [--checkpoint-dir DIR] [--checkpoint-every N]\n"
    "                        [--poll-ms MS] [--loss-wait-s S] [--max-seconds S] [--min-gain F]\n"
    "                        [--status-file FILE] [--troupe-gpus=SPEC] [--troupe-address=HOST:PORT]\n"
    "  --model       model profile with layer sizes (default: model.json beside the source)\n"
    "  --cluster     plan over this cluster file instead of the running GPUs; stages are then\n"
    "                placed by GPU type only (local mode declares the file's GPUs)\n"
    "  --gpu-table   JSON {\"TYPE\": {\"tflops\": T, \"memory_gb\": M}} for GPU models not built in\n"
    "  --requests    requests to serve (default 64)\n"
    "  --inflight    requests in flight at once (default 8)\n"
    "  --batch       rows per request (default: the profile's batch_size)\n"
    "  --check       responses checked against the single-thread model (default 4)\n"
    "  --intra-gbps  assumed GB/s between GPUs of a node (default 450, NVLink)\n"
    "  --inter-gbps  assumed GB/s between nodes (default 12.5, 100 Gb/s)\n"
    "  --seed        seed of weights and inputs (default 7)\n"
    "Live re-planning (--replans N > 0): the cluster is polled; when a node joins or one the\n"
    "plan uses is lost (or a stage dies), a new plan over the cluster as it is now replaces the\n"
    "stages, restored from their last checkpoint; the run ends after N re-plans and --requests\n"
    "requests served after the last one.\n"
    "  --replans          re-plans to wait for (default 0: no re-planning)\n"
    "  --checkpoint-dir   per-layer checkpoints, reachable from every node (default: a new\n"
    "                     directory under TROUPE_TEMP_DIR or /tmp, removed at the end)\n"
    "  --checkpoint-every requests between checkpoints (default 16)\n"
    "  --poll-ms          cluster poll interval (default 1000)\n"
    "  --loss-wait-s      after a stage died, how long to wait for the head to drop its node\n"
    "                     (default 15); then re-plan over the nodes listed\n"
    "  --max-seconds      give up (status 1) when the run takes longer (default 600)\n"
    "  --min-gain         a join is acted on only if the new plan's bottleneck is this\n"
    "                     fraction lower (default 0.05)\n"
    "  --status-file      rewritten with \"replans=R answered=N step=S\" as the run goes\n"
    "Local mode (no TROUPE_ADDRESS) declares the GPUs of TROUPE_GPUS or --troupe-gpus, else\n"
    "H100-80GB:1,A100-40GB:1,T4-16GB:2.\n";

bool parse_flags(int argc, char** argv, Flags& flags, bool& help) {
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (arg == "-h" || arg == "--help") {
      help = true;
      return true;
    }
    const auto eq = arg.find('=');
    const std::string name(arg.substr(0, eq));
    std::string value;
    if (eq != std::string_view::npos) {
      value = std::string(arg.substr(eq + 1));
    } else if (i + 1 < argc) {
      value = argv[++i];
    } else {
      std::cerr << "pipeline_serving: " << name << " needs a value\n" << kUsage;
      return false;
    }
    auto whole = [&](long min, long max, auto& out) {
      char* end = nullptr;
      const long parsed = std::strtol(value.c_str(), &end, 10);
      if (value.empty() || *end != '\0' || parsed < min || parsed > max) {
        std::cerr << "pipeline_serving: " << name << " wants a whole number from " << min << " to " << max
                  << ", got '" << value << "'\n";
        return false;
      }
      out = static_cast<std::remove_reference_t<decltype(out)>>(parsed);
      return true;
    };
    auto positive = [&](double& out) {
      char* end = nullptr;
      const double parsed = std::strtod(value.c_str(), &end);
      if (value.empty() || *end != '\0' || !(parsed > 0) || !std::isfinite(parsed)) {
        std::cerr << "pipeline_serving: " << name << " wants a number > 0, got '" << value << "'\n";
        return false;
      }
      out = parsed;
      return true;
    };
    bool ok = true;
    if (name == "--model") flags.model = value;
    else if (name == "--cluster") flags.cluster = value;
    else if (name == "--gpu-table") flags.gpu_table = value;
    else if (name == "--requests") ok = whole(1, 1000000, flags.requests);
    else if (name == "--inflight") ok = whole(1, 4096, flags.inflight);
    else if (name == "--batch") ok = whole(1, 1 << 20, flags.batch);
    else if (name == "--check") ok = whole(0, 1000000, flags.check);
    else if (name == "--seed") ok = whole(0, 1L << 31, flags.seed);
    else if (name == "--intra-gbps") ok = positive(flags.intra_gbps);
    else if (name == "--inter-gbps") ok = positive(flags.inter_gbps);
    else if (name == "--replans") ok = whole(0, 1000, flags.replans);
    else if (name == "--checkpoint-dir") flags.checkpoint_dir = value;
    else if (name == "--checkpoint-every") ok = whole(1, 1000000, flags.checkpoint_every);
    else if (name == "--poll-ms") ok = whole(10, 60000, flags.poll_ms);
    else if (name == "--loss-wait-s") ok = whole(0, 3600, flags.loss_wait_s);
    else if (name == "--max-seconds") ok = whole(1, 86400, flags.max_seconds);
    else if (name == "--status-file") flags.status_file = value;
    else if (name == "--min-gain") {
      char* end = nullptr;
      const double parsed = std::strtod(value.c_str(), &end);
      if (value.empty() || *end != '\0' || !(parsed >= 0 && parsed < 1)) {
        std::cerr << "pipeline_serving: --min-gain wants a number in [0, 1), got '" << value << "'\n";
        return false;
      }
      flags.min_gain = parsed;
    }
    else {
      std::cerr << "pipeline_serving: unknown flag '" << arg << "'\n" << kUsage;
      return false;
    }
    if (!ok) return false;
  }
  return true;
}

}  // namespace serving
