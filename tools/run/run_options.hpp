/// @file tools/run/run_options.hpp
/// @brief performer_run's command line (parse, --help text) and its progress display.
#pragma once

#include <cmath>
#include <cstdint>
#include <iostream>
#include <optional>
#include <stdexcept>
#include <string>

#include <unistd.h>  // isatty: progress only on a terminal unless asked for

#include "command_line.hpp"  // examples/: option values

namespace run {

/// A bad command line: performer_run prints it with a pointer to --help and exits with 2.
struct usage_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct options {
  std::string model;
  std::string input;           ///< .npy token array, or a FASTA file with --fasta
  bool fasta = false;
  std::string output;          ///< -o
  bool embeddings = false;     ///< --output embeddings (else logits)
  bool use_double = false;
  int threads = 0;             ///< 0: OpenMP's default
  std::string mechanism;       ///< empty: the file's
  std::optional<bool> causal;  ///< --causal / --bidirectional; empty: the file's
  long long generate = -1;     ///< tokens to generate; < 0: no generation
  double temperature = 0.0;
  std::uint64_t seed = 0;
  std::optional<std::string> alphabet;
  bool progress = false;
  bool help = false;
};

inline void usage(std::ostream& out) {
  out << "usage: performer_run MODEL.safetensors INPUT [options]\n"
      << "Runs a model file (docs/model_format.md) on token ids and writes logits or embeddings\n"
      << "as .npy, or generates a continuation of each input sequence.\n"
      << "INPUT: a .npy array of token ids (int64 or int32, [N] or [B, N], little-endian, C\n"
      << "order), or with --fasta a FASTA file whose residues become token ids through the\n"
      << "model's alphabet (metadata key \"alphabet\": token i is its i-th character) or --alphabet.\n"
      << "  -o FILE                 output .npy: float32 ([N, X] for an [N] input, else [B, N, X];\n"
      << "                          FASTA records zero-padded to the longest); with --generate,\n"
      << "                          optional: the new ids as int64 [B, COUNT] ([COUNT] for [N])\n"
      << "  --output logits|embeddings  X = vocab (the default) or d_model (final hidden states)\n"
      << "  --double                run in double (float64 output); default float\n"
      << "  --fasta                 INPUT is a FASTA file\n"
      << "  --alphabet STRING       token i is the i-th character (overrides the file's)\n"
      << "  --mechanism NAME        the file's mechanism (softmax, favor or lsh), or tiled for a\n"
      << "                          softmax file: the same exact attention in O(N) memory\n"
      << "  --causal, --bidirectional  mask future tokens or not, whatever the file says\n"
      << "  --generate COUNT        generate COUNT tokens after each sequence (causal models;\n"
      << "                          not LSH); prints one line of ids per sequence\n"
      << "  --temperature T         0: greedy (default); otherwise sample softmax(logits / T)\n"
      << "  --seed S                seed of the sampling (default 0)\n"
      << "  --threads N             OpenMP threads (default: OpenMP's, OMP_NUM_THREADS)\n"
      << "  --progress              progress on stderr even when it is not a terminal\n"
      << "  --help                  this text\n"
      << "Exit status: 0 on success, 1 on an error (a message on stderr), 2 on a bad command line.\n";
}

/// Parses the command line. @throws usage_error naming the problem.
inline options parse(int argc, char** argv) {
  options o;
  const command_line::reader<usage_error> args(argc, argv);
  const auto value = [&](int& i) { return args.value(i); };
  const auto number = &command_line::reader<usage_error>::number;
  const auto whole = &command_line::reader<usage_error>::whole;
  int positional = 0;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      o.help = true;
    } else if (arg == "-o") {
      o.output = value(i);
    } else if (arg == "--output") {
      const std::string what = value(i);
      if (what != "logits" && what != "embeddings") {
        throw usage_error("--output must be logits or embeddings, got '" + what + "'");
      }
      o.embeddings = what == "embeddings";
    } else if (arg == "--double") {
      o.use_double = true;
    } else if (arg == "--fasta") {
      o.fasta = true;
    } else if (arg == "--alphabet") {
      o.alphabet = value(i);
    } else if (arg == "--mechanism") {
      o.mechanism = value(i);
      if (o.mechanism != "softmax" && o.mechanism != "tiled" && o.mechanism != "favor" &&
          o.mechanism != "lsh") {
        throw usage_error("--mechanism must be softmax, tiled, favor or lsh, got '" +
                          o.mechanism + "'");
      }
    } else if (arg == "--causal" || arg == "--bidirectional") {
      if (o.causal && *o.causal != (arg == "--causal")) {
        throw usage_error("--causal and --bidirectional contradict each other");
      }
      o.causal = arg == "--causal";
    } else if (arg == "--generate") {
      o.generate = whole(arg, value(i), 0, 1e9);
    } else if (arg == "--temperature") {
      o.temperature = number(arg, value(i));
      if (o.temperature < 0) throw usage_error("--temperature must be >= 0");
    } else if (arg == "--seed") {
      o.seed = static_cast<std::uint64_t>(whole(arg, value(i), 0, 9007199254740992.0));
    } else if (arg == "--threads") {
      o.threads = static_cast<int>(whole(arg, value(i), 1, 4096));
    } else if (arg == "--progress") {
      o.progress = true;
    } else if (arg.size() > 1 && arg[0] == '-') {
      throw usage_error("unknown option " + arg);
    } else if (positional == 0) {
      o.model = arg;
      ++positional;
    } else if (positional == 1) {
      o.input = arg;
      ++positional;
    } else {
      throw usage_error("unexpected argument '" + arg + "' (MODEL and INPUT are already given)");
    }
  }
  if (o.help) return o;
  if (positional < 2) throw usage_error(positional == 0 ? "no MODEL given" : "no INPUT given");
  if (o.generate < 0 && o.output.empty()) throw usage_error("no output file given (-o FILE)");
  if (o.generate >= 0 && o.embeddings) {
    throw usage_error("--output embeddings and --generate exclude each other");
  }
  if (o.generate >= 0 && o.causal == false) {
    throw usage_error("--generate decodes causally; --bidirectional cannot apply");
  }
  if (o.generate < 0 && (o.temperature != 0 || o.seed != 0)) {
    throw usage_error("--temperature and --seed apply to --generate only");
  }
  return o;
}

/// One status line on stderr, rewritten in place on a terminal; a line per update otherwise
/// (when --progress asks for it), so a log shows every step.
class progress {
 public:
  explicit progress(bool forced) : tty_(isatty(STDERR_FILENO) == 1), on_(forced || tty_) {}
  progress(const progress&) = delete;
  progress& operator=(const progress&) = delete;
  ~progress() { finish(); }

  void update(const std::string& text) {
    if (!on_) return;
    if (tty_) {
      std::cerr << "\r\033[K" << text << std::flush;  // carriage return, erase the line
      open_ = true;
    } else {
      std::cerr << text << "\n";
    }
  }
  /// Ends the status line (before a message or on exit).
  void finish() {
    if (open_) std::cerr << "\r\033[K" << std::flush;
    open_ = false;
  }

 private:
  bool tty_;
  bool on_;
  bool open_ = false;
};

}  // namespace run
