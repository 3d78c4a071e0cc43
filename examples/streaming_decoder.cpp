// Streaming decoder: generates a sequence token by token, once with the recurrent FAVOR+ state
// (constant work per token) and once with exact attention over a growing key/value cache (work
// per token proportional to the context), printing the per-token latency of each as the context
// grows and checking that the recurrent outputs equal the causal batch pass.
//
// Usage: performer_example_streaming_decoder [N] [M] [--help]
//   N: tokens to generate (default 16,384); M: FAVOR+ random features (default 256).
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <iomanip>
#include <iostream>
#include <ostream>
#include <random>
#include <string>

#include <performer/performer.hpp>

namespace {

using T = float;

/// Uniform [-1, 1) entries from std::mt19937_64, whose output the C++ standard fixes: the same
/// stream on every platform.
performer::row_matrix<T> random_matrix(Eigen::Index rows, Eigen::Index cols, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  performer::row_matrix<T> m(rows, cols);
  for (Eigen::Index i = 0; i < rows; ++i) {
    for (Eigen::Index j = 0; j < cols; ++j) {
      m(i, j) = static_cast<T>(2 * (static_cast<double>(rng() >> 11) * 0x1.0p-53) - 1);
    }
  }
  return m;
}

void usage(std::ostream& out, const char* argv0) {
  out << "usage: " << argv0 << " [N] [M] [--help]\n"
      << "  N       tokens to generate, >= 1 (default 16384)\n"
      << "  M       FAVOR+ random features, >= 1 (default 256)\n"
      << "  --help  this text\n"
      << "Generates N tokens of one attention head (width 64) with the recurrent FAVOR+ state and\n"
      << "with exact attention over a key/value cache, prints the mean time per token of each as\n"
      << "the context grows, and checks the streamed outputs against the causal batch pass.\n";
}

}  // namespace

int main(int argc, char** argv) {
  Eigen::Index sizes[2] = {16384, 256};  // N, M
  int given = 0;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      usage(std::cout, argv[0]);
      return EXIT_SUCCESS;
    }
    char* end = nullptr;
    const long long value = std::strtoll(arg.c_str(), &end, 10);
    if (given == 2 || arg.empty() || *end != '\0' || value < 1) {
      std::cerr << "error: unexpected argument '" << arg << "'\n";
      usage(std::cerr, argv[0]);
      return 2;
    }
    sizes[given++] = static_cast<Eigen::Index>(value);
  }
  const Eigen::Index n = sizes[0];
  const Eigen::Index m = sizes[1];
  const Eigen::Index d = 64;
  std::cout << "streaming N = " << n << " tokens" << (given < 1 ? " (default N)" : "")
            << ", one head of width " << d << ", FAVOR+ with M = " << m << " features"
            << (given < 2 ? " (default M)" : "") << std::endl;
  try {
    // A single head's queries, keys and values for the whole stream (a model would produce them
    // one token at a time from its previous output).
    const auto q = random_matrix(n, d, 1);
    const auto k = random_matrix(n, d, 2);
    const auto v = random_matrix(n, d, 3);
    const performer::favor_attention<T> favor(d, m, 42);
    performer::favor_decoder<T> decoder(favor, d);
    const performer::softmax_attention<T> exact;
    performer::softmax_attention<T>::workspace_type exact_ws;
    performer::row_matrix<T> streamed(n, d);
    performer::row_matrix<T> exact_out(1, d);

    std::cout << "context    FAVOR+ step (us)    exact KV-cache step (us)    ratio\n";
    double favor_window = 0;
    double exact_window = 0;
    Eigen::Index window_count = 0;
    for (Eigen::Index t = 0; t < n; ++t) {
      const auto t0 = std::chrono::steady_clock::now();
      decoder.step(q.row(t), k.row(t), v.row(t), streamed.row(t));
      const auto t1 = std::chrono::steady_clock::now();
      // Exact: the new query against every cached key so far (no mask needed: all are past).
      exact.forward(q.row(t), k.topRows(t + 1), v.topRows(t + 1), exact_out, {}, exact_ws);
      const auto t2 = std::chrono::steady_clock::now();
      favor_window += std::chrono::duration<double, std::micro>(t1 - t0).count();
      exact_window += std::chrono::duration<double, std::micro>(t2 - t1).count();
      ++window_count;
      // Report at powers of two from 256 on, and at the end: mean over the span since the last.
      if ((((t + 1) & t) == 0 && t + 1 >= 256) || t + 1 == n) {
        std::cout << std::setw(7) << t + 1 << std::fixed << std::setprecision(2) << std::setw(20)
                  << favor_window / static_cast<double>(window_count) << std::setw(28)
                  << exact_window / static_cast<double>(window_count) << std::setw(9)
                  << std::setprecision(1) << exact_window / favor_window << "x\n";
        std::cout.unsetf(std::ios::fixed);
        favor_window = exact_window = 0;
        window_count = 0;
      }
    }
    const auto batch = performer::attend(favor, q, k, v, {.causal = true});
    // max |streamed - batch| / (1 + max |batch|): relative to the outputs' own scale.
    const double diff = static_cast<double>((streamed - batch).cwiseAbs().maxCoeff()) /
                        (1.0 + static_cast<double>(batch.cwiseAbs().maxCoeff()));
    std::cout << "recurrent vs causal batch FAVOR+: max relative difference " << diff << "\n";
    return diff < 1e-4 ? EXIT_SUCCESS : EXIT_FAILURE;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return EXIT_FAILURE;
  }
}
