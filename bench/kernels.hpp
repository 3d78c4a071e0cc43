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
};

/// Q, K, V and the output of one head, owned together.
struct head_buffers {
  row_matrix<T> q, k, v, out;
  head_buffers(index n, index d)
      : q(conformance::random_matrix<T>(n, d, 1)),
        k(conformance::random_matrix<T>(n, d, 2)),
        v(conformance::random_matrix<T>(n, d, 3)),
        out(n, d) {}
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
  auto y = std::make_shared<row_matrix<T>>(n, d_model);
  auto ws = std::make_shared<typename transformer_block<A>::workspace_type>();
  return {[block, x, y, ws] { block->forward(*x, *y, {}, *ws); }, 0.0};
}

inline double sq(index n) { return static_cast<double>(n) * static_cast<double>(n); }

/// Every kernel the harness can run, in display order.
inline std::vector<kernel_info> all_kernels() {
  const auto exact_flops = [](index n, index d) { return 4.0 * sq(n) * static_cast<double>(d); };
  return {
      {"gemm", "Eigen GEMM on the tiled kernel's shapes (the ceiling)",
       [](index, index) { return 256.0 * 512.0 * sizeof(T); },
       [](index n, index d) { return gemm_ceiling(n, d); }, true},
      {"softmax", "exact softmax, materialized N x N",
       [](index n, index) { return sq(n) * sizeof(T); },
       [exact_flops](index n, index d) {
         return attention_workload(softmax_attention<T>{}, n, d, false, exact_flops(n, d));
       },
       true},
      {"tiled", "exact softmax, tiled online softmax",
       [](index, index) { return 256.0 * 512.0 * sizeof(T); },
       [exact_flops](index n, index d) {
         return attention_workload(tiled_softmax_attention<T>{}, n, d, false, exact_flops(n, d));
       },
       true},
      {"tiled_causal", "exact softmax, tiled, causal",
       [](index, index) { return 256.0 * 512.0 * sizeof(T); },
       [exact_flops](index n, index d) {
         return attention_workload(tiled_softmax_attention<T>{}, n, d, true, exact_flops(n, d) / 2);
       },
       true},
      {"block_tiled", "transformer block (d_model 512, 8 heads) with tiled exact attention",
       [](index n, index) { return 6.0 * static_cast<double>(n) * 512.0 * sizeof(T); },
       [](index n, index) { return block_workload(tiled_softmax_attention<T>{}, n); }, true, 4096},
  };
}

}  // namespace performer::bench
