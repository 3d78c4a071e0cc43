// Trains a small protein language model (masked-LM, as ESM and ProtBERT are trained) with FAVOR+
// attention on the sequences of a FASTA file, and shows the loss falling.
//
//   performer_example_train_protein FILE.fa [--steps 200] [--window 128] [--batch 8]
//       [--layers 2] [--d-model 64] [--heads 4] [--features 64] [--lr 3e-3] [--seed 1]
//       [--min-drop X] [--save RUN.safetensors] [--resume RUN.safetensors]
//
// Each step draws `batch` windows of `window` residues from the records (shorter records whole),
// corrupts 15% of each window by BERT's recipe (80% the mask token, 10% a random residue, 10%
// unchanged), and trains on predicting the originals (performer::trainer: AdamW, gradient
// clipping). Tokens are the 20 amino acids, X for anything else, and the mask token. A progress
// line shows the step, the loss and its running mean; the end compares the mean loss of the
// first and the last tenth of the steps (with --min-drop X the program fails unless it fell by
// at least X nats: the example's test). With the io component, --save writes a checkpoint: the
// model file with its alphabet (performer_run and load_model read it) plus AdamW's state; and
// --resume continues a checkpoint's run up to --steps in all, with the bits of a run that never
// stopped, given the same FASTA file, --seed, --window, --batch and --lr (step s's windows and
// masks come from seeds derived from s; the model's shape comes from the file).
//
// Real proteins: Debian's hmmer-examples package has FASTA files under
// /usr/share/doc/hmmer/examples/ (e.g. tutorial/globins45.fa, 45 globins).
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <stdexcept>
#include <string>
#include <vector>

#include <performer/performer.hpp>

#ifdef PERFORMER_EXAMPLES_WITH_IO
#include <performer/io/checkpoint.hpp>
#endif

#include "command_line.hpp"
#include "protein_input.hpp"

namespace {

using performer::index_t;
using favor = performer::favor_attention<float>;

struct options {
  std::string path, save, resume;
  index_t steps = 200, window = 128, batch = 8, layers = 2, d_model = 64, heads = 4;
  index_t features = 64;
  double lr = 3e-3, min_drop = -1;
  std::uint64_t seed = 1;
};

options parse(int argc, char** argv) {
  using args = command_line::reader<std::invalid_argument>;
  const args read(argc, argv);
  options o;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    const auto whole = [&](double min, double max) {
      return static_cast<index_t>(args::whole(flag, read.value(i), min, max));
    };
    if (flag == "--steps") o.steps = whole(1, 1e7);
    else if (flag == "--window") o.window = whole(2, 1 << 20);
    else if (flag == "--batch") o.batch = whole(1, 4096);
    else if (flag == "--layers") o.layers = whole(1, 64);
    else if (flag == "--d-model") o.d_model = whole(2, 8192);
    else if (flag == "--heads") o.heads = whole(1, 256);
    else if (flag == "--features") o.features = whole(1, 1 << 16);
    else if (flag == "--seed") o.seed = static_cast<std::uint64_t>(whole(0, 1e15));
    else if (flag == "--lr") o.lr = args::number(flag, read.value(i));
    else if (flag == "--min-drop") o.min_drop = args::number(flag, read.value(i));
    else if (flag == "--save") o.save = read.value(i);
    else if (flag == "--resume") o.resume = read.value(i);
    else if (!flag.starts_with("--") && o.path.empty()) o.path = flag;
    else throw std::invalid_argument("unknown option " + flag);
  }
  if (o.path.empty()) throw std::invalid_argument("no FASTA file given");
  if (o.d_model % o.heads != 0 || (o.d_model / o.heads) % 2 != 0) {
    throw std::invalid_argument("--d-model must be a multiple of --heads with an even quotient "
                                "(rotary positions need even head widths)");
  }
  return o;
}

constexpr std::int64_t mask_token = 21;  // after the 21 residue tokens (20 amino acids and X)
constexpr index_t vocab = 22;

/// One training window: a random stretch of a random record (a shorter record whole).
std::vector<std::int64_t> draw_window(const std::vector<std::vector<std::int64_t>>& records,
                                      index_t window, performer::detail::xoshiro256ss& rng) {
  const auto& r = records[static_cast<std::size_t>(rng.uniform() * records.size())];
  const auto n = static_cast<index_t>(r.size());
  const index_t length = std::min(window, n);
  const auto start = static_cast<index_t>(rng.uniform() * static_cast<double>(n - length + 1));
  return {r.begin() + start, r.begin() + start + length};
}

/// "[=====     ] step 120/200  loss 2.714  mean of the last 20 2.803", redrawn in place.
void progress(index_t step, index_t steps, double loss, double recent, index_t span) {
  constexpr int width = 30;
  const int filled = static_cast<int>(static_cast<double>(width) * step / steps);
  std::printf("\r[%s%s] step %lld/%lld  loss %.3f  mean of the last %lld %.3f",
              std::string(static_cast<std::size_t>(filled), '=').c_str(),
              std::string(static_cast<std::size_t>(width - filled), ' ').c_str(),
              static_cast<long long>(step), static_cast<long long>(steps), loss,
              static_cast<long long>(span), recent);
  if (step == steps || step % std::max<index_t>(1, steps / 10) == 0) std::printf("\n");
  std::fflush(stdout);
}

/// The model of a checkpoint (--resume).
performer::transformer_model<favor> load([[maybe_unused]] const std::string& path) {
#ifdef PERFORMER_EXAMPLES_WITH_IO
  return performer::io::load_model<favor>(path);
#else
  throw std::invalid_argument("--resume needs the io component (nlohmann-json)");
#endif
}

int run(const options& o) {
#ifndef PERFORMER_EXAMPLES_WITH_IO
  if (!o.save.empty()) throw std::invalid_argument("--save needs the io component (nlohmann-json)");
#endif
  const auto records = protein_input::read_fasta(o.path);
  std::vector<std::vector<std::int64_t>> tokens;
  std::size_t residues = 0;
  for (const auto& r : records) {
    tokens.emplace_back();
    for (const char c : r.residues) tokens.back().push_back(protein_input::residue_index(c));
    residues += r.residues.size();
  }
  std::printf("%zu records, %zu residues from %s\n", records.size(), residues, o.path.c_str());

  performer::model_config config;
  config.vocab = vocab;
  config.layers = o.layers;
  config.block.d_model = o.d_model;
  config.block.heads = o.heads;
  config.block.rotary = true;
  const index_t head_dim = o.d_model / o.heads;
  auto model = o.resume.empty()
                   ? performer::transformer_model<favor>(
                         config,
                         [&](index_t, std::uint64_t seed) { return favor(head_dim, o.features, seed); },
                         o.seed)
                   : load(o.resume);
  performer::trainer<favor> train(model, {.learning_rate = o.lr, .max_grad_norm = 1.0});
  index_t done = 0;  // steps the run had taken before this process
  if (!o.resume.empty()) {
#ifdef PERFORMER_EXAMPLES_WITH_IO
    performer::io::load_optimizer_state(train, o.resume);
    done = static_cast<index_t>(train.optimizer().steps());
    std::printf("resumed %s after step %lld\n", o.resume.c_str(), static_cast<long long>(done));
#endif
  }
  const performer::model_config& shape = model.config();
  std::printf("masked-LM, FAVOR+ (m = %lld), %lld layers, d_model %lld, %lld heads; %lld steps "
              "of %lld windows of up to %lld residues\n",
              static_cast<long long>(model.stack().layer(0).attention().feature_count()),
              static_cast<long long>(shape.layers), static_cast<long long>(shape.block.d_model),
              static_cast<long long>(shape.block.heads), static_cast<long long>(o.steps),
              static_cast<long long>(o.batch), static_cast<long long>(o.window));
  if (done >= o.steps) {
    throw std::invalid_argument("the checkpoint has taken " + std::to_string(done) +
                                " steps already; --steps counts them, so ask for more");
  }

  std::vector<std::vector<std::int64_t>> inputs(static_cast<std::size_t>(o.batch));
  std::vector<std::vector<std::int64_t>> targets(inputs.size());
  std::vector<double> losses;
  const index_t span = std::max<index_t>(1, (o.steps - done) / 10);
  for (index_t step = done + 1; step <= o.steps; ++step) {
    // Step s's windows and masks depend on s alone, so a resumed run draws what an unbroken
    // one would.
    performer::detail::xoshiro256ss rng(
        performer::detail::derive_seed(~o.seed, static_cast<std::uint64_t>(step)));
    for (std::size_t b = 0; b < inputs.size(); ++b) {
      const auto window = draw_window(tokens, o.window, rng);
      auto e = performer::masked_lm_targets(
          window, mask_token, vocab, 0.15,
          performer::detail::derive_seed(o.seed, static_cast<std::uint64_t>(step * o.batch + b)));
      inputs[b] = std::move(e.inputs);
      targets[b] = std::move(e.targets);
    }
    losses.push_back(train.step(inputs, targets));
    const auto first = losses.end() - std::min<std::ptrdiff_t>(span, losses.size());
    double recent = 0;
    for (auto it = first; it != losses.end(); ++it) recent += *it;
    recent /= static_cast<double>(losses.end() - first);
    progress(step, o.steps, losses.back(), recent, losses.end() - first);
  }
  double start = 0, end = 0;
  for (index_t i = 0; i < span; ++i) {
    start += losses[static_cast<std::size_t>(i)] / static_cast<double>(span);
    end += losses[losses.size() - 1 - static_cast<std::size_t>(i)] / static_cast<double>(span);
  }
  std::printf("masked-LM loss: %.3f nats over the first %lld steps, %.3f over the last %lld "
              "(uniform guessing: %.3f)\n",
              start, static_cast<long long>(span), end, static_cast<long long>(span), 3.045);
  if (!o.save.empty()) {
#ifdef PERFORMER_EXAMPLES_WITH_IO
    performer::io::save_checkpoint(
        train, o.save, {{"alphabet", std::string(protein_input::amino_alphabet) + "#"}});
    std::printf("saved the model and the optimiser's state to %s\n", o.save.c_str());
#endif
  }
  if (o.min_drop >= 0 && start - end < o.min_drop) {
    std::fprintf(stderr, "the loss fell by %.3f nats, less than --min-drop %.3f\n", start - end,
                 o.min_drop);
    return 1;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    if (std::string(argv[i]) == "--help") {
      const options d;
      std::printf("usage: performer_example_train_protein FILE.fa [--steps %lld] [--window %lld] "
                  "[--batch %lld] [--layers %lld] [--d-model %lld] [--heads %lld] "
                  "[--features %lld] [--lr %g] [--seed %llu] [--min-drop X] [--save RUN] "
                  "[--resume RUN]\n",
                  static_cast<long long>(d.steps), static_cast<long long>(d.window),
                  static_cast<long long>(d.batch), static_cast<long long>(d.layers),
                  static_cast<long long>(d.d_model), static_cast<long long>(d.heads),
                  static_cast<long long>(d.features), d.lr,
                  static_cast<unsigned long long>(d.seed));
      return 0;
    }
  }
  try {
    return run(parse(argc, argv));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "train_protein: %s\n", e.what());
    return 2;
  }
}
