// favor_options::products (favor/favor_options.hpp): which float calls run performer's own
// kernels (core/detail/fp32_product.hpp), and that they compute what Eigen's products compute,
// bidirectional and causal, with padding, partial blocks and chunks, and value widths that end
// inside a register. Every other FAVOR+ suite runs the default, so on a CPU with AVX-512F they
// run the own kernels, and elsewhere Eigen's.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include <performer/core/detail/fp32_product.hpp>
#include <performer/favor/favor_attention.hpp>
#include <performer/favor/features/relu_features.hpp>
#include <performer/testing/helpers.hpp>

namespace favor_favor_products_test {
namespace {

using performer::attention_mask;
using performer::favor_attention;
using performer::favor_options;
using performer::favor_products;
using performer::index_t;
using performer::row_matrix;
using performer::detail::avx512f_available;

TEST(FavorProducts, OwnKernelsRunForFloatSumsOnACpuWithAvx512Only) {
  favor_options eigen;
  eigen.products = favor_products::eigen;
  EXPECT_EQ(favor_attention<float>(16, 32).own_products(), avx512f_available());
  EXPECT_FALSE(favor_attention<float>(16, 32, 0, {}, {}, eigen).own_products());
  EXPECT_FALSE(favor_attention<double>(16, 32).own_products());
  using float_in_double = favor_attention<float, performer::positive_features<float>,
                                          performer::orthogonal_sampler, double>;
  EXPECT_FALSE(float_in_double(16, 32).own_products());
  // Double data with float sums compiles every path that tests the scalar types (a guard on the
  // sums' type alone once handed the kernel double data) and runs on Eigen's products.
  using double_in_float = favor_attention<double, performer::positive_features<double>,
                                          performer::orthogonal_sampler, float>;
  const double_in_float mixed(8, 16);
  EXPECT_FALSE(mixed.own_products());
  const auto x = performer::conformance::random_matrix<double>(40, 8, 4);
  row_matrix<double> out(40, 8);
  double_in_float::workspace_type ws;
  for (const bool causal : {false, true}) {
    mixed.forward(x, x, x, out, attention_mask{causal, {}}, ws);
    EXPECT_TRUE(out.allFinite());
  }
}

// Both compute the same estimator in float and differ only in the order of their sums. Every
// output is a ratio of sums of positive terms over at most N keys, each feature a sum of d
// products and each key-state entry of N, so each side lies within gamma_n ~ n 2^-24 (n = N + m
// + d) of the exact ratio, relative to max|v|: 4 n 2^-24 bounds the two sides' difference with
// room to spare. A wrong weight, a lost normaliser or a misplaced row is off by O(max|v|).
// Chunks of 16 (one band), 32 (two) and 40 (a band cut short) over blocks of 64 keys, so that
// every band offset, a chunk cut by its block's end and a last block of 44 keys all run.
template <class Map>
void expect_own_matches_eigen(bool causal, index_t chunk) {
  if (!avx512f_available()) GTEST_SKIP() << "this CPU does not run AVX-512F: Eigen's products run";
  const index_t n = 300, d = 16, m = 64, d_v = 24;
  favor_options own_options;
  own_options.block = 64;
  own_options.chunk = chunk;
  own_options.min_segment = 100;
  favor_options eigen_options = own_options;
  eigen_options.products = favor_products::eigen;
  const favor_attention<float, Map> own(d, m, 5, {}, {}, own_options);
  const favor_attention<float, Map> eigen(d, m, 5, {}, {}, eigen_options);
  ASSERT_TRUE(own.own_products());
  const auto q = performer::conformance::random_matrix<float>(n, d, 1);
  const auto k = performer::conformance::random_matrix<float>(n, d, 2);
  const auto v = performer::conformance::random_matrix<float>(n, d_v, 3);
  std::vector<std::uint8_t> keep(static_cast<std::size_t>(n), 1);
  for (index_t j = 0; j < n; j += 7) keep[static_cast<std::size_t>(j)] = 0;
  attention_mask mask;
  mask.causal = causal;
  mask.key_mask = keep;
  row_matrix<float> out_own(n, d_v), out_eigen(n, d_v);
  typename favor_attention<float, Map>::workspace_type ws_own, ws_eigen;
  own.forward(q, k, v, out_own, mask, ws_own);
  eigen.forward(q, k, v, out_eigen, mask, ws_eigen);
  const double bound = 4.0 * (n + m + d) * 0x1p-24 * v.cwiseAbs().maxCoeff();
  EXPECT_LE((out_own - out_eigen).cwiseAbs().maxCoeff(), bound) << "chunk " << chunk;
  // Not one path twice: their sums run in other orders, so some bits differ.
  EXPECT_GT((out_own - out_eigen).cwiseAbs().maxCoeff(), 0.0f) << "chunk " << chunk;
}

TEST(FavorProducts, OwnKernelsMatchEigenBidirectionalWithPadding) {
  expect_own_matches_eigen<performer::positive_features<float>>(false, 16);
}

TEST(FavorProducts, OwnKernelsMatchEigenCausalWithPaddingInEveryBand) {
  for (const index_t chunk : {16, 32, 40}) {
    expect_own_matches_eigen<performer::positive_features<float>>(true, chunk);
  }
}

// ReLU features are not a projected map: the projection stays the map's own (Eigen), the key
// state and output products are performer's.
TEST(FavorProducts, OwnKernelsMatchEigenForAMapThatProjectsItself) {
  expect_own_matches_eigen<performer::relu_features<float>>(false, 16);
  expect_own_matches_eigen<performer::relu_features<float>>(true, 32);
}

}  // namespace
}  // namespace favor_favor_products_test
