// safetensors_file and safetensors_writer: a file written byte by byte from the specification
// reads as it says; the writer's layout (padded header, name order, contiguous data); round
// trips in F32, F64 and BF16 (exact conversions, correctly rounded bfloat16); ranks 0 to 3,
// I64, empty tensors, mixed types; the writer's own errors.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include <nlohmann/json.hpp>

#include <performer/io/safetensors.hpp>
#include <performer/io/safetensors_writer.hpp>
#include <performer/testing/expect_invalid.hpp>
#include <performer/testing/helpers.hpp>

#include "io/support.hpp"

namespace performer::test {
// Named as well as anonymous: the unity build compiles several test files as one.
namespace io_safetensors_test {
namespace {

using namespace io_support;
using conformance::random_matrix;
using conformance::same_bits;

// Offsets deliberately not in name order ("t" first), header not padded, a U8 tensor the
// reader recognises but does not convert.
TEST(SafetensorsFile, ReadsAFileBuiltFromTheSpecification) {
  const temp_dir dir;
  bytes data;
  for (const std::int64_t t : {std::int64_t{5}, std::int64_t{-1}, std::int64_t{1} << 40}) append(data, t);
  for (const float a : {1.0f, -2.5f, 3.0f, 4.0f, 5e-3f, 6.0f}) append(data, a);  // [24, 48)
  append(data, std::uint16_t{0x3F80});                                            // bf16 1.0
  append(data, std::uint16_t{0xC040});                                            // bf16 -3.0
  append(data, 3.141592653589793);                                                // [52, 60)
  for (const unsigned char u : {1, 2, 3, 4}) data.push_back(u);                   // [60, 64)
  const std::string header =
      R"({"__metadata__":{"format":"pt","note":"hand made"},)"
      R"("t":{"dtype":"I64","shape":[3],"data_offsets":[0,24]},)"
      R"("a":{"dtype":"F32","shape":[2,3],"data_offsets":[24,48]},)"
      R"("b":{"dtype":"BF16","shape":[2],"data_offsets":[48,52]},)"
      R"("c":{"dtype":"F64","shape":[],"data_offsets":[52,60]},)"
      R"("u":{"dtype":"U8","shape":[2,2],"data_offsets":[60,64]}})";
  write_safetensors(dir.file("hand.safetensors"), header, data);

  io::safetensors_file f(dir.file("hand.safetensors"));
  ASSERT_EQ(f.tensors().size(), 5u);
  const std::vector<std::string> order{"t", "a", "b", "c", "u"};
  for (std::size_t i = 0; i < order.size(); ++i) EXPECT_EQ(f.tensors()[i].name, order[i]);
  EXPECT_EQ(f.info("a").type, io::dtype::f32);
  EXPECT_EQ(f.info("a").shape, (std::vector<std::int64_t>{2, 3}));
  EXPECT_EQ(f.info("b").begin, 48u);
  EXPECT_EQ(f.info("c").shape.size(), 0u);
  EXPECT_EQ(f.metadata().at("note"), "hand made");
  EXPECT_EQ(f.metadata().size(), 2u);
  EXPECT_TRUE(f.contains("u"));
  EXPECT_FALSE(f.contains("v"));

  row_matrix<float> a(2, 3);
  a << 1.0f, -2.5f, 3.0f, 4.0f, 5e-3f, 6.0f;
  EXPECT_TRUE(same_bits(f.read<float>("a"), a));
  EXPECT_TRUE(same_bits(f.read<double>("a"), a.cast<double>()));
  EXPECT_TRUE(same_bits(f.read_transposed<float>("a"), row_matrix<float>(a.transpose())));
  row_matrix<float> b(1, 2);
  b << 1.0f, -3.0f;
  EXPECT_TRUE(same_bits(f.read<float>("b"), b));
  EXPECT_EQ(f.read<double>("c")(0, 0), 3.141592653589793);
  EXPECT_EQ(f.read<float>("c")(0, 0), static_cast<float>(3.141592653589793));
  EXPECT_EQ(f.read_int64("t"), (std::vector<std::int64_t>{5, -1, std::int64_t{1} << 40}));
  EXPECT_EQ(f.bytes("u").size(), 4u);
  EXPECT_EQ(static_cast<int>(f.bytes("u")[3]), 4);
  PERFORMER_EXPECT_INVALID("safetensors_file::read", "tensor 'u' is U8", f.read<float>("u"));

  // Moved, the file stays readable; discarding pages does not lose data.
  const io::safetensors_file moved(std::move(f));
  moved.discard_pages();
  EXPECT_TRUE(same_bits(moved.read<float>("a"), a));
  static_assert(!std::is_copy_constructible_v<io::safetensors_file>);
  static_assert(std::is_move_constructible_v<io::safetensors_file>);
}

TEST(SafetensorsWriter, LayoutPaddedNameOrderedContiguous) {
  const temp_dir dir;
  const row_matrix<float> z = random_matrix<float>(3, 5, 1);
  const row_vector<float> a = random_matrix<float>(1, 7, 2);
  const std::vector<std::int64_t> ids{4, 2};
  io::safetensors_writer w;
  w.add("z.weight", z);
  w.add("a.bias", a);
  w.add_int64("m.ids", ids);
  w.add("c", row_matrix<double>(random_matrix<double>(2, 2, 3)), {4});
  w.set_metadata("key", "value");
  w.write(dir.file("w.safetensors"));
  EXPECT_FALSE(std::filesystem::exists(dir.file("w.safetensors.partial")));

  const bytes raw = read_bytes(dir.file("w.safetensors"));
  std::uint64_t n = 0;
  std::memcpy(&n, raw.data(), 8);
  EXPECT_EQ(n % 8, 0u);
  const std::string header(raw.begin() + 8, raw.begin() + 8 + static_cast<std::ptrdiff_t>(n));
  const auto j = nlohmann::json::parse(header);
  EXPECT_EQ(j["__metadata__"]["key"], "value");
  EXPECT_EQ(j["a.bias"]["shape"], nlohmann::json::array({7}));
  EXPECT_EQ(j["c"]["dtype"], "F32");
  // Data in name order: a.bias, c, m.ids, z.weight.
  EXPECT_EQ(j["a.bias"]["data_offsets"], nlohmann::json::array({0, 28}));
  EXPECT_EQ(j["c"]["data_offsets"], nlohmann::json::array({28, 44}));
  EXPECT_EQ(j["m.ids"]["data_offsets"], nlohmann::json::array({44, 60}));
  EXPECT_EQ(j["m.ids"]["dtype"], "I64");
  EXPECT_EQ(j["z.weight"]["data_offsets"], nlohmann::json::array({60, 120}));
  EXPECT_EQ(raw.size(), 8 + n + 120);
  EXPECT_EQ(header.find_first_not_of(' ', header.rfind('}') + 1), std::string::npos);

  const io::safetensors_file f(dir.file("w.safetensors"));
  EXPECT_TRUE(same_bits(f.read<float>("z.weight"), z));
  EXPECT_TRUE(same_bits(f.read<float>("a.bias"), a));
  EXPECT_EQ(f.read_int64("m.ids"), ids);
  // The same contents added in another order give the same bytes.
  io::safetensors_writer w2;
  w2.set_metadata("key", "value");
  w2.add("c", row_matrix<double>(random_matrix<double>(2, 2, 3)), {4});
  w2.add_int64("m.ids", ids);
  w2.add("z.weight", z);
  w2.add("a.bias", a);
  w2.write(dir.file("w2.safetensors"));
  EXPECT_EQ(read_bytes(dir.file("w2.safetensors")), raw);
}

template <class T>
struct SafetensorsRoundTrip : ::testing::Test {};
using scalars = ::testing::Types<float, double>;
TYPED_TEST_SUITE(SafetensorsRoundTrip, scalars);

TYPED_TEST(SafetensorsRoundTrip, ExactInItsOwnTypeAndWidened) {
  using T = TypeParam;
  const temp_dir dir;
  row_matrix<T> m = random_matrix<T>(37, 11, 4, 1e3);
  m(0, 0) = std::numeric_limits<T>::denorm_min();
  m(0, 1) = -std::numeric_limits<T>::max();
  m(0, 2) = T(-0.0);
  const row_matrix<T> stack = random_matrix<T>(3, 4 * 5, 5);
  io::safetensors_writer w(io::default_dtype<T>);
  w.add("m", m);
  w.add_transposed("mt", m);
  w.add("s", stack, {3, 4, 5});
  w.add("empty", row_matrix<T>(0, 3));
  w.write(dir.file("r.safetensors"));
  const io::safetensors_file f(dir.file("r.safetensors"));
  EXPECT_EQ(f.info("m").type, io::default_dtype<T>);
  EXPECT_TRUE(same_bits(f.read<T>("m"), m));
  EXPECT_TRUE(same_bits(f.read<T>("mt"), row_matrix<T>(m.transpose())));
  EXPECT_TRUE(same_bits(f.read_transposed<T>("mt"), m));
  EXPECT_EQ(f.read<T>("empty").rows(), 0);
  EXPECT_EQ(f.read<T>("empty").cols(), 3);
  const auto s = f.read_stack<T>("s");
  ASSERT_EQ(s.size(), 3u);
  for (index_t i = 0; i < 3; ++i) {
    EXPECT_TRUE(same_bits(s[static_cast<std::size_t>(i)],
                          Eigen::Map<const row_matrix<T>>(stack.row(i).data(), 4, 5)));
  }
  if constexpr (std::is_same_v<T, float>) {
    EXPECT_TRUE(same_bits(f.read<double>("m"), m.template cast<double>()));  // widening: exact
  } else {
    const row_matrix<double> small = random_matrix<double>(5, 5, 6);
    io::safetensors_writer w64(io::dtype::f64);
    w64.add("x", small);
    w64.write(dir.file("x.safetensors"));
    const io::safetensors_file g(dir.file("x.safetensors"));
    EXPECT_TRUE(same_bits(g.read<float>("x"), row_matrix<float>(small.cast<float>())));
  }
}

// Big enough that every blocked path runs over several blocks: the reader's conversion (16 MB,
// with pages discarded), read_transposed's (64 rows) and the writer's (16384 elements).
TEST(SafetensorsWriter, LargeTensorsAcrossBlocks) {
  const temp_dir dir;
  row_matrix<float> big(2100, 2100);  // 17.6 MB
  for (index_t i = 0; i < big.size(); ++i) big.data()[i] = static_cast<float>(i % 8191) - 4000.5f;
  const row_matrix<float> m = random_matrix<float>(300, 200, 12);
  const row_matrix<double> wide = random_matrix<double>(150, 333, 13);
  io::safetensors_writer w;
  w.add("big", big);
  w.add("m", m);
  w.add_transposed("m_t", m);
  w.add_transposed("wide_t", wide, io::dtype::f64);
  w.write(dir.file("large.safetensors"));
  const io::safetensors_file f(dir.file("large.safetensors"), io::page_policy::discard_after_read);
  EXPECT_TRUE(same_bits(f.read<float>("big"), big));
  EXPECT_TRUE(same_bits(f.read<float>("m"), m));
  EXPECT_TRUE(same_bits(f.read_transposed<float>("m_t"), m));
  EXPECT_TRUE(same_bits(f.read<float>("m_t"), row_matrix<float>(m.transpose())));
  EXPECT_TRUE(same_bits(f.read_transposed<double>("wide_t"), wide));
  EXPECT_TRUE(same_bits(f.read_transposed<float>("m_t"), m));  // discarded pages read again
}

/// The bfloat16 bits the writer stored for one value.
template <class T>
std::uint16_t stored_bf16(const temp_dir& dir, T value) {
  row_matrix<T> m(1, 1);
  m(0, 0) = value;
  io::safetensors_writer w(io::dtype::bf16);
  w.add("v", m);
  w.write(dir.file("bf16.safetensors"));
  const io::safetensors_file f(dir.file("bf16.safetensors"));
  std::uint16_t bits = 0;
  std::memcpy(&bits, f.bytes("v").data(), 2);
  return bits;
}

TEST(SafetensorsWriter, Bf16RoundsToNearestEven) {
  const temp_dir dir;
  EXPECT_EQ(stored_bf16(dir, 1.0f), 0x3F80);
  EXPECT_EQ(stored_bf16(dir, 1.0f + 0x1p-8f), 0x3F80);        // tie: to even (down)
  EXPECT_EQ(stored_bf16(dir, 1.0f + 3 * 0x1p-8f), 0x3F82);    // tie: to even (up)
  EXPECT_EQ(stored_bf16(dir, 1.0f + 0x1p-8f + 0x1p-20f), 0x3F81);
  EXPECT_EQ(stored_bf16(dir, -2.0f), 0xC000);
  // A double just above a tie: rounding it to float first would make a false tie (and go down).
  EXPECT_EQ(stored_bf16(dir, 1.0 + 0x1p-8 + 0x1p-40), 0x3F81);
  EXPECT_EQ(stored_bf16(dir, 1.0 + 0x1p-8 - 0x1p-40), 0x3F80);
  EXPECT_EQ(stored_bf16(dir, -(1.0 + 0x1p-8 + 0x1p-40)), 0xBF81);
}

TYPED_TEST(SafetensorsRoundTrip, Bf16WithinItsRounding) {
  using T = TypeParam;
  const temp_dir dir;
  const row_matrix<T> m = random_matrix<T>(20, 30, 7, 50.0);
  io::safetensors_writer w(io::dtype::bf16);
  w.add("m", m);
  w.add("exact", row_matrix<T>(m.unaryExpr([](T x) { return std::ldexp(std::round(std::ldexp(x, 2)), -2); })));
  w.write(dir.file("b.safetensors"));
  const io::safetensors_file f(dir.file("b.safetensors"));
  EXPECT_EQ(f.info("m").type, io::dtype::bf16);
  const row_matrix<T> back = f.read<T>("m");
  // 8 significant bits: a relative error of at most 2^-8 (half an ulp).
  for (index_t i = 0; i < m.size(); ++i) {
    EXPECT_LE(std::abs(back.data()[i] - m.data()[i]), std::ldexp(std::abs(m.data()[i]), -8)) << i;
  }
  // Values with few significant bits (multiples of 1/4 below 64) are exact.
  const row_matrix<T> exact = f.read<T>("exact");
  EXPECT_TRUE(same_bits(exact, row_matrix<T>(m.unaryExpr([](T x) { return std::ldexp(std::round(std::ldexp(x, 2)), -2); }))));
}

TEST(SafetensorsWriter, MixedTypesInOneFile) {
  const temp_dir dir;
  const row_matrix<double> m = random_matrix<double>(4, 4, 8);
  io::safetensors_writer w(io::dtype::f64);
  w.add("as_f64", m);
  w.add("as_f32", m, {}, io::dtype::f32);
  w.add("as_bf16", m, {}, io::dtype::bf16);
  w.write(dir.file("mixed.safetensors"));
  const io::safetensors_file f(dir.file("mixed.safetensors"));
  EXPECT_EQ(f.info("as_f32").type, io::dtype::f32);
  EXPECT_EQ(f.info("as_bf16").type, io::dtype::bf16);
  EXPECT_TRUE(same_bits(f.read<double>("as_f64"), m));
  EXPECT_TRUE(same_bits(f.read<float>("as_f32"), row_matrix<float>(m.cast<float>())));
  EXPECT_LE((f.read<double>("as_bf16") - m).cwiseAbs().maxCoeff(), 1.0 / 256);
}

TEST(SafetensorsWriterBadInput, RejectsAndLeavesNoFile) {
  const temp_dir dir;
  const char* write = "safetensors_writer::write";
  const char* add = "safetensors_writer::add";
  row_matrix<float> nan = random_matrix<float>(2, 2, 9);
  nan(1, 0) = std::numeric_limits<float>::quiet_NaN();
  {
    io::safetensors_writer w;
    w.add("ok", random_matrix<float>(2, 2, 10));
    w.add("bad", nan);
    PERFORMER_EXPECT_INVALID(write, "tensor 'bad' holds a NaN, an infinity or a value beyond the range of F32",
                             w.write(dir.file("nan.safetensors")));
    EXPECT_FALSE(std::filesystem::exists(dir.file("nan.safetensors")));
    EXPECT_FALSE(std::filesystem::exists(dir.file("nan.safetensors.partial")));
  }
  {
    row_matrix<double> big(1, 2);
    big << 1.0, 1e300;
    io::safetensors_writer w(io::dtype::f32);
    w.add("big", big);
    PERFORMER_EXPECT_INVALID(write, "beyond the range of F32", w.write(dir.file("big.safetensors")));
    io::safetensors_writer b(io::dtype::bf16);
    row_matrix<float> edge(1, 1);
    edge << std::numeric_limits<float>::max();  // rounds beyond bfloat16's largest value
    b.add("edge", edge);
    PERFORMER_EXPECT_INVALID(write, "beyond the range of BF16", b.write(dir.file("edge.safetensors")));
  }
  io::safetensors_writer w;
  const row_matrix<float> m = random_matrix<float>(2, 3, 11);
  w.add("m", m);
  PERFORMER_EXPECT_INVALID(add, "tensor 'm' was already added", w.add("m", m));
  PERFORMER_EXPECT_INVALID(add, "reserved for the metadata map", w.add("__metadata__", m));
  PERFORMER_EXPECT_INVALID(add, "shape [4, 2] holds 8 elements, the data 6", w.add("n", m, {4, 2}));
  PERFORMER_EXPECT_INVALID(add, "shape [-2, -3] has a negative extent", w.add("n", m, {-2, -3}));
  PERFORMER_EXPECT_INVALID("safetensors_writer", "cannot store float or double tensors as I64",
                           io::safetensors_writer(io::dtype::i64));
  PERFORMER_EXPECT_INVALID("safetensors_writer", "as U8", w.add("n", m, {}, io::dtype::u8));
  PERFORMER_EXPECT_INVALID(write, "cannot open", w.write(dir.file("no/such/dir/m.safetensors")));
}

}  // namespace
}  // namespace io_safetensors_test
}  // namespace performer::test
