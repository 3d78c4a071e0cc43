// Every malformed safetensors file (docs/bad_input_matrix.md, section 7) is a
// performer::invalid_argument whose message names the file and the problem: never a crash, a
// read out of bounds or another exception type. The files are written byte by byte here.
#include <gtest/gtest.h>

#include <cstdint>
#include <filesystem>
#include <limits>
#include <string>
#include <vector>

#include <performer/io/safetensors.hpp>
#include <performer/testing/expect_invalid.hpp>

#include "io/support.hpp"

namespace performer::test {
// Named as well as anonymous: the unity build compiles several test files as one.
namespace io_safetensors_bad_file_test {
namespace {

using namespace io_support;

constexpr const char* open_who = "safetensors_file";
constexpr const char* read_who = "safetensors_file::read";

/// Opening `content` fails with a message naming the file and holding `fragment`.
void expect_bad(const temp_dir& dir, const bytes& content, std::string_view fragment,
                const char* file, int line) {
  const auto path = dir.file("bad.safetensors");
  write_bytes(path, content);
  conformance::expect_invalid([&] { io::safetensors_file f(path); }, open_who,
                              {std::string_view(path.string()), fragment}, file, line);
}

/// The same, for a header text over `data`.
void expect_bad(const temp_dir& dir, std::string_view header, const bytes& data,
                std::string_view fragment, const char* file, int line) {
  expect_bad(dir, safetensors_bytes(header, data), fragment, file, line);
}

#define EXPECT_BAD(...) expect_bad(dir, __VA_ARGS__, __FILE__, __LINE__)

/// One F32 tensor "a" of `shape` with `offsets`.
std::string one(const std::string& shape, const std::string& offsets, const char* type = "F32") {
  return std::string(R"({"a":{"dtype":")") + type + R"(","shape":)" + shape +
         R"(,"data_offsets":)" + offsets + "}}";
}

TEST(SafetensorsBadFile, MissingUnreadableOrNotAFile) {
  const temp_dir dir;
  const auto missing = dir.file("missing.safetensors");
  conformance::expect_invalid([&] { io::safetensors_file f(missing); }, open_who,
                              {std::string_view(missing.string()), "cannot open (No such file"},
                              __FILE__, __LINE__);
  PERFORMER_EXPECT_INVALID(open_who, "not a regular file", io::safetensors_file(dir.path()));
}

TEST(SafetensorsBadFile, TooShortOrHeaderLengthOutOfRange) {
  const temp_dir dir;
  EXPECT_BAD(bytes{}, "the file has 0 bytes, fewer than the 8 of the header length");
  EXPECT_BAD(bytes{1, 0, 0, 0, 0}, "the file has 5 bytes, fewer than the 8");
  bytes huge;
  append(huge, std::uint64_t{100'000'001});
  EXPECT_BAD(huge, "header length 100000001 exceeds the limit of 100000000 bytes");
  bytes max;
  append(max, std::numeric_limits<std::uint64_t>::max());
  EXPECT_BAD(max, "exceeds the limit");
  bytes beyond;
  append(beyond, std::uint64_t{100});
  beyond.resize(40, ' ');
  EXPECT_BAD(beyond, "header length 100 runs beyond the end of the file (40 bytes)");
}

TEST(SafetensorsBadFile, HeaderNotAJsonObject) {
  const temp_dir dir;
  EXPECT_BAD(R"({"a": )", {}, "the header is not valid JSON");
  EXPECT_BAD(std::string("{\"\xff\xfe\": 1}"), {}, "the header is not valid JSON");  // not UTF-8
  EXPECT_BAD("", {}, "the header is not valid JSON");
  EXPECT_BAD("[1, 2]", {}, "the header is not a JSON object");
  EXPECT_BAD(R"("text")", {}, "the header is not a JSON object");
  EXPECT_BAD(R"({"__metadata__": [1]})", {}, "__metadata__ is not a JSON object");
  EXPECT_BAD(R"({"__metadata__": {"k": 3}})", {}, "__metadata__ \"k\" is not a string (3)");
}

TEST(SafetensorsBadFile, EntryFields) {
  const temp_dir dir;
  const bytes d8 = zeros(8);
  EXPECT_BAD(R"({"a": 3})", d8, "tensor 'a': the entry is not a JSON object");
  EXPECT_BAD(R"({"a": {"shape": [2], "data_offsets": [0, 8]}})", d8, "tensor 'a': no \"dtype\"");
  EXPECT_BAD(R"({"a": {"dtype": "F32", "data_offsets": [0, 8]}})", d8, "no \"shape\"");
  EXPECT_BAD(R"({"a": {"dtype": "F32", "shape": [2]}})", d8, "no \"data_offsets\"");
  EXPECT_BAD(one("[2]", "[0, 8]", "F17"), d8, "tensor 'a': unknown dtype \"F17\"");
  EXPECT_BAD(one("[2]", "[0, 8]", "f32"), d8, "unknown dtype \"f32\"");
  EXPECT_BAD(R"({"a": {"dtype": 32, "shape": [2], "data_offsets": [0, 8]}})", d8,
             "dtype is not a string (32)");
}

TEST(SafetensorsBadFile, Shapes) {
  const temp_dir dir;
  const bytes d8 = zeros(8);
  EXPECT_BAD(one("2", "[0, 8]"), d8, "shape is not an array (2)");
  EXPECT_BAD(one("[-2]", "[0, 8]"), d8, "shape [-2] holds -2, not a non-negative integer");
  EXPECT_BAD(one("[2.0]", "[0, 8]"), d8, "holds 2.0, not a non-negative integer");
  EXPECT_BAD(one("[\"2\"]", "[0, 8]"), d8, "not a non-negative integer");
  EXPECT_BAD(one("[1, null]", "[0, 8]"), d8, "not a non-negative integer");
  EXPECT_BAD(one("[18446744073709551615]", "[0, 8]"), d8, "has an extent too large");
  // Extents whose product overflows 64 bits are caught before the product is formed.
  EXPECT_BAD(one("[4294967296, 4294967296, 16]", "[0, 8]"), d8, "needs more than the 8 bytes");
}

TEST(SafetensorsBadFile, Offsets) {
  const temp_dir dir;
  const bytes d8 = zeros(8);
  EXPECT_BAD(one("[2]", "8"), d8, "data_offsets 8 is not [begin, end]");
  EXPECT_BAD(one("[2]", "[0, 4, 8]"), d8, "is not [begin, end]");
  EXPECT_BAD(one("[2]", "[-1, 7]"), d8, "is not [begin, end]");
  EXPECT_BAD(one("[2]", "[0.0, 8]"), d8, "is not [begin, end]");
  EXPECT_BAD(one("[0]", "[8, 0]"), d8, "data_offsets [8,0] has begin > end");
  EXPECT_BAD(one("[2]", "[0, 16]"), d8, "data_offsets [0,16] run beyond the data (8 bytes)");
  EXPECT_BAD(one("[3]", "[0, 8]"), zeros(16), "hold 8 bytes but shape [3] of F32 needs 12");
  EXPECT_BAD(one("[1]", "[0, 8]"), d8, "hold 8 bytes but shape [1] of F32 needs 4");
  EXPECT_BAD(one("[3, 0]", "[0, 8]", "F64"), d8, "hold 8 bytes but shape [3, 0] of F64 needs 0");
}

TEST(SafetensorsBadFile, OverlapsHolesAndUnusedData) {
  const temp_dir dir;
  EXPECT_BAD(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},)"
             R"( "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
             zeros(12), "tensors 'a' [0, 8) and 'b' [4, 12) overlap");
  EXPECT_BAD(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},)"
             R"( "b": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})",
             zeros(8), "overlap");
  EXPECT_BAD(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},)"
             R"( "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}})",
             zeros(12), "bytes [4, 8) of the data belong to no tensor");
  EXPECT_BAD(one("[1]", "[0, 4]"), zeros(8), "the data section has 8 bytes but the tensors use 4");
  EXPECT_BAD(one("[1]", "[4, 8]"), zeros(8), "bytes [0, 4) of the data belong to no tensor");
}

TEST(SafetensorsBadFile, ReadsByNameRankAndType) {
  const temp_dir dir;
  const auto path = dir.file("ok.safetensors");
  write_safetensors(path,
                    R"({"cube": {"dtype": "F32", "shape": [1, 1, 2], "data_offsets": [0, 8]},)"
                    R"( "ids": {"dtype": "I64", "shape": [1], "data_offsets": [8, 16]},)"
                    R"( "row": {"dtype": "F32", "shape": [2], "data_offsets": [16, 24]}})",
                    zeros(24));
  const io::safetensors_file f(path);
  conformance::expect_invalid([&] { static_cast<void>(f.read<float>("nope")); }, read_who,
                              {std::string_view(path.string()), "no tensor 'nope'"}, __FILE__, __LINE__);
  PERFORMER_EXPECT_INVALID(read_who, "no tensor 'nope'", f.info("nope"));
  PERFORMER_EXPECT_INVALID(read_who, "no tensor ''", f.read_int64(""));
  PERFORMER_EXPECT_INVALID(read_who, "tensor 'cube' has shape [1, 1, 2]; read() takes rank 0, 1 or 2",
                           f.read<float>("cube"));
  PERFORMER_EXPECT_INVALID(read_who, "tensor 'row' has shape [2], expected rank 2",
                           f.read_transposed<double>("row"));
  PERFORMER_EXPECT_INVALID(read_who, "tensor 'row' has shape [2], expected rank 3",
                           f.read_stack<float>("row"));
  PERFORMER_EXPECT_INVALID(read_who, "tensor 'row' is F32, expected I64", f.read_int64("row"));
  PERFORMER_EXPECT_INVALID(read_who, "tensor 'ids' is I64; float and double read F32, F64 and BF16",
                           f.read<double>("ids"));
}

TEST(SafetensorsBadFile, NonFiniteValuesNameTheTensorAndElement) {
  const temp_dir dir;
  const auto path = dir.file("values.safetensors");
  bytes data;
  for (const float v : {1.0f, 2.0f, std::numeric_limits<float>::quiet_NaN()}) append(data, v);
  for (const float v : {1.0f, -std::numeric_limits<float>::infinity(), 0.0f}) append(data, v);
  append(data, std::uint16_t{0x3F80});
  append(data, std::uint16_t{0x7F80});  // bf16 +inf
  for (const double v : {1.0, 1e300, -1e300}) append(data, v);
  append(data, std::numeric_limits<double>::quiet_NaN());
  write_safetensors(path,
                    R"({"nan": {"dtype": "F32", "shape": [3], "data_offsets": [0, 12]},)"
                    R"( "inf": {"dtype": "F32", "shape": [3, 1], "data_offsets": [12, 24]},)"
                    R"( "binf": {"dtype": "BF16", "shape": [2], "data_offsets": [24, 28]},)"
                    R"( "big": {"dtype": "F64", "shape": [3], "data_offsets": [28, 52]},)"
                    R"( "dnan": {"dtype": "F64", "shape": [1, 1], "data_offsets": [52, 60]}})",
                    data);
  const io::safetensors_file f(path);
  for (const bool as_double : {false, true}) {
    const auto read = [&](const char* name) {
      if (as_double) return static_cast<void>(f.read<double>(name));
      static_cast<void>(f.read<float>(name));
    };
    PERFORMER_EXPECT_INVALID(read_who, "tensor 'nan' holds a NaN or an infinity (element 2)", read("nan"));
    PERFORMER_EXPECT_INVALID(read_who, "tensor 'inf' holds a NaN or an infinity (element 1)", read("inf"));
    PERFORMER_EXPECT_INVALID(read_who, "tensor 'binf' holds a NaN or an infinity (element 1)", read("binf"));
    PERFORMER_EXPECT_INVALID(read_who, "tensor 'dnan' holds a NaN or an infinity (element 0)", read("dnan"));
  }
  PERFORMER_EXPECT_INVALID(read_who, "tensor 'inf' holds a NaN or an infinity (element 1)",
                           f.read_transposed<float>("inf"));
  PERFORMER_EXPECT_INVALID(read_who, "tensor 'big' holds 1e+300 (element 1), beyond the range of float",
                           f.read<float>("big"));
  EXPECT_EQ(f.read<double>("big")(0, 1), 1e300);  // in range for double
}

}  // namespace
}  // namespace io_safetensors_bad_file_test
}  // namespace performer::test
