// Explicit instantiation definitions for the project's own programs (instances/instances.hpp
// declares them extern for each of them), one share of them per file so that the build
// compiles the shares in parallel.
#include "instances/instances.hpp"

template class performer::favor_attention<double>;
template class performer::favor_attention<double, performer::hyperbolic_features<double>>;
template class performer::favor_attention<double, performer::relu_features<double>,
                                          performer::gaussian_sampler>;
template class performer::favor_attention<double, performer::elu_features<double>>;
template class performer::favor_attention<double, performer::favor_plus_plus_features<double>>;
template class performer::favor_decoder<double>;
template struct performer::attention_gradient<performer::favor_attention<double>>;
