// Explicit instantiation definitions for the project's own programs (instances/instances.hpp
// declares them extern for each of them), one share of them per file so that the build
// compiles the shares in parallel.
#include "instances/instances.hpp"

template class performer::angular_hash<float>;
template class performer::angular_hash<double>;
template class performer::lsh_attention<float>;
template class performer::lsh_attention<double>;
template class performer::lsh_attention<float, performer::sign_projection_hash<float>>;
template struct performer::attention_gradient<performer::lsh_attention<float>>;
template struct performer::attention_gradient<performer::lsh_attention<double>>;
