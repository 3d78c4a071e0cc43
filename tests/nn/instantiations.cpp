// The nn family's class templates compiled once, at the build type's optimisation, for all of
// its test files (instantiations.hpp declares them extern there).
#include "nn/instantiations.hpp"

template class performer::softmax_attention<float>;
template class performer::softmax_attention<double>;
template class performer::tiled_softmax_attention<float>;
template class performer::tiled_softmax_attention<double>;
template class performer::favor_attention<float>;
template class performer::favor_attention<double>;
template class performer::angular_hash<float>;
template class performer::angular_hash<double>;
template class performer::lsh_attention<float>;
template class performer::lsh_attention<double>;
template class performer::transformer_block<performer::softmax_attention<float>>;
template class performer::transformer_block<performer::softmax_attention<double>>;
template class performer::transformer_block<performer::tiled_softmax_attention<float>>;
template class performer::transformer_block<performer::favor_attention<float>>;
template class performer::transformer_block<performer::favor_attention<double>>;
template class performer::transformer_stack<performer::softmax_attention<float>>;
template class performer::transformer_stack<performer::softmax_attention<double>>;
template class performer::transformer_stack<performer::favor_attention<float>>;
