// Explicit instantiation definitions for the project's own programs (instances/instances.hpp
// declares them extern for each of them), one share of them per file so that the build
// compiles the shares in parallel.
#include "instances/instances.hpp"

template class performer::favor_bf16_attention<>;
