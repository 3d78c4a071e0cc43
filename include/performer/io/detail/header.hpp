/// @file io/detail/header.hpp
/// @brief The safetensors header: parsed with nlohmann-json and validated entry by entry, so
/// that any malformed file is an invalid_argument naming the problem, never a read out of
/// bounds.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
#include <span>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "../../core/error.hpp"
#include "dtype.hpp"

namespace performer::io {

/// One tensor of a safetensors file, as its header describes it.
struct tensor_info {
  std::string name;
  dtype type = dtype::f32;
  std::vector<std::int64_t> shape;  ///< row-major (C order); empty for a scalar
  std::size_t begin = 0;            ///< byte offset of the data, from the start of the data section
  std::size_t end = 0;              ///< one past the last byte

  /// The product of the shape (1 for a scalar).
  [[nodiscard]] std::int64_t elements() const noexcept {
    std::int64_t n = 1;
    for (const std::int64_t s : shape) n *= s;
    return n;
  }
};

namespace detail {

/// See safetensors_file::max_header_bytes.
inline constexpr std::uint64_t max_header_bytes = 100'000'000;

/// "[2, 3]".
[[nodiscard]] inline std::string shape_text(std::span<const std::int64_t> shape) {
  std::ostringstream os;
  os << '[';
  for (std::size_t i = 0; i < shape.size(); ++i) os << (i > 0 ? ", " : "") << shape[i];
  os << ']';
  return os.str();
}

struct parsed_header {
  std::vector<tensor_info> tensors;  ///< sorted by their data's offset
  std::map<std::string, std::string> metadata;
  std::size_t data_start = 0;  ///< 8 + header length
};

/// A JSON value that must be a non-negative integer (shape entries, offsets).
[[nodiscard]] inline bool as_count(const nlohmann::json& v, std::uint64_t& out) {
  if (!v.is_number_unsigned()) return false;  // negative, fractional or not a number
  out = v.get<std::uint64_t>();
  return true;
}

/// Validates one header entry against a data section of data_size bytes.
[[nodiscard]] inline tensor_info parse_entry(const std::string& name, const nlohmann::json& e,
                                             std::size_t data_size, const std::string& where) {
  const auto fail_unless = [&](bool ok, const auto&... parts) {
    PERFORMER_PRECONDITION(ok, "safetensors_file: ", where, ": tensor '", name, "': ", parts...);
  };
  fail_unless(e.is_object(), "the entry is not a JSON object");
  for (const char* key : {"dtype", "shape", "data_offsets"}) {
    fail_unless(e.contains(key), "no \"", key, "\"");
  }
  const nlohmann::json& type = e["dtype"];
  fail_unless(type.is_string(), "dtype is not a string (", type.dump(), ")");
  const auto parsed_type = dtype_from_name(type.get_ref<const std::string&>());
  fail_unless(parsed_type.has_value(), "unknown dtype ", type.dump());
  tensor_info t{.name = name, .type = *parsed_type, .shape = {}};

  const nlohmann::json& shape = e["shape"];
  fail_unless(shape.is_array(), "shape is not an array (", shape.dump(), ")");
  for (const auto& s : shape) {
    std::uint64_t n = 0;
    fail_unless(as_count(s, n), "shape ", shape.dump(), " holds ", s.dump(),
                ", not a non-negative integer");
    fail_unless(n <= static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()),
                "shape ", shape.dump(), " has an extent too large");
    t.shape.push_back(static_cast<std::int64_t>(n));
  }
  // The element count is bounded by the data's size as it is formed, so it cannot overflow.
  // An extent of 0 makes an empty tensor, whatever the others.
  const std::uint64_t limit = data_size / dtype_size(t.type);
  std::uint64_t elements = std::count(t.shape.begin(), t.shape.end(), 0) > 0 ? 0 : 1;
  for (const std::int64_t extent : t.shape) {
    if (elements == 0) break;
    const auto n = static_cast<std::uint64_t>(extent);
    fail_unless(n <= limit / elements, "shape ", shape.dump(), " needs more than the ", data_size,
                " bytes of data in the file");
    elements *= n;
  }

  const nlohmann::json& offsets = e["data_offsets"];
  std::uint64_t begin = 0, end = 0;
  fail_unless(offsets.is_array() && offsets.size() == 2 && as_count(offsets[0], begin) &&
                  as_count(offsets[1], end),
              "data_offsets ", offsets.dump(), " is not [begin, end] (two non-negative integers)");
  fail_unless(begin <= end, "data_offsets ", offsets.dump(), " has begin > end");
  fail_unless(end <= data_size, "data_offsets ", offsets.dump(), " run beyond the data (",
              data_size, " bytes)");
  fail_unless(end - begin == elements * dtype_size(t.type), "data_offsets ", offsets.dump(),
              " hold ", end - begin, " bytes but shape ", shape_text(t.shape), " of ",
              dtype_name(t.type), " needs ", elements * dtype_size(t.type));
  t.begin = static_cast<std::size_t>(begin);
  t.end = static_cast<std::size_t>(end);
  return t;
}

/// Parses and validates the header of the file whose bytes are `file` (named `where` in
/// messages). @throws performer::invalid_argument as safetensors_file's constructor.
[[nodiscard]] inline parsed_header parse_header(std::span<const std::byte> file,
                                                const std::string& where) {
  constexpr const char* who = "safetensors_file";
  PERFORMER_PRECONDITION(file.size() >= 8, who, ": ", where, ": the file has ", file.size(),
                         " bytes, fewer than the 8 of the header length");
  std::uint64_t n = 0;
  std::memcpy(&n, file.data(), 8);  // little-endian (io/detail/dtype.hpp refuses other hosts)
  PERFORMER_PRECONDITION(n <= max_header_bytes, who, ": ", where, ": header length ", n,
                         " exceeds the limit of ", max_header_bytes, " bytes");
  PERFORMER_PRECONDITION(n <= file.size() - 8, who, ": ", where, ": header length ", n,
                         " runs beyond the end of the file (", file.size(), " bytes)");
  const auto* text = reinterpret_cast<const char*>(file.data() + 8);
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(text, text + n);
  } catch (const nlohmann::json::exception& e) {
    PERFORMER_THROW(invalid_argument(
        performer::detail::message(who, ": ", where, ": the header is not valid JSON (", e.what(), ")")));
  }
  PERFORMER_PRECONDITION(header.is_object(), who, ": ", where,
                         ": the header is not a JSON object");

  parsed_header out;
  out.data_start = static_cast<std::size_t>(8 + n);
  const std::size_t data_size = file.size() - out.data_start;
  for (const auto& [key, value] : header.items()) {
    if (key == "__metadata__") {
      PERFORMER_PRECONDITION(value.is_object(), who, ": ", where,
                             ": __metadata__ is not a JSON object");
      for (const auto& [k, v] : value.items()) {
        PERFORMER_PRECONDITION(v.is_string(), who, ": ", where, ": __metadata__ \"", k,
                               "\" is not a string (", v.dump(), ")");
        out.metadata.emplace(k, v.get<std::string>());
      }
    } else {
      out.tensors.push_back(parse_entry(key, value, data_size, where));
    }
  }
  // Sorted by offset, the tensors must tile the data exactly: no overlap (two tensors sharing
  // bytes), and no hole (the reference implementation rejects both).
  std::sort(out.tensors.begin(), out.tensors.end(), [](const tensor_info& a, const tensor_info& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  std::size_t covered = 0;
  const tensor_info* previous = nullptr;
  for (const tensor_info& t : out.tensors) {
    PERFORMER_PRECONDITION(t.begin >= covered, who, ": ", where, ": tensors '", previous->name,
                           "' [", previous->begin, ", ", previous->end, ") and '", t.name, "' [",
                           t.begin, ", ", t.end, ") overlap");
    PERFORMER_PRECONDITION(t.begin == covered, who, ": ", where, ": bytes [", covered, ", ",
                           t.begin, ") of the data belong to no tensor");
    covered = t.end;
    previous = &t;
  }
  PERFORMER_PRECONDITION(covered == data_size, who, ": ", where, ": the data section has ",
                         data_size, " bytes but the tensors use ", covered);
  return out;
}

}  // namespace detail
}  // namespace performer::io
