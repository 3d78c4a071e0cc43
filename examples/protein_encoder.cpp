// Protein encoder: reads protein sequences from any FASTA file, embeds the amino acids, and runs
// a stack of shared Transformer blocks (d_model 512, 8 heads) over each sequence with FAVOR+
// attention and with exact (tiled) attention, printing time per sequence and how far the two
// encodings are apart. Long proteins are where FAVOR+ pays off: its cost grows linearly with
// the length, exact attention's quadratically.
//
// Usage: performer_example_protein_encoder FILE.fa [--layers L] [--features M] [--max N]
// e.g. with Debian's hmmer-examples package:
//   performer_example_protein_encoder /usr/share/doc/hmmer/examples/tutorial/globins45.fa
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <string>
#include <vector>

#include <performer/attention/favor_attention.hpp>
#include <performer/performer.hpp>

namespace {

struct protein {
  std::string name;
  std::string residues;
};

std::vector<protein> read_fasta(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot open " + path);
  std::vector<protein> out;
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty()) continue;
    if (line[0] == '>') {
      out.push_back({line.substr(1, line.find_first_of(" \t") - 1), ""});
    } else if (!out.empty()) {
      for (const char c : line) {
        if (std::isalpha(static_cast<unsigned char>(c)) != 0) out.back().residues += static_cast<char>(std::toupper(c));
      }
    }
  }
  if (out.empty()) throw std::runtime_error(path + " holds no FASTA record");
  return out;
}

/// Index of a residue in the 20 standard amino acids; 20 for anything else (X, B, Z, U, ...).
int residue_index(char c) {
  static const std::string alphabet = "ACDEFGHIKLMNPQRSTVWY";
  const auto pos = alphabet.find(c);
  return pos == std::string::npos ? 20 : static_cast<int>(pos);
}

/// Token embedding (a fixed seeded table, as a trained model would load) plus sinusoidal
/// positions (Vaswani et al. 2017, section 3.5).
performer::row_matrix<float> embed(const std::string& residues, const performer::row_matrix<float>& table) {
  const auto n = static_cast<Eigen::Index>(residues.size());
  const Eigen::Index d = table.cols();
  performer::row_matrix<float> x(n, d);
  for (Eigen::Index i = 0; i < n; ++i) {
    x.row(i) = table.row(residue_index(residues[static_cast<std::size_t>(i)]));
    for (Eigen::Index c = 0; c < d; c += 2) {
      const double angle = static_cast<double>(i) / std::pow(10000.0, static_cast<double>(c) / static_cast<double>(d));
      x(i, c) += static_cast<float>(std::sin(angle));
      if (c + 1 < d) x(i, c + 1) += static_cast<float>(std::cos(angle));
    }
  }
  return x;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: " << argv[0] << " FILE.fa [--layers L] [--features M] [--max N]\n";
    return 2;
  }
  Eigen::Index layers = 2;
  Eigen::Index features = 256;
  std::size_t max_records = 10;
  for (int i = 2; i + 1 < argc; i += 2) {
    const std::string opt = argv[i];
    if (opt == "--layers") layers = std::atol(argv[i + 1]);
    else if (opt == "--features") features = std::atol(argv[i + 1]);
    else if (opt == "--max") max_records = static_cast<std::size_t>(std::atol(argv[i + 1]));
    else {
      std::cerr << "unknown option " << opt << "\n";
      return 2;
    }
  }
  try {
    const auto proteins = read_fasta(argv[1]);
    constexpr Eigen::Index d_model = 512;
    constexpr Eigen::Index heads = 8;
    const performer::block_config cfg{.d_model = d_model, .heads = heads};
    using favor = performer::favor_attention<float>;
    using exact = performer::tiled_softmax_attention<float>;
    // Each layer draws its own random features; both stacks share the seed, hence the weights.
    const performer::transformer_stack<favor> favor_stack(
        cfg, layers, [&](Eigen::Index l) { return favor(d_model / heads, features, 1000 + static_cast<std::uint64_t>(l)); }, 7);
    const performer::transformer_stack<exact> exact_stack(cfg, layers, exact{}, 7);
    performer::row_matrix<float> table(21, d_model);
    performer::detail::xoshiro256ss rng(3);
    for (Eigen::Index r = 0; r < table.rows(); ++r) {
      for (Eigen::Index c = 0; c < d_model; ++c) table(r, c) = static_cast<float>(2 * rng.uniform() - 1);
    }

    std::cout << "encoding " << std::min(max_records, proteins.size()) << " of " << proteins.size()
              << " proteins from " << argv[1] << " (" << layers << " layers, d_model " << d_model
              << ", " << heads << " heads, FAVOR+ with m = " << features << ")\n"
              << std::left << std::setw(16) << "protein" << std::right << std::setw(8) << "length"
              << std::setw(12) << "FAVOR+ ms" << std::setw(12) << "exact ms" << std::setw(14)
              << "rel. diff" << "\n";
    for (std::size_t p = 0; p < std::min(max_records, proteins.size()); ++p) {
      const auto x = embed(proteins[p].residues, table);
      const auto t0 = std::chrono::steady_clock::now();
      const auto y_favor = favor_stack.forward(x);
      const auto t1 = std::chrono::steady_clock::now();
      const auto y_exact = exact_stack.forward(x);
      const auto t2 = std::chrono::steady_clock::now();
      if (!y_favor.allFinite() || !y_exact.allFinite()) {
        std::cerr << "error: non-finite encoding of " << proteins[p].name << "\n";
        return 1;
      }
      std::cout << std::left << std::setw(16) << proteins[p].name.substr(0, 15) << std::right
                << std::setw(8) << x.rows() << std::fixed << std::setprecision(2) << std::setw(12)
                << std::chrono::duration<double, std::milli>(t1 - t0).count() << std::setw(12)
                << std::chrono::duration<double, std::milli>(t2 - t1).count() << std::setw(14)
                << std::setprecision(4) << (y_favor - y_exact).norm() / y_exact.norm() << "\n";
      std::cout.unsetf(std::ios::fixed);
    }
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
