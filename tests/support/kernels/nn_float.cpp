// Explicit instantiation definitions for the test executables (support/instantiations.hpp
// declares them extern for every test body), one share of them per file so that the build
// compiles the shares in parallel.
#include "support/instantiations.hpp"

template class performer::transformer_block<performer::softmax_attention<float>>;
template class performer::transformer_block<performer::tiled_softmax_attention<float>>;
template class performer::transformer_block<performer::favor_attention<float>>;
template class performer::transformer_stack<performer::softmax_attention<float>>;
template class performer::transformer_stack<performer::favor_attention<float>>;
template struct performer::block_gradient<performer::favor_attention<float>>;
template struct performer::model_gradient<performer::favor_attention<float>>;
template class performer::trainer<performer::favor_attention<float>>;
