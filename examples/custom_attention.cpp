// A user-defined attention mechanism: exact softmax attention restricted to a sliding window
// (each query sees keys within `radius` positions). It models performer::attention_mechanism
// using only the public API, so it drops into performer::transformer_block like the library's
// own mechanisms. With a radius covering the whole sequence it equals exact attention, which
// the program checks before timing both.
//
// Usage: performer_example_custom_attention [N] [radius]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <iostream>

#include <performer/detail/validate.hpp>
#include <performer/performer.hpp>

template <class T>
class window_attention {
 public:
  using scalar_type = T;
  static constexpr bool supports_causal = true;
  struct workspace_type {
    performer::row_vector<T> logits;
  };

  explicit window_attention(Eigen::Index radius) : radius_(radius) {}

  // O(N radius d) time, O(radius) workspace.
  void forward(const performer::const_matrix_ref<T>& q, const performer::const_matrix_ref<T>& k,
               const performer::const_matrix_ref<T>& v, performer::matrix_ref<T> out,
               const performer::attention_mask& mask, workspace_type& ws) const {
    performer::detail::check_attention_args<T>("window_attention::forward", q, k, v, out, mask);
    const T scale = T(1) / std::sqrt(static_cast<T>(q.cols()));
    for (Eigen::Index i = 0; i < q.rows(); ++i) {
      const Eigen::Index first = std::max<Eigen::Index>(0, i - radius_);
      const Eigen::Index last = mask.causal ? std::min(i, k.rows() - 1)
                                            : std::min(i + radius_, k.rows() - 1);
      out.row(i).setZero();
      if (first > last) continue;
      ws.logits.resize(last - first + 1);
      ws.logits.noalias() = scale * (q.row(i) * k.middleRows(first, last - first + 1).transpose());
      T max_logit = -std::numeric_limits<T>::infinity();
      for (Eigen::Index j = first; j <= last; ++j) {
        if (mask.keeps(static_cast<std::size_t>(j))) max_logit = std::max(max_logit, ws.logits(j - first));
      }
      if (max_logit == -std::numeric_limits<T>::infinity()) continue;  // nothing visible: zeros
      T total = 0;
      for (Eigen::Index j = first; j <= last; ++j) {
        const T w = mask.keeps(static_cast<std::size_t>(j)) ? std::exp(ws.logits(j - first) - max_logit) : T(0);
        total += w;
        out.row(i) += w * v.row(j);
      }
      out.row(i) /= total;
    }
  }

 private:
  Eigen::Index radius_;
};

static_assert(performer::attention_mechanism<window_attention<float>>);

int main(int argc, char** argv) {
  using T = float;
  const Eigen::Index n = argc > 1 ? std::atol(argv[1]) : 2048;
  const Eigen::Index radius = argc > 2 ? std::atol(argv[2]) : 64;
  const performer::block_config cfg{.d_model = 128, .heads = 4, .causal = true};
  performer::transformer_block<window_attention<T>> local(cfg, window_attention<T>(radius), 1);
  performer::transformer_block<window_attention<T>> wide(cfg, window_attention<T>(n), 1);
  performer::transformer_block<performer::tiled_softmax_attention<T>> exact(cfg, {}, 1);
  const performer::row_matrix<T> x = performer::row_matrix<T>::Random(n, 128);

  const auto time = [&](const auto& block) {
    const auto t0 = std::chrono::steady_clock::now();
    auto y = block.forward(x);
    return std::make_pair(std::move(y), std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  };
  const auto [y_exact, t_exact] = time(exact);
  const auto [y_wide, t_wide] = time(wide);
  const auto [y_local, t_local] = time(local);
  const double agree = (y_wide - y_exact).cwiseAbs().maxCoeff() / (1 + y_exact.cwiseAbs().maxCoeff());
  const double differ = (y_local - y_exact).norm() / y_exact.norm();
  std::cout << "window attention with radius >= N vs exact: max relative difference " << agree << "\n"
            << "window attention, radius " << radius << ", N = " << n << ": relative difference "
            << differ << " from exact, " << t_local << " s vs " << t_exact << " s for exact\n";
  return agree < 1e-4 ? EXIT_SUCCESS : EXIT_FAILURE;
}
