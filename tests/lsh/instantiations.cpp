// The LSH class templates compiled once for the whole family's tests (makers.hpp declares them
// extern elsewhere).
#include "lsh/makers.hpp"

template class performer::angular_hash<float>;
template class performer::angular_hash<double>;
template class performer::lsh_attention<float>;
template class performer::lsh_attention<double>;
template class performer::lsh_attention<float, performer::sign_projection_hash<float>>;
