// What the benchmarks time: a workload prepares its inputs once and runs one call per `run()`;
// shared by the sweep (bench/sweep.cpp) and the Google Benchmark suite (bench_attention.cpp).
// The matrix-product ceilings the kernels are reported against are in bench/ceilings.hpp.
#pragma once

#include <algorithm>
#include <cmath>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <utility>

#include <performer/performer.hpp>
#include <performer/testing/counting_allocator.hpp>
#include <performer/testing/helpers.hpp>

namespace performer::bench {

using T = float;

/// The counting allocator's counters (include/performer/testing/counting_allocator.hpp).
namespace counting = ::performer::counting;

/// One timed workload.
struct workload {
  std::function<void()> run;
  /// Flops (2 per multiply-add) of one call's matrix products, read after a call: LSH's
  /// depend on the windows it attended. 0: not counted (the table prints "-").
  std::function<double()> flops = [] { return 0.0; };
  /// Relative error of the output against exact softmax attention in double, on sampled rows;
  /// called after a call (approximate kernels only).
  std::function<double()> error = {};
  /// The same matrix products on the same shapes, alone (bench/ceilings.hpp); built after a
  /// call, since LSH's shapes are the windows that call attended. Empty: no ceiling.
  std::function<workload()> ceiling = {};
  /// Facts about the work done, read after a call (LSH: buckets and mean window).
  std::function<std::map<std::string, double>()> info = {};
  /// Tokens one call processes (0: N; a decoding step processes 1).
  double tokens = 0;
};

/// What a configuration is: sequence length, head width and (for random features) m.
struct config {
  index_t n = 1024;
  index_t d = 64;
  index_t m = 256;
};

/// Queries and keys are uniform in [-s, s]^d with s = qk_scale (values in [-1, 1]^d). The
/// scale sets the regime: random-feature variance grows like exp(|q~ + k~|^2) with
/// q~ = d^(-1/4) q, so s = 1 (|q~|^2 = d^(1/2) / 3, 2.7 at d = 64) is a hard case for FAVOR and
/// s = 0.5 a benign one. The sweep sets it from --qk-scale before building a workload.
inline double qk_scale = 0.5;

/// Q, K, V and the output of one head, owned together and allocated before any measured call,
/// so that the memory figure is the kernel's own. The output is written once here so that its
/// pages are resident before a resident-set baseline is taken (the fallback measurement).
struct head_buffers {
  row_matrix<T> q, k, v, out;
  head_buffers(index_t n, index_t d)
      : q(conformance::random_matrix<T>(n, d, 1, qk_scale)),
        k(conformance::random_matrix<T>(n, d, 2, qk_scale)),
        v(conformance::random_matrix<T>(n, d, 3)),
        out(row_matrix<T>::Zero(n, d)) {}
};

/// Relative Frobenius error of `out` against exact softmax attention evaluated in double, on
/// `samples` evenly spaced rows (O(samples N d): cheap next to the run at large N).
inline double sampled_error(const head_buffers& b, bool causal, index_t samples = 64) {
  const index_t n = b.q.rows();
  const index_t rows = std::min(samples, n);
  const row_matrix<double> k = b.k.cast<double>();
  const row_matrix<double> v = b.v.cast<double>();
  const double scale = 1.0 / std::sqrt(static_cast<double>(b.q.cols()));
  double err2 = 0;
  double ref2 = 0;
  for (index_t s = 0; s < rows; ++s) {
    const index_t i = (2 * s + 1) * n / (2 * rows);
    const index_t visible = causal ? i + 1 : n;
    const row_vector<double> q = b.q.row(i).cast<double>();
    row_vector<double> logits = (q * k.topRows(visible).transpose()) * scale;
    logits.array() = (logits.array() - logits.maxCoeff()).exp();
    const row_vector<double> exact = (logits * v.topRows(visible)) / logits.sum();
    err2 += (b.out.row(i).cast<double>() - exact).squaredNorm();
    ref2 += exact.squaredNorm();
  }
  return std::sqrt(err2 / ref2);
}

// ---- Memory ---------------------------------------------------------------------------------

/// True when heap bytes are being counted: the build allows it and the executable defines the
/// counting allocator (one translation unit with PERFORMER_DEFINE_COUNTING_ALLOCATOR). Without
/// the definition nothing is ever counted, and the inputs, allocated before any measurement,
/// show that.
inline bool counting_memory() {
  return counting::available && counting::allocations.load(std::memory_order_relaxed) > 0;
}

/// How the memory figures were measured, for the output.
inline const char* memory_method() {
  return counting_memory() ? "counting allocator"
                           : "resident-set growth (counting allocator unavailable: noise floor "
                             "of several MiB)";
}

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

/// Runs `work` once (its first call, which sizes its workspace) and returns the peak of the
/// bytes it held beyond what was already allocated (its inputs and outputs): heap bytes from
/// the counting allocator, or, where that is unavailable (sanitizers), the growth of the peak
/// resident size (Linux >= 4.0 resets the peak through /proc/self/clear_refs).
inline double first_call_peak_bytes(const workload& work) {
  if (counting_memory()) {
    return static_cast<double>(counting::peak_during([&] { work.run(); }));
  }
  const double base = proc_status_bytes("VmRSS");
  {
    std::ofstream clear("/proc/self/clear_refs");
    clear << "5";
  }
  work.run();
  return std::max(0.0, proc_status_bytes("VmHWM") - base);
}

// ---- Workloads that are not one attention head ----------------------------------------------

/// One recurrent decoding step after a context of n - 1 tokens.
template <class Map>
workload decode_workload(index_t n, index_t d, index_t m) {
  const favor_attention<T, Map> favor(d, m, 1);
  auto decoder = std::make_shared<favor_decoder<T, Map>>(favor, d);
  auto buffers = std::make_shared<head_buffers>(n, d);
  decoder->prime(buffers->k.topRows(n - 1), buffers->v.topRows(n - 1));
  auto out = std::make_shared<row_vector<T>>(d);
  workload w;
  w.run = [decoder, buffers, out, n] {
    decoder->step(buffers->q.row(n - 1), buffers->k.row(n - 1), buffers->v.row(n - 1), *out);
  };
  w.tokens = 1.0;
  return w;
}

/// An encoder of `layers` transformer blocks (d_model 512, 8 heads, pre-LN, GELU) around
/// mechanism A, over a synthetic protein: residues drawn uniformly from 21 letters and looked up
/// in a seeded 21 x 512 embedding table at setup (the lookup is not timed; it is O(N d_model)).
template <attention_mechanism A>
workload encoder_workload(A mechanism, index_t n, index_t layers) {
  constexpr index_t d_model = 512;
  constexpr index_t alphabet = 21;
  auto stack = std::make_shared<transformer_stack<A>>(block_config{.d_model = d_model, .heads = 8},
                                                      layers, std::move(mechanism), 1);
  const row_matrix<T> table = conformance::random_matrix<T>(alphabet, d_model, 4);
  auto x = std::make_shared<row_matrix<T>>(n, d_model);
  detail::xoshiro256ss rng(5);
  for (index_t i = 0; i < n; ++i) {
    x->row(i) =
        table.row(std::min<index_t>(static_cast<index_t>(rng.uniform() * alphabet), alphabet - 1));
  }
  auto y = std::make_shared<row_matrix<T>>(row_matrix<T>::Zero(n, d_model));
  auto ws = std::make_shared<typename transformer_stack<A>::workspace_type>();
  workload w;
  w.run = [stack, x, y, ws] { stack->forward(*x, *y, {}, *ws); };
  return w;
}

}  // namespace performer::bench
