// The argument types fuzz_arguments decodes, in the order its first input
// byte picks them, with one sample value each (make_seeds writes a seed
// per type from these): the parameter types of the call-plane harness's
// Probe actor (tests/runtime/call_server_harness.hpp) and more shapes.
#pragma once

#include <cstdint>
#include <deque>
#include <list>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <tuple>
#include <unordered_map>
#include <utility>
#include <variant>
#include <vector>

#include "troupe/runtime/serialization.hpp"
#include "troupe/runtime/tensor.hpp"

namespace troupe::fuzz {

struct Layer {  // a user type as pipeline stages send them
  std::string name;
  std::vector<std::int64_t> sizes;
  std::optional<Tensor> weights;
  std::map<std::string, double> options;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(name, sizes, weights, options);
  }
};

struct Tree {  // a recursive type
  std::vector<Tree> children;
  std::string label;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(children, label);
  }
  friend bool operator==(const Tree&, const Tree&) = default;
};

inline auto argument_samples() {
  Tensor t = Tensor::from_vector<float>({1.f, 2.f, 3.f, 4.f, 5.f, 6.f}, {2, 3});
  return std::make_tuple(
      // Probe's parameter types.
      int{42}, std::string("hello"), std::vector<std::string>{"a", "bc", ""},
      std::map<std::string, std::vector<std::int64_t>>{{"x", {1, 2}}, {"y", {}}},
      std::vector<std::vector<std::string>>{{"p", "q"}, {}, {"r"}}, t,
      // More shapes.
      std::tuple<std::string, std::vector<std::string>>{"head", {"t1", "t2"}}, std::vector<double>{0.5, -1.0},
      std::vector<bool>{true, false, true}, std::unordered_map<std::string, std::deque<int>>{{"k", {1, 2, 3}}},
      std::set<std::string>{"s1", "s2"}, std::list<std::vector<std::uint8_t>>{{1, 2}, {3}},
      std::variant<int, std::string, std::vector<double>>{std::vector<double>{2.5}},
      std::optional<std::vector<Tensor>>{std::vector<Tensor>{t, Tensor()}},
      std::vector<Layer>{Layer{"fc1", {4, 8}, t, {{"lr", 0.1}}}, Layer{"fc2", {8, 2}, std::nullopt, {}}},
      Tree{{Tree{{}, "leaf"}, Tree{{Tree{{}, "deep"}}, "mid"}}, "root"},
      std::pair<std::map<int, std::string>, std::vector<std::set<std::int64_t>>>{{{1, "one"}}, {{5, 6}, {}}});
}

using ArgumentSamples = decltype(argument_samples());

}  // namespace troupe::fuzz
