// IDX reading through zlib's gzread, which reads plain files unchanged too.
#include "fashion_mnist.hpp"

#include <zlib.h>

#include <cstring>
#include <filesystem>
#include <stdexcept>
#include <vector>

namespace fashion_mnist {

namespace {

// Mean and standard deviation of the 60000 training pixels scaled to [0, 1].
constexpr float kMean = 0.2860f;
constexpr float kStd = 0.3530f;

struct Idx {
  std::vector<std::int64_t> dims;
  std::vector<unsigned char> data;
};

std::string find_file(const std::string& dir, const std::string& name) {
  for (const std::string& candidate : {dir + "/" + name, dir + "/" + name + ".gz"}) {
    if (std::filesystem::is_regular_file(candidate)) return candidate;
  }
  throw std::runtime_error("no " + name + "[.gz] in " + dir +
                           " (Debian: apt-get install dataset-fashion-mnist, or pass --data DIR)");
}

// An IDX file of unsigned bytes: magic 0x0000 08 <rank>, rank big-endian u32
// dimensions, then the data.
Idx read_idx(const std::string& path, int rank) {
  gzFile file = gzopen(path.c_str(), "rb");
  if (file == nullptr) throw std::runtime_error("cannot open " + path);
  auto read = [&](void* out, std::size_t n) {
    std::size_t done = 0;
    while (done < n) {
      const int got = gzread(file, static_cast<char*>(out) + done, static_cast<unsigned>(std::min<std::size_t>(n - done, 1u << 30)));
      if (got <= 0) {
        int code = 0;
        const char* message = gzerror(file, &code);
        gzclose(file);
        throw std::runtime_error(path + ": truncated or unreadable (" + (code != Z_OK ? message : "end of file") + ")");
      }
      done += static_cast<std::size_t>(got);
    }
  };
  auto big_endian = [](const unsigned char* b) {
    return (std::uint32_t{b[0]} << 24) | (std::uint32_t{b[1]} << 16) | (std::uint32_t{b[2]} << 8) | b[3];
  };
  unsigned char header[4];
  read(header, 4);
  if (header[0] != 0 || header[1] != 0 || header[2] != 0x08 || header[3] != rank) {
    gzclose(file);
    throw std::runtime_error(path + ": not an IDX file of unsigned bytes with " + std::to_string(rank) + " dimensions");
  }
  Idx idx;
  std::size_t count = 1;
  for (int d = 0; d < rank; ++d) {
    unsigned char b[4];
    read(b, 4);
    idx.dims.push_back(big_endian(b));
    count *= big_endian(b);
  }
  idx.data.resize(count);
  read(idx.data.data(), count);
  gzclose(file);
  return idx;
}

Split read_split(const std::string& dir, const std::string& prefix, std::int64_t limit) {
  const std::string images_path = find_file(dir, prefix + "-images-idx3-ubyte");
  const std::string labels_path = find_file(dir, prefix + "-labels-idx1-ubyte");
  const Idx images = read_idx(images_path, 3);
  const Idx labels = read_idx(labels_path, 1);
  if (images.dims[1] * images.dims[2] != kPixels) {
    throw std::runtime_error(images_path + ": images are " + std::to_string(images.dims[1]) + "x" +
                             std::to_string(images.dims[2]) + ", expected 28x28");
  }
  if (images.dims[0] != labels.dims[0]) {
    throw std::runtime_error(images_path + " has " + std::to_string(images.dims[0]) + " images but " + labels_path +
                             " has " + std::to_string(labels.dims[0]) + " labels");
  }
  const std::int64_t n = limit > 0 ? std::min(limit, images.dims[0]) : images.dims[0];
  Split split;
  split.images = troupe::Tensor::empty({n, kPixels}, troupe::DType::f32);
  split.labels = troupe::Tensor::empty({n}, troupe::DType::i64);
  float* x = split.images.data<float>();
  std::int64_t* y = split.labels.data<std::int64_t>();
  for (std::int64_t i = 0; i < n * kPixels; ++i) x[i] = (static_cast<float>(images.data[i]) / 255.0f - kMean) / kStd;
  for (std::int64_t i = 0; i < n; ++i) {
    if (labels.data[i] >= kClasses) {
      throw std::runtime_error(labels_path + ": label " + std::to_string(labels.data[i]) + " at " + std::to_string(i) +
                               " is not a class 0..9");
    }
    y[i] = labels.data[i];
  }
  return split;
}

}  // namespace

Dataset load(const std::string& dir, std::int64_t train_limit) {
  return Dataset{read_split(dir, "train", train_limit), read_split(dir, "t10k", 0)};
}

}  // namespace fashion_mnist
