// Explicit instantiation definitions for the project's own programs (instances/instances.hpp
// declares them extern for each of them), one share of them per file so that the build
// compiles the shares in parallel.
#include "instances/instances.hpp"

template struct performer::block_gradient<performer::softmax_attention<float>>;
template struct performer::block_gradient<performer::tiled_softmax_attention<float>>;
template struct performer::block_gradient<performer::favor_attention<float>>;
template struct performer::model_gradient<performer::softmax_attention<float>>;
template struct performer::model_gradient<performer::tiled_softmax_attention<float>>;
template struct performer::model_gradient<performer::favor_attention<float>>;
template class performer::trainer<performer::favor_attention<float>>;
