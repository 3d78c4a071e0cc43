/// @file train/adamw.hpp
/// @brief The AdamW optimiser (Loshchilov and Hutter, "Decoupled Weight Decay Regularization",
/// ICLR 2019) with bias correction and global-norm gradient clipping, as PyTorch's
/// torch.optim.AdamW and torch.nn.utils.clip_grad_norm_ compute them.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "../core/concepts.hpp"
#include "../core/error.hpp"
#include "../core/types.hpp"
#include "../core/validate.hpp"

namespace performer {

/// Hyper-parameters of adamw; the defaults are PyTorch's AdamW's.
struct adamw_options {
  double learning_rate = 1e-3;  ///< lr > 0; change it between steps for a schedule
  double beta1 = 0.9;           ///< decay of the gradient's running mean, in [0, 1)
  double beta2 = 0.999;         ///< decay of the squared gradient's running mean, in [0, 1)
  double eps = 1e-8;            ///< > 0, added to sqrt(v_hat): bounds the step where v is ~0
  double weight_decay = 1e-2;   ///< >= 0; each step multiplies a decayed tensor by 1 - lr wd
  double max_grad_norm = 0.0;   ///< >= 0; clip the global gradient norm to it, 0 = no clipping
};

/// Whether adamw's weight decay applies to a tensor. PyTorch decays every tensor it is given;
/// BERT's and GPT-2's recipes exempt biases and LayerNorm gains and biases, whose decay toward
/// 0 is not a regularisation (a gain of 0 switches its feature off). The choice is per tensor,
/// made when it is registered.
enum class decay_policy { decay, exempt };

/**
 * @brief The L2 norm of all the tensors taken as one vector, sqrt(sum of every squared entry),
 * summed in double in the order given (tensor by tensor, row-major within one), so the result
 * has the same bits on any thread count. Rescaled by the largest magnitude when the plain sum
 * of squares overflows (double gradients beyond ~1e154), so a finite input gives a finite
 * norm. NaN or infinity in the input gives a non-finite result. O(total size).
 */
template <real_scalar T>
[[nodiscard]] double global_norm(std::span<const const_matrix_ref<T>> tensors) {
  double sum = 0.0;
  for (const auto& t : tensors) sum += t.template cast<double>().squaredNorm();
  if (std::isfinite(sum)) return std::sqrt(sum);
  double scale = 0.0;
  for (const auto& t : tensors) {
    if (t.size() > 0) scale = std::max(scale, static_cast<double>(t.cwiseAbs().maxCoeff()));
  }
  if (!std::isfinite(scale)) return scale;
  double scaled = 0.0;
  for (const auto& t : tensors) scaled += (t.template cast<double>() / scale).squaredNorm();
  return scale * std::sqrt(scaled);
}

/**
 * @brief AdamW over a fixed list of parameter tensors, registered once with add() before the
 * first step; step() then takes one gradient per tensor, in registration order.
 *
 * One step, with t the step count and c the clipping factor (below):
 * - g = c grad;  m = beta1 m + (1 - beta1) g;  v = beta2 v + (1 - beta2) g^2;
 * - p = p (1 - lr wd) for a tensor with decay_policy::decay (decoupled: the decay does not pass
 *   through m and v, which is what distinguishes AdamW from Adam with an L2 term);
 * - p = p - lr m_hat / (sqrt(v_hat) + eps), with m_hat = m / (1 - beta1^t) and
 *   v_hat = v / (1 - beta2^t) (bias correction: m and v start at 0).
 * With max_grad_norm > 0 and the global norm N of the gradients (global_norm) above it,
 * c = max_grad_norm / N, so the clipped gradients' norm is max_grad_norm; else c = 1.
 * (PyTorch divides by N + 1e-6, which guards a zero norm that cannot reach this branch.)
 * beta^t are running products, not std::pow, so the bits do not depend on the C library.
 *
 * The optimiser keeps a view of each parameter, not a copy: a registered tensor must stay at
 * its address with its shape (assigning values in place is fine; resizing it, or move-assigning
 * another matrix into it, leaves a dangling view). The moments have the parameters' type T,
 * as PyTorch keeps them in the parameters' dtype: 2 scalars per parameter.
 *
 * Deterministic: serial, with the norm summed in a fixed order, so a step gives the same bits
 * on any thread count. Gradients of magnitude beyond sqrt(max of T) (1.8e19 in float) make v
 * infinite, which stops that entry's updates; clipping prevents it.
 */
template <real_scalar T>
class adamw {
 public:
  using scalar_type = T;

  /// @throws performer::invalid_argument on an option outside its documented range or
  /// non-finite (the message names it).
  explicit adamw(const adamw_options& options = {}) : options_(options) {
    validate(options_, "adamw");
  }

  /**
   * @brief Registers a parameter tensor; its moments start at 0. O(size), allocates the two
   * moment buffers (the only allocation: step() allocates nothing).
   * @param name reported by step()'s errors; @param param a view the optimiser updates
   * @return the tensor's index: its gradient's position in step()'s list.
   * @throws performer::invalid_argument if a step was already taken (a late tensor's bias
   * correction would be wrong), param is empty, holds a NaN or an infinity, or overlaps a
   * registered tensor (it would be updated twice).
   */
  std::size_t add(std::string name, matrix_ref<T> param,
                  decay_policy decay = decay_policy::decay) {
    constexpr std::string_view who = "adamw::add";
    PERFORMER_PRECONDITION(steps_ == 0, who, ": ", name,
                           " is added after the first step; register every tensor first");
    PERFORMER_PRECONDITION(param.size() > 0, who, ": ", name, " is empty (",
                           detail::shape(param), ")");
    require_finite(who, name, param);
    for (const auto& s : slots_) {
      PERFORMER_PRECONDITION(!detail::overlaps(view(s), param), who, ": ", name,
                             " overlaps the registered tensor ", s.name);
    }
    slots_.push_back({std::move(name), param.data(), param.rows(), param.cols(),
                      param.outerStride(), decay, row_matrix<T>::Zero(param.rows(), param.cols()),
                      row_matrix<T>::Zero(param.rows(), param.cols())});
    return slots_.size() - 1;
  }

  /**
   * @brief One AdamW step of every registered tensor, given their gradients in registration
   * order. Checks everything before changing anything, so a throw leaves the parameters, the
   * moments and the step count as they were. O(total size), no allocation.
   * @return the global gradient norm before clipping (global_norm), for logging.
   * @throws performer::invalid_argument if the number of gradients differs from the number of
   * tensors, or a gradient has the wrong shape or a NaN or an infinity (naming the tensor).
   */
  double step(std::span<const const_matrix_ref<T>> gradients) {
    constexpr std::string_view who = "adamw::step";
    PERFORMER_PRECONDITION(gradients.size() == slots_.size(), who, ": ", gradients.size(),
                           " gradients for ", slots_.size(), " registered tensors");
    for (std::size_t i = 0; i < slots_.size(); ++i) {
      const slot& s = slots_[i];
      const auto& g = gradients[i];
      PERFORMER_PRECONDITION(g.rows() == s.rows && g.cols() == s.cols, who, ": gradient ", i,
                             " (", s.name, ") is ", detail::shape(g), ", expected ", s.rows,
                             "x", s.cols);
      PERFORMER_PRECONDITION(all_finite(g), who, ": gradient ", i, " (", s.name,
                             ") contains a NaN or an infinity");
    }
    const double norm = global_norm<T>(gradients);
    const double clip = options_.max_grad_norm > 0.0 && norm > options_.max_grad_norm
                            ? options_.max_grad_norm / norm
                            : 1.0;
    ++steps_;
    beta1_power_ *= options_.beta1;
    beta2_power_ *= options_.beta2;
    // Every scalar is formed once in double and rounded to T once.
    const double lr = options_.learning_rate;
    const T scale = static_cast<T>(clip);
    const T beta1 = static_cast<T>(options_.beta1);
    const T beta2 = static_cast<T>(options_.beta2);
    const T one_minus_beta1 = static_cast<T>(1.0 - options_.beta1);
    const T one_minus_beta2 = static_cast<T>(1.0 - options_.beta2);
    const T step_size = static_cast<T>(lr / (1.0 - beta1_power_));
    const T inv_sqrt_bc2 = static_cast<T>(1.0 / std::sqrt(1.0 - beta2_power_));
    const T eps = static_cast<T>(options_.eps);
    const T shrink = static_cast<T>(1.0 - lr * options_.weight_decay);
    for (std::size_t i = 0; i < slots_.size(); ++i) {
      slot& s = slots_[i];
      const auto g = gradients[i].array() * scale;
      s.m.array() = beta1 * s.m.array() + one_minus_beta1 * g;
      s.v.array() = beta2 * s.v.array() + one_minus_beta2 * g.square();
      auto p = view(s).array();
      if (s.decay == decay_policy::decay) p *= shrink;
      p -= step_size * s.m.array() / (s.v.array().sqrt() * inv_sqrt_bc2 + eps);
    }
    return norm;
  }

  /// step() with the gradients listed in place: opt.step({dw, db}).
  double step(std::initializer_list<const_matrix_ref<T>> gradients) {
    return step(std::span<const const_matrix_ref<T>>(gradients.begin(), gradients.size()));
  }

  /**
   * @brief Restores what a checkpoint kept of a run: the step count and both moments of every
   * registered tensor, in registration order (as steps(), first_moment() and second_moment()
   * give them). beta1^t and beta2^t are recomputed by the multiplications step() made, so a
   * run resumed from a restored optimiser (and its restored parameters) has the same bits as one
   * that never stopped. Checks everything before changing anything. O(total size + steps).
   * @throws performer::invalid_argument if steps < 0; if the number of first or second moments
   * differs from size(); if a moment's shape differs from its tensor's; if a moment holds a NaN
   * or an infinity, or a second moment a negative entry (naming the tensor); if steps is 0 and
   * a moment is not (no step has fed it).
   */
  void restore(std::int64_t steps, std::span<const const_matrix_ref<T>> first,
               std::span<const const_matrix_ref<T>> second) {
    constexpr std::string_view who = "adamw::restore";
    PERFORMER_PRECONDITION(steps >= 0, who, ": the step count is ", steps, ", expected >= 0");
    PERFORMER_PRECONDITION(first.size() == slots_.size() && second.size() == slots_.size(), who,
                           ": ", first.size(), " first and ", second.size(),
                           " second moments for ", slots_.size(), " registered tensors");
    for (std::size_t i = 0; i < slots_.size(); ++i) {
      const slot& s = slots_[i];
      for (const auto* moment : {&first[i], &second[i]}) {
        const char* which = moment == &first[i] ? "first" : "second";
        PERFORMER_PRECONDITION(moment->rows() == s.rows && moment->cols() == s.cols, who, ": the ",
                               which, " moment of ", s.name, " is ", detail::shape(*moment),
                               ", expected ", s.rows, "x", s.cols);
        PERFORMER_PRECONDITION(all_finite(*moment), who, ": the ", which, " moment of ", s.name,
                               " contains a NaN or an infinity");
        PERFORMER_PRECONDITION(steps > 0 || moment->isZero(0), who, ": the ", which,
                               " moment of ", s.name, " is not zero at step 0");
      }
      PERFORMER_PRECONDITION((second[i].array() >= T(0)).all(), who, ": the second moment of ",
                             s.name, " has a negative entry");
    }
    for (std::size_t i = 0; i < slots_.size(); ++i) {
      slots_[i].m = first[i];
      slots_[i].v = second[i];
    }
    steps_ = steps;
    beta1_power_ = 1.0;
    beta2_power_ = 1.0;
    for (std::int64_t t = 0; t < steps; ++t) {
      beta1_power_ *= options_.beta1;
      beta2_power_ *= options_.beta2;
    }
  }

  /// Sets the learning rate of the next steps (a warm-up or decay schedule). The decoupled
  /// decay scales with it, as in PyTorch. @throws performer::invalid_argument unless lr > 0
  /// and finite.
  void set_learning_rate(double lr) {
    adamw_options changed = options_;
    changed.learning_rate = lr;
    validate(changed, "adamw::set_learning_rate");
    options_ = changed;
  }

  [[nodiscard]] const adamw_options& options() const noexcept { return options_; }
  /// Number of registered tensors.
  [[nodiscard]] std::size_t size() const noexcept { return slots_.size(); }
  /// Steps taken (t of the bias correction).
  [[nodiscard]] std::int64_t steps() const noexcept { return steps_; }
  /// Name given to tensor i. @pre i < size()
  [[nodiscard]] const std::string& name(std::size_t i) const { return slots_.at(i).name; }
  /// Running mean m of tensor i's clipped gradients (for checkpoints and tests). @pre i < size()
  [[nodiscard]] const row_matrix<T>& first_moment(std::size_t i) const { return slots_.at(i).m; }
  /// Running mean v of tensor i's squared clipped gradients. @pre i < size()
  [[nodiscard]] const row_matrix<T>& second_moment(std::size_t i) const {
    return slots_.at(i).v;
  }

 private:
  /// A registered tensor: where its entries are, and its moments.
  struct slot {
    std::string name;
    T* data;
    index_t rows, cols, outer_stride;
    decay_policy decay;
    row_matrix<T> m, v;
  };

  using param_map = Eigen::Map<row_matrix<T>, Eigen::Unaligned, Eigen::OuterStride<>>;

  static param_map view(const slot& s) {
    return param_map(s.data, s.rows, s.cols, Eigen::OuterStride<>(s.outer_stride));
  }

  static void validate(const adamw_options& o, std::string_view who) {
    const auto finite = [](double x) { return std::isfinite(x); };
    PERFORMER_PRECONDITION(finite(o.learning_rate) && o.learning_rate > 0.0, who,
                           ": learning_rate must be positive and finite (got ", o.learning_rate,
                           ")");
    PERFORMER_PRECONDITION(o.beta1 >= 0.0 && o.beta1 < 1.0, who, ": beta1 must be in [0, 1) (got ",
                           o.beta1, ")");
    PERFORMER_PRECONDITION(o.beta2 >= 0.0 && o.beta2 < 1.0, who, ": beta2 must be in [0, 1) (got ",
                           o.beta2, ")");
    PERFORMER_PRECONDITION(finite(o.eps) && o.eps > 0.0, who,
                           ": eps must be positive and finite (got ", o.eps, ")");
    PERFORMER_PRECONDITION(finite(o.weight_decay) && o.weight_decay >= 0.0, who,
                           ": weight_decay must be >= 0 and finite (got ", o.weight_decay, ")");
    PERFORMER_PRECONDITION(finite(o.max_grad_norm) && o.max_grad_norm >= 0.0, who,
                           ": max_grad_norm must be >= 0 and finite (got ", o.max_grad_norm,
                           "); 0 turns clipping off");
  }

  adamw_options options_;
  std::vector<slot> slots_;
  std::int64_t steps_ = 0;
  double beta1_power_ = 1.0;  // beta1^t
  double beta2_power_ = 1.0;
};

}  // namespace performer
