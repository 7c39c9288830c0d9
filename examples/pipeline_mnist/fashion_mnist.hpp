// Fashion-MNIST (Zalando's 28x28 grey clothing images, 10 classes) from the
// IDX files of Debian's dataset-fashion-mnist package, gzipped or not.
#pragma once

#include <cstdint>
#include <string>

#include <troupe/runtime/tensor.hpp>

namespace fashion_mnist {

inline constexpr const char* kDefaultDir = "/usr/share/datasets/fashion-mnist";
inline constexpr std::int64_t kPixels = 28 * 28;
inline constexpr std::int64_t kClasses = 10;

struct Split {
  troupe::Tensor images;  // f32 [N, 784]: pixels / 255, standardised with the training set's mean and std
  troupe::Tensor labels;  // i64 [N], 0..9
  std::int64_t size() const { return labels.defined() ? labels.size(0) : 0; }
};

struct Dataset {
  Split train;
  Split test;
};

// Reads train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz],
// t10k-images-idx3-ubyte[.gz] and t10k-labels-idx1-ubyte[.gz] from `dir`.
// `train_limit` > 0 keeps only the first that many training images (the test
// set is always whole). Throws std::runtime_error naming the file and what is
// wrong with it (missing, not IDX, sizes that disagree).
Dataset load(const std::string& dir, std::int64_t train_limit = 0);

}  // namespace fashion_mnist
