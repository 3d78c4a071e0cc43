// The FAVOR class templates compiled once for the whole family's tests (makers.hpp declares
// them extern elsewhere).
#include "favor/makers.hpp"

template class performer::favor_attention<float>;
template class performer::favor_attention<double>;
template class performer::favor_attention<float, performer::positive_features<float>,
                                          performer::orthogonal_sampler, double>;
template class performer::favor_attention<float, performer::hyperbolic_features<float>>;
template class performer::favor_attention<double, performer::hyperbolic_features<double>>;
template class performer::favor_attention<float, performer::trigonometric_features<float>>;
template class performer::favor_attention<double, performer::relu_features<double>,
                                          performer::gaussian_sampler>;
template class performer::favor_attention<double, performer::elu_features<double>>;
template class performer::favor_attention<double, performer::favor_plus_plus_features<double>>;
template class performer::favor_attention<float, performer::favor_plus_plus_features<float>>;
template class performer::favor_decoder<float>;
template class performer::favor_decoder<double>;
