// performer_run: runs a model file (docs/model_format.md) from the command line. Token ids come
// from a .npy array or a FASTA file; logits or final hidden states go to a .npy file, or the
// model generates a continuation of each sequence. `performer_run --help` lists the options;
// README.md ("Running a model file") shows a session.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <iomanip>
#include <iostream>
#include <new>
#include <stdexcept>
#include <string>
#include <variant>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include <performer/io.hpp>
#include <performer/performer.hpp>

#include "npy.hpp"
#include "protein_input.hpp"
#include "run_options.hpp"

namespace {

/// The token sequences to run: B rows (equal lengths from a .npy, any lengths from FASTA).
struct input {
  std::vector<std::vector<std::int64_t>> rows;
  std::vector<std::string> names;  ///< FASTA record names; empty for .npy
  bool one_dimensional = false;    ///< a [N] .npy: the output drops the batch axis too
  std::size_t longest = 0;
};

/// An error of the run (not of the command line): printed, exit status 1.
struct run_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// The alphabet for --fasta: --alphabet, else the file's metadata "alphabet".
std::string alphabet_of(const run::options& o, long long vocab) {
  std::string alphabet;
  if (o.alphabet) {
    alphabet = *o.alphabet;
  } else {
    const performer::io::safetensors_file f(o.model);
    const auto it = f.metadata().find("alphabet");
    if (it == f.metadata().end()) {
      throw run_error(o.model + " has no \"alphabet\" in its metadata, so FASTA residues "
                      "cannot be mapped to token ids: give one with --alphabet STRING");
    }
    alphabet = it->second;
  }
  try {
    protein_input::check_alphabet(alphabet, vocab);
  } catch (const std::runtime_error& e) {
    throw run_error(std::string(o.alphabet ? "--alphabet" : o.model) + ": " + e.what());
  }
  return alphabet;
}

input read_input(const run::options& o, long long vocab) {
  input in;
  if (o.fasta) {
    const std::string alphabet = alphabet_of(o, vocab);
    for (const auto& record : protein_input::read_fasta(o.input)) {
      in.rows.push_back(protein_input::to_tokens(record, alphabet));
      in.names.push_back(record.name);
    }
  } else {
    const npy::token_array a = npy::read_tokens(o.input);
    in.one_dimensional = a.shape.size() == 1;
    const auto b = static_cast<std::size_t>(in.one_dimensional ? 1 : a.shape[0]);
    const std::size_t n = a.values.size() / b;
    for (std::size_t r = 0; r < b; ++r) {
      in.rows.emplace_back(a.values.begin() + static_cast<std::ptrdiff_t>(r * n),
                           a.values.begin() + static_cast<std::ptrdiff_t>((r + 1) * n));
    }
  }
  // Checked here, before any work, so that the message names the input's own indices.
  for (std::size_t r = 0; r < in.rows.size(); ++r) {
    in.longest = std::max(in.longest, in.rows[r].size());
    for (std::size_t i = 0; i < in.rows[r].size(); ++i) {
      const std::int64_t t = in.rows[r][i];
      if (t < 0 || t >= vocab) {
        throw run_error(o.input + ": token " + std::to_string(t) + " at [" +
                        (in.one_dimensional ? "" : std::to_string(r) + ", ") + std::to_string(i) +
                        "] is outside [0, " + std::to_string(vocab) + "), the model's vocab");
      }
    }
  }
  return in;
}

std::string mechanism_name(const std::string& kind, bool tiled) {
  if (tiled) return "exact softmax attention, tiled";
  if (kind == "softmax") return "exact softmax attention";
  if (kind == "favor") return "FAVOR+ attention";
  return "LSH attention";
}

template <class Model>
void forward_all(const run::options& o, const Model& model, const input& in, bool causal,
                 const std::string& label) {
  using T = typename Model::scalar_type;
  const auto width = static_cast<std::size_t>(o.embeddings ? model.d_model() : model.config().vocab);
  const std::size_t b = in.rows.size();
  std::vector<T> out(b * in.longest * width, T(0));  // FASTA rows shorter than the longest: zeros
  typename Model::workspace_type ws;
  run::progress bar(o.progress);
  const auto t0 = std::chrono::steady_clock::now();
  for (std::size_t r = 0; r < b; ++r) {
    const auto n = static_cast<performer::index_t>(in.rows[r].size());
    bar.update("sequence " + std::to_string(r + 1) + " of " + std::to_string(b) + " (" +
               std::to_string(n) + " tokens)");
    Eigen::Map<performer::row_matrix<T>> y(out.data() + r * in.longest * width, n,
                                           static_cast<performer::index_t>(width));
    if (o.embeddings) {
      model.embed(in.rows[r], y, {}, ws, causal);
    } else {
      model.forward(in.rows[r], y, {}, ws, causal);
    }
  }
  bar.finish();
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::vector<std::int64_t> shape{static_cast<std::int64_t>(in.longest),
                                  static_cast<std::int64_t>(width)};
  if (!in.one_dimensional) shape.insert(shape.begin(), static_cast<std::int64_t>(b));
  npy::write(o.output, shape, out.data());
  std::cerr << "performer_run: wrote " << o.output << ": " << (o.embeddings ? "embeddings" : "logits")
            << ", " << (o.use_double ? "float64 " : "float32 ") << npy::detail::shape_text(shape)
            << " (" << label << ", " << (causal ? "causal" : "bidirectional") << "; " << b
            << (b == 1 ? " sequence" : " sequences") << " in " << std::setprecision(3) << seconds
            << " s)\n";
}

template <class Model>
void generate_all(const run::options& o, const Model& model, const input& in,
                  const std::string& alphabet, const std::string& label) {
  const std::size_t b = in.rows.size();
  const auto count = static_cast<performer::index_t>(o.generate);
  std::vector<std::int64_t> all;
  all.reserve(b * static_cast<std::size_t>(count));
  run::progress bar(o.progress);
  const auto t0 = std::chrono::steady_clock::now();
  // The status line moves as tokens come, in tenths of the count (a log gets ten lines per
  // sequence, not one per token).
  const performer::index_t every = std::max<performer::index_t>(1, count / 10);
  for (std::size_t r = 0; r < b; ++r) {
    const auto status = [&](performer::index_t done) {
      bar.update("generating after sequence " + std::to_string(r + 1) + " of " +
                 std::to_string(b) + ": token " + std::to_string(done) + " of " +
                 std::to_string(count));
    };
    status(0);
    const std::vector<std::int64_t> ids = model.generate(
        in.rows[r], count, {.temperature = o.temperature, .seed = o.seed},
        [&](std::int64_t, performer::index_t i) {
          if ((i + 1) % every == 0 || i + 1 == count) status(i + 1);
          return true;
        });
    bar.finish();
    // One line per sequence: its ids, and with an alphabet the residues they stand for.
    if (!in.names.empty()) std::cout << in.names[r] << ": ";
    for (std::size_t i = 0; i < ids.size(); ++i) std::cout << (i ? " " : "") << ids[i];
    if (!alphabet.empty()) {
      std::string letters;
      for (const std::int64_t t : ids) {
        letters += t < static_cast<std::int64_t>(alphabet.size()) ? alphabet[static_cast<std::size_t>(t)] : '?';
      }
      std::cout << "  (" << letters << ")";
    }
    std::cout << "\n" << std::flush;
    all.insert(all.end(), ids.begin(), ids.end());
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::cerr << "performer_run: generated " << count << (count == 1 ? " token" : " tokens")
            << " after each of " << b << (b == 1 ? " sequence" : " sequences") << " (" << label
            << ", ";
  if (o.temperature == 0) {
    std::cerr << "greedy";
  } else {
    std::cerr << "temperature " << o.temperature << ", seed " << o.seed;
  }
  std::cerr << ") in " << std::setprecision(3) << seconds << " s\n";
  if (!o.output.empty()) {
    std::vector<std::int64_t> shape{static_cast<std::int64_t>(count)};
    if (!in.one_dimensional) shape.insert(shape.begin(), static_cast<std::int64_t>(b));
    npy::write(o.output, shape, all.data());
    std::cerr << "performer_run: wrote " << o.output << ": int64 " << npy::detail::shape_text(shape)
              << "\n";
  }
}

template <class Model>
void run_model(const run::options& o, const Model& model, const std::string& label) {
  const long long vocab = model.config().vocab;
  const input in = read_input(o, vocab);
  const bool causal = o.causal.value_or(model.config().block.causal);
  if (o.generate < 0) {
    forward_all(o, model, in, causal, label);
    return;
  }
  if (!causal) {
    throw run_error(o.model + " is a bidirectional model; --generate needs a causal one (add "
                    "--causal to decode it causally all the same)");
  }
  std::string alphabet;
  if (o.fasta || o.alphabet) alphabet = alphabet_of(o, vocab);
  generate_all(o, model, in, alphabet, label);
}

template <class T>
void run_file(const run::options& o) {
  const performer::io::model_description d = performer::io::read_model_config(o.model);
  const std::string& kind = d.attention.kind;
  const bool tiled = o.mechanism == "tiled";
  if (!o.mechanism.empty() && o.mechanism != kind && !(tiled && kind == "softmax")) {
    throw run_error("--mechanism " + o.mechanism + ": " + o.model + " holds \"" + kind +
                    "\" attention, which runs as " + kind +
                    (kind == "softmax" ? " or tiled (the same exact attention in O(N) memory)"
                                       : " only (its parameters are that mechanism's)"));
  }
  const std::string label = mechanism_name(kind, tiled);
  if (tiled) {
    run_model(o, performer::io::load_model<performer::tiled_softmax_attention<T>>(o.model), label);
    return;
  }
  const auto model = performer::io::load_any_model<T>(o.model);
  std::visit([&](const auto& m) { run_model(o, m, label); }, model);
}

}  // namespace

int main(int argc, char** argv) {
  run::options o;
  try {
    o = run::parse(argc, argv);
  } catch (const run::usage_error& e) {
    std::cerr << "performer_run: " << e.what() << " (performer_run --help lists the options)\n";
    return 2;
  }
  if (o.help) {
    run::usage(std::cout);
    return EXIT_SUCCESS;
  }
  if (o.threads > 0) {
#ifdef _OPENMP
    omp_set_num_threads(o.threads);
#else
    std::cerr << "performer_run: built without OpenMP: --threads " << o.threads
              << " ignored, running single-threaded\n";
#endif
  }
  try {
    if (o.use_double) {
      run_file<double>(o);
    } else {
      run_file<float>(o);
    }
  } catch (const std::bad_alloc&) {
    std::cerr << "performer_run: error: out of memory\n";
    return EXIT_FAILURE;
  } catch (const std::exception& e) {
    std::cerr << "performer_run: error: " << e.what() << "\n";
    return EXIT_FAILURE;
  }
  return EXIT_SUCCESS;
}
