// bfloat16 products against float ones (core/detail/bf16_product.hpp): the four products of a
// FAVOR+ bidirectional pass at N = 16,384, d = d_v = 64, m = 256, each timed as Eigen's float
// product and as the bfloat16 product on the portable and the AVX512-BF16 backends (the latter
// reported as skipped, with the reason, on a CPU without it), and the instruction rates of
// float FMA, VDPBF16PS and TDPBF16PS. Counters: "GFLOP/s" (2 rows depth cols per product),
// "bits_unlike_portable" (the share of a product's outputs whose bits differ from the portable
// backend's). One thread: the products themselves, not their parallel split.
//   bench_bf16 --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdint>
#include <iterator>
#include <numeric>
#include <string>
#include <vector>

#include <performer/core/bfloat16.hpp>
#include <performer/core/detail/bf16_product.hpp>
#include <performer/core/types.hpp>

namespace {

using performer::bf16_backend;
using performer::index_t;
using performer::row_matrix;
namespace bf16 = performer::detail::bf16;

constexpr index_t tokens = 16384, width = 64, features = 256;

// The products of one bidirectional pass: the projection X W^T, the key state [V 1]^T phi(K)
// (the values and z, transposed, so that both operands hold pairs of tokens) and the output
// phi(Q) [S z].
struct shape {
  const char* name;
  index_t rows, depth, cols;
};
// Then a product whose operands stay in L2 (96 x 1,024 by 1,024 x 64: 192 KiB and 128 KiB of
// bfloat16), the nearest the kernels come to their instruction rates below.
const shape shapes[] = {{"projection_x_wt", tokens, width, features},
                        {"key_state_vt_phi", width + 1, tokens, features},
                        {"output_phi_s", tokens, features, width + 1},
                        {"l2_resident", 96, 1024, 64}};

row_matrix<float> random(index_t rows, index_t cols, unsigned seed) {
  std::srand(seed);
  return row_matrix<float>::Random(rows, cols);
}

void report(benchmark::State& state, const shape& s) {
  state.counters["GFLOP/s"] = benchmark::Counter(
      2.0 * static_cast<double>(s.rows * s.depth * s.cols),
      benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
}

void eigen_float(benchmark::State& state) {
  Eigen::setNbThreads(1);  // with OpenMP, Eigen would split the product over every core
  const shape& s = shapes[state.range(0)];
  state.SetLabel(s.name);
  const row_matrix<float> a = random(s.rows, s.depth, 1), b = random(s.depth, s.cols, 2);
  row_matrix<float> c = row_matrix<float>::Zero(s.rows, s.cols);
  for (auto _ : state) {
    c.noalias() += a * b;
    benchmark::DoNotOptimize(c.data());
  }
  report(state, s);
}

void bfloat16(benchmark::State& state, bf16_backend backend) {
  const shape& s = shapes[state.range(0)];
  state.SetLabel(s.name);
  if (!performer::bf16_available(backend)) {
    state.SkipWithError("skipped: this CPU or OS does not run this backend");
    return;
  }
  const row_matrix<float> a = random(s.rows, s.depth, 1), b = random(s.depth, s.cols, 2);
  bf16::packed_rhs rhs;
  rhs.assign(s.depth, s.cols, [&](index_t k, index_t j) { return b(k, j); });
  const index_t pairs = (s.depth + 1) / 2;
  std::vector<bf16::pair> lhs(static_cast<std::size_t>(s.rows * pairs));
  for (index_t i = 0; i < s.rows; ++i) {
    for (index_t p = 0; p < pairs; ++p) {
      const float odd = 2 * p + 1 < s.depth ? a(i, 2 * p + 1) : 0.0f;
      lhs[static_cast<std::size_t>(i * pairs + p)] = bf16::pack(a(i, 2 * p), odd);
    }
  }
  const bf16::lhs_view view{lhs.data(), s.rows, pairs, 1};
  row_matrix<float> c = row_matrix<float>::Zero(s.rows, s.cols);
  // Outside the timing: the share of outputs whose bits differ from the portable backend's.
  row_matrix<float> portable = c;
  bf16::product(view, rhs, portable.data(), s.cols, bf16_backend::portable);
  bf16::product(view, rhs, c.data(), s.cols, backend);
  state.counters["bits_unlike_portable"] =
      static_cast<double>((c.array() != portable.array()).count()) / static_cast<double>(c.size());
  for (auto _ : state) {
    bf16::product(view, rhs, c.data(), s.cols, backend);
    benchmark::DoNotOptimize(c.data());
  }
  report(state, s);
}

#ifdef PERFORMER_BF16_X86
// Instruction rates: 12 independent sums, so that latency does not limit the issue rate.
// "GFLOP/s" counts 2 per multiply-add: 32 per float FMA on 16 lanes, 64 per VDPBF16PS (16
// lanes, 2 products each), 16,384 per TDPBF16PS (16 x 16 sums, 32 products each).
constexpr long rate_steps = 1 << 20;

// Not _mm512_reduce_add_ps: in GCC 12 it reaches the -Wuninitialized false positive of GCC bug
// 105593 (cmake/performer_warnings.cmake) in a build whose flags lack AVX-512.
__attribute__((target("avx512f"))) float lane_sum(__m512 x) {
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, x);
  return std::accumulate(std::begin(lanes), std::end(lanes), 0.0f);
}

__attribute__((target("avx512f"), noinline)) float fma_steps(long steps) {
  __m512 sum[12];
  for (auto& s : sum) s = _mm512_setzero_ps();
  __m512 a = _mm512_set1_ps(1.0f);
  for (long k = 0; k < steps; ++k) {
    for (auto& s : sum) s = _mm512_fmadd_ps(a, a, s);
    asm volatile("" : "+v"(a));  // the compiler may not fold the loop
  }
  for (int i = 1; i < 12; ++i) sum[0] = _mm512_add_ps(sum[0], sum[i]);
  return lane_sum(sum[0]);
}

__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"), noinline)) float dpbf16_steps(
    long steps) {
  __m512 sum[12];
  for (auto& s : sum) s = _mm512_setzero_ps();
  auto a = (__m512bh)_mm512_set1_epi32(0x3F803F80);  // the pair (1, 1)
  for (long k = 0; k < steps; ++k) {
    for (auto& s : sum) s = _mm512_dpbf16_ps(s, a, a);
    asm volatile("" : "+v"(a));
  }
  for (int i = 1; i < 12; ++i) sum[0] = _mm512_add_ps(sum[0], sum[i]);
  return lane_sum(sum[0]);
}

__attribute__((target("amx-tile,amx-bf16"), noinline)) float amx_steps(long steps) {
  alignas(64) static std::uint16_t ones[512];
  alignas(64) static float sums[256];
  std::fill(std::begin(ones), std::end(ones), std::uint16_t{0x3F80});
  bf16::tile_config config;
  for (int t = 0; t < 8; ++t) {
    config.bytes_per_row[t] = 64;
    config.rows[t] = 16;
  }
  _tile_loadconfig(&config);
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  _tile_loadd(4, ones, 64);
  _tile_loadd(5, ones, 64);
  _tile_loadd(6, ones, 64);
  _tile_loadd(7, ones, 64);
  for (long k = 0; k < steps; ++k) {
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  _tile_stored(0, sums, 64);
  _tile_release();
  return sums[0];
}

void instruction_rate(benchmark::State& state, bf16_backend backend) {
  // backend portable stands for the float FMA here: the rate float products are held to.
  if (!performer::bf16_available(backend)) {
    state.SkipWithError("skipped: this CPU or OS does not run this backend");
    return;
  }
  double flops_per_step = 0;
  for (auto _ : state) {
    switch (backend) {
      case bf16_backend::amx:
        benchmark::DoNotOptimize(amx_steps(rate_steps / 64));
        flops_per_step = 4.0 * 16384 / 64;
        break;
      case bf16_backend::avx512_bf16:
        benchmark::DoNotOptimize(dpbf16_steps(rate_steps));
        flops_per_step = 12.0 * 64;
        break;
      default:
        benchmark::DoNotOptimize(fma_steps(rate_steps));
        flops_per_step = 12.0 * 32;
    }
  }
  state.counters["GFLOP/s"] =
      benchmark::Counter(flops_per_step * rate_steps, benchmark::Counter::kIsIterationInvariantRate,
                         benchmark::Counter::kIs1000);
}

BENCHMARK_CAPTURE(instruction_rate, float_fma, bf16_backend::portable)
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(instruction_rate, avx512_bf16, bf16_backend::avx512_bf16)
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(instruction_rate, amx, bf16_backend::amx)->Unit(benchmark::kMillisecond);
#endif

void shapes_of(benchmark::internal::Benchmark* b) {
  b->ArgName("shape")->DenseRange(0, std::size(shapes) - 1)->Unit(benchmark::kMillisecond);
}

BENCHMARK(eigen_float)->Apply(shapes_of);
BENCHMARK_CAPTURE(bfloat16, amx, bf16_backend::amx)->Apply(shapes_of);
BENCHMARK_CAPTURE(bfloat16, avx512_bf16, bf16_backend::avx512_bf16)->Apply(shapes_of);
BENCHMARK_CAPTURE(bfloat16, portable, bf16_backend::portable)->Apply(shapes_of);

}  // namespace
