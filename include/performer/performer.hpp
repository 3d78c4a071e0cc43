/// @file performer.hpp
/// @brief Umbrella header: everything public in the performer library.
///
/// performer: fast attention for long sequences on Eigen. Exact softmax attention (materialized
/// and tiled), FAVOR+ random-feature attention (Choromanski et al., "Rethinking Attention with
/// Performers", ICLR 2021) and Reformer LSH attention (Kitaev et al., ICLR 2020), all behind one
/// concept (performer::attention_mechanism) and one templated transformer block.
#pragma once

// The floor every family stands on: types, errors, masks, the concept, argument checks.
#include "core/attend.hpp"
#include "core/attention_mask.hpp"
#include "core/bfloat16.hpp"
#include "core/concepts.hpp"
#include "core/error.hpp"
#include "core/gradient.hpp"
#include "core/types.hpp"
#include "core/validate.hpp"
// Random numbers and projection samplers.
#include "random/example_sampler.hpp"
#include "random/projection.hpp"
#include "random/sampler.hpp"
// Exact softmax attention.
#include "softmax/softmax_attention.hpp"
#include "softmax/softmax_gradient.hpp"
#include "softmax/tiled_softmax_attention.hpp"
#include "softmax/tiled_softmax_gradient.hpp"
// FAVOR: random-feature attention, its feature maps and the recurrent decoder.
#include "favor/example_feature_map.hpp"
#include "favor/favor_attention.hpp"
#include "favor/favor_bf16_attention.hpp"
#include "favor/favor_decoder.hpp"
#include "favor/favor_gradient.hpp"
#include "favor/feature_map.hpp"
#include "favor/features/bf16_projection.hpp"
#include "favor/features/elu_features.hpp"
#include "favor/features/favor_plus_plus_features.hpp"
#include "favor/features/hyperbolic_features.hpp"
#include "favor/features/positive_features.hpp"
#include "favor/features/relu_features.hpp"
#include "favor/features/trigonometric_features.hpp"
#include "favor/state.hpp"
// Reformer LSH attention and its hash families.
#include "lsh/angular_hash.hpp"
#include "lsh/example_hash_family.hpp"
#include "lsh/hash_family.hpp"
#include "lsh/lsh_attention.hpp"
#include "lsh/lsh_gradient.hpp"
#include "lsh/lsh_options.hpp"
// Transformer layers, block and stack; any mechanism over a batch of multi-head sequences.
#include "nn/batched_attention.hpp"
#include "nn/block_config.hpp"
#include "nn/block_gradient.hpp"
#include "nn/head_decoder.hpp"
#include "nn/layers.hpp"
#include "nn/model_gradient.hpp"
#include "nn/rotary_embedding.hpp"
#include "nn/sampling.hpp"
#include "nn/transformer_block.hpp"
#include "nn/transformer_model.hpp"
#include "nn/transformer_stack.hpp"

#include "train/adamw.hpp"
#include "train/layer_gradients.hpp"
#include "train/loss.hpp"
#include "train/trainer.hpp"
#include "version.hpp"
