/// @file nn/transformer_model.hpp
/// @brief A whole model over any mechanism: token embedding, optional learned absolute positions,
/// the transformer stack with its final LayerNorm, and an output head (an encoder's or a causal
/// language model's logits).
#pragma once

#include <cstdint>
#include <span>
#include <type_traits>
#include <utility>
#include <vector>

#include "../core/concepts.hpp"
#include "../core/error.hpp"
#include "../core/types.hpp"
#include "../core/validate.hpp"
#include "../random/detail/generator.hpp"
#include "layers.hpp"
#include "sampling.hpp"
#include "transformer_stack.hpp"

namespace performer {

/// Shape of a transformer_model.
struct model_config {
  index_t vocab = 0;          ///< token ids are 0 .. vocab - 1
  index_t layers = 1;         ///< transformer blocks
  block_config block{};       ///< every block's shape and options (causal for a language model)
  index_t max_positions = 0;  ///< learned absolute position embeddings for this many positions; 0: none
  bool tie_output = false;    ///< output head = token embedding transposed (as ESM-2 and GPT-2)
};

/**
 * @brief The model's own parameters (the blocks' are in stack().layer(l).parameters()). Linear
 * maps act on row vectors, so w_out is d_model x vocab, the transpose of PyTorch's nn.Linear.
 */
template <real_scalar T>
struct model_parameters {
  row_matrix<T> token_embedding;     ///< vocab x d_model (PyTorch's nn.Embedding.weight)
  row_matrix<T> position_embedding;  ///< max_positions x d_model; 0 x d_model without positions
  row_matrix<T> w_out;               ///< d_model x vocab; 0 x 0 when the head is tied
  row_vector<T> b_out;               ///< 1 x vocab
};

/**
 * @brief Token ids in, final hidden states (embed) or logits (forward) out:
 * h_0 = E[tokens] + P[0 .. N), the stack (its blocks, then its final LayerNorm in the pre-LN
 * arrangement), logits = h W_out + b_out (W_out = E^T when tied).
 *
 * Seeds: the stack is built from derive_seed(seed, 0) (its layers and mechanisms as
 * transformer_stack documents), the token embedding from derive_seed(seed, 1), the positions from
 * derive_seed(seed, 2) and the head from derive_seed(seed, 3); Xavier-uniform entries, zero b_out.
 *
 * Complexity for N tokens, width D, vocabulary V: the stack's cost plus O(N D) for the embedding
 * and O(N D V) for the head; workspace the stack's plus N x D.
 */
template <attention_mechanism Attention>
class transformer_model {
 public:
  using stack_type = transformer_stack<Attention>;
  using scalar_type = typename Attention::scalar_type;
  using parameters_type = model_parameters<scalar_type>;

  struct workspace_type {
    row_matrix<scalar_type> embedded, hidden;
    typename stack_type::workspace_type stack;
  };

  /**
   * @param config shapes and options. @param make_attention as transformer_stack's (a callable
   * of the layer and its mechanism seed, or of the layer alone). @param seed see the class.
   * @throws performer::invalid_argument if vocab or layers is not positive, max_positions is
   * negative, the blocks have cross-attention, or as transformer_stack.
   */
  template <class Make>
    requires std::is_invocable_r_v<Attention, Make&, index_t, std::uint64_t> ||
             std::is_invocable_r_v<Attention, Make&, index_t>
  transformer_model(const model_config& config, Make make_attention, std::uint64_t seed = 0)
      : config_(validated(config)),
        stack_(config.block, config.layers, std::move(make_attention), detail::derive_seed(seed, 0)) {
    const index_t d = stack_.layer(0).config().d_model;
    const index_t v = config_.vocab;
    detail::xoshiro256ss tokens_rng(detail::derive_seed(seed, 1));
    detail::fill_uniform(params_.token_embedding, v, d, tokens_rng);
    detail::xoshiro256ss positions_rng(detail::derive_seed(seed, 2));
    detail::fill_uniform(params_.position_embedding, config_.max_positions, d, positions_rng);
    if (!config_.tie_output) {
      detail::xoshiro256ss head_rng(detail::derive_seed(seed, 3));
      detail::fill_uniform(params_.w_out, d, v, head_rng);
    }
    params_.b_out = row_vector<scalar_type>::Zero(v);
  }

  /// Same mechanism (copied) in every layer.
  transformer_model(const model_config& config, const Attention& attention, std::uint64_t seed = 0)
      : transformer_model(config, [&attention](index_t) { return attention; }, seed) {}

  /**
   * @brief Every weight left unset (see no_init_t): the model's own until set_parameters(), each
   * layer's until its set_parameters(); the final LayerNorm starts as the identity. For
   * loaders (io::load_model): no draw to pay for, no second copy while loading.
   */
  template <class Make>
    requires std::is_invocable_r_v<Attention, Make&, index_t, std::uint64_t> ||
             std::is_invocable_r_v<Attention, Make&, index_t>
  transformer_model(const model_config& config, Make make_attention, no_init_t)
      : config_(validated(config)),
        stack_(config.block, config.layers, std::move(make_attention), no_init) {}

  [[nodiscard]] const model_config& config() const noexcept { return config_; }
  [[nodiscard]] index_t d_model() const noexcept { return stack_.layer(0).config().d_model; }
  [[nodiscard]] const stack_type& stack() const noexcept { return stack_; }
  /// Mutable access, e.g. to load each layer's trained parameters.
  [[nodiscard]] stack_type& stack() noexcept { return stack_; }
  [[nodiscard]] const parameters_type& parameters() const noexcept { return params_; }

  /**
   * @brief Replaces the model's own parameters.
   * @throws performer::invalid_argument naming the first parameter whose shape differs from the
   * config (w_out must be 0 x 0 when tied) or which holds a non-finite value; nothing changes.
   */
  void set_parameters(parameters_type p) {
    const index_t d = d_model();
    const index_t v = config_.vocab;
    const index_t out_rows = config_.tie_output ? 0 : d;
    const index_t out_cols = config_.tie_output ? 0 : v;
    const auto check = [](const char* name, const auto& m, index_t rows, index_t cols) {
      detail::require_parameter("transformer_model::set_parameters", name, m, rows, cols);
    };
    check("token_embedding", p.token_embedding, v, d);
    check("position_embedding", p.position_embedding, config_.max_positions, d);
    check("w_out", p.w_out, out_rows, out_cols);
    check("b_out", p.b_out, 1, v);
    params_ = std::move(p);
  }

  /**
   * @brief hidden = the final hidden states (N x d_model) of the token sequence.
   * @param key_mask empty, or one entry per token (0 = padding), as the stack's.
   * @throws performer::invalid_argument on an empty sequence, a token outside [0, vocab), more
   * tokens than max_positions (when positions are learned), hidden not N x d_model, or what the
   * stack throws.
   */
  void embed(std::span<const std::int64_t> tokens, matrix_ref<scalar_type> hidden,
             std::span<const std::uint8_t> key_mask, workspace_type& ws) const {
    embed(tokens, hidden, key_mask, ws, config_.block.causal);
  }

  /// As above, causal or bidirectional for this call whatever the config says.
  void embed(std::span<const std::int64_t> tokens, matrix_ref<scalar_type> hidden,
             std::span<const std::uint8_t> key_mask, workspace_type& ws, bool causal) const;

  /**
   * @brief The stack's input: row i = E[tokens[i]] + P[i] (P only with learned positions).
   * @throws performer::invalid_argument on a token outside [0, vocab), more tokens than
   * max_positions (with learned positions) or out not N x d_model.
   */
  void embed_tokens(std::span<const std::int64_t> tokens, matrix_ref<scalar_type> out) const {
    constexpr const char* who = "transformer_model::embed_tokens";
    const auto n = static_cast<index_t>(tokens.size());
    PERFORMER_PRECONDITION(config_.max_positions == 0 || n <= config_.max_positions, who, ": ", n,
                           " tokens but the model has positions for ", config_.max_positions);
    PERFORMER_PRECONDITION(out.rows() == n && out.cols() == d_model(), who, ": out is ",
                           detail::shape(out), ", expected ", n, "x", d_model());
    fill_embedding(who, tokens, out);
  }

  /**
   * @brief The output head: logits = hidden W_out + b_out (W_out = E^T when tied).
   * @throws performer::invalid_argument on shapes other than N x d_model and N x vocab, or
   * logits that overflow the scalar type.
   */
  void head(const const_matrix_ref<scalar_type>& hidden, matrix_ref<scalar_type> logits) const {
    constexpr const char* who = "transformer_model::head";
    PERFORMER_PRECONDITION(hidden.cols() == d_model() && logits.rows() == hidden.rows() &&
                               logits.cols() == config_.vocab,
                           who, ": hidden is ", detail::shape(hidden), " and logits ",
                           detail::shape(logits), ", expected N x ", d_model(), " and N x ",
                           config_.vocab);
    head(who, hidden, logits);
  }

  /**
   * @brief logits (N x vocab) of the token sequence: embed(), then the output head.
   * @throws performer::invalid_argument as embed(), if logits is not N x vocab, or if the logits
   * overflow the scalar type.
   */
  void forward(std::span<const std::int64_t> tokens, matrix_ref<scalar_type> logits,
               std::span<const std::uint8_t> key_mask, workspace_type& ws) const {
    forward(tokens, logits, key_mask, ws, config_.block.causal);
  }

  /// As above, causal or bidirectional for this call whatever the config says.
  void forward(std::span<const std::int64_t> tokens, matrix_ref<scalar_type> logits,
               std::span<const std::uint8_t> key_mask, workspace_type& ws, bool causal) const;

  /// Convenience overload: the logits, with a workspace of its own.
  [[nodiscard]] row_matrix<scalar_type> forward(std::span<const std::int64_t> tokens,
                                                std::span<const std::uint8_t> key_mask = {}) const {
    row_matrix<scalar_type> logits(static_cast<index_t>(tokens.size()), config_.vocab);
    workspace_type ws;
    forward(tokens, logits, key_mask, ws);
    return logits;
  }

  /// Streaming state of step() and generate(): the stack's, and scratch rows.
  struct decoder_state {
    typename stack_type::decoder_state stack;
    row_matrix<scalar_type> embedded, hidden;
    /// Tokens stepped so far: the layers count them.
    [[nodiscard]] index_t position() const noexcept {
      return stack.layers.empty() ? 0 : stack.layers.front().position();
    }
  };

  /// A fresh state (position 0). @throws as transformer_block::start_decoding (LSH attention
  /// has no step-by-step decoding).
  [[nodiscard]] decoder_state start_decoding() const {
    decoder_state s{stack_.start_decoding(), row_matrix<scalar_type>(1, d_model()),
                    row_matrix<scalar_type>(1, d_model())};
    return s;
  }

  /**
   * @brief Causal decoding: logits (1 x vocab) for `token` at the state's position, given the
   * tokens stepped before it; equal to that row of the causal forward() (to rounding). Cost per
   * token: with FAVOR+, constant in the context; with exact attention, linear in it (a
   * key/value cache).
   * @throws performer::invalid_argument on a token outside [0, vocab), a position beyond
   * max_positions (with learned positions), logits not 1 x vocab, or as transformer_stack::step.
   */
  void step(std::int64_t token, matrix_ref<scalar_type> logits, decoder_state& s) const;

  /**
   * @brief A causal language model's continuation: steps through the prompt, then picks `count`
   * tokens one at a time (greedy or sampled, see sampling_options), each fed back in.
   * Time O(L (P + count) d_model (d_model + d_ff) + (P + count) d_model vocab) with FAVOR+
   * (P the prompt's length), plus the key/value cache's O(L (P + count)^2 d_model) with exact
   * attention.
   * @return the `count` new tokens (not the prompt).
   * @throws performer::invalid_argument on an empty prompt, a negative count, a bad sampling
   * option, prompt and continuation longer than max_positions (with learned positions), or as
   * step().
   */
  [[nodiscard]] std::vector<std::int64_t> generate(std::span<const std::int64_t> prompt,
                                                   index_t count,
                                                   const sampling_options& sampling = {}) const {
    return generate(prompt, count, sampling, [](std::int64_t, index_t) { return true; });
  }

  /**
   * @brief generate() that hands each new token to `on_token(token, i)` (i from 0) as soon as it
   * is picked, for streaming output or progress; generation stops early, after that token, when
   * `on_token` returns false (an end-of-sequence token, say).
   * @return the tokens picked, `count` of them unless `on_token` stopped it.
   * @throws as generate(), and whatever `on_token` throws.
   */
  template <class OnToken>
    requires std::is_invocable_r_v<bool, OnToken&, std::int64_t, index_t>
  [[nodiscard]] std::vector<std::int64_t> generate(std::span<const std::int64_t> prompt,
                                                   index_t count, const sampling_options& sampling,
                                                   OnToken&& on_token) const {
    constexpr const char* who = "transformer_model::generate";
    PERFORMER_PRECONDITION(!prompt.empty(), who, ": empty prompt");
    PERFORMER_PRECONDITION(count >= 0, who, ": count must be >= 0 (got ", count, ")");
    detail::check_sampling(who, sampling);
    const auto total = static_cast<index_t>(prompt.size()) + count - 1;
    PERFORMER_PRECONDITION(config_.max_positions == 0 || total <= config_.max_positions, who,
                           ": prompt and continuation need ", total,
                           " positions but the model has ", config_.max_positions);
    auto s = start_decoding();
    row_matrix<scalar_type> logits(1, config_.vocab);
    for (const std::int64_t t : prompt) step(t, logits, s);
    detail::xoshiro256ss rng(sampling.seed);
    std::vector<std::int64_t> out;
    out.reserve(static_cast<std::size_t>(count));
    for (index_t i = 0; i < count; ++i) {
      out.push_back(detail::sample_token(logits, sampling.temperature, rng));
      if (!on_token(out.back(), i)) break;
      if (i + 1 < count) step(out.back(), logits, s);
    }
    return out;
  }

 private:
  /// row = E[token] (+ P[position]).
  template <class Row>
  void embed_token(const char* who, std::int64_t token, index_t position, Row&& row) const {
    PERFORMER_PRECONDITION(params_.token_embedding.rows() == config_.vocab, who,
                           ": no parameters (built with no_init and set_parameters() not called "
                           "yet)");
    PERFORMER_PRECONDITION(token >= 0 && token < config_.vocab, who, ": token ", position, " is ",
                           token, ", outside [0, ", config_.vocab, ")");
    row = params_.token_embedding.row(static_cast<index_t>(token));
    if (config_.max_positions > 0) row += params_.position_embedding.row(position);
  }

  void fill_embedding(const char* who, std::span<const std::int64_t> tokens,
                      matrix_ref<scalar_type> out) const {
    for (index_t i = 0; i < out.rows(); ++i) {
      embed_token(who, tokens[static_cast<std::size_t>(i)], i, out.row(i));
    }
  }

  /// logits = hidden W_out + b_out (W_out = E^T when tied).
  void head(const char* who, const const_matrix_ref<scalar_type>& hidden,
            matrix_ref<scalar_type> logits) const {
    if (config_.tie_output) {
      logits.noalias() = hidden * params_.token_embedding.transpose();
    } else {
      logits.noalias() = hidden * params_.w_out;
    }
    logits.rowwise() += params_.b_out;
    require_finite_result(who, logits);
  }

  static model_config validated(const model_config& c) {
    constexpr const char* who = "transformer_model";
    PERFORMER_PRECONDITION(c.vocab > 0, who, ": vocab must be positive (got ", c.vocab, ")");
    PERFORMER_PRECONDITION(c.max_positions >= 0, who, ": max_positions must be >= 0 (got ",
                           c.max_positions, ")");
    // An encoder or a decoder-only model has no encoder memory to attend to.
    PERFORMER_PRECONDITION(!c.block.cross_attention, who,
                           ": cross-attention blocks need an encoder's memory, which a model has "
                           "not; run them through transformer_stack");
    return c;  // layers and the block config: checked by transformer_stack
  }

  model_config config_;
  stack_type stack_;
  parameters_type params_;
};

template <attention_mechanism Attention>
void transformer_model<Attention>::embed(std::span<const std::int64_t> tokens,
                                         matrix_ref<scalar_type> hidden,
                                         std::span<const std::uint8_t> key_mask, workspace_type& ws,
                                         bool causal) const {
  constexpr const char* who = "transformer_model::embed";
  const auto n = static_cast<index_t>(tokens.size());
  const index_t d = d_model();
  PERFORMER_PRECONDITION(n > 0, who, ": no tokens");
  PERFORMER_PRECONDITION(config_.max_positions == 0 || n <= config_.max_positions, who, ": ", n,
                         " tokens but the model has positions for ", config_.max_positions);
  PERFORMER_PRECONDITION(hidden.rows() == n && hidden.cols() == d, who, ": hidden is ",
                         detail::shape(hidden), ", expected ", n, "x", d);
  ws.embedded.resize(n, d);
  fill_embedding(who, tokens, ws.embedded);
  stack_.forward(ws.embedded, hidden, key_mask, ws.stack, causal);
}

template <attention_mechanism Attention>
void transformer_model<Attention>::forward(std::span<const std::int64_t> tokens,
                                           matrix_ref<scalar_type> logits,
                                           std::span<const std::uint8_t> key_mask,
                                           workspace_type& ws, bool causal) const {
  constexpr const char* who = "transformer_model::forward";
  const auto n = static_cast<index_t>(tokens.size());
  PERFORMER_PRECONDITION(logits.rows() == n && logits.cols() == config_.vocab, who, ": logits is ",
                         detail::shape(logits), ", expected ", n, "x", config_.vocab);
  ws.hidden.resize(n, d_model());
  embed(tokens, ws.hidden, key_mask, ws, causal);
  head(who, ws.hidden, logits);
}

template <attention_mechanism Attention>
void transformer_model<Attention>::step(std::int64_t token, matrix_ref<scalar_type> logits,
                                        decoder_state& s) const {
  constexpr const char* who = "transformer_model::step";
  PERFORMER_PRECONDITION(logits.rows() == 1 && logits.cols() == config_.vocab, who, ": logits is ",
                         detail::shape(logits), ", expected 1x", config_.vocab);
  const index_t position = s.position();
  PERFORMER_PRECONDITION(config_.max_positions == 0 || position < config_.max_positions, who,
                         ": position ", position, " but the model has positions for ",
                         config_.max_positions);
  embed_token(who, token, position, s.embedded.row(0));
  stack_.step(s.embedded, s.hidden, s.stack);
  head(who, s.hidden, logits);
}

}  // namespace performer
