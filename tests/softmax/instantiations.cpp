// The exact mechanisms compiled once for the whole family's tests (makers.hpp declares them
// extern elsewhere).
#include "softmax/makers.hpp"

template class performer::softmax_attention<float>;
template class performer::softmax_attention<double>;
template class performer::tiled_softmax_attention<float>;
template class performer::tiled_softmax_attention<double>;
