/// @file examples/protein_stacks.hpp
/// @brief The protein_encoder example's stacks: its yardstick mechanism (flat attention, a
/// user-defined attention_mechanism), the q/k scaling of every block, and the exponent s of
/// FAVOR+'s variance at a block's input.
#pragma once

#include <cmath>
#include <utility>

#include <performer/performer.hpp>

namespace protein_input {

using performer::index_t;

/// "Flat" attention: every visible key weighted equally, q and k ignored. A user-defined
/// mechanism (it models performer::attention_mechanism) that serves as a yardstick: an
/// approximation of exact attention is worth its cost only if it is much closer to exact than
/// this is.
struct flat_attention {
  using scalar_type = float;
  static constexpr bool supports_causal = false;
  struct workspace_type {
    performer::row_vector<float> mean;
  };

  void forward(const performer::const_matrix_ref<float>& q, const performer::const_matrix_ref<float>& k,
               const performer::const_matrix_ref<float>& v, performer::matrix_ref<float> out,
               const performer::attention_mask& mask, workspace_type& ws) const {
    performer::check_attention_args<float>("flat_attention::forward", q, k, v, out, mask);
    ws.mean = performer::row_vector<float>::Zero(v.cols());
    index_t visible = 0;
    for (index_t j = 0; j < v.rows(); ++j) {
      if (mask.keeps(static_cast<std::size_t>(j))) {
        ws.mean += v.row(j);
        ++visible;
      }
    }
    if (visible > 0) ws.mean /= static_cast<float>(visible);  // no visible key: zero rows
    out.rowwise() = ws.mean;
  }
};
static_assert(performer::attention_mechanism<flat_attention>);

/// Multiplies W_q, b_q, W_k and b_k of every block by s (logits by s^2: a temperature 1/s^2).
template <class Stack>
void scale_qk(Stack& stack, double s) {
  for (index_t l = 0; l < stack.layers(); ++l) {
    auto p = stack.layer(l).parameters();
    p.w_q *= static_cast<typename Stack::scalar_type>(s);
    p.b_q *= static_cast<typename Stack::scalar_type>(s);
    p.w_k *= static_cast<typename Stack::scalar_type>(s);
    p.b_k *= static_cast<typename Stack::scalar_type>(s);
    stack.layer(l).set_parameters(std::move(p));
  }
}

/// Mean over heads and query-key pairs of |q~ + k~|^2 (q~ = q / d^(1/4)) at a block's input x:
/// the exponent of FAVOR+'s variance (docs/algorithms.md 5.7). The pairs' mean is
/// mean|q~|^2 + mean|k~|^2 + 2 mean(q~) . mean(k~), so it costs O(N d).
template <class Block>
double mean_variance_exponent(const Block& block, const performer::row_matrix<float>& x) {
  const auto& p = block.parameters();
  const index_t heads = block.config().heads;
  const index_t head_dim = block.config().d_model / heads;
  performer::row_matrix<float> normed(x.rows(), x.cols());  // LayerNorm with the block's gain and bias (pre-LN)
  const auto eps = static_cast<float>(block.config().layer_norm_eps);
  for (index_t i = 0; i < x.rows(); ++i) {
    const auto row = x.row(i).array();
    const float mean = row.mean();
    const float var = (row - mean).square().mean();
    normed.row(i) =
        ((row - mean) / std::sqrt(var + eps) * p.norm1_gain.array() + p.norm1_bias.array())
            .matrix();
  }
  performer::row_matrix<float> q = normed * p.w_q;
  q.rowwise() += p.b_q;
  performer::row_matrix<float> k = normed * p.w_k;
  k.rowwise() += p.b_k;
  const double inv_sqrt_d =
      1.0 / std::sqrt(static_cast<double>(head_dim));  // |x~|^2 = |x|^2 / sqrt(d)
  const auto n = static_cast<double>(x.rows());
  double total = 0;
  for (index_t h = 0; h < heads; ++h) {
    const auto qh = q.middleCols(h * head_dim, head_dim).template cast<double>();
    const auto kh = k.middleCols(h * head_dim, head_dim).template cast<double>();
    const double cross = (qh.colwise().sum() / n).dot(kh.colwise().sum() / n);
    total += (qh.squaredNorm() / n + kh.squaredNorm() / n + 2 * cross) * inv_sqrt_d;
  }
  return total / static_cast<double>(heads);
}

}  // namespace protein_input
