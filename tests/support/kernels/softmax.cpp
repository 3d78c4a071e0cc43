// Explicit instantiation definitions for the test executables (support/instantiations.hpp
// declares them extern for every test body), one share of them per file so that the build
// compiles the shares in parallel.
#include "support/instantiations.hpp"

template class performer::softmax_attention<float>;
template class performer::softmax_attention<double>;
template class performer::tiled_softmax_attention<float>;
template class performer::tiled_softmax_attention<double>;
template struct performer::attention_gradient<performer::softmax_attention<float>>;
template struct performer::attention_gradient<performer::softmax_attention<double>>;
template struct performer::attention_gradient<performer::tiled_softmax_attention<float>>;
template struct performer::attention_gradient<performer::tiled_softmax_attention<double>>;
