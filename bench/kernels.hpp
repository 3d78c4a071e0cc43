// The workloads the benchmarks time, shared by the Google Benchmark suites and the sweep
// program: each prepares its inputs once and runs one forward pass per call.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <functional>
#include <sstream>
#include <memory>
#include <string>
#include <vector>

#include <performer/performer.hpp>
#include <performer/testing/helpers.hpp>

namespace performer::bench {

using T = float;

/// One timed workload: `run()` is what gets timed; `flops` counts its multiply-adds as 2.
/// `error`, when set, is called after a run: the relative error of the output against exact
/// softmax attention in double, on a sample of rows (approximate kernels only).
struct workload {
  std::function<void()> run;
  double flops = 0;
  std::function<double()> error = {};
  /// Tokens one run processes (0: N; a decoding step processes 1).
  double tokens = 0;
};

/// What a configuration is: sequence length, head width and (for random features) m.
struct config {
  index n = 1024;
  index d = 64;
  index m = 256;
};

/// A kernel the harness knows by name.
struct kernel_info {
  std::string name;
  std::string description;
  /// Bytes the kernel needs beyond inputs and outputs, as a function of N (for skipping configs
  /// that cannot fit; the harness measures the real peak).
  std::function<double(const config&)> extra_bytes;
  std::function<workload(const config&)> make;
  bool quadratic = false;
  /// Longest N the quick sweep runs this kernel at (keeps the quick mode near a minute).
  index quick_max_n = 16384;
  /// The kernel whose GFLOP/s at the same N is this one's ceiling ("" if none).
  std::string ceiling;
};

/// Longest N the full run (the sweep's --full, PERFORMER_BENCH_FULL=1) takes a kernel to:
/// 65,536 for quadratic ones, 1,048,576 for linear ones, but 16,384 for a whole block (eight
/// heads and a 2,048-wide feed-forward: at 65,536 the tiled block alone would take about 12
/// minutes, and the FAVOR+ block as long at 1M) and for the materialized softmax (N x N floats:
/// 16 GiB at 65,536).
inline index full_max_n(const kernel_info& k) {
  if (k.name.rfind("block", 0) == 0 || k.name == "softmax") return 16384;
  return k.quadratic ? 65536 : 1048576;
}

/// Queries and keys are uniform in [-s, s]^d with s = qk_scale (values in [-1, 1]^d). The
/// scale sets the regime: random-feature variance grows like exp(|q~ + k~|^2) with
/// q~ = d^(-1/4) q, so s = 1 (|q~|^2 = d^(1/2) / 3, 2.7 at d = 64) is a hard case for FAVOR and
/// s = 0.5 a benign one. The default is 0.5; the sweep sets it from --qk-scale before building a workload.
inline double qk_scale = 0.5;

/// Q, K, V and the output of one head, owned together. The output is written once here, so
/// that its pages are resident before the harness takes its baseline (else the first run would
/// count the output's N x d as the kernel's own memory).
struct head_buffers {
  row_matrix<T> q, k, v, out;
  head_buffers(index n, index d)
      : q(conformance::random_matrix<T>(n, d, 1, qk_scale)),
        k(conformance::random_matrix<T>(n, d, 2, qk_scale)),
        v(conformance::random_matrix<T>(n, d, 3)),
        out(row_matrix<T>::Zero(n, d)) {}
};

/// Relative Frobenius error of `out` against exact softmax attention evaluated in double, on
/// `samples` evenly spaced rows (O(samples N d): cheap next to the run at large N).
inline double sampled_error(const head_buffers& b, bool causal, index samples = 64) {
  const index n = b.q.rows();
  const index rows = std::min(samples, n);
  const row_matrix<double> k = b.k.cast<double>();
  const row_matrix<double> v = b.v.cast<double>();
  const double scale = 1.0 / std::sqrt(static_cast<double>(b.q.cols()));
  double err2 = 0;
  double ref2 = 0;
  for (index s = 0; s < rows; ++s) {
    const index i = (2 * s + 1) * n / (2 * rows);
    const index visible = causal ? i + 1 : n;
    const row_vector<double> q = b.q.row(i).cast<double>();
    row_vector<double> logits = (q * k.topRows(visible).transpose()) * scale;
    logits.array() = (logits.array() - logits.maxCoeff()).exp();
    const row_vector<double> exact = (logits * v.topRows(visible)) / logits.sum();
    err2 += (b.out.row(i).cast<double>() - exact).squaredNorm();
    ref2 += exact.squaredNorm();
  }
  return std::sqrt(err2 / ref2);
}

/// Any attention mechanism on one head: 4 N^2 d flops for the exact ones. Approximate
/// mechanisms also report their sampled error against exact attention.
template <attention_mechanism A>
workload attention_workload(A mechanism, index n, index d, bool causal, double flops,
                            bool approximate = false) {
  auto buffers = std::make_shared<head_buffers>(n, d);
  auto ws = std::make_shared<typename A::workspace_type>();
  auto mech = std::make_shared<A>(std::move(mechanism));
  workload w{[buffers, ws, mech, causal] {
               mech->forward(buffers->q, buffers->k, buffers->v, buffers->out,
                             attention_mask{causal, {}}, *ws);
             },
             flops};
  if (approximate) w.error = [buffers, causal] { return sampled_error(*buffers, causal); };
  return w;
}

/// One step of exact decoding with a key/value cache: the newest query against all N cached
/// keys and values (4 N d flops).
inline workload kv_cache_step(index n, index d) {
  auto buffers = std::make_shared<head_buffers>(n, d);
  auto ws = std::make_shared<softmax_attention<T>::workspace_type>();
  auto out = std::make_shared<row_matrix<T>>(row_matrix<T>::Zero(1, d));
  return {[buffers, ws, out, n] {
            softmax_attention<T>{}.forward(buffers->q.row(n - 1), buffers->k, buffers->v, *out,
                                           {}, *ws);
          },
          4.0 * static_cast<double>(n) * static_cast<double>(d), {}, 1.0};
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

/// An encoder of `layers` transformer blocks (d_model 512, 8 heads, pre-LN, GELU) around
/// mechanism A, over a synthetic protein: residues drawn uniformly from 21 letters and looked up
/// in a seeded 21 x 512 embedding table at setup (the lookup is not timed; it is O(N d_model)).
template <attention_mechanism A>
workload encoder_workload(A mechanism, index n, index layers) {
  constexpr index d_model = 512;
  constexpr index alphabet = 21;
  auto stack = std::make_shared<transformer_stack<A>>(
      block_config{.d_model = d_model, .heads = 8}, layers, std::move(mechanism), 1);
  const row_matrix<T> table = conformance::random_matrix<T>(alphabet, d_model, 4);
  auto x = std::make_shared<row_matrix<T>>(n, d_model);
  detail::xoshiro256ss rng(5);
  for (index i = 0; i < n; ++i) {
    x->row(i) = table.row(std::min<index>(static_cast<index>(rng.uniform() * alphabet), alphabet - 1));
  }
  auto y = std::make_shared<row_matrix<T>>(row_matrix<T>::Zero(n, d_model));
  auto ws = std::make_shared<typename transformer_stack<A>::workspace_type>();
  return {[stack, x, y, ws] { stack->forward(*x, *y, {}, *ws); }, 0.0};
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
          0.0, {}, 1.0};
}

inline double sq(index n) { return static_cast<double>(n) * static_cast<double>(n); }

/// Reads a "Vm...:  <n> kB" line of /proc/self/status, in bytes (0 where there is none).
inline double proc_status_bytes(const std::string& key) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(key + ":", 0) == 0) {
      std::istringstream fields(line.substr(key.size() + 1));
      double kb = 0;
      fields >> kb;
      return kb * 1024.0;
    }
  }
  return 0;
}

/// Runs `work` once and returns the growth of the process's peak resident size over its
/// resident size before the run: the memory the run needed beyond what was already there (its
/// inputs and outputs). Resets the peak first (Linux >= 4.0, /proc/self/clear_refs).
inline double peak_extra_bytes(const workload& work) {
  const double base = proc_status_bytes("VmRSS");
  {
    std::ofstream clear("/proc/self/clear_refs");
    clear << "5";
  }
  work.run();
  return std::max(0.0, proc_status_bytes("VmHWM") - base);
}

/// Every kernel the harness can run, in display order.
inline std::vector<kernel_info> all_kernels() {
  const auto exact_flops = [](const config& c) { return 4.0 * sq(c.n) * static_cast<double>(c.d); };
  const auto tile_bytes = [](const config&) { return 256.0 * 512.0 * sizeof(T); };
  // Per thread: B x M features for queries and keys, an M x d state (B = 256, 2 threads).
  const auto favor_bytes = [](const config& c) {
    const double m = static_cast<double>(c.m);
    return 2.0 * (2.0 * 256.0 * m + 3.0 * m * static_cast<double>(c.d)) * sizeof(T);
  };
  const auto lsh_flops = [](const config& c) {
    return 8.0 * static_cast<double>(c.n) * 64.0 * static_cast<double>(c.d) * 4.0;
  };
  // Per round and token: bucket, position and sort keys, plus the per-query round results.
  const auto lsh_bytes = [](const config& c) {
    return 4.0 * static_cast<double>(c.n) * (64.0 + 2.0 * static_cast<double>(c.d) * sizeof(T));
  };
  const auto block_bytes = [](const config& c) { return 6.0 * static_cast<double>(c.n) * 512.0 * sizeof(T); };
  // Flops of the products: 8 N m d for m features; the doubled maps (M = 2m) project m times
  // but carry 2m features (12 N m d); elu + 1 does not project and carries d features (4 N d^2).
  const auto favor_kernel = []<class Map>(Map, bool causal, double flop_factor = 1.0) {
    return [causal, flop_factor](const config& c) {
      const double flops = flop_factor > 0 ? flop_factor * favor_flops(c.n, c.d, c.m)
                                           : 4.0 * static_cast<double>(c.n) * sq(c.d);
      return attention_workload(favor_attention<T, Map>(c.d, c.m, 1), c.n, c.d, causal, flops,
                                true);
    };
  };
  return {
      {"gemm", "Eigen GEMM on the tiled kernel's shapes (the ceiling)", tile_bytes,
       [](const config& c) { return gemm_ceiling(c.n, c.d); }, true, 16384, ""},
      {"softmax", "exact softmax, materialized N x N",
       [](const config& c) { return sq(c.n) * sizeof(T); },
       [exact_flops](const config& c) {
         return attention_workload(softmax_attention<T>{}, c.n, c.d, false, exact_flops(c));
       },
       true, 16384, "gemm"},
      {"tiled", "exact softmax, tiled online softmax", tile_bytes,
       [exact_flops](const config& c) {
         return attention_workload(tiled_softmax_attention<T>{}, c.n, c.d, false, exact_flops(c));
       },
       true, 16384, "gemm"},
      {"tiled_causal", "exact softmax, tiled, causal", tile_bytes,
       [exact_flops](const config& c) {
         return attention_workload(tiled_softmax_attention<T>{}, c.n, c.d, true, exact_flops(c) / 2);
       },
       true, 16384, "gemm"},
      {"favor_gemm", "FAVOR's four products alone (the FAVOR ceiling)", favor_bytes,
       [](const config& c) { return favor_gemm_ceiling(c.n, c.d, c.m); }, false, 65536, ""},
      {"favor", "FAVOR+ (positive features, orthogonal), bidirectional", favor_bytes,
       favor_kernel(positive_features<T>{}, false), false, 65536, "favor_gemm"},
      {"favor_causal", "FAVOR+, causal (chunked prefix sums)", favor_bytes,
       favor_kernel(positive_features<T>{}, true), false, 65536, "favor_gemm"},
      {"favor_hyp", "hyperbolic features (M = 2m), bidirectional", favor_bytes,
       favor_kernel(hyperbolic_features<T>{}, false, 1.5), false, 16384, ""},
      {"favor_hyp_causal", "hyperbolic features (M = 2m), causal", favor_bytes,
       favor_kernel(hyperbolic_features<T>{}, true, 1.5), false, 16384, ""},
      {"favor_trig", "trigonometric features (M = 2m), bidirectional", favor_bytes,
       favor_kernel(trigonometric_features<T>{}, false, 1.5), false, 16384, ""},
      {"favor_trig_causal", "trigonometric features (M = 2m), causal", favor_bytes,
       favor_kernel(trigonometric_features<T>{}, true, 1.5), false, 16384, ""},
      {"favor_pp", "FAVOR++ (calibrated per call), bidirectional", favor_bytes,
       favor_kernel(favor_plus_plus_features<T>{}, false), false, 16384, "favor_gemm"},
      {"favor_pp_causal", "FAVOR++ (A fixed at 0 until calibrated), causal", favor_bytes,
       favor_kernel(favor_plus_plus_features<T>{}, true), false, 16384, "favor_gemm"},
      {"favor_relu", "Performer-ReLU features, bidirectional (a different kernel)", favor_bytes,
       favor_kernel(relu_features<T>{}, false), false, 16384, "favor_gemm"},
      {"favor_relu_causal", "Performer-ReLU features, causal (a different kernel)", favor_bytes,
       favor_kernel(relu_features<T>{}, true), false, 16384, "favor_gemm"},
      // elu + 1 has no projection: M = d features whatever m is (the linear transformer).
      {"favor_elu", "elu + 1 features (linear transformer, M = d), bidirectional", favor_bytes,
       favor_kernel(elu_features<T>{}, false, 0.0), false, 16384, ""},
      {"favor_elu_causal", "elu + 1 features (linear transformer, M = d), causal", favor_bytes,
       favor_kernel(elu_features<T>{}, true, 0.0), false, 16384, ""},
      // LSH, 4 rounds, 32 buckets, chunks of 64 (each query sees up to 2 x 64 keys per round):
      // 8 N c d h flops for the logits and the weighted values of its windows.
      {"lsh", "Reformer LSH, shared-QK (4 hashes, 32 buckets, chunk 64)", lsh_bytes,
       [lsh_flops](const config& c) {
         return attention_workload(lsh_attention<T>(c.d, {}), c.n, c.d, false, lsh_flops(c));
       },
       false, 65536, ""},
      {"lsh_causal", "Reformer LSH, shared-QK, causal", lsh_bytes,
       [lsh_flops](const config& c) {
         return attention_workload(lsh_attention<T>(c.d, {}), c.n, c.d, true, lsh_flops(c) / 2);
       },
       false, 65536, ""},
      // Separate queries and keys approximate the same attention as the others, so the error
      // against exact attention is meaningful (shared-QK is a different model).
      {"lsh_qk", "LSH with separate Q and K hashed alike (4 hashes, 32 buckets, chunk 64)",
       lsh_bytes,
       [lsh_flops](const config& c) {
         return attention_workload(lsh_attention<T>(c.d, {.shared_qk = false}), c.n, c.d, false,
                                   lsh_flops(c), true);
       },
       false, 65536, ""},
      {"decode_step", "one FAVOR+ recurrent decoding step at context N",
       [](const config& c) { return 2.0 * static_cast<double>(c.m * c.d) * sizeof(T); },
       [](const config& c) { return decode_workload<positive_features<T>>(c.n, c.d, c.m); },
       false, 65536, ""},
      {"kv_step", "one exact decoding step with a key/value cache of N tokens",
       [](const config& c) { return static_cast<double>(c.n) * sizeof(T); },
       [](const config& c) { return kv_cache_step(c.n, c.d); }, false, 65536, ""},
      {"block_tiled", "one transformer block (d_model 512, 8 heads), tiled exact attention",
       block_bytes,
       [](const config& c) { return encoder_workload(tiled_softmax_attention<T>{}, c.n, 1); },
       true, 4096, ""},
      {"block_favor", "one transformer block (d_model 512, 8 heads), FAVOR+ attention",
       block_bytes,
       [](const config& c) { return encoder_workload(favor_attention<T>(64, c.m, 1), c.n, 1); },
       false, 4096, ""},
      // The protein demonstration (--protein): a 2-layer encoder, materialized exact attention
      // (what a standard Transformer does, one head at a time) against FAVOR+.
      {"protein_exact", "protein encoder, 2 blocks, materialized exact softmax",
       [block_bytes](const config& c) { return sq(c.n) * sizeof(T) + block_bytes(c); },
       [](const config& c) { return encoder_workload(softmax_attention<T>{}, c.n, 2); }, true,
       4096, ""},
      {"protein_favor", "protein encoder, 2 blocks, FAVOR+", block_bytes,
       [](const config& c) { return encoder_workload(favor_attention<T>(64, c.m, 1), c.n, 2); },
       false, 4096, ""},
  };
}

}  // namespace performer::bench
