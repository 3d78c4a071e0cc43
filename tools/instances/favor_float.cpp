// Explicit instantiation definitions for the project's own programs (instances/instances.hpp
// declares them extern for each of them), one share of them per file so that the build
// compiles the shares in parallel.
#include "instances/instances.hpp"

template class performer::favor_attention<float>;
template class performer::favor_attention<float, performer::positive_features<float>,
                                          performer::orthogonal_sampler, double>;
template class performer::favor_attention<float, performer::hyperbolic_features<float>>;
template class performer::favor_attention<float, performer::trigonometric_features<float>>;
template class performer::favor_attention<float, performer::favor_plus_plus_features<float>>;
template class performer::favor_decoder<float>;
template struct performer::attention_gradient<performer::favor_attention<float>>;
