// Quickstart: one Transformer block (d_model 256, 4 heads of width 64) with each attention
// family swapped in: exact (materialized and tiled), FAVOR+ random features and Reformer-style
// LSH. The block's weights come from the same seed, so the blocks differ only in their
// attention. Prints each block's time and how far its update (output minus input) is from the
// materialized exact block's.
//
// Usage: performer_example_quickstart [N] [--causal]
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <iomanip>
#include <iostream>
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
  // Halve the query and key weights of the random initialisation: its logits spread with a
  // standard deviation near 1.6, a regime where random features need far more than 256 samples
  // (their variance grows like exp(|q + k|^2 / sqrt(d))); trained Performers sit lower.
  auto params = block.parameters();
  params.w_q *= T(0.5);
  params.w_k *= T(0.5);
  block.set_parameters(std::move(params));
  const auto t0 = std::chrono::steady_clock::now();
  const performer::row_matrix<T> y = block.forward(x);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return {y - x, seconds};
}

}  // namespace

int main(int argc, char** argv) {
  const Eigen::Index n = argc > 1 ? std::atol(argv[1]) : 4096;
  const bool causal = argc > 2 && std::string(argv[2]) == "--causal";
  if (n < 1) {
    std::cerr << "usage: " << argv[0] << " [N >= 1] [--causal]\n";
    return 2;
  }
  constexpr Eigen::Index d_model = 256;
  constexpr Eigen::Index heads = 4;
  constexpr Eigen::Index head_dim = d_model / heads;
  const performer::block_config cfg{.d_model = d_model, .heads = heads, .causal = causal};
  const performer::row_matrix<T> x = performer::row_matrix<T>::Random(n, d_model);

  try {
    const auto exact = run(cfg, performer::softmax_attention<T>{}, x);
    const auto tiled = run(cfg, performer::tiled_softmax_attention<T>{}, x);
    // The error of random features falls like 1/sqrt(m).
    const auto favor = run(cfg, performer::favor_attention<T>(head_dim, 256, /*seed=*/7), x);
    const auto favor_wide = run(cfg, performer::favor_attention<T>(head_dim, 2048, /*seed=*/7), x);
    // Distinct queries and keys hashed with the same rotations, so that LSH approximates the
    // same attention as the others (shared-QK, Reformer's default, is a different model).
    const auto lsh = run(cfg,
                         performer::lsh_attention<T>(
                             head_dim, {.buckets = 8, .hashes = 4, .chunk = 64, .shared_qk = false}),
                         x);

    std::cout << "one block, N = " << n << ", d_model " << d_model << ", " << heads << " heads"
              << (causal ? ", causal" : "") << "\n"
              << std::left << std::setw(34) << "attention" << std::right << std::setw(12)
              << "time (ms)" << std::setw(26) << "update vs exact (rel.)" << "\n";
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
