// The transformer block written out from its definition in double, with the oracle's naive
// attention: the independent reference of the block tests (self- and cross-attention).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include <performer/nn/block_config.hpp>
#include <performer/testing/helpers.hpp>
#include <performer/testing/oracle.hpp>

namespace performer::test {

/// LayerNorm of the oracle library (long double sums), here at double's precision.
template <class G, class B>
row_matrix<double> layer_norm_ref(const row_matrix<double>& x, const G& gain, const B& bias,
                                  double eps) {
  return oracle::layer_norm(x, gain, bias, eps);
}

/// The block from its definition, in double. With cross-attention, `memory` (M x d_model) and
/// `memory_keep` (M entries or none) feed its sublayer.
template <class P>
row_matrix<double> block_ref(const block_config& cfg, const P& p, const row_matrix<double>& x,
                             const std::vector<std::uint8_t>& keep = {},
                             const row_matrix<double>& memory = {},
                             const std::vector<std::uint8_t>& memory_keep = {}) {
  const auto d = [](const auto& m) { return m.template cast<double>().eval(); };
  const index_t dh = cfg.d_model / cfg.heads;
  const bool pre = cfg.norm == norm_placement::pre;
  const auto mha = [&](const row_matrix<double>& q, const row_matrix<double>& k,
                       const row_matrix<double>& v, const attention_mask& mask) {
    row_matrix<double> ctx(q.rows(), cfg.d_model);
    for (index_t head = 0; head < cfg.heads; ++head) {
      ctx.middleCols(head * dh, dh) =
          oracle::softmax_attention(q.middleCols(head * dh, dh), k.middleCols(head * dh, dh),
                                    v.middleCols(head * dh, dh), mask);
    }
    return ctx;
  };
  const auto attn_sub = [&](const row_matrix<double>& h) {
    row_matrix<double> q = (h * d(p.w_q)).rowwise() + d(p.b_q);
    row_matrix<double> k = (h * d(p.w_k)).rowwise() + d(p.b_k);
    if (cfg.rotary) {
      const bool interleaved = cfg.rotary_pairs == rotary_pairing::interleaved;
      q = oracle::rotary(q, dh, cfg.rotary_base, interleaved);
      k = oracle::rotary(k, dh, cfg.rotary_base, interleaved);
    }
    const row_matrix<double> v = (h * d(p.w_v)).rowwise() + d(p.b_v);
    return row_matrix<double>((mha(q, k, v, {cfg.causal, keep}) * d(p.w_o)).rowwise() + d(p.b_o));
  };
  const auto cross_sub = [&](const row_matrix<double>& h) {
    const row_matrix<double> q = (h * d(p.w_cq)).rowwise() + d(p.b_cq);
    const row_matrix<double> k = (memory * d(p.w_ck)).rowwise() + d(p.b_ck);
    const row_matrix<double> v = (memory * d(p.w_cv)).rowwise() + d(p.b_cv);
    return row_matrix<double>((mha(q, k, v, {false, memory_keep}) * d(p.w_co)).rowwise() +
                              d(p.b_co));
  };
  const auto ffn_sub = [&](const row_matrix<double>& h) {
    row_matrix<double> a = (h * d(p.w_ff1)).rowwise() + d(p.b_ff1);
    for (index_t i = 0; i < a.rows(); ++i) {
      for (index_t c = 0; c < a.cols(); ++c) {
        const double z = a(i, c);
        a(i, c) = cfg.ffn_activation == activation::relu
                      ? std::max(z, 0.0)
                      : 0.5 * z * (1.0 + std::erf(z / std::sqrt(2.0)));
      }
    }
    return row_matrix<double>((a * d(p.w_ff2)).rowwise() + d(p.b_ff2));
  };
  const double eps = cfg.layer_norm_eps;
  if (pre) {
    row_matrix<double> y = x + attn_sub(layer_norm_ref(x, d(p.norm1_gain), d(p.norm1_bias), eps));
    if (cfg.cross_attention) {
      y += cross_sub(layer_norm_ref(y, d(p.norm3_gain), d(p.norm3_bias), eps));
    }
    return y + ffn_sub(layer_norm_ref(y, d(p.norm2_gain), d(p.norm2_bias), eps));
  }
  row_matrix<double> y = layer_norm_ref(x + attn_sub(x), d(p.norm1_gain), d(p.norm1_bias), eps);
  if (cfg.cross_attention) {
    y = layer_norm_ref(y + cross_sub(y), d(p.norm3_gain), d(p.norm3_bias), eps);
  }
  return layer_norm_ref(y + ffn_sub(y), d(p.norm2_gain), d(p.norm2_bias), eps);
}

/// Non-trivial biases and gains (cross-attention's too, when the block has it), so the reference
/// comparison exercises every parameter.
template <class Block>
void randomise_parameters(Block& block, std::uint64_t seed) {
  using T = typename Block::scalar_type;
  auto p = block.parameters();
  std::uint64_t s = seed;
  for (auto* v : {&p.b_q, &p.b_k, &p.b_v, &p.b_o, &p.norm1_bias, &p.norm2_bias, &p.b_ff1, &p.b_ff2,
                  &p.b_cq, &p.b_ck, &p.b_cv, &p.b_co, &p.norm3_bias}) {
    if (v->size() > 0) *v = conformance::random_matrix<T>(1, v->cols(), ++s, 0.1);
  }
  for (auto* g : {&p.norm1_gain, &p.norm2_gain, &p.norm3_gain}) {
    if (g->size() > 0) *g = conformance::random_matrix<T>(1, g->cols(), ++s, 0.2).array() + T(1);
  }
  block.set_parameters(p);
}

}  // namespace performer::test
