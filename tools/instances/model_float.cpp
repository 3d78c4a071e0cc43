// Explicit instantiation definitions for the project's own programs (instances/instances.hpp
// declares them extern for each of them), one share of them per file so that the build
// compiles the shares in parallel.
#include "instances/instances.hpp"

template class performer::transformer_model<performer::softmax_attention<float>>;
template class performer::transformer_model<performer::tiled_softmax_attention<float>>;
template class performer::transformer_model<performer::favor_attention<float>>;
template class performer::transformer_model<performer::lsh_attention<float>>;
