// The README's API tour, compiled and run by the test suite. Declares two
// H100s so the GPU-typed actors can be placed on a machine without GPUs.
#include <troupe/troupe.hpp>

#include <chrono>
#include <cstdio>
#include <span>
#include <vector>

class Stage {
 public:
  explicit Stage(int id) : id_(id) {}
  troupe::Tensor forward(const troupe::Tensor& x) {
    auto y = x.clone();
    for (auto& v : std::span(y.data<float>(), static_cast<std::size_t>(y.numel()))) v += 1.0f;
    return y;
  }
  int id() const { return id_; }

 private:
  int id_;
};
TROUPE_ACTOR(Stage, (int), forward, id);

int main(int argc, char** argv) {
  troupe::InitOptions init;
  init.gpus = "H100-80GB:2";  // declared GPUs (a real machine would detect them)
  (void)argc;
  (void)argv;
  troupe::init(init);

  troupe::ActorOptions gpu{.resources = {{"GPU", 1}}, .gpu_type = "H100"};
  auto s0 = troupe::actor<Stage>(gpu, 0);
  auto s1 = troupe::actor<Stage>(gpu, 1);

  auto x = troupe::Tensor::zeros({32, 1024}, troupe::DType::f32);
  std::vector<troupe::ObjectRef<troupe::Tensor>> outs;
  for (auto& mb : x.chunk(4)) {
    auto h = s0.call<&Stage::forward>(mb);
    outs.push_back(s1.call<&Stage::forward>(h));
  }
  auto ys = troupe::when_all(outs).get(std::chrono::seconds(30));
  bool ok = ys.size() == 4;
  for (auto& y : ys) ok = ok && y.size(0) == 8 && y.data<float>()[0] == 2.0f;
  std::printf("stages on GPUs %d and %d; %zu micro-batches; result %s\n", s0.gpu_ids().at(0),
              s1.gpu_ids().at(0), ys.size(), ok ? "ok" : "WRONG");
  troupe::shutdown();
  return ok ? 0 : 1;
}
