// bfloat16 products against float ones (core/detail/bf16_product.hpp): the three products of a
// FAVOR+ bidirectional pass at N = 16,384, d = d_v = 64, m = 256, and one in L2, each timed as
// Eigen's float product and as the bfloat16 product on the amx, avx512_bf16 and portable
// backends (a fast one reported as skipped, with the reason, where the CPU or OS lacks it), and
// the instruction rates of
// float FMA, VDPBF16PS and TDPBF16PS. Counters: "GFLOP/s" (2 rows depth cols per product),
// "bits_unlike_portable" (the share of a product's outputs whose bits differ from the portable
// backend's), "of_peak" (GFLOP/s over the rate of the instruction the product runs on, the
// best repetition of instruction_rate in the same run: the float FMA for Eigen and portable,
// VDPBF16PS for avx512_bf16, TDPBF16PS for amx and oneDNN). One thread: the products
// themselves, not their parallel split.
// Built with oneDNN (PERFORMER_BENCH_ONEDNN, from bench/CMakeLists.txt when it finds it), also
// oneDNN's bfloat16 matmul on the same shapes, so that adopting it as a backend is a decision
// taken on these numbers; "max_rel_diff_vs_portable" checks it once against the portable backend.
//   bench_bf16 --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
#include <benchmark/benchmark.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdint>
#include <iterator>
#include <numeric>
#include <string>
#include <unordered_map>
#include <vector>

#include <performer/core/bfloat16.hpp>
#include <performer/core/detail/bf16_product.hpp>
#include <performer/core/types.hpp>

#ifdef PERFORMER_BENCH_ONEDNN
#include <oneapi/dnnl/dnnl.hpp>
#ifdef _OPENMP
#include <omp.h>
#endif
#endif

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

// The instructions' rates in FLOP/s, the best repetition of instruction_rate in this run, by the
// backend whose products they bound (portable: the float FMA, which Eigen's float products and
// the portable backend use); 0 until measured.
std::array<double, 4> peak_flops{};

double& peak_of(bf16_backend backend) { return peak_flops[static_cast<std::size_t>(backend)]; }

// "GFLOP/s", and "of_peak": that rate over the instruction rate `bound` measured earlier in the
// same run (left out when instruction_rate did not run or was skipped).
void report(benchmark::State& state, const shape& s, bf16_backend bound) {
  const double flops = 2.0 * static_cast<double>(s.rows * s.depth * s.cols);
  state.counters["GFLOP/s"] = benchmark::Counter(
      flops, benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
  if (peak_of(bound) > 0) {
    state.counters["of_peak"] =
        benchmark::Counter(flops / peak_of(bound), benchmark::Counter::kIsIterationInvariantRate);
  }
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
  report(state, s, bf16_backend::portable);
}

// a and b rounded to bfloat16 and packed as bf16::product takes them.
struct packed_operands {
  std::vector<bf16::pair> lhs;
  index_t rows = 0, pairs = 0;
  bf16::packed_rhs rhs;

  packed_operands(const row_matrix<float>& a, const row_matrix<float>& b)
      : lhs(static_cast<std::size_t>(a.rows() * ((a.cols() + 1) / 2))),
        rows(a.rows()),
        pairs((a.cols() + 1) / 2) {
    rhs.assign(b.rows(), b.cols(), [&](index_t k, index_t j) { return b(k, j); });
    for (index_t i = 0; i < rows; ++i) {
      for (index_t p = 0; p < pairs; ++p) {
        const float odd = 2 * p + 1 < a.cols() ? a(i, 2 * p + 1) : 0.0f;
        lhs[static_cast<std::size_t>(i * pairs + p)] = bf16::pack(a(i, 2 * p), odd);
      }
    }
  }
  [[nodiscard]] bf16::lhs_view view() const { return {lhs.data(), rows, pairs, 1}; }
};

void bfloat16(benchmark::State& state, bf16_backend backend) {
  const shape& s = shapes[state.range(0)];
  state.SetLabel(s.name);
  if (!performer::bf16_available(backend)) {
    state.SkipWithError("skipped: this CPU or OS does not run this backend");
    return;
  }
  const row_matrix<float> a = random(s.rows, s.depth, 1), b = random(s.depth, s.cols, 2);
  const packed_operands operands(a, b);
  const bf16::lhs_view view = operands.view();
  const bf16::packed_rhs& rhs = operands.rhs;
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
  report(state, s, backend);
}

#ifdef PERFORMER_BENCH_ONEDNN
const char* isa_name(dnnl::cpu_isa isa) {
  switch (isa) {
    case dnnl::cpu_isa::avx512_core_amx:
      return "avx512_core_amx";
    case dnnl::cpu_isa::avx512_core_bf16:
      return "avx512_core_bf16";
    case dnnl::cpu_isa::avx512_core_vnni:
      return "avx512_core_vnni";
    case dnnl::cpu_isa::avx512_core:
      return "avx512_core";
    case dnnl::cpu_isa::avx2:
      return "avx2";
    default:
      return "other";
  }
}

// oneDNN's matmul with bfloat16 A and B (row-major, as given: no reordered weights) and float C,
// with a sum post-op so that it adds to C as the others do. The inputs are rounded by
// bf16::round, so oneDNN and the portable backend multiply the same bits.
void onednn_bf16(benchmark::State& state) {
  const shape& s = shapes[state.range(0)];
  state.SetLabel(s.name);
#ifdef _OPENMP
  // This oneDNN runs on OpenMP (Debian's build does), and takes the thread count it gets from
  // omp_get_max_threads() when the primitive is made and run: one, like the other rows. Without
  // OpenMP in this program, only OMP_NUM_THREADS=1 keeps oneDNN to one thread.
  omp_set_num_threads(1);
#endif
  const row_matrix<float> a = random(s.rows, s.depth, 1), b = random(s.depth, s.cols, 2);
  const auto to_bits = [](const row_matrix<float>& m) {
    std::vector<std::uint16_t> bits(static_cast<std::size_t>(m.size()));
    std::transform(m.data(), m.data() + m.size(), bits.begin(), bf16::round);
    return bits;
  };
  const auto widened = [](const std::vector<std::uint16_t>& bits, index_t rows, index_t cols) {
    row_matrix<float> m(rows, cols);
    std::transform(bits.begin(), bits.end(), m.data(), bf16::widen);
    return m;
  };
  std::vector<std::uint16_t> a_bits = to_bits(a), b_bits = to_bits(b);
  row_matrix<float> c = random(s.rows, s.cols, 3);
  const row_matrix<float> c0 = c;
  try {
    using dnnl::memory;
    const dnnl::engine engine(dnnl::engine::kind::cpu, 0);
    dnnl::stream stream(engine);
    const memory::desc a_desc({s.rows, s.depth}, memory::data_type::bf16, memory::format_tag::ab);
    const memory::desc b_desc({s.depth, s.cols}, memory::data_type::bf16, memory::format_tag::ab);
    const memory::desc c_desc({s.rows, s.cols}, memory::data_type::f32, memory::format_tag::ab);
    const dnnl::matmul::desc desc(a_desc, b_desc, c_desc);
    dnnl::post_ops sum;
    sum.append_sum(1.0f);
    dnnl::primitive_attr attr;
    attr.set_post_ops(sum);
    dnnl::matmul::primitive_desc pd(desc, attr, engine, true);
    const bool accumulates = static_cast<bool>(pd);
    // Without a sum post-op for this configuration, the row times C = A B instead.
    if (!accumulates) pd = dnnl::matmul::primitive_desc(desc, engine);
    const dnnl::matmul matmul(pd);
    const std::unordered_map<int, memory> args{
        {DNNL_ARG_SRC, memory(a_desc, engine, a_bits.data())},
        {DNNL_ARG_WEIGHTS, memory(b_desc, engine, b_bits.data())},
        {DNNL_ARG_DST, memory(c_desc, engine, c.data())}};
    state.SetLabel(std::string(s.name) + (accumulates ? "" : " C = A B, no sum post-op") + " [" +
                   pd.impl_info_str() + ", " + isa_name(dnnl::get_effective_cpu_isa()) + "]");

    // Outside the timing, from the same nonzero C: the largest difference from the portable
    // backend, relative to |C| + |A| |B|, the scale of the products' rounding errors (relative to
    // C alone, an output near zero after cancellation would say nothing of the product).
    matmul.execute(stream, args);
    stream.wait();
    row_matrix<float> portable = c0;
    const packed_operands operands(a, b);
    bf16::product(operands.view(), operands.rhs, portable.data(), s.cols, bf16_backend::portable);
    if (!accumulates) portable -= c0;
    const row_matrix<float> scale = c0.cwiseAbs() + widened(a_bits, s.rows, s.depth).cwiseAbs() *
                                                        widened(b_bits, s.depth, s.cols).cwiseAbs();
    state.counters["max_rel_diff_vs_portable"] =
        static_cast<double>(((c - portable).array().abs() / scale.array()).maxCoeff());

    for (auto _ : state) {
      matmul.execute(stream, args);
      stream.wait();
      benchmark::DoNotOptimize(c.data());
    }
  } catch (const dnnl::error& e) {
    state.SkipWithError((std::string("oneDNN: ") + e.what()).c_str());
    return;
  }
  report(state, s, bf16_backend::amx);
}
#endif

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
  const bf16::tile_config config;
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
  const auto start = std::chrono::steady_clock::now();
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
  const std::chrono::duration<double> seconds = std::chrono::steady_clock::now() - start;
  const double rate =
      flops_per_step * rate_steps * static_cast<double>(state.iterations()) / seconds.count();
  peak_of(backend) = std::max(peak_of(backend), rate);
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
#ifdef PERFORMER_BENCH_ONEDNN
BENCHMARK(onednn_bf16)->Apply(shapes_of);
#endif

}  // namespace
