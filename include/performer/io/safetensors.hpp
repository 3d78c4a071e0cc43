/// @file io/safetensors.hpp
/// @brief A reader of safetensors files (https://github.com/huggingface/safetensors): the file
/// is memory-mapped, its JSON header parsed with nlohmann-json and every entry validated when
/// it is opened; tensors convert to Eigen matrices of float or double on request.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "../core/concepts.hpp"
#include "../core/error.hpp"
#include "../core/types.hpp"
#include "../core/validate.hpp"
#include "detail/dtype.hpp"
#include "detail/header.hpp"
#include "detail/mapped_file.hpp"

namespace performer::io {

/// Whether reads leave the pages they convert resident (the default: a tensor read twice is
/// read from memory) or drop them (a loader: the process then holds the converted copy only).
enum class page_policy { keep, discard_after_read };

/**
 * @brief An open safetensors file: its tensor list, its `__metadata__` and its tensors' data,
 * read from a read-only memory mapping (pages are loaded on first touch; nothing is copied
 * until a tensor is converted).
 *
 * Opening validates the whole header (see the constructor) in O(H + t log t) for a header of
 * H bytes and t tensors, without reading any tensor data. Converting a tensor of n elements
 * costs O(n) and checks every value. Movable, not copyable; the mapping is released by the
 * destructor. The const member functions may be called from several threads at once.
 */
class safetensors_file {
 public:
  /// The largest header accepted (bytes), as in the reference implementation: a length field
  /// beyond it is taken for a corrupt or hostile file rather than parsed.
  static constexpr std::uint64_t max_header_bytes = detail::max_header_bytes;

  /**
   * @brief Maps `path` and validates its header. With page_policy::discard_after_read every
   * conversion drops the pages it read, in blocks of at most 16 MB, from resident memory.
   * @throws performer::invalid_argument "safetensors_file: <path>: <problem>" if the file is
   * missing, unreadable or not a regular file; shorter than 8 bytes; its header length exceeds
   * max_header_bytes or the file; the header is not JSON or not an object; `__metadata__` is
   * not an object of strings; an entry is not an object, lacks dtype, shape or data_offsets,
   * has an unknown dtype, a shape that is not an array of non-negative integers, offsets that
   * are not [begin, end] integers with begin <= end, an end beyond the data, or a byte count
   * other than product(shape) x the dtype's size; two tensors overlap; or the tensors leave
   * bytes of the data unused (the format forbids holes).
   */
  explicit safetensors_file(const std::filesystem::path& path, page_policy pages = page_policy::keep)
      : path_(path), map_(path, who_open), discard_(pages == page_policy::discard_after_read) {
    auto parsed = detail::parse_header(map_.bytes(), path_.string());
    tensors_ = std::move(parsed.tensors);
    metadata_ = std::move(parsed.metadata);
    data_ = map_.bytes().subspan(parsed.data_start);
    for (std::size_t i = 0; i < tensors_.size(); ++i) index_.emplace(tensors_[i].name, i);
  }

  [[nodiscard]] const std::filesystem::path& path() const noexcept { return path_; }
  /// Every tensor, in the order of its data in the file.
  [[nodiscard]] const std::vector<tensor_info>& tensors() const noexcept { return tensors_; }
  /// The `__metadata__` map (empty when the file has none).
  [[nodiscard]] const std::map<std::string, std::string>& metadata() const noexcept {
    return metadata_;
  }
  [[nodiscard]] bool contains(std::string_view name) const { return index_.contains(name); }

  /// @throws performer::invalid_argument "safetensors_file::read: <path>: no tensor '<name>'".
  [[nodiscard]] const tensor_info& info(std::string_view name) const {
    const auto it = index_.find(name);
    PERFORMER_PRECONDITION(it != index_.end(), who_read, ": ", path_.string(), ": no tensor '",
                           name, "'");
    return tensors_[it->second];
  }

  /// The tensor's raw bytes (little-endian, row-major), a view into the mapping.
  /// @throws performer::invalid_argument as info().
  [[nodiscard]] std::span<const std::byte> bytes(std::string_view name) const {
    const tensor_info& t = info(name);
    return data_.subspan(t.begin, t.end - t.begin);
  }

  /**
   * @brief A tensor of rank 0, 1 or 2 as a matrix: [r, c] gives r x c, [n] gives 1 x n (a row
   * vector, as the library holds biases), [] gives 1 x 1. Converts F32, F64 and BF16 exactly
   * where T can hold the value (bfloat16 and float widen exactly; double narrows to float by
   * rounding to nearest).
   * @throws performer::invalid_argument naming the file and the tensor if it is missing, of
   * another rank, of a type other than F32, F64 or BF16, holds a NaN or an infinity, or (T =
   * float) a double beyond float's range.
   */
  template <real_scalar T>
  [[nodiscard]] row_matrix<T> read(std::string_view name) const {
    const tensor_info& t = info(name);
    check_real(t);
    PERFORMER_PRECONDITION(t.shape.size() <= 2, who_read, ": ", path_.string(), ": tensor '",
                           t.name, "' has shape ", detail::shape_text(t.shape),
                           "; read() takes rank 0, 1 or 2 (read_stack() rank 3)");
    const index_t rows = t.shape.size() == 2 ? static_cast<index_t>(t.shape[0]) : 1;
    const index_t cols = t.shape.empty() ? 1 : static_cast<index_t>(t.shape.back());
    row_matrix<T> out(rows, cols);
    convert(t, 0, out.size(), out.data());
    return out;
  }

  /**
   * @brief A 2-D tensor [r, c] transposed: the c x r matrix, read straight from the mapping
   * (PyTorch's nn.Linear weight [out, in] becomes the library's in x out). O(r c): 64 rows at
   * a time are converted, then transposed in 64 x 64 tiles, which stay in the L1 cache (a
   * whole block's transpose, strided across kilobytes, was as slow as drawing the weights).
   * @throws performer::invalid_argument as read(), or if the tensor is not of rank 2.
   */
  template <real_scalar T>
  [[nodiscard]] row_matrix<T> read_transposed(std::string_view name) const {
    const tensor_info& t = info(name);
    check_real(t);
    check_rank(t, 2);
    const auto r = static_cast<index_t>(t.shape[0]);
    const auto c = static_cast<index_t>(t.shape[1]);
    row_matrix<T> out(c, r);
    constexpr index_t block = 64;
    row_matrix<T> rows(std::min(block, r), c);
    for (index_t r0 = 0; r0 < r; r0 += block) {
      const index_t n = std::min(block, r - r0);
      convert(t, r0 * c, n * c, rows.data());
      for (index_t c0 = 0; c0 < c; c0 += block) {
        const index_t m = std::min(block, c - c0);
        out.block(c0, r0, m, n) = rows.block(0, c0, n, m).transpose();
      }
    }
    return out;
  }

  /**
   * @brief A 3-D tensor [s, r, c] as s matrices of r x c (e.g. LSH rotations [h, d, b/2]).
   * @throws performer::invalid_argument as read(), or if the tensor is not of rank 3.
   */
  template <real_scalar T>
  [[nodiscard]] std::vector<row_matrix<T>> read_stack(std::string_view name) const {
    const tensor_info& t = info(name);
    check_real(t);
    check_rank(t, 3);
    const auto r = static_cast<index_t>(t.shape[1]);
    const auto c = static_cast<index_t>(t.shape[2]);
    std::vector<row_matrix<T>> out(static_cast<std::size_t>(t.shape[0]), row_matrix<T>(r, c));
    for (std::size_t s = 0; s < out.size(); ++s) {
      convert(t, static_cast<index_t>(s) * r * c, r * c, out[s].data());
    }
    return out;
  }

  /**
   * @brief An I64 tensor of any shape, flattened in row-major order (token ids).
   * @throws performer::invalid_argument if it is missing or not I64.
   */
  [[nodiscard]] std::vector<std::int64_t> read_int64(std::string_view name) const {
    const tensor_info& t = info(name);
    PERFORMER_PRECONDITION(t.type == dtype::i64, who_read, ": ", path_.string(), ": tensor '",
                           t.name, "' is ", dtype_name(t.type), ", expected I64");
    std::vector<std::int64_t> out(static_cast<std::size_t>(t.elements()));
    if (!out.empty()) std::memcpy(out.data(), data_.data() + t.begin, out.size() * 8);
    return out;
  }

  /// Drops the pages of the mapping read so far from the process's resident memory (they stay
  /// in the page cache). The loader calls it after each layer; data stays readable.
  void discard_pages() const noexcept { map_.discard_pages(); }

 private:
  static constexpr const char* who_open = "safetensors_file";
  static constexpr const char* who_read = "safetensors_file::read";

  void check_real(const tensor_info& t) const {
    PERFORMER_PRECONDITION(is_real_dtype(t.type), who_read, ": ", path_.string(), ": tensor '",
                           t.name, "' is ", dtype_name(t.type),
                           "; float and double read F32, F64 and BF16");
  }

  void check_rank(const tensor_info& t, std::size_t rank) const {
    PERFORMER_PRECONDITION(t.shape.size() == rank, who_read, ": ", path_.string(), ": tensor '",
                           t.name, "' has shape ", detail::shape_text(t.shape), ", expected rank ",
                           rank);
  }

  /// Elements [first, first + n) of t into dst, in blocks of at most 16 MB of the file.
  template <real_scalar T>
  void convert(const tensor_info& t, index_t first, index_t n, T* dst) const {
    const auto block = static_cast<index_t>((std::size_t{16} << 20) / dtype_size(t.type));
    for (index_t i = 0; i < n; i += block) {
      convert_block(t, first + i, std::min(block, n - i), dst + i);
    }
  }

  /// One block, then checked: finite, and within T's range.
  template <real_scalar T>
  void convert_block(const tensor_info& t, index_t first, index_t n, T* dst) const {
    const std::size_t size = dtype_size(t.type);
    const std::byte* src = data_.data() + t.begin + static_cast<std::size_t>(first) * size;
    detail::convert_run(t.type, src, static_cast<std::size_t>(n), dst);
    const bool finite = all_finite(Eigen::Map<const vector<T>>(dst, n));
    if (finite && discard_) map_.discard(src, static_cast<std::size_t>(n) * size);
    if (finite) [[likely]] return;
    for (index_t i = 0; i < n; ++i) {  // the error path: say which element, and why
      const double v = detail::load_real<double>(t.type, src, static_cast<std::size_t>(i));
      PERFORMER_PRECONDITION(std::isfinite(v), who_read, ": ", path_.string(), ": tensor '",
                             t.name, "' holds a NaN or an infinity (element ", first + i, ")");
      PERFORMER_PRECONDITION(std::isfinite(dst[i]), who_read, ": ", path_.string(), ": tensor '",
                             t.name, "' holds ", v, " (element ", first + i,
                             "), beyond the range of float");
    }
  }

  std::filesystem::path path_;
  detail::mapped_file map_;
  bool discard_ = false;
  std::span<const std::byte> data_;
  std::vector<tensor_info> tensors_;
  std::map<std::string, std::string> metadata_;
  std::map<std::string, std::size_t, std::less<>> index_;
};

}  // namespace performer::io
