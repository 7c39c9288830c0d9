#include "troupe/runtime/tensor.hpp"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdio>
#include <limits>
#include <new>
#include <string>
#include <utility>

#include "troupe/runtime/cuda.hpp"

namespace troupe {

// ---- element types ------------------------------------------------------------

std::string_view to_string(DType dtype) noexcept {
  switch (dtype) {
    case DType::f32: return "f32";
    case DType::f16: return "f16";
    case DType::bf16: return "bf16";
    case DType::i32: return "i32";
    case DType::i64: return "i64";
    case DType::u8: return "u8";
  }
  return "unknown";
}

DType parse_dtype(std::string_view name) {
  for (const DType dtype : all_dtypes) {
    if (to_string(dtype) == name) return dtype;
  }
  throw Error(Errc::invalid_argument,
              "unknown dtype \"" + std::string(name) + "\" (expected f32, f16, bf16, i32, i64 or u8)");
}

std::uint16_t float_to_f16_bits(float value) noexcept {
  const std::uint32_t x = std::bit_cast<std::uint32_t>(value);
  const std::uint32_t sign = (x >> 16) & 0x8000u;
  const std::uint32_t exponent = (x >> 23) & 0xffu;
  std::uint32_t mantissa = x & 0x7fffffu;
  if (exponent == 0xff) {  // infinity, or NaN kept quiet
    return static_cast<std::uint16_t>(sign | 0x7c00u | (mantissa ? 0x200u | (mantissa >> 13) : 0u));
  }
  const int e = static_cast<int>(exponent) - 127 + 15;
  if (e >= 0x1f) return static_cast<std::uint16_t>(sign | 0x7c00u);  // overflow
  if (e <= 0) {                                                      // f16 subnormal or zero
    if (e < -10) return static_cast<std::uint16_t>(sign);
    mantissa |= 0x800000u;
    const int shift = 14 - e;
    std::uint32_t half = mantissa >> shift;
    const std::uint32_t rest = mantissa & ((1u << shift) - 1);
    const std::uint32_t halfway = 1u << (shift - 1);
    if (rest > halfway || (rest == halfway && (half & 1u))) ++half;
    return static_cast<std::uint16_t>(sign | half);
  }
  std::uint32_t half = sign | (static_cast<std::uint32_t>(e) << 10) | (mantissa >> 13);
  const std::uint32_t rest = mantissa & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (half & 1u))) ++half;  // a carry may round up to infinity
  return static_cast<std::uint16_t>(half);
}

float f16_bits_to_float(std::uint16_t bits) noexcept {
  const std::uint32_t sign = static_cast<std::uint32_t>(bits & 0x8000u) << 16;
  const std::uint32_t exponent = (bits >> 10) & 0x1fu;
  const std::uint32_t mantissa = bits & 0x3ffu;
  if (exponent == 0x1f) return std::bit_cast<float>(sign | 0x7f800000u | (mantissa << 13));
  if (exponent == 0) {  // zero or subnormal: mantissa * 2^-24, exact in f32
    const float magnitude = std::ldexp(static_cast<float>(mantissa), -24);
    return sign ? -magnitude : magnitude;
  }
  return std::bit_cast<float>(sign | ((exponent - 15 + 127) << 23) | (mantissa << 13));
}

std::uint16_t float_to_bf16_bits(float value) noexcept {
  const std::uint32_t x = std::bit_cast<std::uint32_t>(value);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((x >> 16) | 0x40u);  // quiet NaN
  const std::uint32_t rounding = 0x7fffu + ((x >> 16) & 1u);
  return static_cast<std::uint16_t>((x + rounding) >> 16);
}

float bf16_bits_to_float(std::uint16_t bits) noexcept {
  return std::bit_cast<float>(static_cast<std::uint32_t>(bits) << 16);
}

// ---- devices and storage ---------------------------------------------------------

std::string_view to_string(MemoryType type) noexcept {
  switch (type) {
    case MemoryType::host: return "host";
    case MemoryType::cuda: return "cuda";
  }
  return "unknown";
}

std::string Device::to_string() const {
  return is_cpu() ? std::string("cpu") : "cuda:" + std::to_string(index);
}

namespace {

// Throws unless CUDA device `index` exists here; `what` says what needed it.
void require_cuda_device(int index, const std::string& what) {
  const int count = cuda::device_count();
  if (count == 0) throw Error(Errc::cuda, what + ": no CUDA device: " + cuda::unavailable_reason());
  if (index < 0 || index >= count) {
    throw Error(Errc::invalid_argument, what + ": CUDA device " + std::to_string(index) +
                                            " does not exist (" + std::to_string(count) + " visible)");
  }
}

// Copies n bytes between any two places. Host <-> host is a memmove, so
// overlapping views of one storage are fine.
void copy_bytes(void* dst, Device dst_device, const void* src, Device src_device, std::size_t n) {
  if (n == 0 || dst == src) return;
  if (dst_device.is_cpu() && src_device.is_cpu()) {
    std::memmove(dst, src, n);
    return;
  }
#if TROUPE_HAVE_CUDA
  const std::string what = "copy " + std::to_string(n) + " bytes from " + src_device.to_string() + " to " +
                           dst_device.to_string();
  if (dst_device.is_cuda() && src_device.is_cuda() && dst_device.index != src_device.index) {
    cuda::check(cudaMemcpyPeer(dst, dst_device.index, src, src_device.index, n), "cudaMemcpyPeer (" + what + ")");
    return;
  }
  // Host <-> device or within one device. cudaMemcpy returns once host memory
  // is safe to reuse; a device-to-device copy is ordered on the default stream.
  const int index = dst_device.is_cuda() ? dst_device.index : src_device.index;
  cuda::DeviceGuard guard(index);
  cuda::check(cudaMemcpy(dst, src, n, cudaMemcpyDefault), "cudaMemcpy (" + what + ")");
#else
  TROUPE_CHECK(false, "a CUDA tensor exists in a build without CUDA");
#endif
}

}  // namespace

Storage::Storage(void* data, std::size_t nbytes, Device device, bool pinned,
                 std::function<void(void*)> release) noexcept
    : data_(data), nbytes_(nbytes), device_(device), pinned_(pinned), release_(std::move(release)) {}

Storage::~Storage() {
  if (release_) release_(data_);
}

std::shared_ptr<Storage> Storage::allocate(std::size_t nbytes, Device device) {
  if (device.is_cpu()) {
    if (nbytes == 0) return std::shared_ptr<Storage>(new Storage(nullptr, 0, device, false, nullptr));
    void* data = ::operator new(nbytes, std::align_val_t{host_alignment});
    return std::shared_ptr<Storage>(new Storage(data, nbytes, device, false, [](void* p) {
      ::operator delete(p, std::align_val_t{host_alignment});
    }));
  }
  const std::string what = "allocate " + std::to_string(nbytes) + " bytes on " + device.to_string();
  require_cuda_device(device.index, what);
#if TROUPE_HAVE_CUDA
  if (nbytes == 0) return std::shared_ptr<Storage>(new Storage(nullptr, 0, device, false, nullptr));
  cuda::DeviceGuard guard(device.index);
  void* data = nullptr;
  cuda::check(cudaMalloc(&data, nbytes), "cudaMalloc (" + what + ")");
  // cudaFree finds the owning device from the pointer; no device switch needed.
  return std::shared_ptr<Storage>(new Storage(data, nbytes, device, false, [](void* p) { (void)cudaFree(p); }));
#else
  TROUPE_CHECK(false, "require_cuda_device passed in a build without CUDA");
#endif
}

std::shared_ptr<Storage> Storage::allocate_pinned(std::size_t nbytes) {
  const std::string what = "allocate " + std::to_string(nbytes) + " bytes of pinned host memory";
  require_cuda_device(0, what);
#if TROUPE_HAVE_CUDA
  if (nbytes == 0) return std::shared_ptr<Storage>(new Storage(nullptr, 0, Device::cpu(), true, nullptr));
  void* data = nullptr;
  cuda::check(cudaMallocHost(&data, nbytes), "cudaMallocHost (" + what + ")");
  return std::shared_ptr<Storage>(
      new Storage(data, nbytes, Device::cpu(), true, [](void* p) { (void)cudaFreeHost(p); }));
#else
  TROUPE_CHECK(false, "require_cuda_device passed in a build without CUDA");
#endif
}

std::shared_ptr<Storage> Storage::wrap(void* data, std::size_t nbytes, Device device,
                                       std::function<void(void*)> release) {
  if (data == nullptr && nbytes != 0) {
    throw Error(Errc::invalid_argument, "Storage::wrap: null data for " + std::to_string(nbytes) + " bytes");
  }
  if (device.is_cuda()) require_cuda_device(device.index, "Storage::wrap on " + device.to_string());
  return std::shared_ptr<Storage>(new Storage(data, nbytes, device, false, std::move(release)));
}

// ---- the tensor ------------------------------------------------------------------

std::int64_t numel_of(const Tensor::Shape& shape) {
  std::int64_t count = 1;
  for (const std::int64_t extent : shape) {
    if (extent < 0) {
      throw Error(Errc::invalid_argument, "negative dimension " + std::to_string(extent) + " in a tensor shape");
    }
    if (__builtin_mul_overflow(count, extent, &count)) {
      throw Error(Errc::invalid_argument, "tensor shape has too many elements (overflow)");
    }
  }
  return count;
}

namespace {

std::string shape_string(const Tensor::Shape& shape) {
  std::string out = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) out += ", ";
    out += std::to_string(shape[i]);
  }
  return out + "]";
}

// nbytes of a shape, checked against overflow.
std::size_t nbytes_of(const Tensor::Shape& shape, DType dtype) {
  const std::int64_t count = numel_of(shape);
  std::size_t bytes = 0;
  if (__builtin_mul_overflow(static_cast<std::size_t>(count), element_size(dtype), &bytes)) {
    throw Error(Errc::invalid_argument, "tensor of shape " + shape_string(shape) + " is too large");
  }
  return bytes;
}

void require_defined(const Tensor& tensor, const char* operation) {
  if (!tensor.defined()) throw Error(Errc::invalid_argument, std::string(operation) + " on an undefined tensor");
}

}  // namespace

Tensor::Tensor(std::shared_ptr<Storage> storage, Shape shape, DType dtype, std::size_t byte_offset)
    : storage_(std::move(storage)), shape_(std::move(shape)), dtype_(dtype), offset_(byte_offset) {
  if (!storage_) throw Error(Errc::invalid_argument, "Tensor: null storage");
  const std::size_t bytes = nbytes_of(shape_, dtype_);
  numel_ = numel_of(shape_);
  if (byte_offset % element_size(dtype_) != 0) {
    throw Error(Errc::invalid_argument, "Tensor: byte offset " + std::to_string(byte_offset) +
                                            " is not a multiple of the " + std::string(troupe::to_string(dtype_)) +
                                            " element size");
  }
  if (byte_offset > storage_->nbytes() || bytes > storage_->nbytes() - byte_offset) {
    throw Error(Errc::invalid_argument, "Tensor: " + std::to_string(bytes) + " bytes at offset " +
                                            std::to_string(byte_offset) + " do not fit a storage of " +
                                            std::to_string(storage_->nbytes()) + " bytes");
  }
}

Tensor Tensor::empty(Shape shape, DType dtype, Device device) {
  const std::size_t bytes = nbytes_of(shape, dtype);
  return Tensor(Storage::allocate(bytes, device), std::move(shape), dtype);
}

Tensor Tensor::empty_pinned(Shape shape, DType dtype) {
  const std::size_t bytes = nbytes_of(shape, dtype);
  return Tensor(Storage::allocate_pinned(bytes), std::move(shape), dtype);
}

Tensor Tensor::zeros(Shape shape, DType dtype, Device device) {
  Tensor out = empty(std::move(shape), dtype, device);
  if (out.nbytes() == 0) return out;
  if (device.is_cpu()) {
    std::memset(out.raw_data(), 0, out.nbytes());
  } else {
#if TROUPE_HAVE_CUDA
    cuda::DeviceGuard guard(device.index);
    cuda::check(cudaMemset(out.raw_data(), 0, out.nbytes()),
                "cudaMemset (zero " + std::to_string(out.nbytes()) + " bytes on " + device.to_string() + ")");
#endif
  }
  return out;
}

Device Tensor::device() const noexcept { return storage_ ? storage_->device() : Device::cpu(); }

bool Tensor::is_pinned() const noexcept { return storage_ && storage_->pinned(); }

std::int64_t Tensor::size(std::int64_t i) const {
  const std::int64_t rank = dim();
  const std::int64_t at = i < 0 ? i + rank : i;
  if (at < 0 || at >= rank) {
    throw Error(Errc::invalid_argument,
                "Tensor::size(" + std::to_string(i) + ") on a tensor of " + std::to_string(rank) + " dimensions");
  }
  return shape_[static_cast<std::size_t>(at)];
}

void* Tensor::raw_data() const noexcept {
  if (!storage_ || storage_->data() == nullptr) return nullptr;
  return static_cast<std::byte*>(storage_->data()) + offset_;
}

void Tensor::check_data_access(DType wanted) const {
  const std::string call = "Tensor::data<" + std::string(troupe::to_string(wanted)) + ">()";
  require_defined(*this, call.c_str());
  if (wanted != dtype_) {
    throw Error(Errc::invalid_argument, call + " on a " + std::string(troupe::to_string(dtype_)) + " tensor");
  }
  if (!device().is_cpu()) {
    throw Error(Errc::invalid_argument, call + " on a tensor in " + device().to_string() +
                                            " memory; copy it with to(Device::cpu()) or use raw_data()");
  }
}

Tensor Tensor::slice(std::int64_t begin, std::int64_t end) const {
  require_defined(*this, "Tensor::slice");
  if (dim() == 0) throw Error(Errc::invalid_argument, "Tensor::slice on a 0-dimensional tensor");
  const std::int64_t rows = shape_[0];
  if (begin < 0 || begin > end || end > rows) {
    throw Error(Errc::invalid_argument, "Tensor::slice(" + std::to_string(begin) + ", " + std::to_string(end) +
                                            ") outside dimension 0 of size " + std::to_string(rows));
  }
  Tensor out = *this;
  out.shape_[0] = end - begin;
  const std::int64_t row_elements = rows == 0 ? 0 : numel_ / rows;
  out.numel_ = (end - begin) * row_elements;
  out.offset_ = offset_ + static_cast<std::size_t>(begin * row_elements) * element_size(dtype_);
  return out;
}

std::vector<Tensor> Tensor::chunk(std::int64_t n) const {
  require_defined(*this, "Tensor::chunk");
  if (dim() == 0) throw Error(Errc::invalid_argument, "Tensor::chunk on a 0-dimensional tensor");
  if (n < 1) throw Error(Errc::invalid_argument, "Tensor::chunk(" + std::to_string(n) + "): need n >= 1");
  const std::int64_t rows = shape_[0];
  const std::int64_t step = (rows + n - 1) / n;
  std::vector<Tensor> out;
  for (std::int64_t begin = 0; begin < rows; begin += step) out.push_back(slice(begin, std::min(rows, begin + step)));
  return out;
}

Tensor Tensor::reshape(Shape shape) const {
  require_defined(*this, "Tensor::reshape");
  std::int64_t known = 1;
  std::size_t inferred = shape.size();
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == -1 && inferred == shape.size()) {
      inferred = i;
      continue;
    }
    if (shape[i] < 0) {
      throw Error(Errc::invalid_argument, "Tensor::reshape to " + shape_string(shape) +
                                              ": dimensions must be >= 0, with at most one -1");
    }
    if (__builtin_mul_overflow(known, shape[i], &known)) {
      throw Error(Errc::invalid_argument, "Tensor::reshape to " + shape_string(shape) + ": too many elements");
    }
  }
  if (inferred != shape.size()) {
    if (known == 0 || numel_ % known != 0) {
      throw Error(Errc::invalid_argument, "Tensor::reshape: cannot infer the -1 in " + shape_string(shape) +
                                              " for " + std::to_string(numel_) + " elements");
    }
    shape[inferred] = numel_ / known;
    known = numel_;
  }
  if (known != numel_) {
    throw Error(Errc::invalid_argument, "Tensor::reshape from " + shape_string(shape_) + " to " +
                                            shape_string(shape) + " changes the number of elements");
  }
  Tensor out = *this;
  out.shape_ = std::move(shape);
  return out;
}

Tensor Tensor::to(Device device) const {
  require_defined(*this, "Tensor::to");
  if (device == this->device()) return *this;
  if (device.is_cuda()) require_cuda_device(device.index, "cannot copy " + to_string() + " to " + device.to_string());
  Tensor out = empty(shape_, dtype_, device);
  copy_bytes(out.raw_data(), device, raw_data(), this->device(), nbytes());
  return out;
}

Tensor Tensor::clone() const {
  require_defined(*this, "Tensor::clone");
  Tensor out = is_pinned() ? empty_pinned(shape_, dtype_) : empty(shape_, dtype_, device());
  copy_bytes(out.raw_data(), out.device(), raw_data(), device(), nbytes());
  return out;
}

Tensor& Tensor::copy_from(const Tensor& src) {
  require_defined(*this, "Tensor::copy_from");
  require_defined(src, "Tensor::copy_from (source)");
  if (src.dtype_ != dtype_ || src.shape_ != shape_) {
    throw Error(Errc::invalid_argument, "Tensor::copy_from: cannot copy " + src.to_string() + " into " + to_string());
  }
  copy_bytes(raw_data(), device(), src.raw_data(), src.device(), nbytes());
  return *this;
}

namespace {

// The bit pattern of `value` as one element of `dtype`, zero-extended.
std::uint64_t element_bits(double value, DType dtype) {
  const auto integral = [&](double lowest, double limit) {
    // limit is exclusive (a power of two, exact in double).
    if (!(value >= lowest && value < limit) || std::trunc(value) != value) {
      throw Error(Errc::invalid_argument, "fill_(" + std::to_string(value) + ") does not fit a " +
                                              std::string(to_string(dtype)) + " element");
    }
  };
  switch (dtype) {
    case DType::f32: return std::bit_cast<std::uint32_t>(static_cast<float>(value));
    case DType::f16: return float_to_f16_bits(static_cast<float>(value));
    case DType::bf16: return float_to_bf16_bits(static_cast<float>(value));
    case DType::i32:
      integral(-2147483648.0, 2147483648.0);
      return static_cast<std::uint32_t>(static_cast<std::int32_t>(value));
    case DType::i64:
      integral(-9223372036854775808.0, 9223372036854775808.0);
      return static_cast<std::uint64_t>(static_cast<std::int64_t>(value));
    case DType::u8:
      integral(0.0, 256.0);
      return static_cast<std::uint8_t>(value);
  }
  TROUPE_CHECK(false, "unknown dtype");
}

template <class Word>
[[maybe_unused]] void store_word(void* dst, std::uint64_t bits) {
  const auto word = static_cast<Word>(bits);
  std::memcpy(dst, &word, sizeof word);
}

template <class Word>
void fill_host(void* dst, std::int64_t count, std::uint64_t bits) {
  std::fill_n(static_cast<Word*>(dst), count, static_cast<Word>(bits));
}

}  // namespace

Tensor& Tensor::fill_(double value) {
  require_defined(*this, "Tensor::fill_");
  const std::uint64_t bits = element_bits(value, dtype_);
  if (numel_ == 0) return *this;
  if (device().is_cpu()) {
    switch (element_size(dtype_)) {
      case 1: fill_host<std::uint8_t>(raw_data(), numel_, bits); break;
      case 2: fill_host<std::uint16_t>(raw_data(), numel_, bits); break;
      case 4: fill_host<std::uint32_t>(raw_data(), numel_, bits); break;
      case 8: fill_host<std::uint64_t>(raw_data(), numel_, bits); break;
      default: TROUPE_CHECK(false, "element sizes are 1, 2, 4 or 8");
    }
    return *this;
  }
#if TROUPE_HAVE_CUDA
  // A grid-stride fill kernel; synchronised so the tensor is filled when
  // fill_ returns, like the host path.
  const std::string what = " (fill " + to_string() + ")";
  cuda::DeviceGuard guard(device().index);
  cuda::check(cuda::detail::launch_fill(raw_data(), static_cast<std::uint64_t>(numel_), bits, element_size(dtype_)),
              "fill kernel launch" + what);
  cuda::check(cudaStreamSynchronize(nullptr), "cudaStreamSynchronize" + what);
#else
  TROUPE_CHECK(false, "a CUDA tensor exists in a build without CUDA");
#endif
  return *this;
}

std::string Tensor::to_string() const {
  if (!defined()) return "Tensor(undefined)";
  return "Tensor(" + std::string(troupe::to_string(dtype_)) + ", " + shape_string(shape_) + ", " +
         device().to_string() + ")";
}

namespace {

std::string element_string(const void* data, std::int64_t i, DType dtype) {
  char buffer[64];
  const auto* bytes = static_cast<const std::byte*>(data) + static_cast<std::size_t>(i) * element_size(dtype);
  const auto read = [&]<class T>(T) {
    T value;
    std::memcpy(&value, bytes, sizeof(T));
    return value;
  };
  switch (dtype) {
    case DType::f32: std::snprintf(buffer, sizeof buffer, "%g", static_cast<double>(read(float{}))); break;
    case DType::f16:
      std::snprintf(buffer, sizeof buffer, "%g", static_cast<double>(f16_bits_to_float(read(std::uint16_t{}))));
      break;
    case DType::bf16:
      std::snprintf(buffer, sizeof buffer, "%g", static_cast<double>(bf16_bits_to_float(read(std::uint16_t{}))));
      break;
    case DType::i32: std::snprintf(buffer, sizeof buffer, "%d", static_cast<int>(read(std::int32_t{}))); break;
    case DType::i64:
      std::snprintf(buffer, sizeof buffer, "%lld", static_cast<long long>(read(std::int64_t{})));
      break;
    case DType::u8: std::snprintf(buffer, sizeof buffer, "%u", static_cast<unsigned>(read(std::uint8_t{}))); break;
  }
  return buffer;
}

}  // namespace

std::string Tensor::describe() const {
  if (!defined()) return to_string();
  std::string out = to_string();
  out.pop_back();  // reopen the ")"
  out += ", " + std::to_string(nbytes()) + " bytes at offset " + std::to_string(offset_) + " of a " +
         std::to_string(storage_->nbytes()) + "-byte " + (is_pinned() ? "pinned " : "") + "storage)";
  if (!device().is_cpu()) return out + " values on the device";
  constexpr std::int64_t shown = 8;
  out += " [";
  for (std::int64_t i = 0; i < std::min(numel_, shown); ++i) {
    if (i > 0) out += ", ";
    out += element_string(raw_data(), i, dtype_);
  }
  if (numel_ > shown) out += ", ... (" + std::to_string(numel_ - shown) + " more)";
  return out + "]";
}

bool equal(const Tensor& a, const Tensor& b) {
  if (!a.defined() || !b.defined()) return a.defined() == b.defined();
  if (a.dtype() != b.dtype() || a.shape() != b.shape()) return false;
  if (a.nbytes() == 0) return true;
  const Tensor host_a = a.to(Device::cpu());
  const Tensor host_b = b.to(Device::cpu());
  return std::memcmp(host_a.raw_data(), host_b.raw_data(), host_a.nbytes()) == 0;
}

// ---- cereal helpers -----------------------------------------------------------------

namespace detail {

void check_tensor_header(std::uint8_t tag, std::uint8_t dtype, std::uint8_t memory_type, std::uint32_t rank) {
  if (tag != tensor_tag_v1) {
    throw Error(Errc::serialization, "tensor: unknown encoding tag " + std::to_string(tag));
  }
  if (dtype > static_cast<std::uint8_t>(DType::u8)) {
    throw Error(Errc::serialization, "tensor: unknown dtype code " + std::to_string(dtype));
  }
  if (memory_type > static_cast<std::uint8_t>(MemoryType::cuda)) {
    throw Error(Errc::serialization, "tensor: unknown memory type code " + std::to_string(memory_type));
  }
  if (rank > tensor_max_rank) {
    throw Error(Errc::serialization, "tensor: rank " + std::to_string(rank) + " exceeds the limit of " +
                                         std::to_string(tensor_max_rank));
  }
  if (static_cast<MemoryType>(memory_type) == MemoryType::cuda && !cuda::available()) {
    throw Error(Errc::cuda, "cannot load a CUDA tensor (" + std::string(to_string(static_cast<DType>(dtype))) +
                                ") into this process: no CUDA device: " + cuda::unavailable_reason());
  }
}

Tensor empty_tensor_for_load(Tensor::Shape shape, std::uint8_t dtype, std::uint64_t available) {
  std::size_t bytes = 0;
  try {
    bytes = nbytes_of(shape, static_cast<DType>(dtype));
  } catch (const Error& e) {
    throw Error(Errc::serialization, "tensor: bad shape " + shape_string(shape) + ": " + e.message());
  }
  if (bytes > available) {
    throw Error(Errc::serialization, "length bomb refused: tensor of shape " + shape_string(shape) + " claims " +
                                         std::to_string(bytes) + " bytes but only " + std::to_string(available) +
                                         " remain");
  }
  return Tensor::empty(std::move(shape), static_cast<DType>(dtype));
}

Tensor finish_tensor_load(Tensor host, std::uint8_t memory_type) {
  if (static_cast<MemoryType>(memory_type) == MemoryType::host) return host;
  return host.to(Device::cuda(cuda::current_device()));
}

}  // namespace detail

}  // namespace troupe
