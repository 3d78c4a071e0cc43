// The class templates the project's own programs share (tests, benchmarks, examples, tools),
// declared extern: their members are compiled once, at the build type's optimisation, by
// tools/instances/*.cpp, never again in each program or test body that uses them. A build-time
// saving only: the library stays header-only, and without this file every program compiles
// what it uses itself, the same code from the same headers.
//
// It works because the heavy members (forward, backward, step and what they call) are defined
// outside their classes: an inline member, one defined in its class, is still instantiated in
// every translation unit that calls it, extern or not (measured, g++ 12: a TU calling
// transformer_block<softmax_attention<double>>::forward took 12.5 s at -O0 with the
// declaration, 2.7 s once forward was defined outside the class).
//
// The test bodies see it through their precompiled header; the other programs through
// performer_use_instances() (tools/instances/CMakeLists.txt), which force-includes it.
#pragma once

#include <performer/favor/favor_attention.hpp>
#include <performer/favor/favor_bf16_attention.hpp>
#include <performer/favor/favor_decoder.hpp>
#include <performer/favor/favor_gradient.hpp>
#include <performer/favor/features/elu_features.hpp>
#include <performer/favor/features/favor_plus_plus_features.hpp>
#include <performer/favor/features/hyperbolic_features.hpp>
#include <performer/favor/features/positive_features.hpp>
#include <performer/favor/features/relu_features.hpp>
#include <performer/favor/features/trigonometric_features.hpp>
#include <performer/lsh/example_hash_family.hpp>
#include <performer/lsh/lsh_attention.hpp>
#include <performer/lsh/lsh_gradient.hpp>
#include <performer/nn/block_gradient.hpp>
#include <performer/nn/model_gradient.hpp>
#include <performer/nn/transformer_block.hpp>
#include <performer/nn/transformer_model.hpp>
#include <performer/nn/transformer_stack.hpp>
#include <performer/softmax/softmax_attention.hpp>
#include <performer/softmax/softmax_gradient.hpp>
#include <performer/softmax/tiled_softmax_attention.hpp>
#include <performer/softmax/tiled_softmax_gradient.hpp>
#include <performer/train/trainer.hpp>

// softmax.cpp
extern template class performer::softmax_attention<float>;
extern template class performer::softmax_attention<double>;
extern template class performer::tiled_softmax_attention<float>;
extern template class performer::tiled_softmax_attention<double>;
extern template struct performer::attention_gradient<performer::softmax_attention<float>>;
extern template struct performer::attention_gradient<performer::softmax_attention<double>>;
extern template struct performer::attention_gradient<performer::tiled_softmax_attention<float>>;
extern template struct performer::attention_gradient<performer::tiled_softmax_attention<double>>;

// favor_float.cpp
extern template class performer::favor_attention<float>;
extern template class performer::favor_attention<float, performer::positive_features<float>,
                                                 performer::orthogonal_sampler, double>;
extern template class performer::favor_attention<float, performer::hyperbolic_features<float>>;
extern template class performer::favor_attention<float, performer::trigonometric_features<float>>;
extern template class performer::favor_attention<float, performer::favor_plus_plus_features<float>>;
extern template class performer::favor_decoder<float>;
extern template struct performer::attention_gradient<performer::favor_attention<float>>;

// favor_bf16.cpp
extern template class performer::favor_bf16_attention<>;

// favor_double.cpp
extern template class performer::favor_attention<double>;
extern template class performer::favor_attention<double, performer::hyperbolic_features<double>>;
extern template class performer::favor_attention<double, performer::relu_features<double>,
                                                 performer::gaussian_sampler>;
extern template class performer::favor_attention<double, performer::elu_features<double>>;
extern template class performer::favor_attention<double, performer::favor_plus_plus_features<double>>;
extern template class performer::favor_decoder<double>;
extern template struct performer::attention_gradient<performer::favor_attention<double>>;

// lsh.cpp
extern template class performer::angular_hash<float>;
extern template class performer::angular_hash<double>;
extern template class performer::lsh_attention<float>;
extern template class performer::lsh_attention<double>;
extern template class performer::lsh_attention<float, performer::sign_projection_hash<float>>;
extern template struct performer::attention_gradient<performer::lsh_attention<float>>;
extern template struct performer::attention_gradient<performer::lsh_attention<double>>;

// nn_float.cpp
extern template class performer::transformer_block<performer::softmax_attention<float>>;
extern template class performer::transformer_block<performer::tiled_softmax_attention<float>>;
extern template class performer::transformer_block<performer::favor_attention<float>>;
extern template class performer::transformer_block<performer::lsh_attention<float>>;
extern template class performer::transformer_stack<performer::softmax_attention<float>>;
extern template class performer::transformer_stack<performer::tiled_softmax_attention<float>>;
extern template class performer::transformer_stack<performer::favor_attention<float>>;
extern template class performer::transformer_stack<performer::lsh_attention<float>>;

// model_float.cpp
extern template class performer::transformer_model<performer::softmax_attention<float>>;
extern template class performer::transformer_model<performer::tiled_softmax_attention<float>>;
extern template class performer::transformer_model<performer::favor_attention<float>>;
extern template class performer::transformer_model<performer::lsh_attention<float>>;

// train_float.cpp
extern template struct performer::block_gradient<performer::softmax_attention<float>>;
extern template struct performer::block_gradient<performer::tiled_softmax_attention<float>>;
extern template struct performer::block_gradient<performer::favor_attention<float>>;
extern template struct performer::model_gradient<performer::softmax_attention<float>>;
extern template struct performer::model_gradient<performer::tiled_softmax_attention<float>>;
extern template struct performer::model_gradient<performer::favor_attention<float>>;
extern template class performer::trainer<performer::favor_attention<float>>;

// nn_double.cpp
extern template class performer::transformer_block<performer::softmax_attention<double>>;
extern template class performer::transformer_block<performer::favor_attention<double>>;
extern template class performer::transformer_block<performer::lsh_attention<double>>;
extern template class performer::transformer_stack<performer::softmax_attention<double>>;
extern template class performer::transformer_stack<performer::favor_attention<double>>;
extern template class performer::transformer_stack<performer::lsh_attention<double>>;
extern template class performer::transformer_model<performer::softmax_attention<double>>;
extern template class performer::transformer_model<performer::favor_attention<double>>;
extern template class performer::transformer_model<performer::lsh_attention<double>>;

// train_double.cpp
extern template struct performer::block_gradient<performer::softmax_attention<double>>;
extern template struct performer::block_gradient<performer::favor_attention<double>>;
extern template struct performer::block_gradient<performer::lsh_attention<double>>;
extern template struct performer::model_gradient<performer::softmax_attention<double>>;
extern template struct performer::model_gradient<performer::favor_attention<double>>;
extern template struct performer::model_gradient<performer::lsh_attention<double>>;
extern template class performer::trainer<performer::softmax_attention<double>>;
