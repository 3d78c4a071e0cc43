// A user-defined attention mechanism (window_attention.hpp: exact softmax attention restricted
// to a sliding window) in the shared Transformer block. It models
// performer::attention_mechanism using only the public API, so it drops into
// performer::transformer_block like the library's own mechanisms. With a radius covering the
// whole sequence it equals exact attention, which the program checks before timing both.
//
// Usage: performer_example_custom_attention [N] [radius]
#include <chrono>
#include <cstdlib>
#include <iostream>
#include <utility>

#include <performer/performer.hpp>

#include "window_attention.hpp"

int main(int argc, char** argv) {
  using T = float;
  const Eigen::Index n = argc > 1 ? std::atol(argv[1]) : 2048;
  const Eigen::Index radius = argc > 2 ? std::atol(argv[2]) : 64;
  const performer::block_config cfg{.d_model = 128, .heads = 4, .causal = true};
  performer::transformer_block<window_attention<T>> local(cfg, window_attention<T>(radius), 1);
  performer::transformer_block<window_attention<T>> wide(cfg, window_attention<T>(n), 1);
  performer::transformer_block<performer::tiled_softmax_attention<T>> exact(cfg, {}, 1);
  const performer::row_matrix<T> x = performer::row_matrix<T>::Random(n, 128);

  const auto time = [&](const auto& block) {
    const auto t0 = std::chrono::steady_clock::now();
    auto y = block.forward(x);
    return std::make_pair(std::move(y), std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  };
  const auto [y_exact, t_exact] = time(exact);
  const auto [y_wide, t_wide] = time(wide);
  const auto [y_local, t_local] = time(local);
  const double agree = (y_wide - y_exact).cwiseAbs().maxCoeff() / (1 + y_exact.cwiseAbs().maxCoeff());
  const double differ = (y_local - y_exact).norm() / y_exact.norm();
  std::cout << "window attention with radius >= N vs exact: max relative difference " << agree << "\n"
            << "window attention, radius " << radius << ", N = " << n << ": relative difference "
            << differ << " from exact, " << t_local << " s vs " << t_exact << " s for exact\n";
  return agree < 1e-4 ? EXIT_SUCCESS : EXIT_FAILURE;
}
