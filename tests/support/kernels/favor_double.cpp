// Explicit instantiation definitions for the test executables (support/instantiations.hpp
// declares them extern for every test body), one share of them per file so that the build
// compiles the shares in parallel.
#include "support/instantiations.hpp"

template class performer::favor_attention<double>;
template class performer::favor_attention<double, performer::hyperbolic_features<double>>;
template class performer::favor_attention<double, performer::relu_features<double>,
                                          performer::gaussian_sampler>;
template class performer::favor_attention<double, performer::elu_features<double>>;
template class performer::favor_attention<double, performer::favor_plus_plus_features<double>>;
template class performer::favor_decoder<double>;
template struct performer::attention_gradient<performer::favor_attention<double>>;
