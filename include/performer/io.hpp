/// @file io.hpp
/// @brief Umbrella header of the optional model I/O component (CMake target performer::io,
/// which adds nlohmann-json to the core's Eigen): safetensors files and whole-model files
/// (docs/model_format.md). Not included by performer.hpp, which stays Eigen-only.
#pragma once

#include "io/attention_io.hpp"
#include "io/block_tensors.hpp"
#include "io/checkpoint.hpp"
#include "io/model_description.hpp"
#include "io/model_file.hpp"
#include "io/safetensors.hpp"
#include "io/safetensors_writer.hpp"
