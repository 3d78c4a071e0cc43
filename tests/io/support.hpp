/// @file tests/io/support.hpp
/// @brief What the io tests share: a temporary directory removed afterwards, and files written
/// byte by byte from the safetensors specification (not by performer's writer), so that the
/// reader is tested against the format rather than against itself.
#pragma once

#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace performer::test::io_support {

/// A fresh directory under the system's temporary directory, removed with its files.
class temp_dir {
 public:
  temp_dir() {
    static std::atomic<int> counter{0};
    path_ = std::filesystem::temp_directory_path() /
            ("performer_io_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  temp_dir(const temp_dir&) = delete;
  temp_dir& operator=(const temp_dir&) = delete;
  ~temp_dir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  [[nodiscard]] std::filesystem::path file(const std::string& name) const { return path_ / name; }
  [[nodiscard]] const std::filesystem::path& path() const noexcept { return path_; }

 private:
  std::filesystem::path path_;
};

/// Raw bytes.
using bytes = std::vector<unsigned char>;

/// Appends the little-endian bytes of a trivially copyable value (this host is little-endian,
/// as performer/io requires).
template <class V>
void append(bytes& out, V value) {
  unsigned char b[sizeof(V)];
  std::memcpy(b, &value, sizeof(V));
  out.insert(out.end(), b, b + sizeof(V));
}

/// A safetensors file from the specification: 8-byte little-endian header length N, N bytes
/// of header text, then the data.
[[nodiscard]] inline bytes safetensors_bytes(std::string_view header, const bytes& data) {
  bytes out;
  append(out, static_cast<std::uint64_t>(header.size()));
  out.insert(out.end(), header.begin(), header.end());
  out.insert(out.end(), data.begin(), data.end());
  return out;
}

inline void write_bytes(const std::filesystem::path& path, const bytes& content) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(content.data()),
            static_cast<std::streamsize>(content.size()));
}

[[nodiscard]] inline bytes read_bytes(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

/// Writes a file of one header and data.
inline void write_safetensors(const std::filesystem::path& path, std::string_view header,
                              const bytes& data) {
  write_bytes(path, safetensors_bytes(header, data));
}

/// `src` with its header edited by `edit(header, config)` (config: the parsed metadata
/// "config" of a model file, written back afterwards), the data unchanged, as `dst`.
inline void rewrite(const std::filesystem::path& src, const std::filesystem::path& dst,
                    const std::function<void(nlohmann::json&, nlohmann::json&)>& edit) {
  using nlohmann::json;
  const bytes raw = read_bytes(src);
  std::uint64_t n = 0;
  std::memcpy(&n, raw.data(), 8);
  const auto data_start = raw.begin() + 8 + static_cast<std::ptrdiff_t>(n);
  json header = json::parse(std::string(raw.begin() + 8, data_start));
  json config = json::parse(header["__metadata__"]["config"].get<std::string>());
  edit(header, config);
  if (header.contains("__metadata__") && header["__metadata__"].contains("config")) {
    header["__metadata__"]["config"] = config.dump();
  }
  write_bytes(dst, safetensors_bytes(header.dump(), bytes(data_start, raw.end())));
}

/// n zero bytes.
[[nodiscard]] inline bytes zeros(std::size_t n) { return bytes(n, 0); }

/// tests/io/fixtures (tools/reference/make_fixtures.py writes them), from a compile definition
/// when the build gives one, else next to this file.
[[nodiscard]] inline std::filesystem::path fixtures_dir() {
#ifdef PERFORMER_IO_FIXTURES_DIR
  return std::filesystem::path(PERFORMER_IO_FIXTURES_DIR);
#else
  return std::filesystem::path(__FILE__).parent_path() / "fixtures";
#endif
}

}  // namespace performer::test::io_support
