/// @file tools/run/npy.hpp
/// @brief A small reader of NumPy .npy token arrays and writer of .npy results, for
/// performer_run (https://numpy.org/doc/stable/reference/generated/numpy.lib.format.html).
///
/// Reads versions 1.0, 2.0 and 3.0 (3.0 differs only in the header's text encoding), little-endian,
/// C order: token arrays of int64 or int32, 1-D [N] or 2-D [B, N] (read_tokens), and any array of
/// those or float32/float64 (read_raw, for the tests' checker); anything else is an npy_error
/// saying what the file holds and what is accepted. Writes version 1.0, as numpy.save does for
/// small headers.
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

namespace npy {

static_assert(std::endian::native == std::endian::little,
              "npy.hpp copies little-endian data as is: a big-endian host needs byte swaps");

/// A malformed or unsupported .npy file; the message starts with the path.
struct npy_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// Token ids in row-major order, with the file's shape ([N] or [B, N]).
struct token_array {
  std::vector<std::int64_t> values;
  std::vector<std::int64_t> shape;
};

namespace detail {

inline constexpr char magic[] = "\x93NUMPY";
inline constexpr std::size_t magic_size = 6;

/// The text after `'key':` in a header dict, up to (not including) the next top-level comma or
/// closing brace; empty if the key is absent. The header is a Python dict literal written by
/// numpy, so a scan for the quoted key is enough: its values hold no quoted keys.
inline std::string field(const std::string& header, const std::string& key) {
  for (const char quote : {'\'', '"'}) {
    const std::string quoted = std::string(1, quote) + key + quote;
    auto at = header.find(quoted);
    if (at == std::string::npos) continue;
    at = header.find(':', at + quoted.size());
    if (at == std::string::npos) return {};
    std::size_t end = at + 1;
    int depth = 0;
    for (; end < header.size(); ++end) {
      const char c = header[end];
      if (c == '(') ++depth;
      if (c == ')') --depth;
      if (depth == 0 && (c == ',' || c == '}')) break;
      if (depth < 0) break;
    }
    std::string value = header.substr(at + 1, end - at - 1);
    const auto first = value.find_first_not_of(" \t");
    const auto last = value.find_last_not_of(" \t");
    return first == std::string::npos ? std::string{} : value.substr(first, last - first + 1);
  }
  return {};
}

/// "(2, 20)" or "(20,)" or "()" as extents; throws on anything else.
inline std::vector<std::int64_t> parse_shape(const std::string& path, const std::string& text) {
  if (text.size() < 2 || text.front() != '(' || text.back() != ')') {
    throw npy_error(path + ": .npy header has no valid 'shape' (got '" + text + "')");
  }
  std::vector<std::int64_t> shape;
  std::size_t i = 1;
  while (i + 1 < text.size()) {
    while (i + 1 < text.size() && (text[i] == ' ' || text[i] == ',')) ++i;
    if (i + 1 >= text.size()) break;
    std::size_t used = 0;
    long long extent = -1;
    try {
      extent = std::stoll(text.substr(i), &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || extent < 0) {
      throw npy_error(path + ": .npy header has no valid 'shape' (got '" + text + "')");
    }
    shape.push_back(extent);
    i += used;
  }
  return shape;
}

inline std::string shape_text(const std::vector<std::int64_t>& shape) {
  std::string s = "(";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    s += std::to_string(shape[i]);
    if (shape.size() == 1 || i + 1 < shape.size()) s += shape.size() == 1 ? "," : ", ";
  }
  return s + ")";
}

/// An unaligned little-endian value.
template <class T>
T load(const char* p) {
  T v{};
  std::memcpy(&v, p, sizeof(T));
  return v;
}

template <class T>
constexpr const char* descr() {
  if constexpr (std::is_same_v<T, float>) return "<f4";
  if constexpr (std::is_same_v<T, double>) return "<f8";
  if constexpr (std::is_same_v<T, std::int64_t>) return "<i8";
}

}  // namespace detail

/// An array as stored: its dtype ("<i8", "<i4", "<f4" or "<f8"), shape and raw data.
struct raw_array {
  std::string type;
  std::vector<std::int64_t> shape;
  std::string data;
  [[nodiscard]] std::size_t count() const {
    std::size_t n = 1;
    for (const std::int64_t e : shape) n *= static_cast<std::size_t>(e);
    return n;
  }
};

/**
 * @brief Reads an array of little-endian int64, int32, float32 or float64 in C order.
 * @throws npy_error if the file cannot be read, lacks the magic, has an unknown version, a
 * header that is not a dict with descr, fortran_order and shape, another dtype (naming
 * big-endian ones as such), Fortran order, or a data size other than the shape's.
 */
inline raw_array read_raw(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw npy_error(path + ": cannot open the file");
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (bytes.size() < detail::magic_size + 4 ||
      bytes.compare(0, detail::magic_size, detail::magic, detail::magic_size) != 0) {
    throw npy_error(path + ": not a .npy file (it does not start with \\x93NUMPY)");
  }
  const auto major = static_cast<unsigned char>(bytes[6]);
  const auto minor = static_cast<unsigned char>(bytes[7]);
  if ((major != 1 && major != 2 && major != 3) || minor != 0) {
    throw npy_error(path + ": .npy format version " + std::to_string(major) + "." +
                    std::to_string(minor) + " is not supported (1.0, 2.0 or 3.0)");
  }
  // Version 1.0 stores the header length in 2 bytes, 2.0 and 3.0 in 4 (little-endian).
  const std::size_t length_bytes = major == 1 ? 2 : 4;
  const std::size_t prefix = 8 + length_bytes;
  if (bytes.size() < prefix) throw npy_error(path + ": .npy file ends inside its header");
  std::size_t header_size = 0;
  for (std::size_t i = 0; i < length_bytes; ++i) {
    header_size |= static_cast<std::size_t>(static_cast<unsigned char>(bytes[8 + i])) << (8 * i);
  }
  if (bytes.size() < prefix + header_size) {
    throw npy_error(path + ": .npy file ends inside its header");
  }
  const std::string header = bytes.substr(prefix, header_size);
  const std::string descr = detail::field(header, "descr");
  const std::string fortran = detail::field(header, "fortran_order");
  const std::string shape_field = detail::field(header, "shape");
  if (header.find('{') == std::string::npos || descr.empty() || fortran.empty() ||
      shape_field.empty()) {
    throw npy_error(path + ": .npy header is not a dict with 'descr', 'fortran_order' and "
                    "'shape'");
  }
  raw_array out;
  out.type = descr.size() >= 2 ? descr.substr(1, descr.size() - 2) : descr;
  if (out.type.size() == 3 && out.type[0] == '=') out.type[0] = '<';  // native = little here
  std::size_t item = 0;
  if (out.type == "<i8" || out.type == "<f8") {
    item = 8;
  } else if (out.type == "<i4" || out.type == "<f4") {
    item = 4;
  } else if (!out.type.empty() && out.type[0] == '>') {
    throw npy_error(path + ": dtype " + descr + " is big-endian; only little-endian data is "
                    "read (int64 or int32 tokens: '<i8' or '<i4')");
  } else {
    throw npy_error(path + ": dtype " + descr + " is not supported; token arrays must be "
                    "int64 or int32 ('<i8' or '<i4'), e.g. numpy.asarray(ids, dtype=numpy.int64)");
  }
  if (fortran != "False") {
    throw npy_error(path + ": fortran_order is " + fortran + "; only C order is read "
                    "(numpy.ascontiguousarray)");
  }
  out.shape = detail::parse_shape(path, shape_field);
  std::size_t count = 1;
  for (const std::int64_t e : out.shape) {
    if (e > 0 && static_cast<std::size_t>(e) > (std::size_t{1} << 40) / count) {
      throw npy_error(path + ": shape " + detail::shape_text(out.shape) + " is too large");
    }
    count *= static_cast<std::size_t>(e);
  }
  const std::size_t data = bytes.size() - prefix - header_size;
  if (data != count * item) {
    throw npy_error(path + ": shape " + detail::shape_text(out.shape) + " of " + out.type +
                    " needs " + std::to_string(count * item) + " bytes of data, the file has " +
                    std::to_string(data));
  }
  out.data = bytes.substr(prefix + header_size);
  return out;
}

/// Element i of a raw array as T (T = std::int64_t for "<i8"/"<i4", double for any type).
template <class T>
T element(const raw_array& a, std::size_t i) {
  const char* p = a.data.data();
  if (a.type == "<i8") return static_cast<T>(detail::load<std::int64_t>(p + 8 * i));
  if (a.type == "<i4") return static_cast<T>(detail::load<std::int32_t>(p + 4 * i));
  if (a.type == "<f8") return static_cast<T>(detail::load<double>(p + 8 * i));
  return static_cast<T>(detail::load<float>(p + 4 * i));
}

/**
 * @brief Reads a token array: read_raw, then int64 or int32 only, 1-D [N] or 2-D [B, N], at
 * least one token.
 * @throws npy_error as read_raw, or for a float dtype, another rank or no elements.
 */
inline token_array read_tokens(const std::string& path) {
  const raw_array raw = read_raw(path);
  if (raw.type != "<i8" && raw.type != "<i4") {
    throw npy_error(path + ": dtype '" + raw.type + "' is not a token type; token arrays must "
                    "be int64 or int32 ('<i8' or '<i4'), e.g. numpy.asarray(ids, dtype=numpy.int64)");
  }
  if (raw.shape.size() != 1 && raw.shape.size() != 2) {
    throw npy_error(path + ": shape " + detail::shape_text(raw.shape) + " is not a token array; "
                    "expected 1-D [N] or 2-D [B, N]");
  }
  if (raw.count() == 0) {
    throw npy_error(path + ": shape " + detail::shape_text(raw.shape) + " holds no tokens");
  }
  token_array out{std::vector<std::int64_t>(raw.count()), raw.shape};
  for (std::size_t i = 0; i < out.values.size(); ++i) {
    out.values[i] = element<std::int64_t>(raw, i);
  }
  return out;
}

/**
 * @brief Writes `data` (row-major, product(shape) elements) as a version 1.0 .npy of float32,
 * float64 or int64.
 * @throws npy_error if the file cannot be written.
 */
template <class T>
void write(const std::string& path, const std::vector<std::int64_t>& shape, const T* data) {
  std::size_t count = 1;
  for (const std::int64_t e : shape) count *= static_cast<std::size_t>(e);
  std::string header = std::string("{'descr': '") + detail::descr<T>() +
                       "', 'fortran_order': False, 'shape': " + detail::shape_text(shape) + ", }";
  // Pad with spaces and a newline so that the data starts at a multiple of 64, as numpy does.
  const std::size_t unpadded = detail::magic_size + 4 + header.size() + 1;
  header.append((64 - unpadded % 64) % 64, ' ');
  header += '\n';
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) throw npy_error(path + ": cannot open the file for writing");
  const auto length = static_cast<std::uint16_t>(header.size());
  out.write(detail::magic, detail::magic_size);
  out.put('\x01');
  out.put('\x00');
  out.put(static_cast<char>(length & 0xff));
  out.put(static_cast<char>(length >> 8));
  out << header;
  out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(count * sizeof(T)));
  out.flush();
  if (!out) throw npy_error(path + ": writing the file failed");
}

}  // namespace npy
