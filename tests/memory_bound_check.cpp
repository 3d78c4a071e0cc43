// memory_bound_check: proves with a counting allocator the memory bound each attention documents
// (README, "Attention variants"): no N x N matrix anywhere but in the materialized reference. The
// size is one where N x N would be large: N = 8192, d = d_v = 64, m = 256, float, so N^2 floats
// are 256 MiB while the linear mechanisms' workspaces must stay within a few MiB.
//
// How it counts. Eigen allocates through std::malloc (aligned_malloc -> malloc, or
// handmade_aligned_malloc -> malloc), not through operator new, so counting has to happen one
// level lower: this executable defines malloc, free, calloc, realloc and the aligned variants,
// which glibc allows a program to replace. The dynamic linker then binds every call to them
// (Eigen's, libstdc++'s operator new, libgomp's) to these definitions. Each forwards to glibc's
// own allocator (__libc_malloc and friends) and counts malloc_usable_size of the block, which is
// the same number when the block is allocated and when it is freed, whoever frees it. Counters
// are atomic because OpenMP threads allocate too.
//
// What is measured. The peak of live heap bytes during one forward pass with a fresh workspace,
// above what was live before it (inputs, outputs and the mechanism itself are allocated before
// and are not counted). Each bound below is the mechanism's workspace, derived field by field
// from its workspace_type, plus a stated allowance for Eigen's matrix-product packing buffers.
//
// Sanitizers (ASan, TSan, MSan) replace malloc themselves; under them the replacement is compiled
// out and every test skips. Separate executable because the replacement is process-wide.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <iomanip>
#include <iostream>
#include <new>
#include <sstream>
#include <string>

#include <performer/performer.hpp>
#include <performer/testing/helpers.hpp>

#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define PERFORMER_UNDER_SANITIZER 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) || \
    __has_feature(memory_sanitizer) || __has_feature(hwaddress_sanitizer)
#define PERFORMER_UNDER_SANITIZER 1
#endif
#endif
#ifndef PERFORMER_UNDER_SANITIZER
#define PERFORMER_UNDER_SANITIZER 0
#endif

// Replacing malloc this way is a glibc feature (__libc_malloc and friends are its exported
// entry points); elsewhere the tests skip rather than measure nothing and pass.
#if !PERFORMER_UNDER_SANITIZER && defined(__GLIBC__) && defined(__linux__)
#define PERFORMER_COUNTING_ALLOCATOR 1
#else
#define PERFORMER_COUNTING_ALLOCATOR 0
#endif

#if PERFORMER_COUNTING_ALLOCATOR
#include <malloc.h>  // malloc_usable_size
#endif

namespace counting {

// Bytes live now and the highest value live has reached since the last reset, both in
// malloc_usable_size units (at least the requested size: an upper bound, as a bound test wants).
std::atomic<long long> live_bytes{0};
std::atomic<long long> peak_bytes{0};
std::atomic<unsigned long long> allocations{0};

#if PERFORMER_COUNTING_ALLOCATOR
void on_allocate(void* p) noexcept {
  if (p == nullptr) return;
  const auto size = static_cast<long long>(malloc_usable_size(p));
  const long long now = live_bytes.fetch_add(size, std::memory_order_relaxed) + size;
  allocations.fetch_add(1, std::memory_order_relaxed);
  long long peak = peak_bytes.load(std::memory_order_relaxed);
  while (now > peak &&
         !peak_bytes.compare_exchange_weak(peak, now, std::memory_order_relaxed)) {
  }
}

void on_release(void* p) noexcept {
  if (p == nullptr) return;
  live_bytes.fetch_sub(static_cast<long long>(malloc_usable_size(p)), std::memory_order_relaxed);
}
#endif

}  // namespace counting

#if PERFORMER_COUNTING_ALLOCATOR
// glibc's own allocator, which the replacements below forward to.
extern "C" {
void* __libc_malloc(std::size_t size);
void __libc_free(void* p);
void* __libc_calloc(std::size_t count, std::size_t size);
void* __libc_realloc(void* p, std::size_t size);
void* __libc_memalign(std::size_t alignment, std::size_t size);
void* __libc_valloc(std::size_t size);
void* __libc_pvalloc(std::size_t size);

void* malloc(std::size_t size) noexcept {
  void* p = __libc_malloc(size);
  counting::on_allocate(p);
  return p;
}

void free(void* p) noexcept {
  counting::on_release(p);
  __libc_free(p);
}

void* calloc(std::size_t count, std::size_t size) noexcept {
  void* p = __libc_calloc(count, size);
  counting::on_allocate(p);
  return p;
}

void* realloc(void* p, std::size_t size) noexcept {
  const auto old_size = p == nullptr ? 0LL : static_cast<long long>(malloc_usable_size(p));
  void* q = __libc_realloc(p, size);
  if (q != nullptr) {
    // The new block is counted before the old one is released: a moving realloc holds both for
    // a moment, and the peak should not miss that.
    counting::on_allocate(q);
    counting::live_bytes.fetch_sub(old_size, std::memory_order_relaxed);
  } else if (p != nullptr && size == 0) {
    counting::live_bytes.fetch_sub(old_size, std::memory_order_relaxed);  // glibc freed p
  }
  return q;
}

// glibc's reallocarray calls its internal realloc, which would bypass the count.
void* reallocarray(void* p, std::size_t count, std::size_t size) noexcept {
  if (size != 0 && count > static_cast<std::size_t>(-1) / size) {
    errno = ENOMEM;
    return nullptr;
  }
  return realloc(p, count * size);
}

void* memalign(std::size_t alignment, std::size_t size) noexcept {
  void* p = __libc_memalign(alignment, size);
  counting::on_allocate(p);
  return p;
}

void* aligned_alloc(std::size_t alignment, std::size_t size) noexcept {
  void* p = __libc_memalign(alignment, size);
  counting::on_allocate(p);
  return p;
}

int posix_memalign(void** out, std::size_t alignment, std::size_t size) noexcept {
  if (alignment == 0 || alignment % sizeof(void*) != 0 || (alignment & (alignment - 1)) != 0) {
    return EINVAL;
  }
  void* p = __libc_memalign(alignment, size);
  if (p == nullptr) return ENOMEM;
  counting::on_allocate(p);
  *out = p;
  return 0;
}

void* valloc(std::size_t size) noexcept {
  void* p = __libc_valloc(size);
  counting::on_allocate(p);
  return p;
}

void* pvalloc(std::size_t size) noexcept {
  void* p = __libc_pvalloc(size);
  counting::on_allocate(p);
  return p;
}
}  // extern "C"
#endif

namespace {

using performer::index;
using performer::row_matrix;
using performer::conformance::random_matrix;
using T = float;

constexpr index n = 8192;
constexpr index d = 64;
constexpr index d_v = 64;
constexpr index m = 256;  // FAVOR+ features (M = m for positive features)
constexpr double mib = 1024.0 * 1024.0;
constexpr long long bytes = sizeof(T);
/// The N x N matrix the linear mechanisms must never build: 256 MiB.
constexpr long long square_bytes = n * n * bytes;

/// Allowance on top of every mechanism's workspace for Eigen's matrix-product packing buffers
/// and the OpenMP runtime. Eigen's GEMM packs at most a kc x mc block of the left operand and a
/// kc x nc block of the right one, never more than the operands themselves (and below
/// EIGEN_STACK_ALLOCATION_LIMIT, 128 KiB, on the stack). The mechanisms multiply tiles only: the
/// largest products are a FAVOR key block (M x B by B x d_v: 320 KiB of operands) and a
/// tiled-softmax tile (B_q x B_k by B_k x d_v: 640 KiB), so 1 MiB covers them.
constexpr long long eigen_allowance = 1LL << 20;

/// The Transformer block's projections have an N-row operand (N x d_model by d_model x
/// d_model), so their packing is bounded by Eigen's blocking heuristic rather than by the
/// operands: at most a third of its 1.5 MB "actual_l2" for the left block and half of it for the
/// right one (GeneralBlockPanelKernel.h), 1.25 MiB; 2 MiB allowed.
constexpr long long block_eigen_allowance = 2LL << 20;

/// Heap usage of one measured region.
struct usage {
  long long peak = 0;      ///< highest live bytes above the starting level
  long long retained = 0;  ///< live bytes above the starting level at the end
  unsigned long long allocations = 0;
};

template <class Body>
usage measure(Body&& body) {
  const long long base = counting::live_bytes.load();
  counting::peak_bytes.store(base);
  const unsigned long long calls = counting::allocations.load();
  body();
  return {counting::peak_bytes.load() - base, counting::live_bytes.load() - base,
          counting::allocations.load() - calls};
}

long long threads() { return static_cast<long long>(performer::detail::available_threads()); }

void report(const std::string& name, const usage& u, long long bound, index seq = n) {
  const double square = static_cast<double>(seq) * static_cast<double>(seq) * bytes;
  std::ostringstream line;
  line << std::fixed << std::setprecision(3) << "[memory] " << std::left << std::setw(46) << name
       << " peak " << std::right << std::setw(8) << static_cast<double>(u.peak) / mib << " MiB ("
       << u.peak << " B, " << u.allocations << " allocations)";
  if (bound > 0) line << ", bound " << static_cast<double>(bound) / mib << " MiB";
  line << "; N = " << seq << ": N x N would be " << square / mib << " MiB; threads " << threads()
       << "\n";
  std::cout << line.str() << std::flush;
}

/// Inputs built once, before any measurement: q, k, v (N x d, N x d, N x d_v), 2 MiB each.
struct inputs {
  row_matrix<T> q = random_matrix<T>(n, d, 1);
  row_matrix<T> k = random_matrix<T>(n, d, 2);
  row_matrix<T> v = random_matrix<T>(n, d_v, 3);
};

const inputs& data() {
  static const inputs in;
  return in;
}

/// Peak bytes of one forward pass of `mechanism` with a fresh workspace (created and destroyed
/// inside the measured region); out is allocated before.
template <class A>
usage measure_forward(const A& mechanism, const row_matrix<T>& q, const row_matrix<T>& k,
                      const row_matrix<T>& v, bool causal) {
  row_matrix<T> out(q.rows(), v.cols());
  const usage u = measure([&] {
    typename A::workspace_type ws;
    mechanism.forward(q, k, v, out, {.causal = causal}, ws);
  });
  EXPECT_TRUE(out.allFinite());
  return u;
}

// ---- Bounds, each derived from the mechanism's workspace_type ---------------------------------

/// tiled_softmax_attention: tile (B_q x B_k), row_max, row_sum, new_max, rescale (B_q each),
/// keep (B_k). No N anywhere.
long long tiled_workspace(index query_block, index key_block) {
  return (query_block * key_block + 4 * query_block + key_block) * bytes;
}

/// favor_attention with Acc = T (the cast_* buffers stay empty): per lane phi_q and phi_k
/// (B x M), num (B x d_v), log_q, log_k, den, weights, prefix_max (B each) and scores (C x C),
/// one lane per thread; per state S (M x d_v) and z (M), one state per segment when
/// bidirectional, segments + 2 (segments - 1) when causal. No N anywhere.
long long favor_workspace(index seq, index features, index value_dim, bool causal,
                          const performer::favor_options& o) {
  const index c = std::min(o.block, o.chunk);
  const index lane = 2 * o.block * features + o.block * value_dim + 4 * o.block + c * c;
  const index segments = std::clamp<index>(seq / o.min_segment, 1, o.segments);
  const index states = causal ? segments + 2 * (segments - 1) : segments;
  return (threads() * lane + states * (features * value_dim + features)) * bytes;
}

/// lsh_attention, shared-QK, N_q = N_k = seq, h rounds, b buckets (lsh_attention.hpp):
/// per token norm, row_max, row_sum (T), q_bucket and q_chunk (h int32 each), key_order (h
/// indices), query_order (one index) and the reserved work items (one of 4 indices per query);
/// per round bucket_start (b + 1 indices), plus counter and query_start (2 b + 1 indices); per
/// lane (one per thread) the tiles at B_q = 64 queries and B_k = 256 keys: unit (d), projection
/// (h b / 2), queries (B_q x d), keys (B_k x d), values (B_k x d_v), logits (B_q x B_k),
/// partial (B_q x d_v), rescale (B_q) in T, 2 h (B_q + B_k) + B_k int32 bucket and chunk
/// copies and counts, and B_q indices.
long long lsh_workspace(index seq, index head_dim, index value_dim, index h, index b) {
  constexpr index bq = 64;
  constexpr index bk = 256;
  constexpr long long ix = sizeof(index);
  const long long per_token = 3 * bytes + 2 * h * 4 + h * ix + ix + 4 * ix;
  const long long per_lane = (head_dim + h * b / 2 + bq * head_dim + bk * head_dim +
                              bk * value_dim + bq * bk + bq * value_dim + bq) *
                                 bytes +
                             (2 * h * (bq + bk) + bk) * 4 + bq * ix;
  return seq * per_token + (h * (b + 1) + 2 * b + 1) * ix + threads() * per_lane;
}

/// favor_decoder with Acc = T: its copy of the projection (m x d), the state S (M x d_v) and z
/// (M), phi (M), log scale (1), the cast feature row (M) and the output row (d_v). No context
/// length anywhere.
long long decoder_state(index features, index head_dim, index value_dim) {
  return (features * head_dim + features * value_dim + 3 * features + 1 + value_dim) * bytes;
}

class MemoryBound : public ::testing::Test {
 protected:
  void SetUp() override {
#if !PERFORMER_COUNTING_ALLOCATOR
    GTEST_SKIP() << "memory_bound_check measures heap bytes by replacing malloc, which needs "
                    "glibc and is impossible under a sanitizer (ASan, TSan and MSan replace "
                    "malloc themselves): this build has a sanitizer or no glibc, so nothing is "
                    "measured. Run it from a Release build without -fsanitize.";
#endif
    // Eigen's own threading of single matrix products off; the library's parallel loops (FAVOR's
    // segments and query blocks, LSH's hashing and groups) still run on every thread, so several
    // threads allocate at once. Why: with it on, each of the ~1000 tile products of one tiled
    // pass (and each FAVOR chunk product when the sequence is one segment) opens its own OpenMP
    // region, and on a loaded 2-core machine (ctest -j2) each region waits for a descheduled
    // thread: the tiled test took 50 s instead of 3 s. The peaks are alike either way (tiled
    // 0.63 MiB with it, 1.01 MiB without; both within the bound).
    Eigen::setNbThreads(1);
#ifdef _OPENMP
    // Start the OpenMP thread team now: its first parallel region allocates the runtime's
    // bookkeeping, which belongs to no attention.
#pragma omp parallel
    {
      [[maybe_unused]] volatile int touch = omp_get_thread_num();
    }
#endif
    static_cast<void>(data());
  }
};

// The counter itself: without this, a replacement that is silently not linked in would make
// every bound below pass with a peak of zero.
TEST_F(MemoryBound, CounterSeesMallocAndOperatorNewAndFree) {
  static void* volatile sink = nullptr;  // volatile: the compiler may not elide the allocations
  const usage u = measure([] {
    sink = std::malloc(1 << 20);
    std::free(sink);
    auto* floats = new float[1 << 18];
    sink = floats;
    delete[] floats;
    const row_matrix<T> eigen(512, 512);  // Eigen's aligned_malloc
    sink = const_cast<T*>(eigen.data());
  });
  EXPECT_GE(u.peak, 1LL << 20);
  EXPECT_GE(u.allocations, 3U);
  EXPECT_EQ(u.retained, 0);
}

// The materialized reference must allocate its N x N weights: this proves that the counter
// sees Eigen's allocations during a forward pass, so the bounds below can fail.
TEST_F(MemoryBound, MaterializedSoftmaxAllocatesNSquared) {
  const auto& in = data();
  const usage u = measure_forward(performer::softmax_attention<T>{}, in.q, in.k, in.v, false);
  report("softmax_attention (materialized)", u, 0);
  EXPECT_GE(u.peak, square_bytes);
}

TEST_F(MemoryBound, TiledSoftmaxAttention) {
  const auto& in = data();
  const performer::tiled_softmax_attention<T> tiled;
  const long long bound = tiled_workspace(tiled.query_block(), tiled.key_block()) + eigen_allowance;
  ASSERT_LT(bound, square_bytes / 64);
  for (const bool causal : {false, true}) {
    const usage u = measure_forward(tiled, in.q, in.k, in.v, causal);
    report(causal ? "tiled_softmax_attention causal" : "tiled_softmax_attention", u, bound);
    EXPECT_LE(u.peak, bound) << "causal " << causal;
  }
}

TEST_F(MemoryBound, FavorAttention) {
  const auto& in = data();
  const performer::favor_attention<T> favor(d, m, 7);
  for (const bool causal : {false, true}) {
    const long long bound = favor_workspace(n, m, d_v, causal, favor.options()) + eigen_allowance;
    // Neither N x N nor N x M (phi(K) of the whole sequence, 8 MiB here).
    ASSERT_LT(bound, n * m * bytes);
    const usage u = measure_forward(favor, in.q, in.k, in.v, causal);
    report(causal ? "favor_attention causal" : "favor_attention bidirectional", u, bound);
    EXPECT_LE(u.peak, bound) << "causal " << causal;
  }
}

// Eight times longer (N = 65,536: N x N floats would be 16 GiB), where the sequence is cut into
// two segments: the bound is the same formula, with no N in it.
TEST_F(MemoryBound, FavorAttentionLongSequence) {
  constexpr index long_n = 65536;
  const row_matrix<T> q = random_matrix<T>(long_n, d, 4);
  const row_matrix<T> k = random_matrix<T>(long_n, d, 5);
  const row_matrix<T> v = random_matrix<T>(long_n, d_v, 6);
  const performer::favor_attention<T> favor(d, m, 7);
  for (const bool causal : {false, true}) {
    const long long bound =
        favor_workspace(long_n, m, d_v, causal, favor.options()) + eigen_allowance;
    const usage u = measure_forward(favor, q, k, v, causal);
    report(causal ? "favor_attention causal" : "favor_attention bidirectional", u, bound, long_n);
    EXPECT_LE(u.peak, bound) << "causal " << causal;
  }
}

// Recurrent decoding: prime with the whole sequence of 8192 tokens, then step. The state is
// allocated when the decoder is made, and nothing is allocated after that however long the
// context grows.
TEST_F(MemoryBound, FavorDecoder) {
  const auto& in = data();
  const performer::favor_attention<T> favor(d, m, 7);
  constexpr index steps = 256;
  long long growth = -1;
  performer::row_vector<T> out(d_v);
  const usage u = measure([&] {
    performer::favor_decoder<T> decoder(favor, d_v);
    const long long after_construction = counting::live_bytes.load();
    decoder.prime(in.k, in.v);
    for (index t = 0; t < steps; ++t) decoder.step(in.q.row(t), in.k.row(t), in.v.row(t), out);
    growth = counting::live_bytes.load() - after_construction;
  });
  // No GEMM here (one-row products go to Eigen's GEMV): a small allowance for the decoder's
  // own object layout.
  const long long bound = decoder_state(m, d, d_v) + (16 << 10);
  report("favor_decoder (prime 8192, 256 steps)", u, bound);
  EXPECT_LE(u.peak, bound);
  EXPECT_EQ(growth, 0) << "live heap bytes grew while the context grew";
  EXPECT_TRUE(out.allFinite());
}

TEST_F(MemoryBound, LshAttention) {
  const auto& in = data();
  const performer::lsh_options options{
      .buckets = 32, .hashes = 4, .chunk = 64, .shared_qk = true, .seed = 1};
  const performer::lsh_attention<T> lsh(d, options);
  const long long bound =
      lsh_workspace(n, d, d_v, options.hashes, options.buckets) + eigen_allowance;
  ASSERT_LT(bound, square_bytes / 64);
  for (const bool causal : {false, true}) {
    const usage u = measure_forward(lsh, in.q, in.q, in.v, causal);  // shared-QK: k = q
    report(causal ? "lsh_attention causal (h 4, b 32, c 64)" : "lsh_attention (h 4, b 32, c 64)",
           u, bound);
    EXPECT_LE(u.peak, bound) << "causal " << causal;
  }
}

// One block with FAVOR+ (d_model 128, 2 heads of 64): O(N d_model) for the block's own buffers,
// never N x N.
TEST_F(MemoryBound, TransformerBlockWithFavor) {
  constexpr index d_model = 128;
  constexpr index heads = 2;
  constexpr index d_ff = 4 * d_model;
  constexpr index ffn_rows = 256;  // transformer_block's feed-forward row block
  const row_matrix<T> x = random_matrix<T>(n, d_model, 8);
  row_matrix<T> y(n, d_model);
  const performer::favor_attention<T> favor(d_model / heads, m, 7);
  const performer::transformer_block<performer::favor_attention<T>> block(
      {.d_model = d_model, .heads = heads, .d_ff = d_ff}, favor, 9);
  const usage u = measure([&] {
    decltype(block)::workspace_type ws;
    block.forward(x, y, {}, ws);
  });
  // normed, q, k, v, context (N x d_model each), hidden (ffn_rows x d_ff), the attention's
  // workspace at head width d_model / heads.
  const long long bound = 5 * n * d_model * bytes + ffn_rows * d_ff * bytes +
                          favor_workspace(n, m, d_model / heads, false, favor.options()) +
                          block_eigen_allowance;
  report("transformer_block<favor_attention> d_model 128", u, bound);
  ASSERT_LT(bound, square_bytes / 8);
  EXPECT_LE(u.peak, bound);
  EXPECT_TRUE(y.allFinite());
}

}  // namespace
