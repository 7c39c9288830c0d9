// Built out of tree against an installed troupe (tests/install/run_install_test.sh).
// Exits 0 only when the actor's results are right.
#include <cstdio>
#include <string>

#include <troupe/troupe.hpp>

namespace consumer {

class Accumulator {
 public:
  explicit Accumulator(int start) : total_(start) {}
  int add(int delta) { return total_ += delta; }
  std::string describe() const { return "total=" + std::to_string(total_); }

 private:
  int total_;
};

}  // namespace consumer

TROUPE_ACTOR(consumer::Accumulator, (int), add, describe);

int main() {
  using consumer::Accumulator;
  troupe::init();  // local mode
  int status = 1;
  {
    auto acc = troupe::actor<Accumulator>(40);
    auto first = acc.call<&Accumulator::add>(1);
    auto second = acc.call<&Accumulator::add>(first);  // a ref as an argument
    const int value = second.get();                    // 40 + 1, then 41 + 41
    const std::string text = acc.call<&Accumulator::describe>().get();
    std::printf("consumer: %s\n", text.c_str());
    if (value == 82 && text == "total=82") status = 0;
  }
  troupe::shutdown();
  std::printf("consumer: %s\n", status == 0 ? "OK" : "WRONG RESULT");
  return status;
}
