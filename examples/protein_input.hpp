/// @file examples/protein_input.hpp
/// @brief The protein_encoder example's input: FASTA records, chains of them, residues as token
/// ids through an alphabet (also used by tools/run/performer_run --fasta), and the token
/// embedding (a fixed table plus sinusoidal positions) a trained model would apply.
#pragma once

#include <cctype>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <random>
#include <stdexcept>
#include <string>
#include <string_view>
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

/// The example's alphabet (the `alphabet` of its model files, docs/model_format.md): token i is
/// the i-th character, the 20 standard amino acids, then X for any other residue.
inline constexpr std::string_view amino_alphabet = "ACDEFGHIKLMNPQRSTVWYX";

/// Index of a residue in the 20 standard amino acids; 20 (X) for anything else (B, Z, U, ...).
inline int residue_index(char c) {
  const auto pos = amino_alphabet.substr(0, 20).find(c);
  return pos == std::string_view::npos ? 20 : static_cast<int>(pos);
}

/// Throws std::runtime_error unless `alphabet` is non-empty, has no repeated character and at
/// most `vocab` characters (a model may have tokens beyond its alphabet, never fewer).
inline void check_alphabet(const std::string& alphabet, long long vocab) {
  if (alphabet.empty()) throw std::runtime_error("the alphabet is empty");
  for (std::size_t i = 0; i < alphabet.size(); ++i) {
    if (alphabet.find(alphabet[i]) != i) {
      throw std::runtime_error("the alphabet \"" + alphabet + "\" repeats '" +
                               std::string(1, alphabet[i]) + "'");
    }
  }
  if (static_cast<long long>(alphabet.size()) > vocab) {
    throw std::runtime_error("the alphabet has " + std::to_string(alphabet.size()) +
                             " characters but the model only " + std::to_string(vocab) +
                             " tokens");
  }
}

/// Token ids of a record's residues: token i is alphabet[i]. A residue the alphabet lacks
/// becomes X when the alphabet has X (as the example's own embedding does for B, Z, U, ...);
/// otherwise it is an error naming the record and the position (1-based).
inline std::vector<std::int64_t> to_tokens(const protein& p, const std::string& alphabet) {
  const auto unknown = alphabet.find('X');
  std::vector<std::int64_t> out;
  out.reserve(p.residues.size());
  for (std::size_t i = 0; i < p.residues.size(); ++i) {
    auto id = alphabet.find(p.residues[i]);
    if (id == std::string::npos) id = unknown;
    if (id == std::string::npos) {
      throw std::runtime_error("record " + p.name + ": residue '" + std::string(1, p.residues[i]) +
                               "' at position " + std::to_string(i + 1) +
                               " is not in the alphabet \"" + alphabet + "\"");
    }
    out.push_back(static_cast<std::int64_t>(id));
  }
  return out;
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

/// Sinusoidal positions (Vaswani et al. 2017, section 3.5) for n tokens: row i holds
/// sin(i / 10000^(c / d)) at even c and cos at c + 1, each rounded to T.
template <class T>
performer::row_matrix<T> positions(performer::index_t n, performer::index_t d_model) {
  using performer::index_t;
  performer::row_matrix<T> p(n, d_model);
  for (index_t i = 0; i < n; ++i) {
    for (index_t c = 0; c < d_model; c += 2) {
      const double angle = static_cast<double>(i) /
                           std::pow(10000.0, static_cast<double>(c) / static_cast<double>(d_model));
      p(i, c) = static_cast<T>(std::sin(angle));
      p(i, c + 1) = static_cast<T>(std::cos(angle));
    }
  }
  return p;
}

/// Token embedding plus sinusoidal positions: one rounding per entry, as a transformer_model
/// with `table` as token embedding and positions() as learned positions computes it (so the
/// example's model files reproduce its encodings bit for bit).
template <class T>
performer::row_matrix<T> embed(const std::string& residues, const performer::row_matrix<T>& table) {
  using performer::index_t;
  const auto n = static_cast<index_t>(residues.size());
  performer::row_matrix<T> x = positions<T>(n, table.cols());
  for (index_t i = 0; i < n; ++i) {
    x.row(i) = table.row(residue_index(residues[static_cast<std::size_t>(i)])) + x.row(i);
  }
  return x;
}

}  // namespace protein_input
