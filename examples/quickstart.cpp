// Quickstart: one Transformer block (d_model 256, 4 heads of width 64) with each attention
// family swapped in: exact (materialized and tiled), FAVOR+ random features and Reformer-style
// LSH. The block's weights come from the same seed, so the blocks differ only in their
// attention. Prints each block's time and how far its update (output minus input) is from the
// materialized exact block's.
//
// Usage: performer_example_quickstart [N] [--causal] [--help]   (N = 4,096 tokens by default;
// FAVOR+ runs with m = 256 and m = 2,048 random features)
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <iomanip>
#include <iostream>
#include <ostream>
#include <string>
#include <utility>

#include <performer/performer.hpp>

namespace {

using T = float;

struct run_result {
  performer::row_matrix<T> update;  // block output minus input
  double seconds;
};

template <class Attention>
run_result run(const performer::block_config& cfg, const Attention& attention,
               const performer::row_matrix<T>& x) {
  performer::transformer_block<Attention> block(cfg, attention, /*seed=*/42);
  // Halve the query and key weights of the random initialisation. As initialised, each head's
  // q and k have |q|^2 = |k|^2 = 64 = d, so |q~ + k~|^2 = |q + k|^2 / sqrt(d) is about 16, and
  // FAVOR+'s relative variance per feature, exp(|q~ + k~|^2) - 1, is about 9 million: far more
  // than 2048 features would be needed (docs/algorithms.md 5.7). Halved, it is about 4 (logits
  // with a spread of 0.25 instead of 1), where the error falls like 1/sqrt(m), as checked below.
  auto params = block.parameters();
  params.w_q *= T(0.5);
  params.w_k *= T(0.5);
  block.set_parameters(std::move(params));
  const auto t0 = std::chrono::steady_clock::now();
  const performer::row_matrix<T> y = block.forward(x);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return {y - x, seconds};
}

void usage(std::ostream& out, const char* argv0) {
  out << "usage: " << argv0 << " [N] [--causal] [--help]\n"
      << "  N         sequence length, a whole number >= 1 (default 4096)\n"
      << "  --causal  decoder (causal) attention instead of encoder (bidirectional)\n"
      << "  --help    this text\n"
      << "Runs one Transformer block (d_model 256, 4 heads) with exact (materialized and tiled),\n"
      << "FAVOR+ (m = 256 and m = 2048 random features) and LSH attention on N random tokens, and\n"
      << "prints each block's time and the distance of its update from the exact block's.\n";
}

}  // namespace

int main(int argc, char** argv) {
  // Flags and N in any order.
  Eigen::Index n = 4096;
  bool causal = false;
  bool have_n = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      usage(std::cout, argv[0]);
      return EXIT_SUCCESS;
    }
    if (arg == "--causal") {
      causal = true;
      continue;
    }
    char* end = nullptr;
    const long long value = std::strtoll(arg.c_str(), &end, 10);
    if (have_n || arg.empty() || *end != '\0' || value < 1) {
      std::cerr << "error: unexpected argument '" << arg << "'\n";
      usage(std::cerr, argv[0]);
      return 2;
    }
    n = static_cast<Eigen::Index>(value);
    have_n = true;
  }
  constexpr Eigen::Index d_model = 256;
  constexpr Eigen::Index heads = 4;
  constexpr Eigen::Index head_dim = d_model / heads;
  const performer::block_config cfg{.d_model = d_model, .heads = heads, .causal = causal};
  const performer::row_matrix<T> x = performer::row_matrix<T>::Random(n, d_model);

  std::cout << "one block on N = " << n << " random tokens" << (have_n ? "" : " (default N)")
            << ", d_model " << d_model << ", " << heads << " heads, "
            << (causal ? "causal" : "bidirectional") << "; FAVOR+ with m = 256 and 2048 features"
            << std::endl;
  try {
    const auto exact = run(cfg, performer::softmax_attention<T>{}, x);
    const auto tiled = run(cfg, performer::tiled_softmax_attention<T>{}, x);
    // The error of random features falls like 1/sqrt(m).
    const auto favor = run(cfg, performer::favor_attention<T>(head_dim, 256, /*seed=*/7), x);
    const auto favor_wide = run(cfg, performer::favor_attention<T>(head_dim, 2048, /*seed=*/7), x);
    // Distinct queries and keys hashed with the same rotations, so that LSH approximates the
    // same attention as the others (shared-QK, Reformer's default, is a different model).
    const auto lsh =
        run(cfg,
            performer::lsh_attention<T>(
                head_dim, {.buckets = 8, .hashes = 4, .chunk = 64, .shared_qk = false}),
            x);

    std::cout << std::left << std::setw(34) << "attention" << std::right << std::setw(12)
              << "time (ms)" << std::setw(26) << "update vs exact (rel.)"
              << "\n";
    bool ok = true;
    const auto row = [&](const char* name, const run_result& r) {
      const double diff = (r.update - exact.update).norm() / exact.update.norm();
      ok = ok && std::isfinite(diff);
      std::cout << std::left << std::setw(34) << name << std::right << std::fixed
                << std::setprecision(2) << std::setw(12) << r.seconds * 1e3 << std::setw(26)
                << std::setprecision(6) << diff << "\n";
      std::cout.unsetf(std::ios::fixed);
      return diff;
    };
    row("exact, materialized (reference)", exact);
    // Tiled exact attention is the same function, evaluated in another order.
    ok = row("exact, tiled online softmax", tiled) < 1e-4 && ok;
    const double narrow = row("FAVOR+ (m = 256)", favor);
    // Eight times the features should cut the error by about sqrt(8) = 2.8; ask for 1.5.
    ok = row("FAVOR+ (m = 2048)", favor_wide) < narrow / 1.5 && ok;
    row("LSH (8 buckets, 4 hashes, chunk 64)", lsh);
    return ok ? EXIT_SUCCESS : EXIT_FAILURE;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return EXIT_FAILURE;
  }
}
