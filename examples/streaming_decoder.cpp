// Streaming decoder: generates a sequence token by token, once with the recurrent FAVOR+ state
// (constant work per token) and once with exact attention over a growing key/value cache (work
// per token proportional to the context), printing the per-token latency of each as the context
// grows and checking that the recurrent outputs equal the causal batch pass.
//
// Usage: performer_example_streaming_decoder [N] [features]
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <iomanip>
#include <iostream>

#include <performer/attention/favor_attention.hpp>
#include <performer/attention/favor_decoder.hpp>
#include <performer/performer.hpp>
#include <performer/testing/helpers.hpp>

int main(int argc, char** argv) {
  using T = float;
  const Eigen::Index n = argc > 1 ? std::atol(argv[1]) : 16384;
  const Eigen::Index m = argc > 2 ? std::atol(argv[2]) : 256;
  const Eigen::Index d = 64;
  // A single head's queries, keys and values for the whole stream (a model would produce them
  // one token at a time from its previous output).
  const auto q = performer::conformance::random_matrix<T>(n, d, 1);
  const auto k = performer::conformance::random_matrix<T>(n, d, 2);
  const auto v = performer::conformance::random_matrix<T>(n, d, 3);

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
    if (((t + 1) & t) == 0 && t + 1 >= 256) {  // report at powers of two: mean over the last span
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
  const double diff = performer::conformance::relative_difference(streamed, batch);
  std::cout << "recurrent vs causal batch FAVOR+: max relative difference " << diff << "\n";
  return diff < 1e-4 ? EXIT_SUCCESS : EXIT_FAILURE;
}
