// Loading a 100M-parameter model file (issue 16): io::load_model on an F32 file of an exact-
// attention model (d_model 1024, 8 layers, d_ff 2048, vocab 32000, tied head: 100.0M
// parameters, 400 MB), timed by Google Benchmark (median of repetitions, warm page cache), plus
// the peak growth of resident memory during one load against the weights' size, a load after
// the file's pages were evicted from the page cache, and the cost of building the model with
// seeded weights alone (which load_model pays before the file's replace them).
//
//   bench_load_model [--dir DIR] [Google Benchmark flags]
//
// The file is written by a child process, so that the model built to write it never counts in
// this process's peak; it is removed at exit.
#include <benchmark/benchmark.h>
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include <performer/io.hpp>
#include <performer/softmax/softmax_attention.hpp>

namespace {

using model = performer::transformer_model<performer::softmax_attention<float>>;

performer::model_config config() {
  return {.vocab = 32000,
          .layers = 8,
          .block = {.d_model = 1024, .heads = 16, .d_ff = 2048, .causal = true},
          .max_positions = 0,
          .tie_output = true};
}

std::int64_t parameters(const model& m) {
  std::int64_t n = m.parameters().token_embedding.size() + m.parameters().b_out.size() +
                   2 * m.d_model();
  for (performer::index_t l = 0; l < m.stack().layers(); ++l) {
    const auto& p = m.stack().layer(l).parameters();
    n += p.w_q.size() + p.w_k.size() + p.w_v.size() + p.w_o.size() + p.w_ff1.size() +
         p.w_ff2.size() + p.b_q.size() + p.b_k.size() + p.b_v.size() + p.b_o.size() +
         p.b_ff1.size() + p.b_ff2.size() + 4 * p.norm1_gain.size();
  }
  return n;
}

/// A field of /proc/self/status in kB (VmHWM: peak resident set; VmRSS: current).
long status_kb(const char* field) {
  std::ifstream in("/proc/self/status");
  std::string key;
  long value = 0;
  while (in >> key) {
    if (key == std::string(field) + ":") {
      in >> value;
      return value;
    }
    in.ignore(1 << 12, '\n');
  }
  return -1;
}

/// Resets VmHWM to the current resident set (Linux >= 4.0), so a peak can be measured per step.
void reset_peak() {
  std::ofstream("/proc/self/clear_refs") << "5";
}

/// Evicts the file's pages from the page cache (clean pages: no privilege needed).
void evict(const std::filesystem::path& path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd >= 0) {
    ::fdatasync(fd);
    ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    ::close(fd);
  }
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

void bm_load(benchmark::State& state, const std::filesystem::path& path) {
  std::optional<model> m;
  for (auto _ : state) {
    m.emplace(performer::io::load_model<performer::softmax_attention<float>>(path));
    benchmark::DoNotOptimize(*m);
    state.PauseTiming();  // the model's destruction is not part of loading
    m.reset();
    state.ResumeTiming();
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::filesystem::path dir = std::filesystem::temp_directory_path();
  std::vector<char*> args{argv[0]};
  for (int i = 1; i < argc; ++i) {
    if (std::string(argv[i]) == "--dir" && i + 1 < argc) {
      dir = argv[++i];
    } else {
      args.push_back(argv[i]);
    }
  }
  const auto path = dir / ("performer_bench_load_" + std::to_string(::getpid()) + ".safetensors");

  const pid_t child = ::fork();
  if (child == 0) {
    const auto t0 = std::chrono::steady_clock::now();
    const model m(config(), performer::softmax_attention<float>{}, 1);
    std::printf("model: %lld parameters; built in %.2f s\n",
                static_cast<long long>(parameters(m)), seconds_since(t0));
    const auto t1 = std::chrono::steady_clock::now();
    performer::io::save_model(m, path);
    std::printf("save_model: %.2f s, %.1f MB\n", seconds_since(t1),
                static_cast<double>(std::filesystem::file_size(path)) / 1e6);
    std::fflush(stdout);
    std::_Exit(0);
  }
  int status = 0;
  ::waitpid(child, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 || !std::filesystem::exists(path)) {
    std::fprintf(stderr, "writing %s failed\n", path.c_str());
    return 1;
  }

  {  // One load: peak resident growth against the weights' size.
    reset_peak();
    const long before = status_kb("VmHWM");
    const auto t0 = std::chrono::steady_clock::now();
    const model m = performer::io::load_model<performer::softmax_attention<float>>(path);
    const double load_s = seconds_since(t0);
    const long peak = status_kb("VmHWM");
    const long after = status_kb("VmRSS");
    const double weights_mb = static_cast<double>(parameters(m)) * 4 / 1e6;
    std::printf("first load (warm page cache): %.3f s\n", load_s);
    std::printf("weights: %.1f MB; resident growth: peak %.1f MB (%.2fx the weights), after %.1f MB "
                "(%.2fx)\n", weights_mb, static_cast<double>(peak - before) * 1.024e-3,
                static_cast<double>(peak - before) * 1.024e-3 / weights_mb,
                static_cast<double>(after - before) * 1.024e-3,
                static_cast<double>(after - before) * 1.024e-3 / weights_mb);
  }
  {  // Cold page cache; then, for comparison, what load_model avoids by building with no_init.
    evict(path);
    auto t0 = std::chrono::steady_clock::now();
    { const model m = performer::io::load_model<performer::softmax_attention<float>>(path); }
    std::printf("load after evicting the file from the page cache: %.3f s\n", seconds_since(t0));
    t0 = std::chrono::steady_clock::now();
    { const model m(config(), performer::softmax_attention<float>{}, 1); }
    std::printf("a seeded construction, which load_model skips (no_init): %.3f s\n",
                seconds_since(t0));
    // What the loader does besides: every tensor from the mapping into a new matrix, the
    // nn.Linear weights transposed, each matrix freed after (so no model holds them).
    t0 = std::chrono::steady_clock::now();
    const performer::io::safetensors_file f(path, performer::io::page_policy::discard_after_read);
    double checksum = 0;
    for (const auto& t : f.tensors()) {
      const bool linear = t.name.ends_with("proj.weight") || t.name.ends_with("ffn.fc1.weight") ||
                          t.name.ends_with("ffn.fc2.weight");
      const auto w = linear ? f.read_transposed<float>(t.name) : f.read<float>(t.name);
      checksum += static_cast<double>(w(0, 0));
    }
    std::printf("reading every tensor into new matrices, most of a load: %.3f s (checksum %g)\n",
                seconds_since(t0), checksum);
  }
  std::fflush(stdout);

  benchmark::RegisterBenchmark("load_model/100M_params/F32", bm_load, path)
      ->Unit(benchmark::kMillisecond)
      ->Iterations(1)
      ->Repetitions(5)
      ->ReportAggregatesOnly(true)
      ->UseRealTime();
  int bench_argc = static_cast<int>(args.size());
  benchmark::Initialize(&bench_argc, args.data());
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  std::filesystem::remove(path);
  return 0;
}
