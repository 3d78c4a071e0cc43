// A consumer of the performer package's io component: saves a small model, loads it back and
// requires the same logits bit for bit, then prints the version (the check's expected line).
#include <cstdint>
#include <filesystem>
#include <iostream>
#include <vector>

#include <performer/io.hpp>
#include <performer/performer.hpp>

int main() {
  using model = performer::transformer_model<performer::favor_attention<float>>;
  const performer::model_config config{.vocab = 11, .layers = 2,
                                       .block = {.d_model = 16, .heads = 2, .causal = true}};
  const model lm(config, performer::favor_attention<float>(8, 16, 1), 2);
  const auto path = std::filesystem::temp_directory_path() / "performer_find_package_io.safetensors";
  performer::io::save_model(lm, path);
  const model back = performer::io::load_model<performer::favor_attention<float>>(path);
  std::filesystem::remove(path);
  const std::vector<std::int64_t> tokens{1, 4, 9, 2};
  if (back.forward(tokens) != lm.forward(tokens)) {
    std::cerr << "the reloaded model's logits differ\n";
    return 1;
  }
  std::cout << "performer " << performer::version_string << "\n";
  return 0;
}
