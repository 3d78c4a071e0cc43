// Explicit instantiation definitions for the project's own programs (instances/instances.hpp
// declares them extern for each of them), one share of them per file so that the build
// compiles the shares in parallel.
#include "instances/instances.hpp"

template class performer::transformer_block<performer::softmax_attention<double>>;
template class performer::transformer_block<performer::favor_attention<double>>;
template class performer::transformer_block<performer::lsh_attention<double>>;
template class performer::transformer_stack<performer::softmax_attention<double>>;
template class performer::transformer_stack<performer::favor_attention<double>>;
template class performer::transformer_stack<performer::lsh_attention<double>>;
template class performer::transformer_model<performer::softmax_attention<double>>;
template class performer::transformer_model<performer::favor_attention<double>>;
template class performer::transformer_model<performer::lsh_attention<double>>;
