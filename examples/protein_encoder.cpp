// Protein encoder: reads protein sequences from a FASTA file, embeds the amino acids and runs a
// stack of Transformer blocks (d_model 512, 8 heads of width 64) over them three times with the
// same weights: with FAVOR+ random-feature attention, with exact softmax attention, and with
// "flat" attention (every key weighted equally, q and k ignored: the yardstick an approximation
// must beat). Per chain it prints the time and peak heap of the FAVOR+ and the exact pass, and
// how far the FAVOR+ and the flat encodings are from the exact one. With the io component,
// --save-model writes the FAVOR+ encoder as a model file and --model runs one (README, Examples).
//
// Usage: performer_example_protein_encoder FILE.fa [options]   (--help lists them)
// e.g. with Debian's hmmer-examples package (45 globins of about 150 residues):
//   performer_example_protein_encoder /usr/share/doc/hmmer/examples/tutorial/globins45.fa
// and the same with --qk-scale 0.35 --map hyperbolic --features 1024 (see ACCURACY).
//
// SPEED. Per head FAVOR+ costs O(N M d) time, exact attention O(N^2 d); FAVOR+ wins from about
// N = 1,000 tokens. A globin is too short for that, so by default consecutive records are joined
// into chains of up to 4,096 residues (--concat N; a stand-in for a long protein). Exact
// attention is materialized by default (N x N weights per head, as a standard Transformer);
// --exact tiled runs the library's online-softmax form, same result in memory linear in N.
// On globins45.fa (one thread, busy machine) a 4,038-residue chain took 6.2 s with FAVOR+ and
// 13.4 s with exact attention, at a peak heap of 60 MiB against 121 MiB.
//
// ACCURACY (docs/algorithms.md 5.2, 5.5, 5.7). FAVOR+ estimates each weight exp(q.k / sqrt(d))
// as a mean over M random features whose relative variance is exp(s) - 1, s = |q~ + k~|^2 with
// q~ = q / d^(1/4), k~ = k / d^(1/4). Column "s" is its mean at the first layer.
// - s around 16, this untrained stack as initialised: LayerNorm outputs and Xavier-uniform W_q,
//   W_k give |q~|^2 = |k~|^2 = 8 per head, and exp(16) = 9 million. The error would fall like
//   1/sqrt(M) only for M far beyond that; at M = 64 to 4,096 a few large terms dominate the
//   mean, most weights come out too small, and FAVOR+ attends to a sparser, random set of keys.
//   On the 4,038-residue chain the distance from exact is 0.29, 0.25, 0.23 and 0.19 for
//   M = 64, 256, 1,024 and 4,096, farther than flat attention's 0.155: q and k only add noise.
//   The exact logits q.k / sqrt(d) spread by only about 1 here; the variance comes from the
//   norms. Layers do not compound it (MYG_ESCGI alone, M = 256: 0.25 with one layer, 0.27
//   with two, 0.25 with four, 0.24 with eight).
// - s up to about 2 to 4: the error falls like 1/sqrt(M). --qk-scale S multiplies W_q and W_k
//   of every block by S (the logits by S^2, a temperature; s by S^2). At S = 0.35 (s = 1.9) the
//   distance is 0.017, 0.009 and 0.004 for M = 256, 1,024 and 4,096; at M = 1,024 FAVOR++
//   (--map favorpp) gives 0.008 and hyperbolic features (--map hyperbolic) 0.006.
// - But a small s means small logits: a pair's logit q~.k~ is at most s / 4. At S = 0.35 the
//   exact attention is nearly flat itself (flat attention is 0.019 from exact), and M = 256 is
//   barely closer than that; 1,024 hyperbolic features are 3 times closer. So FAVOR+
//   approximates smooth attention, and sharp, peaked attention (large logits, hence large s)
//   badly; FAVOR++ and hyperbolic features lower the variance but do not change that. A
//   Performer trained with its features in the loop learns q and k that suit them; it need
//   not imitate an exact model.
#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <iomanip>
#include <iostream>
#include <random>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

// Counts the heap bytes of the whole program (glibc), to print each forward pass's peak memory.
#define PERFORMER_DEFINE_COUNTING_ALLOCATOR
#include <performer/performer.hpp>
#include <performer/testing/counting_allocator.hpp>

#include "command_line.hpp"
#include "protein_input.hpp"
#include "protein_stacks.hpp"
#ifdef PERFORMER_EXAMPLES_WITH_IO  // examples/CMakeLists.txt: set when performer::io exists
#include "protein_model_file.hpp"
#endif

namespace {

using namespace protein_input;

using T = float;
using performer::index_t;
using matrix = performer::row_matrix<T>;

constexpr index_t d_model = 512;
constexpr index_t heads = 8;
constexpr index_t head_dim = d_model / heads;

struct options {
  std::string path;
  index_t layers = 2;
  index_t features = 256;  // M, the columns of phi(x)
  std::string map = "positive";
  double qk_scale = 1.0;
  std::size_t concat = 4096;
  std::string exact = "materialized";
  std::size_t max_chains = 10;
  double max_diff = -1;  // < 0: no check
  std::string model_file;  // --model: encode with this file's model instead
  std::string save_model;  // --save-model: write the FAVOR+ encoder as a model file
};

void usage(std::ostream& out, const char* argv0) {
  out << "usage: " << argv0 << " FILE.fa [options]\n"
      << "Encodes protein sequences with FAVOR+, exact and flat attention (same weights) and\n"
      << "prints time, peak heap and the distance of each encoding from the exact one.\n"
      << "  --layers L        Transformer blocks (default 2)\n"
      << "  --features M      random features per head, M (default 256)\n"
      << "  --map NAME        positive (FAVOR+, default), hyperbolic (M/2 projections, 2 features\n"
      << "                    each), favorpp (FAVOR++, parameter fitted to each call's q and k)\n"
      << "  --qk-scale S      multiply W_q and W_k of every block by S (default 1): the logits\n"
      << "                    and the variance exponent s = |q~ + k~|^2 by S^2\n"
      << "  --concat N        join consecutive records into chains of up to N residues (default\n"
      << "                    4096; 0 encodes each record alone)\n"
      << "  --exact NAME      materialized (N x N weights per head, as a standard Transformer;\n"
      << "                    default) or tiled (online softmax: the same result in O(N) memory)\n"
      << "  --max C           encode at most C chains (default 10)\n"
      << "  --max-diff X      exit with status 1 if a FAVOR encoding is farther than X from exact\n"
      << "  --save-model F    also save the FAVOR+ encoder (residue table, sinusoidal positions,\n"
      << "                    blocks) as a model file with an amino-acid alphabet, reload it and\n"
      << "                    check it encodes every chain bit for bit as the stack does\n"
      << "  --model F         instead, encode the chains with model file F (docs/model_format.md),\n"
      << "                    its alphabet mapping the residues; prints time, heap, fingerprints\n"
      << "  --help            this text\n";
}

/// Parses the command line; throws std::invalid_argument with a message on a bad one.
options parse(int argc, char** argv) {
  options o;
  using reader = command_line::reader<std::invalid_argument>;
  const reader args(argc, argv);
  const auto value = [&](int& i) { return args.value(i); };
  const auto number = &reader::number;
  const auto count = [](const std::string& flag, const std::string& text, double min) {
    return static_cast<index_t>(reader::whole(flag, text, min, 1e9));
  };
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--layers") {
      o.layers = count(arg, value(i), 1);
    } else if (arg == "--features") {
      o.features = count(arg, value(i), 1);
    } else if (arg == "--map") {
      o.map = value(i);
      if (o.map != "positive" && o.map != "hyperbolic" && o.map != "favorpp") {
        throw std::invalid_argument("--map must be positive, hyperbolic or favorpp, got '" + o.map +
                                    "'");
      }
    } else if (arg == "--qk-scale") {
      o.qk_scale = number(arg, value(i));
      if (o.qk_scale <= 0) throw std::invalid_argument("--qk-scale must be positive");
    } else if (arg == "--concat") {
      o.concat = static_cast<std::size_t>(count(arg, value(i), 0));
    } else if (arg == "--exact") {
      o.exact = value(i);
      if (o.exact != "tiled" && o.exact != "materialized") {
        throw std::invalid_argument("--exact must be tiled or materialized, got '" + o.exact + "'");
      }
    } else if (arg == "--max") {
      o.max_chains = static_cast<std::size_t>(count(arg, value(i), 1));
    } else if (arg == "--max-diff") {
      o.max_diff = number(arg, value(i));
    } else if (arg == "--model") {
      o.model_file = value(i);
    } else if (arg == "--save-model") {
      o.save_model = value(i);
    } else if (!arg.empty() && arg[0] == '-') {
      throw std::invalid_argument("unknown option " + arg);
    } else if (o.path.empty()) {
      o.path = arg;
    } else {
      throw std::invalid_argument("more than one FILE given ('" + o.path + "', '" + arg + "')");
    }
  }
  if (o.path.empty()) throw std::invalid_argument("no FASTA file given");
#ifndef PERFORMER_EXAMPLES_WITH_IO
  if (!o.model_file.empty() || !o.save_model.empty()) {
    throw std::invalid_argument("--model and --save-model need the io component (performer::io, "
                                "nlohmann-json), which this build lacks");
  }
#endif
  if (!o.save_model.empty() && o.map != "positive") {
    throw std::invalid_argument("--save-model: model files store FAVOR+ with positive features "
                                "only (--map positive)");
  }
  if (o.map == "hyperbolic" && o.features % 2 != 0) {
    throw std::invalid_argument("--map hyperbolic needs an even --features");
  }
  return o;
}

struct timed {
  matrix y;
  double ms = 0;
  double mib = 0;  // peak heap during the forward pass (0 where it cannot be counted)
};

template <class Stack>
timed run(const Stack& stack, const matrix& x) {
  timed r;
  const auto t0 = std::chrono::steady_clock::now();
  const long long bytes = performer::counting::peak_during([&] { r.y = stack.forward(x); });
  r.ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  r.mib = static_cast<double>(bytes) / (1024.0 * 1024.0);
  return r;
}

/// Called with each chain and its FAVOR encoding (--save-model's check); false fails the run.
using chain_check = std::function<bool(const protein&, const matrix&)>;

template <class Favor, class Exact>
int encode(const options& o, const Favor& favor_stack, const Exact& exact_stack,
           const std::string& label, const chain_check& check) {
  const performer::block_config cfg{.d_model = d_model, .heads = heads};
  auto flat_stack =
      performer::transformer_stack<flat_attention>(cfg, o.layers, flat_attention{}, 7);
  scale_qk(flat_stack, o.qk_scale);

  const auto records = read_fasta(o.path);
  const auto chains = make_chains(records, o.concat);
  const auto table = embedding_table<T>(d_model);
  const std::size_t count = std::min(o.max_chains, chains.size());
  std::cout << "encoding " << count << " of " << chains.size();
  if (o.concat > 0) {
    std::cout << " chains (" << records.size() << " records joined into chains of up to "
              << o.concat << " residues)";
  } else {
    std::cout << " records";
  }
  std::cout << " from " << o.path << "\n"
            << o.layers << (o.layers == 1 ? " layer" : " layers") << ", d_model " << d_model << ", "
            << heads << " heads of width " << head_dim << "; " << label << "; exact attention "
            << o.exact << "; q and k scaled by " << o.qk_scale << "\n";
  if (!performer::counting::available) std::cout << "(peak heap not counted in this build)\n";

  // Warm-up on a few tokens: thread start-up and first-touch costs stay out of the timings.
  {
    const auto x = embed(chains.front().residues.substr(0, 32), table);
    static_cast<void>(favor_stack.forward(x));
    static_cast<void>(exact_stack.forward(x));
  }

  std::cout << std::left << std::setw(18) << "chain" << std::right << std::setw(7) << "length"
            << std::setw(7) << "s" << std::setw(11) << "FAVOR ms" << std::setw(11) << "exact ms"
            << std::setw(9) << "speed-up" << std::setw(11) << "FAVOR MiB" << std::setw(11)
            << "exact MiB" << std::setw(12) << "FAVOR diff" << std::setw(11) << "flat diff"
            << "\n";
  double worst = 0;
  double worst_s = 0;
  bool favor_behind_flat = false;
  for (std::size_t c = 0; c < count; ++c) {
    const auto x = embed(chains[c].residues, table);
    const double s = mean_variance_exponent(exact_stack.layer(0), x);
    const timed f = run(favor_stack, x);
    const timed e = run(exact_stack, x);
    const matrix y_flat = flat_stack.forward(x);
    if (!f.y.allFinite() || !e.y.allFinite()) {
      std::cerr << "error: non-finite encoding of " << chains[c].name << "\n";
      return EXIT_FAILURE;
    }
    if (check && !check(chains[c], f.y)) return EXIT_FAILURE;
    const double diff = (f.y - e.y).norm() / e.y.norm();
    const double flat = (y_flat - e.y).norm() / e.y.norm();
    worst = std::max(worst, diff);
    worst_s = std::max(worst_s, s);
    favor_behind_flat = favor_behind_flat || diff > flat;
    std::cout << std::left << std::setw(18) << chains[c].name.substr(0, 17) << std::right
              << std::setw(7) << x.rows() << std::fixed << std::setprecision(1) << std::setw(7) << s
              << std::setw(11) << f.ms << std::setw(11) << e.ms << std::setw(8) << e.ms / f.ms
              << "x" << std::setw(11) << f.mib << std::setw(11) << e.mib << std::setprecision(4)
              << std::setw(12) << diff << std::setw(11) << flat << "\n";
    std::cout.unsetf(std::ios::fixed);
  }
  std::cout << "s: mean |q~ + k~|^2 over query-key pairs and heads at the first layer; FAVOR+'s\n"
               "   relative variance per feature is exp(s) - 1 (docs/algorithms.md 5.7).\n"
               "MiB: peak heap during the pass (activations, attention workspace, output).\n"
               "diff: |Y - Y_exact| / |Y_exact| of the final encodings; flat: the same for\n"
               "   attention that weights every key equally (q and k ignored).\n";
  if (favor_behind_flat) {
    std::cout << "note: the FAVOR encoding is farther from exact than flat attention's.\n";
    if (worst_s > 4) {
      std::cout << "With s = " << std::setprecision(3) << worst_s
                << ", exp(s) - 1 = " << std::setprecision(2) << std::expm1(worst_s)
                << ": the error falls like 1/sqrt(M) only once M is far\nabove that; M = "
                << o.features << " features are dominated by a few large terms. Smaller q and k\n"
                << "help (--qk-scale 0.35 divides s by 8), with more features (--features 1024);\n"
                << "see the comment at the top of protein_encoder.cpp.\n";
    } else {
      std::cout << "With s = " << std::setprecision(3) << worst_s
                << " the error falls like 1/sqrt(M), but the exact attention is nearly flat\n"
                << "too: more --features, or --map hyperbolic or favorpp, bring FAVOR closer.\n";
    }
  }
  if (o.max_diff >= 0 && worst > o.max_diff) {
    std::cerr << "error: a FAVOR encoding is " << worst << " from exact, above --max-diff "
              << o.max_diff << "\n";
    return EXIT_FAILURE;
  }
  return EXIT_SUCCESS;
}

template <class Favor>
int with_exact(const options& o, const Favor& favor_stack, const std::string& label,
               const chain_check& check = {}) {
  const performer::block_config cfg{.d_model = d_model, .heads = heads};
  const auto make_exact = [&]<class Exact>(Exact attention) {
    auto stack = performer::transformer_stack<Exact>(cfg, o.layers, attention, 7);
    scale_qk(stack, o.qk_scale);
    return stack;
  };
  if (o.exact == "materialized") {
    return encode(o, favor_stack, make_exact(performer::softmax_attention<T>{}), label, check);
  }
  return encode(o, favor_stack, make_exact(performer::tiled_softmax_attention<T>{}), label, check);
}

#ifdef PERFORMER_EXAMPLES_WITH_IO
/// --save-model: the stack saved and reloaded; each chain's encoding by the reloaded model must
/// equal the stack's bit for bit.
template <class Stack>
int save_and_encode(const options& o, const Stack& stack, const std::string& label) {
  namespace pm = protein_model_file;
  const auto loaded = pm::save_and_reload(stack, o.save_model, make_chains(read_fasta(o.path), o.concat));
  std::vector<std::string> prints;
  const int status = with_exact(o, stack, label, [&](const protein& chain, const matrix& y) {
    return pm::same_encoding(loaded, chain, y, prints);
  });
  for (const auto& line : prints) std::cout << line << "\n";
  if (status == EXIT_SUCCESS) std::cout << "reloaded model: every encoding bit-identical\n";
  return status;
}
#endif

/// Builds the FAVOR stack for o.map. Same root seed (7) as the other stacks, hence the same
/// weights; each layer's random features come from that layer's seed.
template <class FeatureMap>
int with_map(const options& o, index_t projections, const std::string& label) {
  using favor = performer::favor_attention<T, FeatureMap>;
  const performer::block_config cfg{.d_model = d_model, .heads = heads};
  auto stack = performer::transformer_stack<favor>(
      cfg, o.layers,
      [&](index_t, std::uint64_t seed) { return favor(head_dim, projections, seed); }, 7);
  scale_qk(stack, o.qk_scale);
#ifdef PERFORMER_EXAMPLES_WITH_IO
  if constexpr (std::is_same_v<favor, performer::favor_attention<T>>) {
    if (!o.save_model.empty()) return save_and_encode(o, stack, label);
  }
#endif
  return with_exact(o, stack, label);
}

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    if (std::string(argv[i]) == "--help" || std::string(argv[i]) == "-h") {
      usage(std::cout, argv[0]);
      return EXIT_SUCCESS;
    }
  }
  options o;
  try {
    o = parse(argc, argv);
  } catch (const std::invalid_argument& e) {
    std::cerr << "error: " << e.what() << "\n";
    usage(std::cerr, argv[0]);
    return 2;
  }
  try {
#ifdef PERFORMER_EXAMPLES_WITH_IO
    if (!o.model_file.empty()) {
      return protein_model_file::encode_with_file(o.model_file, make_chains(read_fasta(o.path), o.concat),
                                                  o.max_chains);
    }
#endif
    const std::string m = std::to_string(o.features);
    if (o.map == "hyperbolic") {
      return with_map<performer::hyperbolic_features<T>>(
          o, o.features / 2,
          "hyperbolic features, M = " + m + " (m = " + std::to_string(o.features / 2) + ")");
    }
    if (o.map == "favorpp") {
      return with_map<performer::favor_plus_plus_features<T>>(o, o.features,
                                                              "FAVOR++ features, M = " + m);
    }
    return with_map<performer::positive_features<T>>(o, o.features, "FAVOR+ features, M = " + m);
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return EXIT_FAILURE;
  }
}
