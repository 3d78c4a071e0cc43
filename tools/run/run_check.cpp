// performer_run_check: the runner tests' helper (tools/run/CMakeLists.txt). It writes token
// arrays from the reference fixtures (tests/io/fixtures/NAME.expected.safetensors) and
// deliberately malformed .npy files, and checks performer_run's outputs: against the fixtures'
// expected logits, against each other, their shapes, and a generated token against the argmax
// of the expected logits. Exit status 0 when the check holds, 1 (with a message) otherwise.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <stdexcept>
#include <string>
#include <vector>

#include <performer/io/safetensors.hpp>

#include "npy.hpp"

namespace {

using matrix = performer::row_matrix<double>;

[[noreturn]] void fail(const std::string& message) { throw std::runtime_error(message); }

std::string flag(std::vector<std::string>& args, const std::string& name, std::string fallback) {
  const auto it = std::find(args.begin(), args.end(), name);
  if (it == args.end()) return fallback;
  if (it + 1 == args.end()) fail(name + " needs a value");
  std::string v = *(it + 1);
  args.erase(it, it + 2);
  return v;
}

bool has(std::vector<std::string>& args, const std::string& name) {
  const auto it = std::find(args.begin(), args.end(), name);
  if (it == args.end()) return false;
  args.erase(it);
  return true;
}

/// An expected [N, V] matrix: a fixture's "logits", or a float .npy of [N, V] or [1, N, V].
matrix expected(const std::string& path) {
  if (path.ends_with(".safetensors")) {
    return performer::io::safetensors_file(path).read<double>("logits");
  }
  const npy::raw_array a = npy::read_raw(path);
  if (a.shape.size() < 2 || (a.shape.size() == 3 && a.shape[0] != 1) || a.shape.size() > 3) {
    fail(path + ": expected [N, V] or [1, N, V], got " + npy::detail::shape_text(a.shape));
  }
  const auto n = static_cast<performer::index_t>(a.shape[a.shape.size() - 2]);
  const auto v = static_cast<performer::index_t>(a.shape.back());
  matrix m(n, v);
  for (performer::index_t i = 0; i < m.size(); ++i) {
    m.data()[i] = npy::element<double>(a, static_cast<std::size_t>(i));
  }
  return m;
}

/// compare ACTUAL EXPECTED [--rel X]: every sequence of ACTUAL ([N, V] or [B, N, V], float)
/// matches the first N rows of EXPECTED to X relative to the largest |expected| (default 1e-5).
int compare(std::vector<std::string> args) {
  const double rel = std::stod(flag(args, "--rel", "1e-5"));
  if (args.size() != 2) fail("usage: compare ACTUAL.npy EXPECTED [--rel X]");
  const npy::raw_array a = npy::read_raw(args[0]);
  const matrix e = expected(args[1]);
  if (a.type != "<f4" && a.type != "<f8") fail(args[0] + ": not a float array (" + a.type + ")");
  if (a.shape.size() != 2 && a.shape.size() != 3) {
    fail(args[0] + ": shape " + npy::detail::shape_text(a.shape) + " is not [N, V] or [B, N, V]");
  }
  const std::int64_t b = a.shape.size() == 3 ? a.shape[0] : 1;
  const std::int64_t n = a.shape[a.shape.size() - 2];
  const std::int64_t v = a.shape.back();
  if (n > e.rows() || v != e.cols()) {
    fail(args[0] + ": shape " + npy::detail::shape_text(a.shape) + " does not fit the expected " +
         std::to_string(e.rows()) + " x " + std::to_string(e.cols()));
  }
  const double scale = e.topRows(n).cwiseAbs().maxCoeff();
  double worst = 0;
  for (std::int64_t s = 0; s < b; ++s) {
    for (std::int64_t i = 0; i < n; ++i) {
      for (std::int64_t j = 0; j < v; ++j) {
        const double x = npy::element<double>(a, static_cast<std::size_t>((s * n + i) * v + j));
        const double d = std::abs(x - e(i, j));
        if (!(d <= worst)) worst = std::isnan(d) ? INFINITY : std::max(worst, d);
      }
    }
  }
  std::cout << args[0] << ": " << b << " x " << n << " x " << v << ", max |diff| / max |expected| = "
            << worst / scale << " (tolerance " << rel << ")\n";
  return worst / scale <= rel ? EXIT_SUCCESS : EXIT_FAILURE;
}

/// tokens EXPECTED OUT [--first K] [--batch B] [--int32] [--set I VALUE]: the fixture's tokens
/// (the first K), as [K], or [B, K] with B copies; --set replaces token I (tests out-of-range ids).
int tokens(std::vector<std::string> args) {
  const std::string first = flag(args, "--first", "");
  const std::string batch = flag(args, "--batch", "");
  const std::string set = flag(args, "--set", "");
  const bool int32 = has(args, "--int32");
  if (args.size() != 2 && !(args.size() == 3 && !set.empty())) {
    fail("usage: tokens EXPECTED.safetensors OUT.npy [--first K] [--batch B] [--int32] [--set I VALUE]");
  }
  std::vector<std::int64_t> t = performer::io::safetensors_file(args[0]).read_int64("tokens");
  if (!first.empty()) t.resize(std::min(t.size(), std::stoul(first)));
  if (!set.empty()) t.at(std::stoul(set)) = std::stoll(args[2]);
  std::vector<std::int64_t> shape{static_cast<std::int64_t>(t.size())};
  std::vector<std::int64_t> all;
  const std::size_t copies = batch.empty() ? 1 : std::stoul(batch);
  for (std::size_t c = 0; c < copies; ++c) all.insert(all.end(), t.begin(), t.end());
  if (!batch.empty()) shape.insert(shape.begin(), static_cast<std::int64_t>(copies));
  if (!int32) {
    npy::write(args[1], shape, all.data());
    return EXIT_SUCCESS;
  }
  // npy.hpp writes float and int64 only: an int32 file is the int64 one with its descr and
  // data narrowed (the header keeps its length, so the 64-byte alignment too).
  npy::write(args[1], shape, all.data());
  std::ifstream in(args[1], std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const std::size_t data = bytes.size() - all.size() * 8;
  bytes.replace(bytes.find("<i8"), 3, "<i4");
  bytes.resize(data);
  for (const std::int64_t x : all) {
    const auto v = static_cast<std::int32_t>(x);
    bytes.append(reinterpret_cast<const char*>(&v), 4);
  }
  std::ofstream(args[1], std::ios::binary | std::ios::trunc) << bytes;
  return EXIT_SUCCESS;
}

/// same A B: equal shapes, types and bytes.
int same(const std::vector<std::string>& args) {
  if (args.size() != 2) fail("usage: same A.npy B.npy");
  const npy::raw_array a = npy::read_raw(args[0]);
  const npy::raw_array b = npy::read_raw(args[1]);
  if (a.type != b.type || a.shape != b.shape || a.data != b.data) {
    std::cout << args[0] << " (" << a.type << " " << npy::detail::shape_text(a.shape) << ") and "
              << args[1] << " (" << b.type << " " << npy::detail::shape_text(b.shape)
              << ") differ\n";
    return EXIT_FAILURE;
  }
  std::cout << args[0] << " and " << args[1] << " are identical (" << a.type << " "
            << npy::detail::shape_text(a.shape) << ")\n";
  return EXIT_SUCCESS;
}

/// shape FILE TYPE D0 D1 ...: the array's dtype and shape.
int shape(const std::vector<std::string>& args) {
  if (args.size() < 2) fail("usage: shape FILE.npy TYPE D0 [D1 ...]");
  const npy::raw_array a = npy::read_raw(args[0]);
  std::vector<std::int64_t> want;
  for (std::size_t i = 2; i < args.size(); ++i) want.push_back(std::stoll(args[i]));
  std::cout << args[0] << ": " << a.type << " " << npy::detail::shape_text(a.shape) << "\n";
  return a.type == args[1] && a.shape == want ? EXIT_SUCCESS : EXIT_FAILURE;
}

/// argmax GENERATED EXPECTED K: the first generated id equals the argmax of the expected
/// logits' row K - 1 (a greedy continuation of a K-token prompt of a causal fixture).
int argmax(const std::vector<std::string>& args) {
  if (args.size() != 3) fail("usage: argmax GENERATED.npy EXPECTED.safetensors K");
  const npy::raw_array g = npy::read_raw(args[0]);
  const matrix e = expected(args[1]);
  const auto row = static_cast<performer::index_t>(std::stol(args[2]) - 1);
  performer::index_t best = 0;
  e.row(row).maxCoeff(&best);
  const auto got = npy::element<std::int64_t>(g, 0);
  std::cout << "first generated id " << got << ", argmax of expected row " << row << ": " << best
            << "\n";
  return got == best ? EXIT_SUCCESS : EXIT_FAILURE;
}

/// bad-npy KIND OUT: a malformed or unsupported token file.
int bad_npy(const std::vector<std::string>& args) {
  if (args.size() != 2) fail("usage: bad-npy magic|float|big-endian|fortran|rank3|truncated OUT");
  const std::string& kind = args[0];
  std::vector<std::int64_t> values(24, 1);
  std::vector<std::int64_t> shape{24};
  if (kind == "rank3") shape = {2, 3, 4};
  npy::write(args[1], shape, values.data());
  std::ifstream in(args[1], std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const auto swap = [&](const std::string& from, const std::string& to) {
    bytes.replace(bytes.find(from), from.size(), to);
  };
  if (kind == "magic") {
    bytes[1] = 'X';
  } else if (kind == "float") {
    swap("<i8", "<f8");
  } else if (kind == "big-endian") {
    swap("<i8", ">i8");
  } else if (kind == "fortran") {
    swap("False", "True ");
  } else if (kind == "truncated") {
    bytes.resize(bytes.size() - 5);
  } else if (kind != "rank3") {
    fail("unknown kind " + kind);
  }
  std::ofstream(args[1], std::ios::binary | std::ios::trunc) << bytes;
  return EXIT_SUCCESS;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty()) {
    std::cerr << "usage: performer_run_check compare|tokens|same|shape|argmax|bad-npy ...\n";
    return 2;
  }
  const std::string command = args.front();
  args.erase(args.begin());
  try {
    if (command == "compare") return compare(args);
    if (command == "tokens") return tokens(args);
    if (command == "same") return same(args);
    if (command == "shape") return shape(args);
    if (command == "argmax") return argmax(args);
    if (command == "bad-npy") return bad_npy(args);
    std::cerr << "performer_run_check: unknown command " << command << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "performer_run_check: " << e.what() << "\n";
    return EXIT_FAILURE;
  }
}
