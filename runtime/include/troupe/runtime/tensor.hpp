// troupe::Tensor: the n-dimensional array that actors pass to each other.
//
// A Tensor is a view (shape, dtype, byte offset) onto a reference-counted
// Storage in host or CUDA memory. Storage is always contiguous and row-major,
// so every view is too. Copying a Tensor is cheap and shares the storage;
// slice, chunk and reshape are zero-copy views; clone, to and copy_from copy
// bytes. There is no arithmetic here: f16 and bf16 are storage types, with
// float conversion helpers below.
//
// Thread safety: a Tensor object is as safe as a shared_ptr (distinct copies
// may be used from distinct threads); nothing synchronizes access to the
// bytes they share.
//
// Serialization: `save`/`load` below make a Tensor serializable with cereal's
// binary archives (dtype, shape, memory type, then the raw bytes in native
// byte order).
#pragma once

#include <cereal/cereal.hpp>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "troupe/runtime/error.hpp"

namespace troupe {

// ---- element types ------------------------------------------------------------

enum class DType : std::uint8_t { f32, f16, bf16, i32, i64, u8 };

inline constexpr DType all_dtypes[] = {DType::f32, DType::f16, DType::bf16,
                                       DType::i32, DType::i64, DType::u8};

// Bytes per element: 4, 2, 2, 4, 8, 1.
constexpr std::size_t element_size(DType dtype) noexcept {
  switch (dtype) {
    case DType::f32: return 4;
    case DType::f16: return 2;
    case DType::bf16: return 2;
    case DType::i32: return 4;
    case DType::i64: return 8;
    case DType::u8: return 1;
  }
  return 0;
}

// Stable lower-case name: "f32", "f16", "bf16", "i32", "i64", "u8".
std::string_view to_string(DType dtype) noexcept;
// Inverse of to_string(DType); throws Error(Errc::invalid_argument) for other names.
DType parse_dtype(std::string_view name);

// IEEE binary16 and bfloat16 conversions, rounding to nearest even; NaN stays
// NaN, overflow becomes infinity.
std::uint16_t float_to_f16_bits(float value) noexcept;
float f16_bits_to_float(std::uint16_t bits) noexcept;
std::uint16_t float_to_bf16_bits(float value) noexcept;
float bf16_bits_to_float(std::uint16_t bits) noexcept;

// Element types for DType::f16 and DType::bf16: two bytes of storage, no math.
struct Half {
  std::uint16_t bits = 0;
  static Half from_float(float value) noexcept { return Half{float_to_f16_bits(value)}; }
  float to_float() const noexcept { return f16_bits_to_float(bits); }
  friend bool operator==(Half, Half) = default;  // bitwise
};
struct BFloat16 {
  std::uint16_t bits = 0;
  static BFloat16 from_float(float value) noexcept { return BFloat16{float_to_bf16_bits(value)}; }
  float to_float() const noexcept { return bf16_bits_to_float(bits); }
  friend bool operator==(BFloat16, BFloat16) = default;  // bitwise
};

// DTypeOf<T>::value is the DType whose elements are C++ type T.
template <class T> struct DTypeOf;
template <> struct DTypeOf<float> { static constexpr DType value = DType::f32; };
template <> struct DTypeOf<Half> { static constexpr DType value = DType::f16; };
template <> struct DTypeOf<BFloat16> { static constexpr DType value = DType::bf16; };
template <> struct DTypeOf<std::int32_t> { static constexpr DType value = DType::i32; };
template <> struct DTypeOf<std::int64_t> { static constexpr DType value = DType::i64; };
template <> struct DTypeOf<std::uint8_t> { static constexpr DType value = DType::u8; };

template <class T>
concept TensorElement = requires { DTypeOf<T>::value; };

template <TensorElement T>
inline constexpr DType dtype_of = DTypeOf<T>::value;

// ---- where bytes live -----------------------------------------------------------

enum class MemoryType : std::uint8_t { host, cuda };

// "host" or "cuda".
std::string_view to_string(MemoryType type) noexcept;

struct Device {
  MemoryType type = MemoryType::host;
  int index = 0;  // CUDA ordinal in this process; 0 for host

  static constexpr Device cpu() noexcept { return Device{MemoryType::host, 0}; }
  static constexpr Device cuda(int index = 0) noexcept { return Device{MemoryType::cuda, index}; }
  constexpr bool is_cpu() const noexcept { return type == MemoryType::host; }
  constexpr bool is_cuda() const noexcept { return type == MemoryType::cuda; }
  friend constexpr bool operator==(const Device&, const Device&) = default;

  // "cpu" or "cuda:<index>".
  std::string to_string() const;
};

// A block of bytes in one place, freed when the last Tensor viewing it goes.
// Host blocks from allocate() are aligned to 64 bytes; CUDA blocks come from
// cudaMalloc on the given device; pinned host blocks from cudaMallocHost.
// A zero-byte block holds no memory and its data() is null.
class Storage {
 public:
  static constexpr std::size_t host_alignment = 64;

  // Throws Error(Errc::cuda) for a CUDA device when there is none (or the
  // allocation fails), Error(Errc::invalid_argument) for a bad device index.
  static std::shared_ptr<Storage> allocate(std::size_t nbytes, Device device);
  // Page-locked host memory for fast, asynchronous host <-> CUDA copies.
  // Needs a CUDA device: throws Error(Errc::cuda) when there is none.
  static std::shared_ptr<Storage> allocate_pinned(std::size_t nbytes);
  // Adopts memory owned elsewhere (a received transport buffer, a mapped
  // file). `release(data)` runs once, when the last Tensor drops the storage,
  // on whichever thread drops it. A null `release` means "not owned".
  static std::shared_ptr<Storage> wrap(void* data, std::size_t nbytes, Device device,
                                       std::function<void(void*)> release);

  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data() const noexcept { return data_; }
  std::size_t nbytes() const noexcept { return nbytes_; }
  Device device() const noexcept { return device_; }
  bool pinned() const noexcept { return pinned_; }

 private:
  Storage(void* data, std::size_t nbytes, Device device, bool pinned,
          std::function<void(void*)> release) noexcept;

  void* data_;
  std::size_t nbytes_;
  Device device_;
  bool pinned_;
  std::function<void(void*)> release_;
};

// ---- the tensor ------------------------------------------------------------------

class Tensor {
 public:
  using Shape = std::vector<std::int64_t>;

  // An undefined tensor: no storage, numel() == 0; most operations on it throw
  // Error(Errc::invalid_argument).
  Tensor() = default;

  // A view of `storage` starting `byte_offset` bytes in. Throws
  // Error(Errc::invalid_argument) unless the view fits inside the storage and
  // the offset is a multiple of the element size.
  Tensor(std::shared_ptr<Storage> storage, Shape shape, DType dtype, std::size_t byte_offset = 0);

  // Uninitialized contents. Dimensions must be >= 0 (a 0-dim shape {} is a
  // scalar with one element). Errors as Storage::allocate.
  static Tensor empty(Shape shape, DType dtype, Device device = Device::cpu());
  // Uninitialized, in pinned host memory (see Storage::allocate_pinned).
  static Tensor empty_pinned(Shape shape, DType dtype);
  static Tensor zeros(Shape shape, DType dtype, Device device = Device::cpu());
  // A host tensor holding a copy of `values`; numel(shape) must equal
  // values.size() (Error(Errc::invalid_argument) otherwise).
  template <TensorElement T>
  static Tensor from_vector(const std::vector<T>& values, Shape shape);
  // 1-D: shape {values.size()}.
  template <TensorElement T>
  static Tensor from_vector(const std::vector<T>& values) {
    return from_vector(values, Shape{static_cast<std::int64_t>(values.size())});
  }

  bool defined() const noexcept { return storage_ != nullptr; }
  const Shape& shape() const noexcept { return shape_; }
  DType dtype() const noexcept { return dtype_; }
  Device device() const noexcept;
  bool is_pinned() const noexcept;
  std::int64_t dim() const noexcept { return static_cast<std::int64_t>(shape_.size()); }
  std::int64_t numel() const noexcept { return numel_; }
  std::size_t nbytes() const noexcept { return static_cast<std::size_t>(numel_) * element_size(dtype_); }
  // Extent of dimension i; negative i counts from the end. Throws
  // Error(Errc::invalid_argument) when out of range.
  std::int64_t size(std::int64_t i) const;

  const std::shared_ptr<Storage>& storage() const noexcept { return storage_; }
  // Bytes from storage()->data() to the first element.
  std::size_t storage_offset() const noexcept { return offset_; }

  // First byte, in whatever memory the tensor lives in; null when undefined
  // or when its storage is empty.
  void* raw_data() const noexcept;
  // Typed host access. Throws Error(Errc::invalid_argument) when T is not the
  // tensor's element type, when the tensor is undefined, or when it is not in
  // host memory. Constness is shallow, as for shared_ptr.
  template <TensorElement T>
  T* data() const {
    check_data_access(dtype_of<T>);
    return static_cast<T*>(raw_data());
  }

  // Rows [begin, end) of dimension 0, sharing storage. Requires dim() >= 1
  // and 0 <= begin <= end <= size(0); Error(Errc::invalid_argument) otherwise.
  Tensor slice(std::int64_t begin, std::int64_t end) const;
  // Splits dimension 0 into micro-batches of ceil(size(0) / n) rows, sharing
  // storage; the last may be smaller, so there can be fewer than n (as
  // torch.chunk). No chunk is empty: size(0) == 0 gives none. n >= 1.
  std::vector<Tensor> chunk(std::int64_t n) const;
  // The same bytes under another shape with the same numel(); one dimension
  // may be -1 and is then inferred.
  Tensor reshape(Shape shape) const;

  // A copy on `device` (host <-> CUDA, or between CUDA devices). When the
  // tensor already lives there it is returned as is, sharing storage; use
  // clone() for a copy. Throws Error(Errc::cuda) when a CUDA device is needed
  // and there is none, naming the reason.
  Tensor to(Device device) const;
  // A deep copy on the same device (pinned stays pinned), holding exactly
  // this view's bytes.
  Tensor clone() const;
  // Copies src's bytes into this tensor's (any devices). Requires the same
  // dtype and shape (Error(Errc::invalid_argument) otherwise).
  Tensor& copy_from(const Tensor& src);
  // Sets every element to `value` converted to dtype(); integer dtypes need
  // an integral value in their range (Error(Errc::invalid_argument)). CUDA
  // tensors are filled in order on the device's legacy default stream.
  Tensor& fill_(double value);

  // One line: "Tensor(f32, [2, 3], cpu)" or "Tensor(undefined)".
  std::string to_string() const;
  // to_string() plus the layout (bytes, offset, storage size, pinned) and,
  // for host tensors, the first few values.
  std::string describe() const;

 private:
  void check_data_access(DType wanted) const;

  std::shared_ptr<Storage> storage_;
  Shape shape_;
  DType dtype_ = DType::f32;
  std::size_t offset_ = 0;
  std::int64_t numel_ = 0;
};

// True when both are undefined, or both have the same dtype, shape and bytes
// (bitwise: -0.0 != 0.0, identical NaNs are equal). The device does not
// matter; CUDA tensors are copied to the host to compare.
bool equal(const Tensor& a, const Tensor& b);

// Number of elements of `shape`; Error(Errc::invalid_argument) for a negative
// dimension or when the count overflows.
std::int64_t numel_of(const Tensor::Shape& shape);

template <TensorElement T>
Tensor Tensor::from_vector(const std::vector<T>& values, Shape shape) {
  const std::int64_t count = numel_of(shape);
  if (count != static_cast<std::int64_t>(values.size())) {
    throw_error(Errc::invalid_argument, "Tensor::from_vector: " + std::to_string(values.size()) +
                                            " values for a shape of " + std::to_string(count) + " elements");
  }
  Tensor out = empty(std::move(shape), dtype_of<T>);
  if (!values.empty()) std::memcpy(out.raw_data(), values.data(), values.size() * sizeof(T));
  return out;
}

// ---- cereal -----------------------------------------------------------------------
//
// Wire form: u8 tag (0 = undefined tensor, 1 = tensor), then for a tensor u8
// dtype, u8 memory type, u32 rank, rank x i64 dims, and the nbytes() raw bytes
// of the view (a slice encodes only its own bytes). A CUDA tensor is staged
// through host memory and loads onto the loading thread's current CUDA device;
// where there is none, load throws Error(Errc::cuda) rather than change the
// memory type. Malformed input throws Error(Errc::serialization). Works with
// cereal's binary archives (it uses cereal::binary_data).

namespace detail {
inline constexpr std::uint8_t tensor_tag_undefined = 0;
inline constexpr std::uint8_t tensor_tag_v1 = 1;
inline constexpr std::uint32_t tensor_max_rank = 64;

// Before any bytes are read: Error(Errc::serialization) for an unknown tag,
// dtype or memory type or a rank over tensor_max_rank; Error(Errc::cuda) for a
// CUDA tensor where there is no device.
void check_tensor_header(std::uint8_t tag, std::uint8_t dtype, std::uint8_t memory_type,
                         std::uint32_t rank);
// The host tensor the bytes are read into; Error(Errc::serialization) for a
// negative or overflowing shape, or one whose bytes exceed `available` (the
// bytes left in a bounded archive), checked before anything is allocated.
Tensor empty_tensor_for_load(Tensor::Shape shape, std::uint8_t dtype,
                             std::uint64_t available = ~std::uint64_t{0});
// Moves the loaded host bytes to where the encoded tensor lived.
Tensor finish_tensor_load(Tensor host, std::uint8_t memory_type);
}  // namespace detail

template <class Archive>
void save(Archive& archive, const Tensor& tensor) {
  if (!tensor.defined()) {
    archive(detail::tensor_tag_undefined);
    return;
  }
  // TODO(perf): stage CUDA tensors through pinned memory.
  const Tensor host = tensor.device().is_cpu() ? tensor : tensor.to(Device::cpu());
  archive(detail::tensor_tag_v1, static_cast<std::uint8_t>(tensor.dtype()),
          static_cast<std::uint8_t>(tensor.device().type), static_cast<std::uint32_t>(tensor.dim()));
  for (const std::int64_t extent : tensor.shape()) archive(extent);
  if (host.nbytes() > 0) archive(cereal::binary_data(host.raw_data(), host.nbytes()));
}

template <class Archive>
void load(Archive& archive, Tensor& tensor) {
  std::uint8_t tag = 0;
  archive(tag);
  if (tag == detail::tensor_tag_undefined) {
    tensor = Tensor();
    return;
  }
  std::uint8_t dtype = 0;
  std::uint8_t memory_type = 0;
  std::uint32_t rank = 0;
  archive(dtype, memory_type, rank);
  detail::check_tensor_header(tag, dtype, memory_type, rank);
  Tensor::Shape shape(rank);
  for (std::int64_t& extent : shape) archive(extent);
  std::uint64_t available = ~std::uint64_t{0};
  if constexpr (requires { archive.remaining_bytes(); }) available = archive.remaining_bytes();
  Tensor host = detail::empty_tensor_for_load(std::move(shape), dtype, available);
  if (host.nbytes() > 0) archive(cereal::binary_data(host.raw_data(), host.nbytes()));
  tensor = detail::finish_tensor_load(std::move(host), memory_type);
}

}  // namespace troupe
