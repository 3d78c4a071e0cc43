/// @file examples/protein_model_file.hpp
/// @brief The protein_encoder example with model files (docs/model_format.md): its FAVOR+ stack,
/// residue table and sinusoidal positions saved as one transformer_model with the amino-acid
/// alphabet (--save-model), and any model file run over a FASTA file (--model). Needs the io
/// component (performer::io, nlohmann-json); protein_encoder.cpp includes it only then.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <iomanip>
#include <iostream>
#include <sstream>
#include <type_traits>
#include <stdexcept>
#include <string>
#include <variant>
#include <vector>

#include <performer/io.hpp>
#include <performer/performer.hpp>
#include <performer/testing/counting_allocator.hpp>

#include "protein_input.hpp"

namespace protein_model_file {

using performer::index_t;

/// 64-bit FNV-1a of a matrix's bytes: equal fingerprints mean (all but surely) bit-identical
/// encodings, which the example's test compares across a save and a load.
template <class Matrix>
std::uint64_t fingerprint(const Matrix& m) {
  std::uint64_t h = 0xcbf29ce484222325ULL;
  const auto* bytes = reinterpret_cast<const unsigned char*>(m.data());
  for (std::size_t i = 0; i < static_cast<std::size_t>(m.size()) * sizeof(*m.data()); ++i) {
    h = (h ^ bytes[i]) * 0x100000001b3ULL;
  }
  return h;
}

inline std::string hex(std::uint64_t x) {
  std::ostringstream os;
  os << "0x" << std::hex << std::setw(16) << std::setfill('0') << x;
  return os.str();
}

/// The example's FAVOR+ encoder as one transformer_model: the stack's layers, mechanisms and
/// final norm, the residue table as token embedding (vocab 21: amino_alphabet) and the
/// sinusoidal positions as learned ones for `positions` tokens. Its embed() of a chain's tokens
/// is bit for bit the stack's forward of protein_input::embed (same sums in the same order).
template <class Stack, class T = typename Stack::scalar_type>
auto as_model(const Stack& stack, const performer::row_matrix<T>& table, index_t positions) {
  using favor = typename Stack::block_type::attention_type;
  const performer::model_config config{.vocab = table.rows(), .layers = stack.layers(),
                                       .block = stack.layer(0).config(),
                                       .max_positions = positions};
  performer::transformer_model<favor> model(
      config, [&](index_t l) { return stack.layer(l).attention(); }, 7);
  for (index_t l = 0; l < stack.layers(); ++l) {
    model.stack().layer(l).set_parameters(stack.layer(l).parameters());
  }
  model.stack().set_final_norm(stack.final_norm_gain(), stack.final_norm_bias());
  performer::model_parameters<T> p = model.parameters();
  p.token_embedding = table;
  p.position_embedding = protein_input::positions<T>(positions, table.cols());
  model.set_parameters(std::move(p));
  return model;
}

/// --save-model FILE: the example's stack as a model file (positions for the longest chain, at
/// least 4,096) with the amino-acid alphabet; returns the model read back from the file.
template <class Stack>
auto save_and_reload(const Stack& stack, const std::string& path,
                     const std::vector<protein_input::protein>& chains) {
  using T = typename Stack::scalar_type;
  std::size_t longest = 4096;
  for (const auto& c : chains) longest = std::max(longest, c.residues.size());
  const auto table = protein_input::embedding_table<T>(stack.layer(0).config().d_model);
  performer::io::save_model(as_model(stack, table, static_cast<index_t>(longest)), path,
                            performer::io::dtype::f32,
                            {{"alphabet", std::string(protein_input::amino_alphabet)}});
  std::cout << "saved the FAVOR+ encoder to " << path << " (alphabet "
            << protein_input::amino_alphabet << ", positions for " << longest
            << " residues) and reloaded it\n";
  return performer::io::load_model<typename Stack::block_type::attention_type>(path);
}

/// Whether `model` encodes `chain` as `y`, bit for bit (an error on stderr if not); appends the
/// chain's fingerprint line to `prints`.
template <class Model, class Matrix>
bool same_encoding(const Model& model, const protein_input::protein& chain, const Matrix& y,
                   std::vector<std::string>& prints) {
  Matrix h(y.rows(), y.cols());
  typename Model::workspace_type ws;
  model.embed(protein_input::to_tokens(chain, std::string(protein_input::amino_alphabet)), h, {}, ws);
  prints.push_back("fingerprint " + chain.name + " " + hex(fingerprint(y)));
  if (h == y) return true;
  std::cerr << "error: the reloaded model encodes " << chain.name << " differently (max |diff| "
            << (h - y).cwiseAbs().maxCoeff() << ")\n";
  return false;
}

/// --model FILE: every chain encoded by the file's model (its alphabet maps the residues).
inline int encode_with_file(const std::string& model_path, const std::vector<protein_input::protein>& chains,
                            std::size_t max_chains) {
  const performer::io::safetensors_file header(model_path);
  const auto it = header.metadata().find("alphabet");
  if (it == header.metadata().end()) {
    std::cerr << "error: " << model_path << " has no \"alphabet\" in its metadata (write one with "
              << "--save-model, or see docs/model_format.md)\n";
    return EXIT_FAILURE;
  }
  const std::string alphabet = it->second;
  const auto any = performer::io::load_any_model<float>(model_path);
  return std::visit(
      [&](const auto& model) {
        protein_input::check_alphabet(alphabet, model.config().vocab);
        const auto& c = model.config();
        std::cout << "model " << model_path << ": " << c.layers << (c.layers == 1 ? " layer" : " layers") << ", d_model "
                  << c.block.d_model << ", " << c.block.heads << " heads, vocab " << c.vocab
                  << ", alphabet " << alphabet << "\n"
                  << std::left << std::setw(18) << "chain" << std::right << std::setw(7) << "length"
                  << std::setw(11) << "ms" << std::setw(11) << "MiB" << "\n";
        typename std::decay_t<decltype(model)>::workspace_type ws;
        std::vector<std::string> prints;
        for (std::size_t i = 0; i < std::min(max_chains, chains.size()); ++i) {
          const auto tokens = protein_input::to_tokens(chains[i], alphabet);
          performer::row_matrix<float> hidden(static_cast<index_t>(tokens.size()), c.block.d_model);
          const auto t0 = std::chrono::steady_clock::now();
          const long long bytes = performer::counting::peak_during(
              [&] { model.embed(tokens, hidden, {}, ws); });
          const double ms =
              std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
          std::cout << std::left << std::setw(18) << chains[i].name.substr(0, 17) << std::right
                    << std::setw(7) << tokens.size() << std::fixed << std::setprecision(1)
                    << std::setw(11) << ms << std::setw(11)
                    << static_cast<double>(bytes) / (1024.0 * 1024.0) << "\n";
          std::cout.unsetf(std::ios::fixed);
          prints.push_back("fingerprint " + chains[i].name + " " + hex(fingerprint(hidden)));
        }
        for (const auto& line : prints) std::cout << line << "\n";
        return EXIT_SUCCESS;
      },
      any);
}

}  // namespace protein_model_file
