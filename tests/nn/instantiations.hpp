/// @file tests/nn/instantiations.hpp
/// @brief The class templates the nn tests share, declared extern: nn/instantiations.cpp
/// compiles them once, optimised, and the test files (built at -O0) call that code.
#pragma once

#include <performer/favor/favor_attention.hpp>
#include <performer/lsh/lsh_attention.hpp>
#include <performer/nn/transformer_block.hpp>
#include <performer/nn/transformer_stack.hpp>
#include <performer/softmax/softmax_attention.hpp>
#include <performer/softmax/tiled_softmax_attention.hpp>

extern template class performer::softmax_attention<float>;
extern template class performer::softmax_attention<double>;
extern template class performer::tiled_softmax_attention<float>;
extern template class performer::tiled_softmax_attention<double>;
extern template class performer::favor_attention<float>;
extern template class performer::favor_attention<double>;
extern template class performer::angular_hash<float>;
extern template class performer::angular_hash<double>;
extern template class performer::lsh_attention<float>;
extern template class performer::lsh_attention<double>;
extern template class performer::transformer_block<performer::softmax_attention<float>>;
extern template class performer::transformer_block<performer::softmax_attention<double>>;
extern template class performer::transformer_block<performer::tiled_softmax_attention<float>>;
extern template class performer::transformer_block<performer::favor_attention<float>>;
extern template class performer::transformer_block<performer::favor_attention<double>>;
extern template class performer::transformer_stack<performer::softmax_attention<float>>;
extern template class performer::transformer_stack<performer::softmax_attention<double>>;
extern template class performer::transformer_stack<performer::favor_attention<float>>;
