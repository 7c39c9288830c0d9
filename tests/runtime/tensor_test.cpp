// troupe::Tensor: element types, zero-copy views, copies, and the cereal wire
// form, on host memory here and on CUDA memory where a device exists.
#include "troupe/runtime/tensor.hpp"

#include <cereal/archives/binary.hpp>
#include <cereal/types/vector.hpp>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "troupe/runtime/cuda.hpp"

namespace {

using troupe::BFloat16;
using troupe::Device;
using troupe::DType;
using troupe::Errc;
using troupe::Half;
using troupe::MemoryType;
using troupe::Tensor;

template <class F>
Errc error_code_of(F&& f) {
  try {
    f();
  } catch (const troupe::Error& e) {
    return e.code();
  }
  return Errc::ok;
}

#define SKIP_WITHOUT_GPU() \
  if (!troupe::cuda::available()) GTEST_SKIP() << "no CUDA device: " << troupe::cuda::unavailable_reason()

const std::byte* bytes_of(const Tensor& t) { return static_cast<const std::byte*>(t.raw_data()); }

// A host tensor whose every byte differs from its neighbours, so any shifted
// or truncated copy shows.
Tensor patterned(Tensor::Shape shape, DType dtype) {
  Tensor t = Tensor::empty(std::move(shape), dtype);
  auto* bytes = static_cast<std::uint8_t*>(t.raw_data());
  for (std::size_t i = 0; i < t.nbytes(); ++i) bytes[i] = static_cast<std::uint8_t>(i * 37 + 11);
  return t;
}

std::string encode(const Tensor& t) {
  std::ostringstream out;
  {
    cereal::BinaryOutputArchive archive(out);
    archive(t);
  }
  return out.str();
}

Tensor decode(const std::string& bytes) {
  std::istringstream in(bytes);
  cereal::BinaryInputArchive archive(in);
  Tensor t;
  archive(t);
  return t;
}

// tag, dtype, memory type (u8 each), rank (u32), dims (i64 each), then bytes.
std::size_t encoded_size(const Tensor& t) { return 3 + 4 + 8 * t.shape().size() + t.nbytes(); }

// ---- element types --------------------------------------------------------------

TEST(DTypeTest, EveryDTypeHasItsElementSizeAndName) {
  EXPECT_EQ(troupe::element_size(DType::f32), 4u);
  EXPECT_EQ(troupe::element_size(DType::f16), 2u);
  EXPECT_EQ(troupe::element_size(DType::bf16), 2u);
  EXPECT_EQ(troupe::element_size(DType::i32), 4u);
  EXPECT_EQ(troupe::element_size(DType::i64), 8u);
  EXPECT_EQ(troupe::element_size(DType::u8), 1u);
  static_assert(sizeof(Half) == 2 && sizeof(BFloat16) == 2);
  static_assert(troupe::dtype_of<float> == DType::f32 && troupe::dtype_of<std::int64_t> == DType::i64);
  EXPECT_EQ(troupe::to_string(DType::bf16), "bf16");
  for (const DType dtype : troupe::all_dtypes) {
    EXPECT_EQ(troupe::parse_dtype(troupe::to_string(dtype)), dtype);
  }
  EXPECT_EQ(error_code_of([] { (void)troupe::parse_dtype("f64"); }), Errc::invalid_argument);
}

TEST(HalfTest, ConvertsKnownValuesAndRoundsToNearestEven) {
  EXPECT_EQ(troupe::float_to_f16_bits(1.0f), 0x3c00);
  EXPECT_EQ(troupe::float_to_f16_bits(-2.0f), 0xc000);
  EXPECT_EQ(troupe::float_to_f16_bits(65504.0f), 0x7bff);
  EXPECT_EQ(troupe::float_to_f16_bits(1e6f), 0x7c00) << "overflow is infinity";
  EXPECT_EQ(troupe::float_to_f16_bits(std::ldexp(1.0f, -24)), 0x0001) << "smallest subnormal";
  EXPECT_EQ(troupe::float_to_f16_bits(1.0f + std::ldexp(1.0f, -11)), 0x3c00) << "tie rounds to even";
  EXPECT_TRUE(std::isnan(troupe::f16_bits_to_float(troupe::float_to_f16_bits(NAN))));
  EXPECT_EQ(Half::from_float(0.5f).to_float(), 0.5f);
  // Every finite or infinite f16 survives a trip through float.
  for (std::uint32_t bits = 0; bits <= 0xffff; ++bits) {
    const auto h = static_cast<std::uint16_t>(bits);
    if ((h & 0x7c00) == 0x7c00 && (h & 0x3ff) != 0) continue;  // NaN payloads
    ASSERT_EQ(troupe::float_to_f16_bits(troupe::f16_bits_to_float(h)), h) << std::hex << bits;
  }
}

TEST(BFloat16Test, ConvertsKnownValuesAndRoundsToNearestEven) {
  EXPECT_EQ(troupe::float_to_bf16_bits(1.0f), 0x3f80);
  EXPECT_EQ(troupe::bf16_bits_to_float(0xc000), -2.0f);
  EXPECT_EQ(troupe::float_to_bf16_bits(1.0f + std::ldexp(1.0f, -8)), 0x3f80) << "tie rounds to even";
  EXPECT_EQ(troupe::float_to_bf16_bits(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3f82) << "tie rounds to even";
  EXPECT_TRUE(std::isnan(troupe::bf16_bits_to_float(troupe::float_to_bf16_bits(NAN))));
  EXPECT_EQ(BFloat16::from_float(3.0f).to_float(), 3.0f);
}

TEST(DeviceTest, NamesCpuAndCudaDevices) {
  EXPECT_TRUE(Device::cpu().is_cpu());
  EXPECT_EQ(Device::cuda(1).type, MemoryType::cuda);
  EXPECT_EQ(Device::cuda(1).to_string(), "cuda:1");
  EXPECT_EQ(Device::cpu().to_string(), "cpu");
  EXPECT_NE(Device::cuda(0), Device::cuda(1));
  EXPECT_EQ(Device{}, Device::cpu());
}

// ---- creation and access -------------------------------------------------------------

TEST(TensorCreate, EmptyHasShapeSizesAndAlignedHostMemory) {
  const Tensor t = Tensor::empty({2, 3, 5}, DType::f32);
  EXPECT_TRUE(t.defined());
  EXPECT_EQ(t.dim(), 3);
  EXPECT_EQ(t.numel(), 30);
  EXPECT_EQ(t.nbytes(), 120u);
  EXPECT_EQ(t.size(0), 2);
  EXPECT_EQ(t.size(-1), 5);
  EXPECT_EQ(error_code_of([&] { (void)t.size(3); }), Errc::invalid_argument);
  EXPECT_EQ(t.device(), Device::cpu());
  EXPECT_FALSE(t.is_pinned());
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(t.raw_data()) % troupe::Storage::host_alignment, 0u);
}

TEST(TensorCreate, ZerosAreZeroForEveryDType) {
  for (const DType dtype : troupe::all_dtypes) {
    const Tensor t = Tensor::zeros({3, 7}, dtype);
    EXPECT_EQ(t.dtype(), dtype);
    EXPECT_EQ(t.nbytes(), 21 * troupe::element_size(dtype));
    for (std::size_t i = 0; i < t.nbytes(); ++i) ASSERT_EQ(bytes_of(t)[i], std::byte{0});
  }
}

TEST(TensorCreate, FromVectorCopiesTheValues) {
  const Tensor t = Tensor::from_vector<std::int32_t>({1, 2, 3, 4, 5, 6}, {2, 3});
  EXPECT_EQ(t.dtype(), DType::i32);
  EXPECT_EQ(t.shape(), (Tensor::Shape{2, 3}));
  EXPECT_EQ(t.data<std::int32_t>()[4], 5);
  const Tensor flat = Tensor::from_vector(std::vector<float>{0.5f, 1.5f});
  EXPECT_EQ(flat.shape(), (Tensor::Shape{2}));
  EXPECT_EQ(flat.data<float>()[1], 1.5f);
  const Tensor halves = Tensor::from_vector(std::vector<Half>{Half::from_float(2.0f)});
  EXPECT_EQ(halves.dtype(), DType::f16);
  EXPECT_EQ(halves.data<Half>()[0].to_float(), 2.0f);
}

TEST(TensorCreate, RejectsBadShapes) {
  EXPECT_EQ(error_code_of([] { (void)Tensor::from_vector<float>({1, 2, 3}, {2, 2}); }), Errc::invalid_argument);
  EXPECT_EQ(error_code_of([] { (void)Tensor::empty({2, -1}, DType::u8); }), Errc::invalid_argument);
  EXPECT_EQ(error_code_of([] { (void)Tensor::empty({1ll << 40, 1ll << 40}, DType::u8); }), Errc::invalid_argument);
}

TEST(TensorCreate, ScalarsZeroSizedAndUndefinedTensors) {
  const Tensor scalar = Tensor::from_vector<std::int64_t>({42}, {});
  EXPECT_EQ(scalar.dim(), 0);
  EXPECT_EQ(scalar.numel(), 1);
  EXPECT_EQ(scalar.data<std::int64_t>()[0], 42);

  const Tensor nothing = Tensor::zeros({0, 4}, DType::f32);
  EXPECT_TRUE(nothing.defined());
  EXPECT_EQ(nothing.numel(), 0);
  EXPECT_EQ(nothing.nbytes(), 0u);

  const Tensor undefined;
  EXPECT_FALSE(undefined.defined());
  EXPECT_EQ(undefined.numel(), 0);
  EXPECT_EQ(undefined.raw_data(), nullptr);
  EXPECT_EQ(error_code_of([&] { (void)undefined.data<float>(); }), Errc::invalid_argument);
  EXPECT_EQ(error_code_of([&] { (void)undefined.slice(0, 0); }), Errc::invalid_argument);
}

TEST(TensorAccess, DataOfTheWrongTypeIsAnInvalidArgument) {
  const Tensor t = Tensor::zeros({4}, DType::f32);
  EXPECT_NO_THROW((void)t.data<float>());
  EXPECT_EQ(error_code_of([&] { (void)t.data<std::int32_t>(); }), Errc::invalid_argument);
  EXPECT_EQ(error_code_of([&] { (void)t.data<Half>(); }), Errc::invalid_argument);
  try {
    (void)t.data<std::uint8_t>();
  } catch (const troupe::Error& e) {
    EXPECT_NE(e.message().find("u8"), std::string::npos) << e.message();
    EXPECT_NE(e.message().find("f32"), std::string::npos) << e.message();
  }
}

TEST(TensorAccess, CopiesShareStorage) {
  Tensor a = Tensor::zeros({3}, DType::i32);
  const Tensor b = a;
  a.data<std::int32_t>()[1] = 7;
  EXPECT_EQ(b.data<std::int32_t>()[1], 7);
  EXPECT_EQ(a.storage(), b.storage());
}

// ---- zero-copy views ---------------------------------------------------------------------

TEST(TensorSlice, SharesStorageAndPointsIntoIt) {
  Tensor t = patterned({6, 4}, DType::f32);
  const std::size_t row_bytes = 4 * sizeof(float);
  const long owners = t.storage().use_count();
  const Tensor s = t.slice(2, 5);
  EXPECT_EQ(s.shape(), (Tensor::Shape{3, 4}));
  EXPECT_EQ(s.numel(), 12);
  EXPECT_EQ(s.storage(), t.storage());
  EXPECT_EQ(t.storage().use_count(), owners + 1);
  EXPECT_EQ(s.storage_offset(), 2 * row_bytes);
  EXPECT_EQ(bytes_of(s), bytes_of(t) + 2 * row_bytes);
  t.data<float>()[2 * 4] = 123.0f;
  EXPECT_EQ(s.data<float>()[0], 123.0f) << "writes through the base show in the slice";

  const Tensor inner = s.slice(1, 2);  // row 3 of t
  EXPECT_EQ(bytes_of(inner), bytes_of(t) + 3 * row_bytes);
  EXPECT_EQ(inner.storage_offset(), 3 * row_bytes);
  EXPECT_EQ(t.slice(0, 6).raw_data(), t.raw_data());
}

TEST(TensorSlice, EmptySliceIsAZeroRowViewAtItsPosition) {
  const Tensor t = patterned({4, 2}, DType::i64);
  const Tensor s = t.slice(3, 3);
  EXPECT_EQ(s.shape(), (Tensor::Shape{0, 2}));
  EXPECT_EQ(s.numel(), 0);
  EXPECT_EQ(s.nbytes(), 0u);
  EXPECT_EQ(bytes_of(s), bytes_of(t) + 3 * 2 * sizeof(std::int64_t));
  EXPECT_EQ(t.slice(4, 4).numel(), 0);
}

TEST(TensorSlice, OutOfRangeIsAnInvalidArgument) {
  const Tensor t = Tensor::zeros({4, 2}, DType::u8);
  EXPECT_EQ(error_code_of([&] { (void)t.slice(-1, 2); }), Errc::invalid_argument);
  EXPECT_EQ(error_code_of([&] { (void)t.slice(3, 2); }), Errc::invalid_argument);
  EXPECT_EQ(error_code_of([&] { (void)t.slice(0, 5); }), Errc::invalid_argument);
  EXPECT_EQ(error_code_of([&] { (void)t.slice(5, 5); }), Errc::invalid_argument);
  const Tensor scalar = Tensor::zeros({}, DType::u8);
  EXPECT_EQ(error_code_of([&] { (void)scalar.slice(0, 0); }), Errc::invalid_argument);
}

TEST(TensorChunk, SplitsRowsIntoZeroCopyMicroBatches) {
  const Tensor t = patterned({10, 3}, DType::i32);
  const std::size_t row_bytes = 3 * sizeof(std::int32_t);
  const auto chunks = t.chunk(4);
  ASSERT_EQ(chunks.size(), 4u);
  const std::int64_t expected_rows[] = {3, 3, 3, 1};
  std::int64_t row = 0;
  for (std::size_t i = 0; i < chunks.size(); ++i) {
    EXPECT_EQ(chunks[i].shape(), (Tensor::Shape{expected_rows[i], 3}));
    EXPECT_EQ(chunks[i].storage(), t.storage());
    EXPECT_EQ(bytes_of(chunks[i]), bytes_of(t) + static_cast<std::size_t>(row) * row_bytes);
    row += expected_rows[i];
  }
  EXPECT_EQ(row, 10);
}

TEST(TensorChunk, EdgeCases) {
  const Tensor t = patterned({5, 2}, DType::u8);
  // ceil(5 / 4) = 2 rows each: fewer than n chunks, as torch.chunk.
  const auto three = t.chunk(4);
  ASSERT_EQ(three.size(), 3u);
  EXPECT_EQ(three[2].size(0), 1);
  const auto singles = t.chunk(8);
  ASSERT_EQ(singles.size(), 5u);
  for (const Tensor& c : singles) EXPECT_EQ(c.size(0), 1);
  const auto whole = t.chunk(1);
  ASSERT_EQ(whole.size(), 1u);
  EXPECT_EQ(whole[0].raw_data(), t.raw_data());
  EXPECT_TRUE(Tensor::zeros({0, 2}, DType::u8).chunk(3).empty());
  EXPECT_EQ(error_code_of([&] { (void)t.chunk(0); }), Errc::invalid_argument);
  EXPECT_EQ(error_code_of([] { (void)Tensor::zeros({}, DType::u8).chunk(2); }), Errc::invalid_argument);
}

TEST(TensorReshape, IsAZeroCopyViewWithTheSameNumel) {
  const Tensor t = patterned({4, 6}, DType::f16);
  const Tensor r = t.reshape({3, 8});
  EXPECT_EQ(r.shape(), (Tensor::Shape{3, 8}));
  EXPECT_EQ(r.raw_data(), t.raw_data());
  EXPECT_EQ(r.storage(), t.storage());
  EXPECT_EQ(t.reshape({2, -1, 3}).shape(), (Tensor::Shape{2, 4, 3}));
  const Tensor s = t.slice(1, 3).reshape({-1});
  EXPECT_EQ(s.shape(), (Tensor::Shape{12}));
  EXPECT_EQ(bytes_of(s), bytes_of(t) + 6 * 2);
  EXPECT_EQ(error_code_of([&] { (void)t.reshape({5, 5}); }), Errc::invalid_argument);
  EXPECT_EQ(error_code_of([&] { (void)t.reshape({-1, -1}); }), Errc::invalid_argument);
  EXPECT_EQ(error_code_of([&] { (void)t.reshape({5, -1}); }), Errc::invalid_argument);
}

// ---- copies -----------------------------------------------------------------------------

TEST(TensorClone, IsADeepCopyOfTheViewOnly) {
  const Tensor t = patterned({6, 2}, DType::i32);
  const Tensor s = t.slice(1, 4);
  Tensor c = s.clone();
  EXPECT_NE(c.storage(), s.storage());
  EXPECT_EQ(c.storage()->nbytes(), s.nbytes());
  EXPECT_EQ(c.storage_offset(), 0u);
  EXPECT_TRUE(troupe::equal(c, s));
  c.data<std::int32_t>()[0] = -1;
  EXPECT_NE(s.data<std::int32_t>()[0], -1);
  EXPECT_FALSE(troupe::equal(c, s));
}

TEST(TensorCopyFrom, CopiesBytesIntoAnExistingTensor) {
  const Tensor src = patterned({3, 3}, DType::bf16);
  Tensor dst = Tensor::zeros({3, 3}, DType::bf16);
  dst.copy_from(src);
  EXPECT_TRUE(troupe::equal(dst, src));
  EXPECT_NE(dst.raw_data(), src.raw_data());
  Tensor wrong_shape = Tensor::zeros({9}, DType::bf16);
  EXPECT_EQ(error_code_of([&] { wrong_shape.copy_from(src); }), Errc::invalid_argument);
  Tensor wrong_type = Tensor::zeros({3, 3}, DType::f16);
  EXPECT_EQ(error_code_of([&] { wrong_type.copy_from(src); }), Errc::invalid_argument);
  // Into a slice of itself: rows 0..1 <- rows 1..2 (overlapping storage).
  Tensor base = Tensor::from_vector<std::uint8_t>({1, 2, 3}, {3});
  base.slice(0, 2).copy_from(base.slice(1, 3));
  EXPECT_EQ(base.data<std::uint8_t>()[0], 2);
  EXPECT_EQ(base.data<std::uint8_t>()[1], 3);
}

TEST(TensorTo, SameDeviceSharesStorage) {
  const Tensor t = patterned({2}, DType::u8);
  EXPECT_EQ(t.to(Device::cpu()).storage(), t.storage());
}

TEST(TensorFill, FillsEveryDTypeOnTheHost) {
  EXPECT_EQ(Tensor::empty({5}, DType::f32).fill_(2.5).data<float>()[4], 2.5f);
  EXPECT_EQ(Tensor::empty({5}, DType::f16).fill_(1.0).data<Half>()[3].bits, 0x3c00);
  EXPECT_EQ(Tensor::empty({5}, DType::bf16).fill_(-2.0).data<BFloat16>()[2].to_float(), -2.0f);
  EXPECT_EQ(Tensor::empty({5}, DType::i32).fill_(-7).data<std::int32_t>()[1], -7);
  EXPECT_EQ(Tensor::empty({5}, DType::i64).fill_(1e15).data<std::int64_t>()[0], 1000000000000000);
  EXPECT_EQ(Tensor::empty({5}, DType::u8).fill_(255).data<std::uint8_t>()[4], 255);
  // A slice fills only its rows.
  Tensor t = Tensor::zeros({4}, DType::i32);
  t.slice(1, 3).fill_(9);
  EXPECT_TRUE(troupe::equal(t, Tensor::from_vector<std::int32_t>({0, 9, 9, 0})));
}

TEST(TensorFill, RejectsValuesAnIntegerDTypeCannotHold) {
  EXPECT_EQ(error_code_of([] { Tensor::empty({2}, DType::i32).fill_(1.5); }), Errc::invalid_argument);
  EXPECT_EQ(error_code_of([] { Tensor::empty({2}, DType::u8).fill_(256); }), Errc::invalid_argument);
  EXPECT_EQ(error_code_of([] { Tensor::empty({2}, DType::u8).fill_(-1); }), Errc::invalid_argument);
  EXPECT_EQ(error_code_of([] { Tensor::empty({2}, DType::i64).fill_(NAN); }), Errc::invalid_argument);
}

TEST(TensorEqual, ComparesDTypeShapeAndBytes) {
  const Tensor a = Tensor::from_vector<float>({1, 2, 3, 4}, {2, 2});
  EXPECT_TRUE(troupe::equal(a, a.clone()));
  EXPECT_FALSE(troupe::equal(a, a.reshape({4})));
  EXPECT_FALSE(troupe::equal(a, Tensor::from_vector<std::int32_t>({1, 2, 3, 4}, {2, 2})));
  EXPECT_FALSE(troupe::equal(a, Tensor::from_vector<float>({1, 2, 3, 5}, {2, 2})));
  EXPECT_FALSE(troupe::equal(a, Tensor()));
  EXPECT_TRUE(troupe::equal(Tensor(), Tensor()));
}

TEST(TensorText, SummarizesAndDescribes) {
  const Tensor t = Tensor::from_vector<float>({1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, {2, 5});
  EXPECT_EQ(t.to_string(), "Tensor(f32, [2, 5], cpu)");
  EXPECT_EQ(Tensor().to_string(), "Tensor(undefined)");
  const std::string d = t.slice(1, 2).describe();
  EXPECT_NE(d.find("offset 20"), std::string::npos) << d;
  EXPECT_NE(d.find("[6, 7, 8, 9, 10]"), std::string::npos) << d;
  EXPECT_NE(t.describe().find("(2 more)"), std::string::npos) << t.describe();
}

TEST(TensorStorage, WrapsForeignMemoryAndReleasesItOnce) {
  static std::uint8_t buffer[16];
  int released = 0;
  {
    auto storage = troupe::Storage::wrap(buffer, sizeof buffer, Device::cpu(), [&](void* p) {
      EXPECT_EQ(p, buffer);
      ++released;
    });
    const Tensor t(storage, {2, 2}, DType::f32);
    const Tensor view(storage, {2}, DType::i32, 8);
    EXPECT_EQ(view.raw_data(), buffer + 8);
    EXPECT_EQ(error_code_of([&] { Tensor(storage, {5}, DType::f32); }), Errc::invalid_argument);
    EXPECT_EQ(error_code_of([&] { Tensor(storage, {1}, DType::f32, 2); }), Errc::invalid_argument);
  }
  EXPECT_EQ(released, 1);
}

// ---- cereal -----------------------------------------------------------------------------

TEST(TensorCereal, RoundTripsEveryDTypeByteExact) {
  for (const DType dtype : troupe::all_dtypes) {
    const Tensor t = patterned({3, 5, 2}, dtype);
    const std::string wire = encode(t);
    EXPECT_EQ(wire.size(), encoded_size(t)) << troupe::to_string(dtype);
    const Tensor back = decode(wire);
    EXPECT_EQ(back.dtype(), dtype);
    EXPECT_EQ(back.shape(), t.shape());
    EXPECT_EQ(back.device(), Device::cpu());
    EXPECT_TRUE(troupe::equal(back, t)) << troupe::to_string(dtype);
  }
}

TEST(TensorCereal, EncodesOnlyTheBytesOfASlice) {
  const Tensor t = patterned({100, 8}, DType::f32);
  const Tensor s = t.slice(40, 43);
  const std::string wire = encode(s);
  EXPECT_EQ(wire.size(), encoded_size(s));
  EXPECT_EQ(wire, encode(s.clone()));
  EXPECT_EQ(wire.compare(wire.size() - s.nbytes(), s.nbytes(),
                         reinterpret_cast<const char*>(s.raw_data()), s.nbytes()),
            0);
  const Tensor back = decode(wire);
  EXPECT_TRUE(troupe::equal(back, s));
  EXPECT_EQ(back.storage_offset(), 0u);
  EXPECT_EQ(back.storage()->nbytes(), s.nbytes());
}

TEST(TensorCereal, RoundTripsScalarsEmptiesUndefinedAndContainers) {
  const Tensor scalar = Tensor::from_vector<std::int64_t>({-5}, {});
  EXPECT_TRUE(troupe::equal(decode(encode(scalar)), scalar));
  const Tensor nothing = Tensor::zeros({0, 3}, DType::bf16);
  const Tensor back = decode(encode(nothing));
  EXPECT_EQ(back.shape(), (Tensor::Shape{0, 3}));
  EXPECT_FALSE(decode(encode(Tensor())).defined());

  const std::vector<Tensor> many = patterned({6, 2}, DType::u8).chunk(3);
  std::ostringstream out;
  {
    cereal::BinaryOutputArchive archive(out);
    archive(many);
  }
  std::istringstream in(out.str());
  cereal::BinaryInputArchive archive(in);
  std::vector<Tensor> loaded;
  archive(loaded);
  ASSERT_EQ(loaded.size(), many.size());
  for (std::size_t i = 0; i < many.size(); ++i) EXPECT_TRUE(troupe::equal(loaded[i], many[i]));
}

TEST(TensorCereal, MalformedInputIsASerializationError) {
  std::string wire = encode(patterned({2}, DType::f32));
  std::string bad_dtype = wire;
  bad_dtype[1] = 9;
  EXPECT_EQ(error_code_of([&] { (void)decode(bad_dtype); }), Errc::serialization);
  std::string bad_memory = wire;
  bad_memory[2] = 7;
  EXPECT_EQ(error_code_of([&] { (void)decode(bad_memory); }), Errc::serialization);
  std::string bad_rank = wire;
  bad_rank[3] = 100;
  EXPECT_EQ(error_code_of([&] { (void)decode(bad_rank); }), Errc::serialization);
  std::string bad_tag = wire;
  bad_tag[0] = 2;
  EXPECT_EQ(error_code_of([&] { (void)decode(bad_tag); }), Errc::serialization);
  std::string negative = wire;
  const std::int64_t minus_one = -1;
  std::memcpy(negative.data() + 7, &minus_one, sizeof minus_one);
  EXPECT_EQ(error_code_of([&] { (void)decode(negative); }), Errc::serialization);
  EXPECT_ANY_THROW((void)decode(wire.substr(0, wire.size() - 1))) << "truncated bytes";
}

// ---- CUDA memory ------------------------------------------------------------------------

TEST(TensorCuda, WithoutADeviceCudaMemoryIsACudaErrorSayingWhy) {
  if (troupe::cuda::available()) GTEST_SKIP() << "this machine has a CUDA device";
  const Tensor t = patterned({4}, DType::f32);
  try {
    (void)t.to(Device::cuda(0));
    FAIL() << "copied to a CUDA device that does not exist";
  } catch (const troupe::Error& e) {
    EXPECT_EQ(e.code(), Errc::cuda);
    EXPECT_NE(e.message().find(troupe::cuda::unavailable_reason()), std::string::npos) << e.message();
  }
  EXPECT_EQ(error_code_of([] { (void)Tensor::empty({4}, DType::f32, Device::cuda(0)); }), Errc::cuda);
  EXPECT_EQ(error_code_of([] { (void)Tensor::zeros({0}, DType::f32, Device::cuda(0)); }), Errc::cuda);
  EXPECT_EQ(error_code_of([] { (void)Tensor::empty_pinned({4}, DType::f32); }), Errc::cuda);
}

TEST(TensorCuda, LoadingACudaTensorWithoutADeviceIsACudaError) {
  if (troupe::cuda::available()) GTEST_SKIP() << "this machine has a CUDA device";
  std::string wire = encode(patterned({2, 2}, DType::i32));
  wire[2] = static_cast<char>(MemoryType::cuda);  // as a GPU host would have sent it
  try {
    (void)decode(wire);
    FAIL() << "a CUDA tensor loaded without a device";
  } catch (const troupe::Error& e) {
    EXPECT_EQ(e.code(), Errc::cuda);
    EXPECT_NE(e.message().find("no CUDA device"), std::string::npos) << e.message();
  }
}

TEST(TensorCuda, ToCudaAndBackIsByteExactForEveryDType) {
  SKIP_WITHOUT_GPU();
  for (const DType dtype : troupe::all_dtypes) {
    const Tensor host = patterned({7, 33}, dtype);
    const Tensor device = host.to(Device::cuda(0));
    EXPECT_EQ(device.device(), Device::cuda(0));
    EXPECT_EQ(error_code_of([&] { (void)device.data<std::uint8_t>(); }), Errc::invalid_argument);
    const Tensor back = device.to(Device::cpu());
    EXPECT_TRUE(troupe::equal(back, host)) << troupe::to_string(dtype);
    // A slice of a CUDA tensor copies only its rows.
    EXPECT_TRUE(troupe::equal(device.slice(2, 5).to(Device::cpu()), host.slice(2, 5)));
  }
}

TEST(TensorCuda, ZerosFillCloneAndCopyOnTheDevice) {
  SKIP_WITHOUT_GPU();
  const Device gpu = Device::cuda(0);
  EXPECT_TRUE(troupe::equal(Tensor::zeros({3, 3}, DType::f32, gpu), Tensor::zeros({3, 3}, DType::f32)));
  for (const DType dtype : troupe::all_dtypes) {
    Tensor device = Tensor::zeros({1000}, dtype, gpu);
    device.slice(10, 990).fill_(3);
    Tensor expected = Tensor::zeros({1000}, dtype);
    expected.slice(10, 990).fill_(3);
    EXPECT_TRUE(troupe::equal(device, expected)) << troupe::to_string(dtype);
    const Tensor copy = device.clone();
    EXPECT_EQ(copy.device(), gpu);
    EXPECT_NE(copy.storage(), device.storage());
    EXPECT_TRUE(troupe::equal(copy, expected));
  }
  Tensor target = Tensor::empty({4}, DType::i64, gpu);
  target.copy_from(Tensor::from_vector<std::int64_t>({1, 2, 3, 4}));
  EXPECT_TRUE(troupe::equal(target, Tensor::from_vector<std::int64_t>({1, 2, 3, 4})));
}

TEST(TensorCuda, PinnedHostMemoryCopiesBothWays) {
  SKIP_WITHOUT_GPU();
  Tensor pinned = Tensor::empty_pinned({64}, DType::u8);
  EXPECT_TRUE(pinned.is_pinned());
  EXPECT_EQ(pinned.device(), Device::cpu());
  pinned.copy_from(patterned({64}, DType::u8));
  EXPECT_TRUE(pinned.clone().is_pinned());
  EXPECT_TRUE(troupe::equal(pinned.to(Device::cuda(0)), pinned));
}

TEST(TensorCuda, SerializedCudaTensorLoadsBackIntoCudaMemory) {
  SKIP_WITHOUT_GPU();
  const Tensor host = patterned({16, 4}, DType::bf16);
  const Tensor device = host.to(Device::cuda(0));
  const std::string wire = encode(device.slice(4, 12));
  EXPECT_EQ(wire.size(), encoded_size(host.slice(4, 12)));
  const Tensor back = decode(wire);
  EXPECT_EQ(back.device().type, MemoryType::cuda);
  EXPECT_TRUE(troupe::equal(back, host.slice(4, 12)));
}

TEST(TensorCuda, CopiesBetweenTwoDevices) {
  if (troupe::cuda::device_count() < 2) GTEST_SKIP() << "needs two CUDA devices";
  const Tensor host = patterned({128}, DType::i32);
  const Tensor on_second = host.to(Device::cuda(0)).to(Device::cuda(1));
  EXPECT_EQ(on_second.device(), Device::cuda(1));
  EXPECT_TRUE(troupe::equal(on_second, host));
}

}  // namespace
