// The class templates every test executable uses, declared extern: their members are compiled
// once, at the build type's optimisation, by tests/support/kernels/*.cpp (an object library that
// every test executable links), never again at -O0 in each test body that uses them. The
// precompiled header of the test bodies includes this file, so every test file sees it.
#pragma once

#include <performer/favor/favor_attention.hpp>
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
#include <performer/nn/transformer_stack.hpp>
#include <performer/softmax/softmax_attention.hpp>
#include <performer/softmax/softmax_gradient.hpp>
#include <performer/softmax/tiled_softmax_attention.hpp>
#include <performer/softmax/tiled_softmax_gradient.hpp>
#include <performer/train/trainer.hpp>

// kernels/softmax.cpp
extern template class performer::softmax_attention<float>;
extern template class performer::softmax_attention<double>;
extern template class performer::tiled_softmax_attention<float>;
extern template class performer::tiled_softmax_attention<double>;
extern template struct performer::attention_gradient<performer::softmax_attention<float>>;
extern template struct performer::attention_gradient<performer::softmax_attention<double>>;
extern template struct performer::attention_gradient<performer::tiled_softmax_attention<float>>;
extern template struct performer::attention_gradient<performer::tiled_softmax_attention<double>>;

// kernels/favor_float.cpp
extern template class performer::favor_attention<float>;
extern template class performer::favor_attention<float, performer::positive_features<float>,
                                                 performer::orthogonal_sampler, double>;
extern template class performer::favor_attention<float, performer::hyperbolic_features<float>>;
extern template class performer::favor_attention<float, performer::trigonometric_features<float>>;
extern template class performer::favor_attention<float, performer::favor_plus_plus_features<float>>;
extern template class performer::favor_decoder<float>;
extern template struct performer::attention_gradient<performer::favor_attention<float>>;

// kernels/favor_double.cpp
extern template class performer::favor_attention<double>;
extern template class performer::favor_attention<double, performer::hyperbolic_features<double>>;
extern template class performer::favor_attention<double, performer::relu_features<double>,
                                                 performer::gaussian_sampler>;
extern template class performer::favor_attention<double, performer::elu_features<double>>;
extern template class performer::favor_attention<double, performer::favor_plus_plus_features<double>>;
extern template class performer::favor_decoder<double>;
extern template struct performer::attention_gradient<performer::favor_attention<double>>;

// kernels/lsh.cpp
extern template class performer::angular_hash<float>;
extern template class performer::angular_hash<double>;
extern template class performer::lsh_attention<float>;
extern template class performer::lsh_attention<double>;
extern template class performer::lsh_attention<float, performer::sign_projection_hash<float>>;
extern template struct performer::attention_gradient<performer::lsh_attention<float>>;
extern template struct performer::attention_gradient<performer::lsh_attention<double>>;

// kernels/nn_float.cpp
extern template class performer::transformer_block<performer::softmax_attention<float>>;
extern template class performer::transformer_block<performer::tiled_softmax_attention<float>>;
extern template class performer::transformer_block<performer::favor_attention<float>>;
extern template class performer::transformer_stack<performer::softmax_attention<float>>;
extern template class performer::transformer_stack<performer::favor_attention<float>>;
extern template struct performer::block_gradient<performer::favor_attention<float>>;
extern template struct performer::model_gradient<performer::favor_attention<float>>;
extern template class performer::trainer<performer::favor_attention<float>>;

// kernels/nn_double.cpp
extern template class performer::transformer_block<performer::softmax_attention<double>>;
extern template class performer::transformer_block<performer::favor_attention<double>>;
extern template class performer::transformer_stack<performer::softmax_attention<double>>;
