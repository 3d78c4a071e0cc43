/// @file performer.hpp
/// @brief Umbrella header: everything public in the performer library.
///
/// performer: fast attention for long sequences on Eigen. Exact softmax attention (materialized
/// and tiled), FAVOR+ random-feature attention (Choromanski et al., "Rethinking Attention with
/// Performers", ICLR 2021) and Reformer LSH attention (Kitaev et al., ICLR 2020), all behind one
/// concept (performer::attention_mechanism) and one templated transformer block.
#pragma once

#include "attend.hpp"
#include "attention/favor_attention.hpp"
#include "attention/favor_decoder.hpp"
#include "attention/lsh_attention.hpp"
#include "attention/softmax_attention.hpp"
#include "attention/tiled_softmax_attention.hpp"
#include "attention_mask.hpp"
#include "concepts.hpp"
#include "error.hpp"
#include "features/elu_features.hpp"
#include "features/favor_plus_plus_features.hpp"
#include "features/feature_map.hpp"
#include "features/hyperbolic_features.hpp"
#include "features/positive_features.hpp"
#include "features/projection.hpp"
#include "features/relu_features.hpp"
#include "features/trigonometric_features.hpp"
#include "transformer_block.hpp"
#include "types.hpp"
#include "version.hpp"
