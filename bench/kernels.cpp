// The list of kernels (kernels.hpp), and the workloads that time one mechanism on one head.
#include "kernels.hpp"

#include <map>
#include <memory>

#include <performer/testing/registry.hpp>

#include "ceilings.hpp"

namespace performer::bench {
namespace {

/// Flops of one call of a mechanism with a ceiling: its ceiling's, counted, since the ceiling
/// is the kernel's own products.
template <class A>
double kernel_flops(const A& a, const std::shared_ptr<const head_buffers>& b, bool causal,
                    typename A::workspace_type& ws) {
  return counted_flops(ceiling_for(a, b, causal, ws));
}

/// LSH: 2 (d + d_v) flops per (query, key) logit the last forward computed, as it reports them.
template <class Hash>
double kernel_flops(const lsh_attention<T, Hash>&, const std::shared_ptr<const head_buffers>& b,
                    bool, typename lsh_attention<T, Hash>::workspace_type& ws) {
  return 2.0 * static_cast<double>(b->q.cols() + b->v.cols()) *
         static_cast<double>(ws.attended_pairs);
}

/// What a reader needs to know about the work a call did, beyond N and m.
template <class A>
std::map<std::string, double> work_info(const A& a, index_t, typename A::workspace_type&) {
  if constexpr (requires { a.feature_count(); }) {
    return {{"M", static_cast<double>(a.feature_count())}};
  } else {
    return {};
  }
}

template <class Hash>
std::map<std::string, double> work_info(const lsh_attention<T, Hash>& a, index_t n,
                                        typename lsh_attention<T, Hash>::workspace_type& ws) {
  return {{"buckets", static_cast<double>(a.bucket_count(n))},
          {"window", static_cast<double>(ws.attended_pairs) / static_cast<double>(n) /
                         static_cast<double>(a.options().hashes)}};
}

/// Mechanism A on one head of n tokens. Its flops and ceiling come from bench/ceilings.hpp
/// when it has one (a mechanism without is timed, with "-" for GFLOP/s and the ceiling).
template <attention_mechanism A>
workload attention_workload(A mechanism, index_t n, index_t d, bool causal, bool with_error) {
  auto buffers = std::make_shared<head_buffers>(n, d);
  auto ws = std::make_shared<typename A::workspace_type>();
  auto mech = std::make_shared<const A>(std::move(mechanism));
  workload w;
  w.run = [buffers, ws, mech, causal] {
    mech->forward(buffers->q, buffers->k, buffers->v, buffers->out, attention_mask{causal, {}},
                  *ws);
  };
  std::shared_ptr<const head_buffers> in = buffers;
  if constexpr (requires { ceiling_for(*mech, in, causal, *ws); }) {
    w.flops = [in, ws, mech, causal] { return kernel_flops(*mech, in, causal, *ws); };
    w.ceiling = [in, ws, mech, causal] {
      return ceiling_workload(ceiling_for(*mech, in, causal, *ws));
    };
  }
  w.info = [ws, mech, n] { return work_info(*mech, n, *ws); };
  if (with_error) w.error = [buffers, causal] { return sampled_error(*buffers, causal); };
  return w;
}

/// One step of exact decoding with a key/value cache: the newest query against all N cached
/// keys and values. Its ceiling is the two matrix-vector products alone.
workload kv_cache_step(index_t n, index_t d) {
  auto buffers = std::make_shared<head_buffers>(n, d);
  auto ws = std::make_shared<softmax_attention<T>::workspace_type>();
  auto out = std::make_shared<row_matrix<T>>(row_matrix<T>::Zero(1, d));
  auto products = [buffers, n] {
    auto c = std::make_shared<materialized_products>();
    c->b = buffers;
    c->q0 = n - 1;
    c->n_q = 1;
    return c;
  };
  workload w;
  w.run = [buffers, ws, out, n] {
    softmax_attention<T>{}.forward(buffers->q.row(n - 1), buffers->k, buffers->v, *out, {}, *ws);
  };
  w.flops = [products] { return counted_flops(products()); };
  w.ceiling = [products] { return ceiling_workload(products()); };
  w.tokens = 1.0;
  return w;
}

double sq(index_t n) { return static_cast<double>(n) * static_cast<double>(n); }

/// What the registry's names are, for --list (an entry missing here is listed by its family).
std::string describe(const std::string& name, const std::string& family) {
  static const std::map<std::string, std::string> known = {
      {"softmax", "exact softmax, materialized N x N"},
      {"tiled", "exact softmax, tiled online softmax (O(N) memory)"},
      {"favor", "FAVOR+ (positive features, orthogonal), M = m"},
      {"favor_hyp", "FAVOR, hyperbolic features, M = 2m"},
      {"favor_trig", "FAVOR, trigonometric features, M = 2m"},
      {"favor_relu", "Performer-ReLU features (a different kernel), M = m"},
      {"favor_elu", "elu + 1 features (linear transformer), M = d, no projection"},
      {"favor_pp", "FAVOR++ (calibrated per call when bidirectional), M = m"},
      {"lsh", "Reformer LSH, shared-QK (4 hashes, buckets ~2N/64, chunk 64)"},
      {"lsh_qk", "Reformer LSH, separate Q and K hashed alike"},
  };
  const auto it = known.find(name);
  return it == known.end() ? "registry entry, " + family + " family" : it->second;
}

}  // namespace

std::vector<kernel_info> all_kernels() {
  const auto tile_bytes = [](const config&) { return 256.0 * 512.0 * sizeof(T); };
  // Per thread (2): B x M features for queries and keys (M <= 2m), M x d states.
  const auto favor_bytes = [](const config& c) {
    const double features = 2.0 * static_cast<double>(std::max(c.m, c.d));
    return 2.0 * (2.0 * 256.0 * features + 3.0 * features * static_cast<double>(c.d)) * sizeof(T);
  };
  // Per round (4) and token: bucket, position and sort keys, and the per-query round results.
  const auto lsh_bytes = [](const config& c) {
    return 4.0 * static_cast<double>(c.n) * (64.0 + 2.0 * static_cast<double>(c.d) * sizeof(T));
  };
  const auto block_bytes = [](const config& c) {
    return 6.0 * static_cast<double>(c.n) * 512.0 * sizeof(T);
  };
  std::vector<kernel_info> kernels;
  bool gemm_listed = false;
  bool favor_gemm_listed = false;
  registry::for_each_mechanism([&]<class E>(E) {
    using A = typename E::template type<T>;
    if (E::kind == registry::family::softmax && !gemm_listed) {
      gemm_listed = true;
      kernels.push_back(
          {"gemm", "the tiled kernel's matrix products alone (its ceiling)", "softmax", tile_bytes,
           [](const config& c) {
             return ceiling_workload(ceiling_for(tiled_softmax_attention<T>{},
                                                 std::make_shared<const head_buffers>(c.n, c.d),
                                                 false, {}));
           },
           false, true, 16384, 65536});
    }
    if (E::kind == registry::family::favor && !favor_gemm_listed) {
      favor_gemm_listed = true;
      kernels.push_back(
          {"favor_gemm", "FAVOR+'s matrix products alone (its ceiling)", "favor", favor_bytes,
           [](const config& c) {
             return ceiling_workload(ceiling_for(favor_attention<T>(c.d, c.m, 1),
                                                 std::make_shared<const head_buffers>(c.n, c.d),
                                                 false, {}));
           },
           true, false, 16384, 1048576});
    }
    const std::string family = E::kind == registry::family::softmax ? "softmax"
                               : E::kind == registry::family::favor ? "favor"
                                                                    : "lsh";
    bool uses_m = false;
    if constexpr (requires { A::feature_map_type::uses_projection; }) {
      uses_m = A::feature_map_type::uses_projection;
    }
    const bool quadratic = E::kind == registry::family::softmax;
    const bool materialized = E::quadratic_memory;
    // Shared-QK attends with keys q / |q|: a different model from exact attention on (q, k),
    // so its error against that would mean nothing.
    bool with_error = E::approximate;
    if constexpr (requires { E::shared_qk; }) with_error = with_error && !E::shared_qk;
    const auto bytes = [=](const config& c) {
      if (materialized) return sq(c.n) * sizeof(T);
      if (quadratic) return tile_bytes(c);
      return E::kind == registry::family::lsh ? lsh_bytes(c) : favor_bytes(c);
    };
    const auto add = [&](bool causal) {
      kernels.push_back({std::string(E::name) + (causal ? "_causal" : ""),
                         describe(std::string(E::name), family) + (causal ? ", causal" : ""),
                         family, bytes,
                         [causal, with_error](const config& c) {
                           return attention_workload(E::template make<T>(c.d, c.m, 1), c.n, c.d,
                                                     causal, with_error);
                         },
                         // A causal materialized pass does the bidirectional one's products:
                         // the quick sweep stops it at 4,096 (about 9 s at 16,384).
                         uses_m, quadratic, materialized && causal ? 4096 : 16384,
                         materialized ? 16384
                         : quadratic  ? 65536
                                      : 1048576});
    };
    add(false);
    if constexpr (A::supports_causal) add(true);
  });
  const index_t linear = 1048576;
  // Not a registry entry: the registry's suites compare bits across builds and machines, and
  // the bfloat16 mechanism's bits depend on the backend the CPU runs (AMX has its own).
  kernels.push_back(
      {"favor_bf16",
       "FAVOR+ with bfloat16 products (" +
           std::string(bf16_name(bf16_resolve(bf16_backend::automatic))) + " backend), M = m",
       "favor", favor_bytes,
       [](const config& c) {
         auto w = attention_workload(favor_bf16_attention<>(c.d, c.m, 1), c.n, c.d, false, true);
         // FAVOR+'s products, in bfloat16: 2 N m (2 d + 2 d_v + 1) flops (d_v = d), so that its
         // GFLOP/s and % peak (of the fp32 peak) compare with favor's.
         w.flops = [c] {
           return 2.0 * static_cast<double>(c.n) * static_cast<double>(c.m) *
                  (4.0 * static_cast<double>(c.d) + 1.0);
         };
         return w;
       },
       true, false, 16384, linear});
  kernels.push_back(
      {"decode_step", "one FAVOR+ recurrent decoding step at context N", "other",
       [](const config& c) { return 2.0 * static_cast<double>(c.m * c.d) * sizeof(T); },
       [](const config& c) { return decode_workload<positive_features<T>>(c.n, c.d, c.m); }, true,
       false, 16384, linear});
  kernels.push_back({"kv_step", "one exact decoding step with a key/value cache of N tokens",
                     "other", [](const config& c) { return static_cast<double>(c.n) * sizeof(T); },
                     [](const config& c) { return kv_cache_step(c.n, c.d); }, false, false, 16384,
                     linear});
  // Eight heads and a 2,048-wide feed-forward: at 65,536 the tiled block alone would take
  // minutes, so blocks stop at 4,096 (quick) and 16,384 (full).
  kernels.push_back(
      {"block_tiled", "one transformer block (d_model 512, 8 heads), tiled exact", "other",
       block_bytes,
       [](const config& c) { return encoder_workload(tiled_softmax_attention<T>{}, c.n, 1); },
       false, true, 4096, 16384});
  kernels.push_back(
      {"block_favor", "one transformer block (d_model 512, 8 heads), FAVOR+", "other", block_bytes,
       [](const config& c) { return encoder_workload(favor_attention<T>(64, c.m, 1), c.n, 1); },
       true, false, 4096, 16384});
  // The protein demonstration (--protein): a 2-block encoder with materialized exact attention
  // (what a standard Transformer does, one head at a time), tiled exact attention (the
  // library's O(N)-memory exact path) and FAVOR+.
  kernels.push_back(
      {"protein_exact", "protein encoder, 2 blocks, materialized exact softmax", "protein",
       [block_bytes](const config& c) { return sq(c.n) * sizeof(T) + block_bytes(c); },
       [](const config& c) { return encoder_workload(softmax_attention<T>{}, c.n, 2); }, false,
       true, 4096, 65536});
  kernels.push_back(
      {"protein_tiled", "protein encoder, 2 blocks, tiled exact softmax", "protein", block_bytes,
       [](const config& c) { return encoder_workload(tiled_softmax_attention<T>{}, c.n, 2); },
       false, true, 4096, 65536});
  kernels.push_back(
      {"protein_favor", "protein encoder, 2 blocks, FAVOR+", "protein", block_bytes,
       [](const config& c) { return encoder_workload(favor_attention<T>(64, c.m, 1), c.n, 2); },
       true, false, 4096, linear});
  kernels.push_back(
      {"protein_favor_bf16", "protein encoder, 2 blocks, FAVOR+ with bfloat16 products", "protein",
       block_bytes,
       [](const config& c) { return encoder_workload(favor_bf16_attention<>(64, c.m, 1), c.n, 2); },
       true, false, 4096, linear});
  return kernels;
}

}  // namespace performer::bench
