// Every kernel the benchmarks know, by name: the library's mechanisms from its registry
// (include/performer/testing/registry.hpp), each bidirectional and, where it supports it,
// causal (name + "_causal"), so that a mechanism added to the registry is benchmarked without
// touching this file; plus the workloads that are not one mechanism on one head (the GEMM
// ceilings run as kernels, decoding steps, transformer blocks, the protein encoder).
// kernels.cpp builds the list, once for both programs that use it (bench_attention and
// performer_sweep): it instantiates every mechanism at -O3, the costliest file to compile here.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "workloads.hpp"

namespace performer::bench {

/// A kernel the harness knows by name.
struct kernel_info {
  std::string name;
  std::string description;
  /// The chart it is drawn in: "softmax", "favor", "lsh", "other" (decoding, blocks) or
  /// "protein".
  std::string family;
  /// Bytes the kernel needs beyond inputs and outputs, as a function of the configuration (for
  /// skipping configurations that cannot fit; the harness measures the real peak).
  std::function<double(const config&)> extra_bytes;
  std::function<workload(const config&)> make;
  /// Whether m (random features) changes the work: the sweep runs the others once per N.
  bool uses_m = false;
  /// Quadratic time in N (the full run stops earlier).
  bool quadratic = false;
  /// Longest N the quick sweep runs it at, and the full run (--full, PERFORMER_BENCH_FULL=1).
  index_t quick_max_n = 16384;
  index_t full_max_n = 1048576;
};

/// Every kernel the harness can run, in display order: a ceiling kernel before its family.
std::vector<kernel_info> all_kernels();

}  // namespace performer::bench
