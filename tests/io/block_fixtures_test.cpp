// The cross-attention block fixtures (tests/io/fixtures/block_cross_*.safetensors, written by
// tools/reference/make_fixtures.py): a decoder block over an encoder's memory, its tensors under
// PyTorch's names, inputs and the output the independent PyTorch reference computed in float64.
// Each is read through io::read_block_parameters into a float and a double block, whose output
// must match the reference to 1e-5 (float) and 1e-10 (double) relative to the largest |y|; the
// causal one also step by step, token after token over the same memory.
#include <gtest/gtest.h>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <performer/io/block_tensors.hpp>
#include <performer/io/safetensors.hpp>
#include <performer/io/safetensors_writer.hpp>
#include <performer/testing/expect_invalid.hpp>

#include "io/support.hpp"
#include "instances/instances.hpp"

namespace performer::test {
// Named as well as anonymous: the unity build compiles several test files as one.
namespace io_block_fixtures_test {
namespace {

std::filesystem::path fixture_path(const std::string& name) {
  return io_support::fixtures_dir() / (name + ".safetensors");
}

/// The block's shape, from the fixture's __metadata__ "config".
block_config config_of(const io::safetensors_file& file) {
  const auto j = nlohmann::json::parse(file.metadata().at("config"));
  return {.d_model = j.at("d_model").get<index_t>(),
          .heads = j.at("heads").get<index_t>(),
          .d_ff = j.at("d_ff").get<index_t>(),
          .causal = j.at("causal").get<bool>(),
          .norm = j.at("norm").get<std::string>() == "pre" ? norm_placement::pre : norm_placement::post,
          .ffn_activation =
              j.at("activation").get<std::string>() == "relu" ? activation::relu : activation::gelu,
          .layer_norm_eps = j.at("layer_norm_eps").get<double>(),
          .cross_attention = true};
}

template <class Block>
void expect_reference_output(const Block& block, const io::safetensors_file& file, double tol) {
  using T = typename Block::scalar_type;
  const row_matrix<T> x = file.read<T>("x");
  const row_matrix<T> memory = file.read<T>("memory");
  const std::vector<std::int64_t> keep64 = file.read_int64("memory_keep");
  const std::vector<std::uint8_t> keep(keep64.begin(), keep64.end());
  const row_matrix<double> want = file.read<double>("y");
  const double scale = want.cwiseAbs().maxCoeff();
  row_matrix<T> y(x.rows(), x.cols());
  typename Block::workspace_type ws;
  block.forward(x, memory, y, {}, keep, ws);
  EXPECT_LE((y.template cast<double>() - want).cwiseAbs().maxCoeff() / scale, tol);
  if (!block.config().causal) return;
  auto s = block.start_decoding(memory, keep);
  row_matrix<T> stepped(x.rows(), x.cols());
  for (index_t i = 0; i < x.rows(); ++i) block.step(x.row(i), stepped.row(i), s);
  EXPECT_LE((stepped.template cast<double>() - want).cwiseAbs().maxCoeff() / scale, tol)
      << "step by step";
}

template <class T>
void check_fixtures(double tol) {
  {
    SCOPED_TRACE("block_cross_exact");
    const io::safetensors_file file(fixture_path("block_cross_exact"));
    transformer_block<softmax_attention<T>> block(config_of(file), {}, no_init);
    block.set_parameters(io::read_block_parameters<T>(file, "", true));
    ASSERT_TRUE(block.config().causal);
    expect_reference_output(block, file, tol);
  }
  {
    SCOPED_TRACE("block_cross_favor");
    const io::safetensors_file file(fixture_path("block_cross_favor"));
    const block_config config = config_of(file);
    const row_matrix<T> projection = file.read<T>("attn.projection");
    favor_attention<T> favor(config.d_model / config.heads, projection.rows());
    favor.projection().set_matrix(projection);  // shared by self- and cross-attention
    transformer_block<favor_attention<T>> block(config, favor, no_init);
    block.set_parameters(io::read_block_parameters<T>(file, "", true));
    expect_reference_output(block, file, tol);
  }
}

TEST(BlockFixtures, CrossAttentionMatchesThePyTorchReferenceInFloat) { check_fixtures<float>(1e-5); }

TEST(BlockFixtures, CrossAttentionMatchesThePyTorchReferenceInDouble) {
  check_fixtures<double>(1e-10);
}

TEST(BlockFixtures, ReadBlockParametersNamesAMissingOrMisshapenTensor) {
  const io::safetensors_file file(fixture_path("block_cross_exact"));
  PERFORMER_EXPECT_INVALID("safetensors_file::read", "no tensor 'layers.0.attn.q_proj.weight'",
                           io::read_block_parameters<float>(file, "layers.0.", true));
  // A bias stored as a matrix is refused by name, never resized into the vector.
  io::safetensors_writer w;
  for (const auto& t : file.tensors()) {
    if (t.name == "attn.k_proj.bias") {
      w.add(t.name, row_matrix<float>(row_matrix<float>::Ones(2, 16)));
    } else if (t.type == io::dtype::f32) {
      w.add(t.name, file.read<float>(t.name), t.shape);
    }
  }
  const auto path = std::filesystem::temp_directory_path() / "performer_block_fixtures_bias.safetensors";
  w.write(path);
  const io::safetensors_file bad(path);
  PERFORMER_EXPECT_INVALID("io::read_block_parameters", "tensor 'attn.k_proj.bias' has 2 rows",
                           io::read_block_parameters<float>(bad, "", true));
  std::filesystem::remove(path);
}

}  // namespace
}  // namespace io_block_fixtures_test
}  // namespace performer::test
