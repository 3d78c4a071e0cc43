/// @file nn/detail/block_decoding.hpp
/// @brief transformer_block's streaming decoder: start_decoding() and step(), defined outside
/// the class (as its forward paths are) so that a program which declares the block's explicit
/// instantiation extern compiles none of it. nn/transformer_block.hpp includes it after the class.
#pragma once

#include "../transformer_block.hpp"

namespace performer {

template <attention_mechanism Attention>
auto transformer_block<Attention>::start_decoding(const const_matrix_ref<scalar_type>& memory,
                                                  std::span<const std::uint8_t> memory_mask) const
    -> decoder_state {
  constexpr const char* who = "transformer_block::start_decoding";
  const index_t dh = config_.d_model / config_.heads;
  decoder_state s;
  detail::check_memory(who, config_, memory, 1, {}, memory_mask);
  if (config_.cross_attention) {
    PERFORMER_PRECONDITION(params_.w_ck.rows() == config_.d_model, who, no_parameters);
    detail::project_memory(params_, memory, s.ws.memory_k, s.ws.memory_v);
    s.memory_mask.assign(memory_mask.begin(), memory_mask.end());
  }
  s.heads.reserve(static_cast<std::size_t>(config_.heads));
  for (index_t h = 0; h < config_.heads; ++h) s.heads.emplace_back(attention_, dh, dh);
  return s;
}

template <attention_mechanism Attention>
void transformer_block<Attention>::step(const const_matrix_ref<scalar_type>& x,
                                        matrix_ref<scalar_type> y, decoder_state& s) const {
  constexpr const char* who = "transformer_block::step";
  const index_t d = config_.d_model;
  PERFORMER_PRECONDITION(x.rows() == 1 && x.cols() == d && y.rows() == 1 && y.cols() == d, who,
                         ": x is ", detail::shape(x), " and y is ", detail::shape(y),
                         ", expected 1x", d, " each");
  PERFORMER_PRECONDITION(!detail::overlaps(x, y), who, ": y overlaps x");
  PERFORMER_PRECONDITION(s.heads.size() == static_cast<std::size_t>(config_.heads), who,
                         ": the state has ", s.heads.size(), " heads, expected ", config_.heads,
                         " (make it with start_decoding())");
  PERFORMER_PRECONDITION(!s.failed, who, ": an earlier step failed part-way; start a new state");
  require_finite(who, "x", x);
  const index_t dh = d / config_.heads;
  // A throw after the heads took the token leaves the state part-way.
  const auto guarded = [&s](auto&& f) {
    try {
      f();
    } catch (...) {
      s.failed = true;
      throw;
    }
  };
  sublayers(
      x, y, s.ws,
      [&](const const_matrix_ref<scalar_type>& in, matrix_ref<scalar_type> out) {
        all_heads(in, out, s.ws, [&] {
          if (rope_) {
            const index_t position = s.position();
            rope_->apply(s.ws.q, position);
            rope_->apply(s.ws.k, position);
          }
          guarded([&] {
            for (index_t h = 0; h < config_.heads; ++h) {
              const index_t c0 = h * dh;
              s.heads[static_cast<std::size_t>(h)].step(
                  attention_, s.ws.q.middleCols(c0, dh), s.ws.k.middleCols(c0, dh),
                  s.ws.v.middleCols(c0, dh), s.ws.context.middleCols(c0, dh));
            }
          });
        });
      },
      [&] {
        guarded([&] {
          detail::attend_heads(attention_, config_.heads, s.ws.q, s.ws.memory_k, s.ws.memory_v,
                               s.ws.context, {false, s.memory_mask}, s.ws.attention);
        });
      });
  require_finite_result(who, y);
}

}  // namespace performer
