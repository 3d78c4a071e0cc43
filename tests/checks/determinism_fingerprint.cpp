// determinism_fingerprint: prints one line `name hash` per computed object, the hash being
// FNV-1a 64 over the object's raw bytes (row-major matrix data, or the bucket indices as 64-bit
// integers). The library promises the same bits for the same seed with g++ or clang and on any
// thread count (README: "Projections", "Paths", LSH "Rounds"); CI builds this program with both
// compilers and diffs the outputs, and runs it with --threads 1 and --threads 2 and diffs those.
//
// Every input comes from the library's portable generator (random/detail/generator.hpp, through
// conformance::random_matrix), never from <random>'s distributions, whose algorithms differ
// between standard libraries. Outputs computed by Eigen's matrix products can legitimately
// differ between compilers if one of them contracts a*b+c into an FMA; a build for the x86-64
// baseline (no -march) has no FMA instruction, so there they must match.
//
// Thread counts. With OpenMP, Eigen splits a large matrix product over threads itself, and
// Eigen 3.4 then picks a different depth block (kc is capped at 320 when num_threads > 1,
// GeneralBlockPanelKernel.h), so a product deeper than that sums in a different order on one
// thread and on two: the bits of whatever uses such products (materialized and tiled softmax,
// the block's feed-forward) then depend on the thread count. --eigen-threads 1 keeps Eigen's own
// products serial while the library's parallel loops still use --threads, which separates the
// library's determinism from Eigen's.
//
// Usage: determinism_fingerprint [--threads T] [--eigen-threads E] [--out FILE] [--require-threads]
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include <performer/performer.hpp>
#include <performer/testing/helpers.hpp>
#include <performer/testing/registry.hpp>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

using performer::attention_mask;
using performer::index_t;
using performer::row_matrix;
using performer::conformance::random_matrix;

/// FNV-1a, 64 bits, over `size` bytes (continuing from `hash`).
std::uint64_t fnv1a(const void* data, std::size_t size,
                    std::uint64_t hash = 0xCBF29CE484222325ULL) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (std::size_t i = 0; i < size; ++i) {
    hash ^= p[i];
    hash *= 0x100000001B3ULL;
  }
  return hash;
}

class printer {
 public:
  explicit printer(std::ostream& out) : out_(out) {}

  /// Any Eigen expression, evaluated into a row-major matrix so the byte order is fixed.
  template <class Derived>
  void matrix(const std::string& name, const Eigen::DenseBase<Derived>& m) {
    using S = typename Derived::Scalar;
    const row_matrix<S> plain = m;
    line(name, fnv1a(plain.data(), sizeof(S) * static_cast<std::size_t>(plain.size())));
  }

  /// Integers widened to 64 bits, hashed in the host's byte order (CI compares builds on one
  /// machine).
  template <class Int>
  void integers(const std::string& name, const std::vector<Int>& values) {
    std::vector<std::int64_t> wide(values.begin(), values.end());
    line(name, fnv1a(wide.data(), sizeof(std::int64_t) * wide.size()));
  }

 private:
  void line(const std::string& name, std::uint64_t hash) {
    char hex[17];
    std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(hash));
    out_ << name << ' ' << hex << '\n';
  }

  std::ostream& out_;
};

template <class T>
constexpr const char* scalar_name() {
  return sizeof(T) == sizeof(float) ? "float" : "double";
}

std::string shape_name(index_t rows, index_t cols) {
  return std::to_string(rows) + "x" + std::to_string(cols);
}

/// Projection matrices of both samplers (and both row-norm rules) for both scalars.
template <class T>
void projections(printer& p) {
  struct shape {
    index_t m, d;
  };
  // Square, m a multiple of d, m not a multiple of d (a partial orthogonal block), m < d.
  const shape shapes[] = {{16, 16}, {64, 16}, {100, 24}, {8, 32}, {256, 64}};
  const std::uint64_t seeds[] = {0, 1, 12345, 0xFFFFFFFFFFFFFFFFULL};
  for (const auto& s : shapes) {
    for (const auto seed : seeds) {
      const std::string tail = std::string(".") + scalar_name<T>() + "." + shape_name(s.m, s.d) +
                               ".seed" + std::to_string(seed);
      p.matrix("projection.gaussian" + tail,
               performer::random_projection<T, performer::gaussian_sampler>(s.m, s.d, seed).matrix());
      p.matrix("projection.orthogonal_chi" + tail,
               performer::random_projection<T>(s.m, s.d, seed).matrix());
      p.matrix("projection.orthogonal_fixed" + tail,
               performer::random_projection<T>(
                   s.m, s.d, seed, performer::orthogonal_sampler{performer::row_norms::fixed})
                   .matrix());
    }
  }
  // redraw() derives the next seed from the current one.
  performer::random_projection<T> redrawn(32, 16, 5);
  redrawn.redraw();
  p.matrix(std::string("projection.orthogonal_chi.redrawn.") + scalar_name<T>(), redrawn.matrix());
}

/// The positive (FAVOR+) and FAVOR++ feature maps on fixed input.
template <class T>
void feature_maps(printer& p) {
  const index_t d = 32;
  const index_t features = 96;
  const performer::random_projection<T> w(features, d, 3);
  const row_matrix<T> x = random_matrix<T>(70, d, 11, 2.0);
  row_matrix<T> phi(x.rows(), features);
  performer::vector<T> log_scale(x.rows());
  const std::string tail = std::string(".") + scalar_name<T>();
  performer::positive_features<T>{}.apply(w.matrix(), x, phi, log_scale);
  p.matrix("features.positive.phi" + tail, phi);
  p.matrix("features.positive.log_scale" + tail, log_scale);
  performer::favor_plus_plus_features<T> plus;
  plus.set_a(-0.0625);
  plus.apply(w.matrix(), x, phi, log_scale);
  p.matrix("features.favor_plus_plus.phi" + tail, phi);
  p.matrix("features.favor_plus_plus.log_scale" + tail, log_scale);
}

/// LSH bucket assignments: every round of `buckets`, and bucket_of on single rows.
template <class T>
void lsh_buckets(printer& p) {
  const index_t d = 32;
  const performer::lsh_attention<T> lsh(d, {.buckets = 16, .hashes = 3, .chunk = 8, .seed = 21});
  const row_matrix<T> x = random_matrix<T>(200, d, 12);
  const std::string tail = std::string(".") + scalar_name<T>();
  for (index_t r = 0; r < 3; ++r) {
    p.integers("lsh.buckets.round" + std::to_string(r) + tail, lsh.buckets(x, r));
  }
  std::vector<index_t> single;
  for (index_t i = 0; i < 20; ++i) single.push_back(lsh.buckets(x.row(i), i % 3)[0]);
  p.integers("lsh.bucket_of" + tail, single);
  p.matrix("lsh.rotation0" + tail, lsh.hash_family().rotation(0, lsh.options().buckets));
}

/// Runs one mechanism with a fresh workspace.
template <class A>
row_matrix<typename A::scalar_type> run(const A& a, const row_matrix<typename A::scalar_type>& q,
                                        const row_matrix<typename A::scalar_type>& k,
                                        const row_matrix<typename A::scalar_type>& v,
                                        const attention_mask& mask) {
  return performer::conformance::run(a, q, k, v, mask);
}

/// Every attention on fixed inputs: bidirectional, causal, and with padded keys.
template <class T>
void attentions(printer& p) {
  const std::string tail = std::string(".") + scalar_name<T>();
  // Lengths not multiples of any tile, block or chunk: ragged ends everywhere.
  const index_t n = 601;
  const index_t d = 32;
  const index_t d_v = 24;
  const row_matrix<T> q = random_matrix<T>(n, d, 31);
  const row_matrix<T> k = random_matrix<T>(n, d, 32);
  const row_matrix<T> v = random_matrix<T>(n, d_v, 33);
  std::vector<std::uint8_t> keep(static_cast<std::size_t>(n), 1);
  for (std::size_t j = 0; j < keep.size(); j += 7) keep[j] = 0;
  const attention_mask bidirectional{};
  const attention_mask causal{.causal = true};
  const attention_mask padded{.causal = false, .key_mask = keep};
  const attention_mask causal_padded{.causal = true, .key_mask = keep};
  const struct {
    const char* name;
    const attention_mask* mask;
  } masks[] = {{"bidirectional", &bidirectional},
               {"causal", &causal},
               {"padded", &padded},
               {"causal_padded", &causal_padded}};

  const auto all_masks = [&](const std::string& name, const auto& mechanism) {
    for (const auto& mk : masks) {
      p.matrix(name + "." + mk.name + tail, run(mechanism, q, k, v, *mk.mask));
    }
  };

  // Every mechanism of the library's registry at its defaults (shared-QK LSH with k = q).
  performer::registry::for_each_mechanism([&](auto entry) {
    using E = decltype(entry);
    const auto mechanism = E::template make<T>(d, 128, 41);
    const std::string name = std::string("registry.") + std::string(E::name);
    const bool shared = performer::registry::keys_are_queries<E>();
    for (const auto& mk : masks) {
      p.matrix(name + "." + mk.name + tail, run(mechanism, q, shared ? q : k, v, *mk.mask));
    }
  });
  // Layouts the defaults do not reach at this length: small tiles (several key tiles per query
  // tile), FAVOR's segments running in parallel, double accumulation, LSH with fixed buckets
  // and small chunks.
  all_masks("tiled_softmax_attention.tiles48x80", performer::tiled_softmax_attention<T>(48, 80));
  const performer::favor_options small{.block = 64, .chunk = 16, .segments = 4, .min_segment = 100};
  all_masks("favor_attention.positive.segments4",
            performer::favor_attention<T>(d, 128, 41, {}, {}, small));
  using plus_plus = performer::favor_plus_plus_features<T>;
  all_masks("favor_attention.favor_plus_plus.segments4",
            performer::favor_attention<T, plus_plus>(d, 128, 41, {}, {}, small));
  all_masks("favor_attention.positive.gaussian.acc_double",
            performer::favor_attention<T, performer::positive_features<T>,
                                       performer::gaussian_sampler, double>(d, 64, 42));
  all_masks("lsh_attention.separate.buckets8.chunk16",
            performer::lsh_attention<T>(d, {.buckets = 8, .hashes = 3, .chunk = 16, .shared_qk = false, .seed = 51}));

  // The recurrent decoder: prime with a prefix, then one step per token.
  {
    const performer::favor_attention<T> favor(d, 128, 41);
    performer::favor_decoder<T> decoder(favor, d_v);
    decoder.prime(k.topRows(100), v.topRows(100));
    row_matrix<T> steps(n - 100, d_v);
    for (index_t t = 100; t < n; ++t) {
      performer::row_vector<T> out(d_v);
      decoder.step(q.row(t), k.row(t), v.row(t), out);
      steps.row(t - 100) = out;
    }
    p.matrix("favor_decoder.positive.steps" + tail, steps);
  }

}

/// transformer_block with FAVOR+: encoder and decoder, at a width where the feed-forward
/// products are deep (d_ff = 512) and large enough for Eigen to split them over threads.
void blocks(printer& p) {
  using T = float;
  const index_t n = 512;
  const row_matrix<T> x = random_matrix<T>(n, 128, 61);
  const performer::favor_attention<T> favor(64, 128, 62);
  for (const bool causal : {false, true}) {
    const performer::transformer_block<performer::favor_attention<T>> block(
        {.d_model = 128, .heads = 2, .causal = causal}, favor, 63);
    p.matrix(std::string("transformer_block.favor.d128.") +
                 (causal ? "causal" : "bidirectional") + ".float",
             block.forward(x));
  }
  // A small block (d_ff = 128): products below any threading threshold.
  const row_matrix<T> small_x = random_matrix<T>(300, 32, 64);
  const performer::transformer_block<performer::favor_attention<T>> small(
      {.d_model = 32, .heads = 2, .causal = true}, performer::favor_attention<T>(16, 32, 65), 66);
  p.matrix("transformer_block.favor.d32.causal.float", small.forward(small_x));
}

[[noreturn]] void usage_error(const std::string& problem) {
  std::cerr << "determinism_fingerprint: " << problem
            << "\nusage: determinism_fingerprint [--threads T] [--eigen-threads E] [--out FILE]\n";
  std::exit(2);
}

}  // namespace

int main(int argc, char** argv) {
  std::string out_path;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg == "--threads" && i + 1 < argc) {
      char* end = nullptr;
      const long threads = std::strtol(argv[++i], &end, 10);
      if (end == argv[i] || *end != '\0' || threads < 1 || threads > 1024) {
        usage_error(std::string("bad thread count '") + argv[i] + "'");
      }
#ifdef _OPENMP
      omp_set_num_threads(static_cast<int>(threads));
#else
      std::cerr << "determinism_fingerprint: built without OpenMP, --threads " << threads
                << " has no effect\n";
#endif
    } else if (arg == "--eigen-threads" && i + 1 < argc) {
      char* end = nullptr;
      const long threads = std::strtol(argv[++i], &end, 10);
      if (end == argv[i] || *end != '\0' || threads < 1 || threads > 1024) {
        usage_error(std::string("bad Eigen thread count '") + argv[i] + "'");
      }
      Eigen::setNbThreads(static_cast<int>(threads));
    } else if (arg == "--require-threads") {
      // What CTest runs when the build has no OpenMP: a thread-count comparison would compare
      // one thread with itself, so report the test skipped (77), never passed.
#ifndef _OPENMP
      std::cerr << "determinism_fingerprint: built without OpenMP: nothing to compare\n";
      return 77;
#else
      return 0;
#endif
    } else if (arg == "--out" && i + 1 < argc) {
      out_path = argv[++i];
    } else {
      usage_error("unknown or incomplete option '" + std::string(arg) + "'");
    }
  }

  std::ostringstream text;
  printer p(text);
  try {
    projections<float>(p);
    projections<double>(p);
    feature_maps<float>(p);
    feature_maps<double>(p);
    lsh_buckets<float>(p);
    lsh_buckets<double>(p);
    attentions<float>(p);
    attentions<double>(p);
    blocks(p);
  } catch (const std::exception& e) {
    std::cerr << "determinism_fingerprint: " << e.what() << "\n";
    return 1;
  }

  if (out_path.empty()) {
    std::cout << text.str();
    return std::cout.good() ? 0 : 1;
  }
  std::ofstream file(out_path, std::ios::binary);
  file << text.str();
  file.close();
  if (!file) {
    std::cerr << "determinism_fingerprint: cannot write " << out_path << "\n";
    return 1;
  }
  return 0;
}
