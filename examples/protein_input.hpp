/// @file examples/protein_input.hpp
/// @brief The protein_encoder example's input: FASTA records, chains of them, and the token
/// embedding (a fixed table plus sinusoidal positions) a trained model would apply.
#pragma once

#include <cctype>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include <performer/core/types.hpp>

namespace protein_input {

struct protein {
  std::string name;
  std::string residues;
};

inline std::vector<protein> read_fasta(const std::string& path) {
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
        if (std::isalpha(static_cast<unsigned char>(c)) != 0) {
          out.back().residues += static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
        }
      }
    }
  }
  std::erase_if(out, [](const protein& p) { return p.residues.empty(); });
  if (out.empty()) throw std::runtime_error(path + " holds no FASTA record with residues");
  return out;
}

/// Consecutive records joined into chains of at most `limit` residues (a longer record stays a
/// chain of its own); limit 0 keeps every record alone. A chain is named after its first record.
inline std::vector<protein> make_chains(const std::vector<protein>& records, std::size_t limit) {
  if (limit == 0) return records;
  // append(), not "+" + std::to_string(): inlined here, the latter trips g++ 12's false
  // -Wrestrict on std::string (GCC bug 105329).
  std::vector<protein> chains;
  std::size_t joined = 0;
  for (const auto& r : records) {
    if (chains.empty() || chains.back().residues.size() + r.residues.size() > limit) {
      if (!chains.empty() && joined > 1) chains.back().name.append("+").append(std::to_string(joined - 1));
      chains.push_back(r);
      joined = 1;
    } else {
      chains.back().residues += r.residues;
      ++joined;
    }
  }
  if (joined > 1) chains.back().name.append("+").append(std::to_string(joined - 1));
  return chains;
}

/// Index of a residue in the 20 standard amino acids; 20 for anything else (X, B, Z, U, ...).
inline int residue_index(char c) {
  static const std::string alphabet = "ACDEFGHIKLMNPQRSTVWY";
  const auto pos = alphabet.find(c);
  return pos == std::string::npos ? 20 : static_cast<int>(pos);
}

/// A fixed token-embedding table, uniform in [-1, 1), as a trained model would load one.
/// std::mt19937_64's output is fixed by the C++ standard (unlike the distributions), so the
/// table is the same on every platform.
template <class T>
performer::row_matrix<T> embedding_table(performer::index_t d_model) {
  using performer::index_t;
  std::mt19937_64 rng(3);
  performer::row_matrix<T> table(21, d_model);
  for (index_t r = 0; r < table.rows(); ++r) {
    for (index_t c = 0; c < d_model; ++c) {
      const double u = static_cast<double>(rng() >> 11) * 0x1.0p-53;  // [0, 1), 53 bits
      table(r, c) = static_cast<T>(2 * u - 1);
    }
  }
  return table;
}

/// Token embedding plus sinusoidal positions (Vaswani et al. 2017, section 3.5).
template <class T>
performer::row_matrix<T> embed(const std::string& residues, const performer::row_matrix<T>& table) {
  using performer::index_t;
  const index_t d_model = table.cols();
  const auto n = static_cast<index_t>(residues.size());
  performer::row_matrix<T> x(n, d_model);
  for (index_t i = 0; i < n; ++i) {
    x.row(i) = table.row(residue_index(residues[static_cast<std::size_t>(i)]));
    for (index_t c = 0; c < d_model; c += 2) {
      const double angle = static_cast<double>(i) /
                           std::pow(10000.0, static_cast<double>(c) / static_cast<double>(d_model));
      x(i, c) += static_cast<T>(std::sin(angle));
      x(i, c + 1) += static_cast<T>(std::cos(angle));
    }
  }
  return x;
}

}  // namespace protein_input
