// Consumes the installed performer package: one head of FAVOR+ attention next to exact
// attention. Prints the version on the first line (the package test checks it), then the
// relative difference between the two; fails if that is not a sensible approximation.
#include <cmath>
#include <cstdlib>
#include <iostream>

#include <performer/performer.hpp>

int main() {
  using T = float;
  const Eigen::Index n = 512;
  const Eigen::Index d = 64;
  // Small logits (entries in [-0.5, 0.5]), the regime where m = 256 features do well.
  const performer::row_matrix<T> q = 0.5f * performer::row_matrix<T>::Random(n, d);
  const performer::row_matrix<T> k = 0.5f * performer::row_matrix<T>::Random(n, d);
  const performer::row_matrix<T> v = performer::row_matrix<T>::Random(n, d);
  const auto exact = performer::attend(performer::tiled_softmax_attention<T>{}, q, k, v);
  const auto approx = performer::attend(performer::favor_attention<T>(d, 256, /*seed=*/1), q, k, v);
  const double diff = (approx - exact).norm() / exact.norm();
  std::cout << "performer " << performer::version_string << "\n"
            << "FAVOR+ (m = 256) vs exact attention, N = " << n << ": relative difference " << diff
            << "\n";
  return std::isfinite(diff) && diff < 0.5 ? EXIT_SUCCESS : EXIT_FAILURE;
}
