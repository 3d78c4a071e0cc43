/// @file io/safetensors_writer.hpp
/// @brief Writes safetensors files: tensors of float or double stored as F32, F64 or BF16, and
/// I64 tensors, with a `__metadata__` map.
#pragma once

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <system_error>
#include <utility>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

#include "../core/concepts.hpp"
#include "../core/error.hpp"
#include "../core/types.hpp"
#include "detail/dtype.hpp"
#include "detail/header.hpp"

namespace performer::io {

/**
 * @brief Collects tensors, then writes them as one safetensors file.
 *
 * Layout (what the reference implementation writes, and what any reader accepts): the header
 * is compact JSON whose keys come out in byte order of their names (`__metadata__` among them,
 * present when metadata was set), padded with spaces so that its length, and hence the start
 * of the data, is a multiple of 8; the tensors' data follow contiguously in the same name
 * order, so a file's bytes depend only on its contents, not on the order of add() calls.
 *
 * An lvalue matrix is referred to, not copied: it must outlive write(). An rvalue is moved
 * into the writer and kept. write() converts in blocks, so it needs O(block) memory beyond
 * the tensors; its time is O(total elements).
 */
class safetensors_writer {
 public:
  /// @param type how float and double tensors are stored unless add() says otherwise.
  /// @throws performer::invalid_argument unless type is F32, F64 or BF16.
  explicit safetensors_writer(dtype type = dtype::f32) : type_(checked_real(type)) {}

  [[nodiscard]] dtype type() const noexcept { return type_; }

  /**
   * @brief Adds `m` under `name` with shape `shape` (default [rows, cols]; any shape with the
   * same element count, e.g. [n] for a 1 x n bias), its data in row-major order.
   * @throws performer::invalid_argument if the name is taken or is "__metadata__", the shape's
   * product differs from m.size(), or `type` is not F32, F64 or BF16.
   */
  template <real_scalar T>
  void add(std::string name, const row_matrix<T>& m, std::vector<std::int64_t> shape = {},
           std::optional<dtype> type = {}) {
    push(std::move(name), m.data(), m.rows(), m.cols(), false, std::move(shape), type, nullptr);
  }
  /// Same, for a row vector; the default shape is [n].
  template <real_scalar T>
  void add(std::string name, const row_vector<T>& v, std::vector<std::int64_t> shape = {},
           std::optional<dtype> type = {}) {
    if (shape.empty()) shape = {v.size()};
    push(std::move(name), v.data(), 1, v.size(), false, std::move(shape), type, nullptr);
  }
  /// Same, keeping the vector: a temporary may be passed.
  template <real_scalar T>
  void add(std::string name, row_vector<T>&& v, std::vector<std::int64_t> shape = {},
           std::optional<dtype> type = {}) {
    if (shape.empty()) shape = {v.size()};
    add(std::move(name), row_matrix<T>(std::move(v)), std::move(shape), type);
  }
  /// Same, keeping the matrix: a temporary may be passed.
  template <real_scalar T>
  void add(std::string name, row_matrix<T>&& m, std::vector<std::int64_t> shape = {},
           std::optional<dtype> type = {}) {
    auto kept = std::make_shared<const row_matrix<T>>(std::move(m));
    push(std::move(name), kept->data(), kept->rows(), kept->cols(), false, std::move(shape), type,
         kept);
  }

  /**
   * @brief Adds the transpose of `m` (rows x cols) as a [cols, rows] tensor: the library's
   * in x out weights become PyTorch's nn.Linear [out, in]. Transposed block by block while
   * writing; m is referred to, not copied.
   * @throws performer::invalid_argument as add().
   */
  template <real_scalar T>
  void add_transposed(std::string name, const row_matrix<T>& m, std::optional<dtype> type = {}) {
    push(std::move(name), m.data(), m.rows(), m.cols(), true, {m.cols(), m.rows()}, type, nullptr);
  }

  /// Adds an I64 tensor (token ids) of shape `shape` (default [n]); `values` must outlive write().
  /// @throws performer::invalid_argument as add().
  void add_int64(std::string name, std::span<const std::int64_t> values,
                 std::vector<std::int64_t> shape = {}) {
    const auto n = static_cast<index_t>(values.size());
    if (shape.empty()) shape = {n};
    check_new(name, shape, n);
    entries_.emplace(std::move(name),
                     entry{dtype::i64, std::move(shape), values.data(), 1, n, false, nullptr});
  }

  /// Sets a `__metadata__` entry (replacing an earlier value of the key).
  void set_metadata(std::string key, std::string value) {
    metadata_[std::move(key)] = std::move(value);
  }

  /**
   * @brief Writes the file: first to `<path>.partial`, renamed to `path` when complete, so a
   * failed write never leaves a truncated file under the name.
   * @throws performer::invalid_argument "safetensors_writer::write: <path>: ..." if the file
   * cannot be written, or a value is a NaN, an infinity, or beyond the range of its stored type
   * (a double beyond float's range stored as F32; the temporary file is then removed).
   */
  void write(const std::filesystem::path& path) const {
    constexpr const char* who = "safetensors_writer::write";
    nlohmann::json header = nlohmann::json::object();
    if (!metadata_.empty()) header["__metadata__"] = metadata_;
    std::size_t offset = 0;
    for (const auto& [name, e] : entries_) {  // std::map: name order
      const std::size_t bytes = static_cast<std::size_t>(e.rows * e.cols) * dtype_size(e.type);
      header[name] = {{"dtype", std::string(dtype_name(e.type))},
                      {"shape", e.shape},
                      {"data_offsets", {offset, offset + bytes}}};
      offset += bytes;
    }
    std::string text = header.dump();
    text.append((8 - text.size() % 8) % 8, ' ');

    std::filesystem::path partial = path;
    partial += ".partial";
    std::ofstream out(partial, std::ios::binary | std::ios::trunc);
    PERFORMER_PRECONDITION(out.good(), who, ": ", path.string(), ": cannot open ",
                           partial.string(), " for writing (", std::strerror(errno), ")");
    const auto fail = [&](const auto&... parts) {
      out.close();
      std::error_code ignored;
      std::filesystem::remove(partial, ignored);
      PERFORMER_THROW(invalid_argument(performer::detail::message(who, ": ", path.string(), ": ", parts...)));
    };
    const std::uint64_t length = text.size();
    out.write(reinterpret_cast<const char*>(&length), 8);  // little-endian host (dtype.hpp)
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    for (const auto& [name, e] : entries_) {
      if (!write_entry(out, e)) {
        fail("tensor '", name, "' holds a NaN, an infinity or a value beyond the range of ",
             dtype_name(e.type));
      }
    }
    out.flush();
    if (!out.good()) fail("writing ", partial.string(), " failed (", std::strerror(errno), ")");
    out.close();
    std::error_code ec;
    std::filesystem::rename(partial, path, ec);
    if (ec) fail("cannot rename ", partial.string(), " (", ec.message(), ")");
  }

 private:
  static constexpr const char* who_add = "safetensors_writer::add";

  struct entry {
    dtype type;
    std::vector<std::int64_t> shape;
    std::variant<const float*, const double*, const std::int64_t*> data;
    index_t rows, cols;  // of the source matrix (before any transpose)
    bool transpose;
    std::shared_ptr<const void> kept;  // an rvalue the writer holds
  };

  static dtype checked_real(dtype type) {
    PERFORMER_PRECONDITION(is_real_dtype(type), "safetensors_writer: cannot store float or "
                           "double tensors as ", dtype_name(type), " (F32, F64 or BF16)");
    return type;
  }

  void check_new(const std::string& name, const std::vector<std::int64_t>& shape,
                 index_t elements) const {
    PERFORMER_PRECONDITION(name != "__metadata__", who_add,
                           ": \"__metadata__\" is reserved for the metadata map");
    PERFORMER_PRECONDITION(!entries_.contains(name), who_add, ": tensor '", name,
                           "' was already added");
    std::int64_t product = 1;
    for (const std::int64_t s : shape) {
      PERFORMER_PRECONDITION(s >= 0, who_add, ": tensor '", name, "': shape ",
                             detail::shape_text(shape), " has a negative extent");
      product *= s;
    }
    PERFORMER_PRECONDITION(product == elements, who_add, ": tensor '", name, "': shape ",
                           detail::shape_text(shape), " holds ", product, " elements, the data ",
                           elements);
  }

  template <real_scalar T>
  void push(std::string name, const T* data, index_t rows, index_t cols, bool transpose,
            std::vector<std::int64_t> shape, std::optional<dtype> type,
            std::shared_ptr<const void> kept) {
    if (shape.empty()) shape = {rows, cols};
    check_new(name, shape, rows * cols);
    const dtype stored = type ? checked_real(*type) : type_;
    entries_.emplace(std::move(name), entry{stored, std::move(shape), data, rows, cols, transpose,
                                            std::move(kept)});
  }

  /// Writes one tensor, converting up to `block` source elements at a time.
  static bool write_entry(std::ofstream& out, const entry& e) {
    if (const auto* ints = std::get_if<const std::int64_t*>(&e.data)) {
      out.write(reinterpret_cast<const char*>(*ints), static_cast<std::streamsize>(e.cols * 8));
      return true;
    }
    return std::visit(
        [&](const auto* data) {
          using T = std::remove_cvref_t<decltype(*data)>;
          if constexpr (std::is_same_v<T, std::int64_t>) {
            return true;  // handled above
          } else {
            const Eigen::Map<const row_matrix<T>> m(data, e.rows, e.cols);
            const std::size_t size = dtype_size(e.type);
            std::vector<std::byte> buffer;
            row_matrix<T> block;
            const index_t step = e.transpose ? std::max<index_t>(1, 16384 / std::max<index_t>(1, e.rows))
                                             : std::max<index_t>(1, 16384 / std::max<index_t>(1, e.cols));
            const index_t outer = e.transpose ? e.cols : e.rows;
            for (index_t i = 0; i < outer; i += step) {
              const index_t k = std::min(step, outer - i);
              if (e.transpose) {
                block = m.middleCols(i, k).transpose();
              } else {
                block = m.middleRows(i, k);
              }
              const auto n = static_cast<std::size_t>(block.size());
              buffer.resize(n * size);
              if (!detail::store_run(e.type, block.data(), n, buffer.data())) return false;
              out.write(reinterpret_cast<const char*>(buffer.data()),
                        static_cast<std::streamsize>(buffer.size()));
            }
            return true;
          }
        },
        e.data);
  }

  dtype type_;
  std::map<std::string, entry> entries_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace performer::io
