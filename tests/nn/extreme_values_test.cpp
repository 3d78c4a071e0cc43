// Covers performer/nn/transformer_block.hpp and transformer_stack.hpp under extreme values:
// a float block against the double block with the same parameters (softmax, tiled, FAVOR and
// one-window LSH attention; pre-LN and post-LN; bidirectional and causal) over inputs with row
// norms up to 100 and whole inputs at 1e-30, subnormal (1e-40) and 1e30; a pre-LN stack at
// huge input scales; and a float stack against its double twin. The refusal contract is that
// of performer/testing/extreme_values.hpp.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <sstream>
#include <vector>

#include <performer/favor/favor_attention.hpp>
#include <performer/lsh/lsh_attention.hpp>
#include <performer/nn/transformer_block.hpp>
#include <performer/nn/transformer_stack.hpp>
#include <performer/softmax/softmax_attention.hpp>
#include <performer/softmax/tiled_softmax_attention.hpp>
#include <performer/testing/detail/extreme_contract.hpp>

#include "instances/instances.hpp"

namespace performer::conformance::extreme {
// Named as well as anonymous: the unity build compiles several test files as one.
namespace nn_extreme_values_test {
namespace {

/// One bucket (zero rotations: every projection is 0, a tie, so every vector goes to bucket 0)
/// and one chunk of all N keys: every query's window is every key it may see (both rounds
/// propose each key, counted once), so LSH is exact softmax attention, with the shared-QK
/// self-penalty.
template <class T>
lsh_attention<T> one_window_lsh(index_t dim, bool shared_qk, index_t n) {
  lsh_attention<T> lsh(dim,
                       {.buckets = 2, .hashes = 2, .chunk = n, .shared_qk = shared_qk, .seed = 1});
  for (index_t r = 0; r < 2; ++r) lsh.hash_family().set_rotation(r, row_matrix<T>::Zero(dim, 1));
  return lsh;
}

constexpr index_t favor_features_m = 32;

template <class To, class From>
block_parameters<To> cast_parameters(const block_parameters<From>& p) {
  block_parameters<To> r;
  r.w_q = p.w_q.template cast<To>();
  r.w_k = p.w_k.template cast<To>();
  r.w_v = p.w_v.template cast<To>();
  r.w_o = p.w_o.template cast<To>();
  r.b_q = p.b_q.template cast<To>();
  r.b_k = p.b_k.template cast<To>();
  r.b_v = p.b_v.template cast<To>();
  r.b_o = p.b_o.template cast<To>();
  r.norm1_gain = p.norm1_gain.template cast<To>();
  r.norm1_bias = p.norm1_bias.template cast<To>();
  r.norm2_gain = p.norm2_gain.template cast<To>();
  r.norm2_bias = p.norm2_bias.template cast<To>();
  r.w_ff1 = p.w_ff1.template cast<To>();
  r.b_ff1 = p.b_ff1.template cast<To>();
  r.w_ff2 = p.w_ff2.template cast<To>();
  r.b_ff2 = p.b_ff2.template cast<To>();
  return r;
}

constexpr index_t block_tokens = 32;
constexpr index_t block_width = 16;  // d_model
constexpr index_t block_heads = 2;   // head width 8
constexpr index_t block_ff = 32;

struct block_input {
  const char* name;
  double row_norm;  // 0: keep the uniform rows
  double scale;
};

// Row norms up to 100, and whole inputs at 1e-30, subnormal (1e-40) and 1e30.
const std::vector<block_input>& block_inputs() {
  static const std::vector<block_input> inputs = {
      {"x row norms 1", 1, 1}, {"x row norms 10", 10, 1},         {"x row norms 100", 100, 1},
      {"x x 1e-30", 0, 1e-30}, {"x subnormal (1e-40)", 0, 1e-40}, {"x x 1e30", 0, 1e30},
  };
  return inputs;
}

row_matrix<double> block_x(const block_input& in, std::uint64_t seed) {
  row_matrix<double> x = random_matrix<double>(block_tokens, block_width, seed);
  if (in.row_norm > 0) {
    for (index_t i = 0; i < x.rows(); ++i) x.row(i) *= in.row_norm / x.row(i).norm();
  }
  x *= in.scale;
  return x.cast<float>().cast<double>();  // float-rounded: both precisions run the same input
}

/// LayerNorm in long double with unit gain and zero bias, eps as given (the reference of the
/// stack's final norm).
ld_matrix layer_norm_reference(const row_matrix<double>& x, double eps) {
  ld_matrix out(x.rows(), x.cols());
  for (index_t i = 0; i < x.rows(); ++i) {
    const auto row = x.row(i).cast<ld>().array();
    const ld mean = row.mean();
    const ld var = (row - mean).square().mean();
    out.row(i) = ((row - mean) / std::sqrt(var + static_cast<ld>(eps))).matrix();
  }
  return out;
}

/// Largest |logit| the first attention sublayer can see (sum_c |q_c k_c| / sqrt(d_head) over
/// heads and pairs), from the double parameters, in long double: what exact attention's float
/// rounding scales with.
ld first_layer_logits(const block_parameters<double>& params, const row_matrix<double>& x,
                      bool pre) {
  const ld_matrix h = pre ? layer_norm_reference(x, 1e-5) : ld_matrix(x.cast<ld>());
  const ld_matrix q = (h * params.w_q.cast<ld>()).rowwise() + params.b_q.cast<ld>();
  const ld_matrix k = (h * params.w_k.cast<ld>()).rowwise() + params.b_k.cast<ld>();
  const index_t dh = block_width / block_heads;
  ld largest = 0;
  for (index_t head = 0; head < block_heads; ++head) {
    const ld_matrix dots =
        q.middleCols(head * dh, dh).cwiseAbs() * k.middleCols(head * dh, dh).cwiseAbs().transpose();
    largest = std::max(largest, dots.maxCoeff() / std::sqrt(static_cast<ld>(dh)));
  }
  return largest;
}

/// Bound on max |y_float - y_double| / max |y_double| for one block. The attention's weights
/// move by at most expm1(2 D) with D = (d_head + 16) u L (L from first_layer_logits; FAVOR's
/// features move by the same order, its exponents being of the size of the logits and the
/// scaled squared norms, both bounded by L + the norms below); every other stage (LayerNorm, the
/// four projections, the feed-forward pair, the residual sums) is a sum of at most
/// K = d_model + d_ff + N terms, K u relative each. LayerNorm amplifies a perturbation of its
/// input by at most sqrt(d_model) relative to the row's spread, and the residual stream carries
/// the errors of both sublayers: 4 sqrt(d_model) covers both. Subnormal inputs make every
/// rounding absolute (tiny / 2) relative to the output's scale. A double run's own error is
/// 1e-9 of this and ignored.
double block_tolerance(ld logits, ld norms, double output_scale) {
  const ld u = unit_roundoff<float>();
  const ld dh = block_width / block_heads;
  const ld attention = 2 * expm1_of(2 * (dh + 16) * u * (logits + norms));
  // ~10 stages, K roundings each; in the subnormal range each rounding is absolute (tiny / 2),
  // relative to the output's scale.
  const ld k = static_cast<ld>(block_width + block_ff + block_tokens);
  const ld stages = 16 * k * (u + static_cast<ld>(tiny<float>()) / static_cast<ld>(output_scale));
  return static_cast<double>(4 * std::sqrt(static_cast<ld>(block_width)) * (attention + stages));
}

/// Largest squared query/key norm over sqrt(d_head) in the first attention sublayer: the scale
/// of FAVOR's feature exponents |x~|^2 / 2.
ld first_layer_norms(const block_parameters<double>& params, const row_matrix<double>& x,
                     bool pre) {
  const ld_matrix h = pre ? layer_norm_reference(x, 1e-5) : ld_matrix(x.cast<ld>());
  const ld_matrix q = (h * params.w_q.cast<ld>()).rowwise() + params.b_q.cast<ld>();
  const ld_matrix k = (h * params.w_k.cast<ld>()).rowwise() + params.b_k.cast<ld>();
  const index_t dh = block_width / block_heads;
  ld largest = 0;
  for (index_t head = 0; head < block_heads; ++head) {
    largest = std::max({largest, q.middleCols(head * dh, dh).rowwise().squaredNorm().maxCoeff(),
                        k.middleCols(head * dh, dh).rowwise().squaredNorm().maxCoeff()});
  }
  return largest / std::sqrt(static_cast<ld>(dh));
}

/// Float block against the double block with the same parameters (and the same projection or
/// rotations), pre-LN and post-LN, bidirectional and causal.
/// Contract: a pre-LN block normalises every row before attention, so its logits are O(1) for
/// any finite x and it must never refuse; a post-LN block attends over x W directly, so float
/// may refuse where those logits do not fit (x x 1e30); double never. Accuracy: compared where
/// the attention is well-conditioned in float: exact attention and LSH always (the bound grows
/// with L), FAVOR only while its feature exponents stay well inside float's range (a feature
/// e^-2E below the row's largest must stay normal: 2 E < 70).
template <class Af, class Ad>
void check_block(const char* name, const Af& attention_f, const Ad& attention_d, bool favor) {
  for (const auto norm : {norm_placement::pre, norm_placement::post}) {
    for (const bool causal : {false, true}) {
      const bool pre = norm == norm_placement::pre;
      const block_config cfg{.d_model = block_width,
                             .heads = block_heads,
                             .d_ff = block_ff,
                             .causal = causal,
                             .norm = norm};
      const transformer_block<Af> block_f(cfg, attention_f, 7);
      transformer_block<Ad> block_d(cfg, attention_d, 7);
      block_d.set_parameters(cast_parameters<double>(block_f.parameters()));
      for (const block_input& in : block_inputs()) {
        const row_matrix<double> x = block_x(in, 61);
        const row_matrix<float> xf = x.cast<float>();
        std::ostringstream label;
        label << name << (pre ? " pre-LN" : " post-LN") << (causal ? " causal" : "") << ", "
              << in.name;
        violations bad(label.str());
        const auto of = attempt([&] { return block_f.forward(xf); });
        const auto od = attempt([&] { return block_d.forward(x); });
        const bool overflows_float = !pre && in.scale > 1e20;
        if (!od.out) bad.add("double refused: ", od.error);
        // FAVOR's features span e^(|w| |x~|) around their maximum: where that leaves float's
        // exponent range (not conditioned, below), float may refuse with the vanished normaliser.
        const bool favor_beyond_float =
            favor && first_layer_logits(block_d.parameters(), x, pre) +
                             first_layer_norms(block_d.parameters(), x, pre) >= 35;
        if (!of.out) {
          if (favor_beyond_float && mentions_vanished_normaliser(of.error)) {
            // documented (extreme_contract.hpp): depends on the platform's exp underflow
          } else {
            if (!overflows_float) bad.add("float refused a representable input: ", of.error);
            if (!mentions_overflow(of.error))
              bad.add("float threw without naming the overflow: ", of.error);
          }
        } else if (!of.out->allFinite()) {
          bad.add("float output is not finite");
        }
        if (of.out && od.out) {
          const ld logits = first_layer_logits(block_d.parameters(), x, pre);
          const ld norms = favor ? first_layer_norms(block_d.parameters(), x, pre) : 0.0L;
          const bool conditioned = !favor || logits + norms < 35;
          const double scale = od.out->cwiseAbs().maxCoeff();
          const double err =
              (of.out->template cast<double>() - *od.out).cwiseAbs().maxCoeff() / scale;
          const double tol = block_tolerance(logits, norms, scale);
          if (verbose()) {
            std::printf("  %-60s L %9.3g, relative error %9.3g, bound %9.3g%s\n",
                        label.str().c_str(), static_cast<double>(logits), err, tol,
                        conditioned ? "" : " (not compared)");
          }
          if (conditioned && !(err <= tol))
            bad.add("relative error ", err, " > ", tol, " (L = ", static_cast<double>(logits), ")");
        }
        bad.report();
      }
    }
  }
}

TEST(ExtremeValuesBlock, SoftmaxFloatMatchesDouble) {
  check_block("block<softmax>", softmax_attention<float>{}, softmax_attention<double>{}, false);
}

TEST(ExtremeValuesBlock, TiledFloatMatchesDouble) {
  check_block("block<tiled>", tiled_softmax_attention<float>(8, 8),
              tiled_softmax_attention<double>(8, 8), false);
}

TEST(ExtremeValuesBlock, FavorFloatMatchesDouble) {
  const favor_attention<float> f(block_width / block_heads, favor_features_m, 3);
  favor_attention<double> d(block_width / block_heads, favor_features_m, 3);
  d.projection().set_matrix(f.projection().matrix().cast<double>());
  check_block("block<favor>", f, d, true);
}

TEST(ExtremeValuesBlock, LshFloatMatchesDouble) {
  // One window (see one_window_lsh), so float and double see the same keys.
  check_block("block<lsh>", one_window_lsh<float>(block_width / block_heads, true, block_tokens),
              one_window_lsh<double>(block_width / block_heads, true, block_tokens), false);
}

/// A pre-LN stack at a huge input scale: every layer adds O(1) updates (its sublayers see
/// LayerNorm'd rows) to rows of size |x|, which they change by a relative 1/|x|, below rounding;
/// so the result is the final LayerNorm of the input itself, which is finite and O(1) for any
/// finite x. Float must get it (to LayerNorm's rounding, (2 d + 32) u relative to its O(1)
/// output, plus the residual's one rounding of x, u sqrt(d) after normalisation), as double
/// does; 1e20 is the first scale where float's squared deviations overflow.
template <class T, class A>
void check_stack_at_huge_scale(const char* name, const A& attention) {
  for (const double scale : {1e20, 1e30}) {
    for (const bool causal : {false, true}) {
      const block_config cfg{
          .d_model = block_width, .heads = block_heads, .d_ff = block_ff, .causal = causal};
      const transformer_stack<A> stack(cfg, 2, attention, 5);
      row_matrix<double> x = random_matrix<double>(block_tokens, block_width, 71);
      x *= scale;
      x = x.cast<T>().template cast<double>();
      std::ostringstream label;
      label << name << "<" << type_name<T>() << ">" << (causal ? " causal" : "") << ", x x "
            << scale;
      violations bad(label.str());
      const auto o = attempt([&] { return stack.forward(x.cast<T>()); });
      if (!o.out) {
        bad.add("refused: ", o.error);
      } else {
        const ld_matrix ref = layer_norm_reference(x, 1e-5);
        const double err =
            static_cast<double>((o.out->template cast<ld>() - ref).cwiseAbs().maxCoeff());
        const double tol = (2.0 * block_width + 32 + std::sqrt(block_width)) * unit_roundoff<T>() *
                           (1 + static_cast<double>(ref.cwiseAbs().maxCoeff()));
        if (verbose())
          std::printf("  %-60s error %9.3g, bound %9.3g\n", label.str().c_str(), err, tol);
        if (!(err <= tol)) bad.add("max |y - LayerNorm(x)| = ", err, " > ", tol);
      }
      bad.report();
    }
  }
}

TEST(ExtremeValuesStack, HugeInputGivesLayerNormOfInput) {
  check_stack_at_huge_scale<float>("stack<softmax>", softmax_attention<float>{});
  check_stack_at_huge_scale<double>("stack<softmax>", softmax_attention<double>{});
  check_stack_at_huge_scale<float>(
      "stack<favor>", favor_attention<float>(block_width / block_heads, favor_features_m, 3));
  check_stack_at_huge_scale<double>(
      "stack<favor>", favor_attention<double>(block_width / block_heads, favor_features_m, 3));
}

TEST(ExtremeValuesStack, FloatMatchesDouble) {
  // Two pre-LN layers and the final LayerNorm, float against double with the same parameters
  // (layer by layer), over the block inputs: the stack composes two blocks' errors (twice
  // block_tolerance) and the final LayerNorm (amplification sqrt(d_model), already in it).
  for (const bool causal : {false, true}) {
    const block_config cfg{
        .d_model = block_width, .heads = block_heads, .d_ff = block_ff, .causal = causal};
    const transformer_stack<softmax_attention<float>> stack_f(cfg, 2, softmax_attention<float>{},
                                                              9);
    transformer_stack<softmax_attention<double>> stack_d(cfg, 2, softmax_attention<double>{}, 9);
    for (index_t l = 0; l < 2; ++l)
      stack_d.layer(l).set_parameters(cast_parameters<double>(stack_f.layer(l).parameters()));
    for (const block_input& in : block_inputs()) {
      const row_matrix<double> x = block_x(in, 81);
      std::ostringstream label;
      label << "stack<softmax>" << (causal ? " causal" : "") << ", " << in.name;
      violations bad(label.str());
      const auto of = attempt([&] { return stack_f.forward(x.cast<float>()); });
      const auto od = attempt([&] { return stack_d.forward(x); });
      if (!of.out) bad.add("float refused: ", of.error);
      if (!od.out) bad.add("double refused: ", od.error);
      if (of.out && od.out) {
        // Logits of the first layer; later layers see LayerNorm'd rows of the same kind.
        const ld logits = first_layer_logits(stack_d.layer(0).parameters(), x, true);
        const double scale = od.out->cwiseAbs().maxCoeff();
        const double tol = 2 * block_tolerance(2 * logits, 0, scale);
        const double err = (of.out->cast<double>() - *od.out).cwiseAbs().maxCoeff() / scale;
        if (verbose())
          std::printf("  %-60s relative error %9.3g, bound %9.3g\n", label.str().c_str(), err, tol);
        if (!(err <= tol)) bad.add("relative error ", err, " > ", tol);
      }
      bad.report();
    }
  }
}

}  // namespace
}  // namespace nn_extreme_values_test
}  // namespace performer::conformance::extreme
