// Explicit instantiation definitions for the project's own programs (instances/instances.hpp
// declares them extern for each of them), one share of them per file so that the build
// compiles the shares in parallel.
#include "instances/instances.hpp"

template struct performer::block_gradient<performer::softmax_attention<double>>;
template struct performer::block_gradient<performer::favor_attention<double>>;
template struct performer::block_gradient<performer::lsh_attention<double>>;
template struct performer::model_gradient<performer::softmax_attention<double>>;
template struct performer::model_gradient<performer::favor_attention<double>>;
template struct performer::model_gradient<performer::lsh_attention<double>>;
template class performer::trainer<performer::softmax_attention<double>>;
