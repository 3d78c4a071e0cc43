/// @file io/detail/mapped_file.hpp
/// @brief A read-only memory mapping of a whole file (POSIX mmap), released by its destructor.
#pragma once

#if !__has_include(<sys/mman.h>)
#error "performer/io maps files with POSIX mmap; this platform has no <sys/mman.h>"
#endif

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <span>
#include <string>
#include <utility>

#include "../../core/error.hpp"

namespace performer::io::detail {

/**
 * @brief The bytes of a file, mapped read-only and private: pages are read from the page cache
 * on first touch, never copied into the process's heap. Movable, not copyable; munmap on
 * destruction. Opening costs O(1) (no page is read).
 */
class mapped_file {
 public:
  /// @throws performer::invalid_argument "<who>: <path>: ..." if the file cannot be opened,
  /// is not a regular file, or cannot be mapped.
  mapped_file(const std::filesystem::path& path, const char* who) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    PERFORMER_PRECONDITION(fd >= 0, who, ": ", path.string(), ": cannot open (",
                           std::strerror(errno), ")");
    struct stat st {};
    const int stat_rc = ::fstat(fd, &st);
    const int stat_errno = errno;
    if (stat_rc != 0 || !S_ISREG(st.st_mode)) {
      ::close(fd);
      PERFORMER_PRECONDITION(stat_rc == 0, who, ": ", path.string(), ": cannot stat (",
                             std::strerror(stat_errno), ")");
      PERFORMER_PRECONDITION(false, who, ": ", path.string(), ": not a regular file");
    }
    size_ = static_cast<std::size_t>(st.st_size);
    if (size_ > 0) {  // mmap of 0 bytes fails; an empty file is reported by the caller
      void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
      const int map_errno = errno;
      if (p == MAP_FAILED) {
        ::close(fd);
        PERFORMER_PRECONDITION(false, who, ": ", path.string(), ": cannot map ", size_,
                               " bytes (", std::strerror(map_errno), ")");
      }
      data_ = static_cast<const std::byte*>(p);
    }
    ::close(fd);  // the mapping keeps the file referenced
  }

  mapped_file(const mapped_file&) = delete;
  mapped_file& operator=(const mapped_file&) = delete;
  mapped_file(mapped_file&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}
  mapped_file& operator=(mapped_file&& other) noexcept {
    if (this != &other) {
      unmap();
      data_ = std::exchange(other.data_, nullptr);
      size_ = std::exchange(other.size_, 0);
    }
    return *this;
  }
  ~mapped_file() { unmap(); }

  [[nodiscard]] std::span<const std::byte> bytes() const noexcept { return {data_, size_}; }
  [[nodiscard]] std::size_t size() const noexcept { return size_; }

  /// Drops the pages read so far from the process's resident set (they stay in the page cache,
  /// and a later read faults them back in). Keeps a loader's resident memory at about one copy
  /// of the weights: the model's, not the model's plus the file's.
  void discard_pages() const noexcept { discard(data_, size_); }

  /// The same for the pages holding bytes [p, p + n) of the mapping (whole pages: a page shared
  /// with a neighbouring tensor is dropped too, and read again if that tensor is).
  void discard(const std::byte* p, std::size_t n) const noexcept {
    if (data_ == nullptr || n == 0) return;
    static const auto page = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
    const auto begin = reinterpret_cast<std::uintptr_t>(p) / page * page;
    const auto end = reinterpret_cast<std::uintptr_t>(p + n);
    // const_cast: madvise takes a void*; the mapping is neither written nor changed.
    static_cast<void>(::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED));
  }

 private:
  void unmap() noexcept {
    if (data_ != nullptr) ::munmap(const_cast<std::byte*>(data_), size_);
    data_ = nullptr;
    size_ = 0;
  }

  const std::byte* data_ = nullptr;
  std::size_t size_ = 0;
};

}  // namespace performer::io::detail
