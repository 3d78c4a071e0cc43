// Explicit instantiation definitions for the project's own programs (instances/instances.hpp
// declares them extern for each of them), one share of them per file so that the build
// compiles the shares in parallel.
#include "instances/instances.hpp"

template class performer::softmax_attention<float>;
template class performer::softmax_attention<double>;
template class performer::tiled_softmax_attention<float>;
template class performer::tiled_softmax_attention<double>;
template struct performer::attention_gradient<performer::softmax_attention<float>>;
template struct performer::attention_gradient<performer::softmax_attention<double>>;
template struct performer::attention_gradient<performer::tiled_softmax_attention<float>>;
template struct performer::attention_gradient<performer::tiled_softmax_attention<double>>;
