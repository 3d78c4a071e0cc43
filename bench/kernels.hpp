// The workloads the benchmarks time, shared by the Google Benchmark suites and the sweep
// program: each prepares its inputs once and runs one forward pass per call.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <performer/performer.hpp>
#include <performer/testing/helpers.hpp>

namespace performer::bench {

using T = float;

/// One timed workload: `run()` is what gets timed; `flops` counts its multiply-adds as 2.
struct workload {
  std::function<void()> run;
  double flops = 0;
};

/// A kernel the harness knows by name.
struct kernel_info {
  std::string name;
  std::string description;
  /// Bytes the kernel needs beyond inputs and outputs, as a function of N (for skipping configs
  /// that cannot fit; the harness measures the real peak).
  std::function<double(index n, index d)> extra_bytes;
  std::function<workload(index n, index d)> make;
  bool quadratic = false;
  /// Longest N the quick sweep runs this kernel at (keeps the quick mode near a minute).
  index quick_max_n = 16384;
  /// The kernel whose GFLOP/s at the same N is this one's ceiling ("" if none).
  std::string ceiling;
};

/// Q, K, V and the output of one head, owned together. The output is written once here, so
/// that its pages are resident before the harness takes its baseline (else the first run would
/// count the output's N x d as the kernel's own memory).
struct head_buffers {
  row_matrix<T> q, k, v, out;
  head_buffers(index n, index d)
      : q(conformance::random_matrix<T>(n, d, 1)),
        k(conformance::random_matrix<T>(n, d, 2)),
        v(conformance::random_matrix<T>(n, d, 3)),
        out(row_matrix<T>::Zero(n, d)) {}
};

/// Any attention mechanism on one head: 4 N^2 d flops for the exact ones.
template <attention_mechanism A>
workload attention_workload(A mechanism, index n, index d, bool causal, double flops) {
  auto buffers = std::make_shared<head_buffers>(n, d);
  auto ws = std::make_shared<typename A::workspace_type>();
  auto mech = std::make_shared<A>(std::move(mechanism));
  return {[buffers, ws, mech, causal] {
            mech->forward(buffers->q, buffers->k, buffers->v, buffers->out,
                          attention_mask{causal, {}}, *ws);
          },
          flops};
}

/// The matrix products of tiled attention alone (same tile shapes, no softmax): the GEMM
/// ceiling the exact kernels are reported against, measured in the same run.
inline workload gemm_ceiling(index n, index d, index bq = 256, index bk = 512) {
  auto buffers = std::make_shared<head_buffers>(n, d);
  auto tile = std::make_shared<row_matrix<T>>(std::min(bq, n), std::min(bk, n));
  return {[buffers, tile, n, bq, bk] {
            auto& b = *buffers;
            for (index q0 = 0; q0 < n; q0 += bq) {
              const index rows = std::min(bq, n - q0);
              auto acc = b.out.middleRows(q0, rows);
              acc.setZero();
              for (index k0 = 0; k0 < n; k0 += bk) {
                const index cols = std::min(bk, n - k0);
                auto s = tile->topLeftCorner(rows, cols);
                s.noalias() = b.q.middleRows(q0, rows) * b.k.middleRows(k0, cols).transpose();
                acc.noalias() += s * b.v.middleRows(k0, cols);
              }
            }
          },
          4.0 * static_cast<double>(n) * static_cast<double>(n) * static_cast<double>(d)};
}

/// A transformer block (d_model 512, 8 heads, pre-LN, GELU) around mechanism A.
template <attention_mechanism A>
workload block_workload(A mechanism, index n) {
  constexpr index d_model = 512;
  auto block = std::make_shared<transformer_block<A>>(
      block_config{.d_model = d_model, .heads = 8}, std::move(mechanism), 1);
  auto x = std::make_shared<row_matrix<T>>(conformance::random_matrix<T>(n, d_model, 4));
  auto y = std::make_shared<row_matrix<T>>(row_matrix<T>::Zero(n, d_model));
  auto ws = std::make_shared<typename transformer_block<A>::workspace_type>();
  return {[block, x, y, ws] { block->forward(*x, *y, {}, *ws); }, 0.0};
}

/// Multiply-adds (as 2 flops) of FAVOR's four products: 8 N m d for d_v = d. The exps, the
/// causal path's within-chunk products and the normalisation come on top.
inline double favor_flops(index n, index d, index m) {
  return 8.0 * static_cast<double>(n) * static_cast<double>(m) * static_cast<double>(d);
}

/// FAVOR's four products alone (phi = X W^T for keys and queries, S = phi(K)^T V,
/// out = phi(Q) S) on its block shapes, the sequence split over the available threads as the
/// library splits it: the ceiling FAVOR+ is reported against, measured in the same run.
inline workload favor_gemm_ceiling(index n, index d, index m, index block = 256) {
  auto buffers = std::make_shared<head_buffers>(n, d);
  auto w = std::make_shared<row_matrix<T>>(conformance::random_matrix<T>(m, d, 5));
  const index parts = std::min<index>(detail::available_threads(), 2);
  auto phis = std::make_shared<std::vector<row_matrix<T>>>(parts, row_matrix<T>(block, m));
  auto states = std::make_shared<std::vector<row_matrix<T>>>(parts, row_matrix<T>(m, d));
  return {[=] {
            auto& b = *buffers;
            detail::parallel_for(parts, [&](index p, index lane) {
              auto& phi = (*phis)[lane];
              auto& s = (*states)[lane];
              s.setZero();
              const index begin = n * p / parts;
              const index end = n * (p + 1) / parts;
              for (index i = begin; i < end; i += block) {
                const index rows = std::min(block, end - i);
                phi.topRows(rows).noalias() = b.k.middleRows(i, rows) * w->transpose();
                s.noalias() += phi.topRows(rows).transpose() * b.v.middleRows(i, rows);
              }
              for (index i = begin; i < end; i += block) {
                const index rows = std::min(block, end - i);
                phi.topRows(rows).noalias() = b.q.middleRows(i, rows) * w->transpose();
                b.out.middleRows(i, rows).noalias() = phi.topRows(rows) * s;
              }
            });
          },
          favor_flops(n, d, m)};
}

/// One recurrent decoding step after a context of n - 1 tokens.
template <class Map>
workload decode_workload(index n, index d, index m) {
  const favor_attention<T, Map> favor(d, m, 1);
  auto decoder = std::make_shared<favor_decoder<T, Map>>(favor, d);
  auto buffers = std::make_shared<head_buffers>(n, d);
  decoder->prime(buffers->k.topRows(n - 1), buffers->v.topRows(n - 1));
  auto out = std::make_shared<row_vector<T>>(d);
  return {[decoder, buffers, out, n] {
            decoder->step(buffers->q.row(n - 1), buffers->k.row(n - 1), buffers->v.row(n - 1),
                          *out);
          },
          0.0};
}

inline double sq(index n) { return static_cast<double>(n) * static_cast<double>(n); }

/// Every kernel the harness can run, in display order.
inline std::vector<kernel_info> all_kernels() {
  const auto exact_flops = [](index n, index d) { return 4.0 * sq(n) * static_cast<double>(d); };
  constexpr index favor_m = 256;
  // Per thread: B x M features for queries and keys, an M x d state (B = 256, 2 threads).
  const auto favor_bytes = [](index, index d) {
    return 2.0 * (2.0 * 256.0 * favor_m + 3.0 * favor_m * static_cast<double>(d)) * sizeof(T);
  };
  return {
      {"gemm", "Eigen GEMM on the tiled kernel's shapes (the ceiling)",
       [](index, index) { return 256.0 * 512.0 * sizeof(T); },
       [](index n, index d) { return gemm_ceiling(n, d); }, true, 16384, ""},
      {"softmax", "exact softmax, materialized N x N",
       [](index n, index) { return sq(n) * sizeof(T); },
       [exact_flops](index n, index d) {
         return attention_workload(softmax_attention<T>{}, n, d, false, exact_flops(n, d));
       },
       true, 16384, "gemm"},
      {"tiled", "exact softmax, tiled online softmax",
       [](index, index) { return 256.0 * 512.0 * sizeof(T); },
       [exact_flops](index n, index d) {
         return attention_workload(tiled_softmax_attention<T>{}, n, d, false, exact_flops(n, d));
       },
       true, 16384, "gemm"},
      {"tiled_causal", "exact softmax, tiled, causal",
       [](index, index) { return 256.0 * 512.0 * sizeof(T); },
       [exact_flops](index n, index d) {
         return attention_workload(tiled_softmax_attention<T>{}, n, d, true, exact_flops(n, d) / 2);
       },
       true, 16384, "gemm"},
      {"block_tiled", "transformer block (d_model 512, 8 heads) with tiled exact attention",
       [](index n, index) { return 6.0 * static_cast<double>(n) * 512.0 * sizeof(T); },
       [](index n, index) { return block_workload(tiled_softmax_attention<T>{}, n); }, true, 4096,
       ""},
      {"favor_gemm", "FAVOR's four products alone, m = 256 (the FAVOR ceiling)", favor_bytes,
       [](index n, index d) { return favor_gemm_ceiling(n, d, favor_m); }, false, 65536,
       ""},
      {"favor", "FAVOR+ (positive features, orthogonal), bidirectional, m = 256", favor_bytes,
       [](index n, index d) {
         return attention_workload(favor_attention<T>(d, favor_m, 1), n, d, false,
                                   favor_flops(n, d, favor_m));
       },
       false, 65536, "favor_gemm"},
      {"favor_causal", "FAVOR+, causal (chunked prefix sums), m = 256", favor_bytes,
       [](index n, index d) {
         return attention_workload(favor_attention<T>(d, favor_m, 1), n, d, true,
                                   favor_flops(n, d, favor_m));
       },
       false, 65536, "favor_gemm"},
      {"favor_pp", "FAVOR++ (calibrated per call), bidirectional, m = 256", favor_bytes,
       [](index n, index d) {
         using A = favor_attention<T, favor_plus_plus_features<T>>;
         return attention_workload(A(d, favor_m, 1), n, d, false, favor_flops(n, d, favor_m));
       },
       false, 16384, "favor_gemm"},
      {"favor_relu", "Performer-ReLU features, bidirectional, m = 256", favor_bytes,
       [](index n, index d) {
         using A = favor_attention<T, relu_features<T>>;
         return attention_workload(A(d, favor_m, 1), n, d, false, favor_flops(n, d, favor_m));
       },
       false, 16384, "favor_gemm"},
      {"decode_step", "one FAVOR+ recurrent decoding step at context N, m = 256",
       [](index, index d) { return 2.0 * favor_m * d * sizeof(T); },
       [](index n, index d) { return decode_workload<positive_features<T>>(n, d, favor_m); },
       false, 65536, ""},
      {"block_favor", "transformer block (d_model 512, 8 heads) with FAVOR+ attention (m = 256)",
       [](index n, index) { return 6.0 * static_cast<double>(n) * 512.0 * sizeof(T); },
       [](index n, index) { return block_workload(favor_attention<T>(64, favor_m, 1), n); },
       false, 4096, ""},
  };
}

}  // namespace performer::bench
