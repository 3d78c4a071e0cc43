/// @file train/loss.hpp
/// @brief The language-model training loss (softmax cross-entropy over the vocabulary, with
/// ignored positions) and the BERT masked-LM corruption recipe that decides which positions
/// count.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string_view>
#include <vector>

#include "../core/concepts.hpp"
#include "../core/error.hpp"
#include "../core/types.hpp"
#include "../core/validate.hpp"
#include "../random/detail/generator.hpp"

namespace performer {

/**
 * @brief Mean softmax cross-entropy of `logits` (N x V, one row per position) against
 * `targets` (N token ids, int64 as transformer_model's), over the rows whose target is not
 * `ignore`; writes dlogits = dL/dlogits = (softmax(row) - onehot(target)) / count, and zero
 * rows for the ignored positions.
 *
 * Ignoring is how a masked-LM loss counts only the masked positions (masked_lm_targets marks
 * the others with -1, the default `ignore`, as PyTorch's ignore_index), and how padding is left
 * out of a causal LM's loss. Each row's loss is log-sum-exp(row) - row[target], with the row
 * maximum subtracted before exp (logits of any finite size are safe). The exponentials are in
 * T (they become the gradient); their sum, the log and the subtraction are in double, so a
 * float loss is off by float's exp rounding only (~1e-7 nats), not by cancellation.
 *
 * dlogits may be logits itself (each row is read before it is overwritten), which saves the
 * largest buffer of a language model's step; any other overlap is refused.
 * O(N V) time, no allocation.
 * @return the mean loss over the counted rows, in nats.
 * @throws performer::invalid_argument if targets has not N entries, a target is neither in
 * [0, V) nor `ignore`, dlogits is not N x V or partly overlaps logits, logits is empty or holds
 * a NaN or an infinity, or every target is `ignore`: the mean over no rows is 0/0, and
 * returning 0 (or NaN) would let a data bug train silently.
 */
template <real_scalar T>
double cross_entropy(const const_matrix_ref<T>& logits, std::span<const std::int64_t> targets,
                     matrix_ref<T> dlogits, std::int64_t ignore = -1) {
  constexpr std::string_view who = "cross_entropy";
  const index_t n = logits.rows();
  const index_t v = logits.cols();
  PERFORMER_PRECONDITION(v > 0, who, ": logits has no columns (", detail::shape(logits),
                         "); the vocabulary is empty");
  PERFORMER_PRECONDITION(targets.size() == static_cast<std::size_t>(n), who, ": targets has ",
                         targets.size(), " entries but logits has ", n, " rows");
  PERFORMER_PRECONDITION(dlogits.rows() == n && dlogits.cols() == v, who, ": dlogits is ",
                         detail::shape(dlogits), ", expected ", detail::shape(logits));
  const bool in_place = dlogits.data() == logits.data() &&
                        dlogits.outerStride() == logits.outerStride();
  PERFORMER_PRECONDITION(in_place || !detail::overlaps(dlogits, logits), who,
                         ": dlogits partly overlaps logits; pass logits itself or a separate "
                         "buffer");
  index_t count = 0;
  for (std::size_t i = 0; i < targets.size(); ++i) {
    const std::int64_t t = targets[i];
    if (t == ignore) continue;
    PERFORMER_PRECONDITION(t >= 0 && t < v, who, ": target ", t, " at row ", i,
                           " is outside [0, ", v, ") and is not the ignored id ", ignore);
    ++count;
  }
  PERFORMER_PRECONDITION(count > 0, who, ": every target is the ignored id ", ignore,
                         "; the mean over no rows is undefined");
  require_finite(who, "logits", logits);
  const double inv_count = 1.0 / static_cast<double>(count);
  double total = 0.0;
  for (index_t i = 0; i < n; ++i) {
    const std::int64_t t = targets[static_cast<std::size_t>(i)];
    auto grad = dlogits.row(i);
    if (t == ignore) {
      grad.setZero();
      continue;
    }
    const T max = logits.row(i).maxCoeff();
    const double target_logit = static_cast<double>(logits(i, t));  // before grad overwrites it
    grad = (logits.row(i).array() - max).exp().matrix();            // in (0, 1], one is 1
    const double sum = grad.template cast<double>().sum();          // in [1, V]
    total += std::log(sum) - (target_logit - static_cast<double>(max));
    grad *= static_cast<T>(inv_count / sum);
    grad(t) -= static_cast<T>(inv_count);
  }
  return total * inv_count;
}

/// Corrupted input ids and loss targets of one sequence (see masked_lm_targets).
struct masked_lm_example {
  std::vector<std::int64_t> inputs;   ///< the ids the model reads
  std::vector<std::int64_t> targets;  ///< the original id where a position is chosen, else -1
};

/**
 * @brief BERT's masked-LM corruption (Devlin et al. 2019, section 3.1), deterministic in `seed`:
 * each position is chosen independently with probability `rate`; a chosen position gets
 * target = its token and, with probabilities 0.8 / 0.1 / 0.1, input = `mask_token`, a token
 * drawn uniformly from [0, vocab) (possibly the same token, as in BERT's code), or its token
 * unchanged. Every other position gets input = its token and target = -1, which cross_entropy
 * ignores by default.
 *
 * A non-empty sequence always gets at least one chosen position (when the draws chose none, one
 * position drawn uniformly is chosen), so that the loss over it is defined; this raises the
 * expected rate slightly for short sequences ((1 - rate)^N extra positions on average).
 *
 * The draws come from performer's xoshiro256** (random/detail/generator.hpp), so a seed gives
 * the same corruption on every platform; derive one seed per sequence and epoch
 * (detail::derive_seed) for fresh masks. `inputs` may be `tokens` itself (in place); `targets`
 * must not overlap either. O(N) time, no allocation.
 * @throws performer::invalid_argument if vocab <= 0, mask_token or a token is outside
 * [0, vocab), rate is not in (0, 1], an output has not tokens.size() entries, or targets
 * overlaps tokens or inputs.
 */
inline void masked_lm_targets(std::span<const std::int64_t> tokens, std::int64_t mask_token,
                              std::int64_t vocab, double rate, std::uint64_t seed,
                              std::span<std::int64_t> inputs, std::span<std::int64_t> targets) {
  constexpr std::string_view who = "masked_lm_targets";
  const std::size_t n = tokens.size();
  PERFORMER_PRECONDITION(vocab > 0, who, ": vocab must be positive (got ", vocab, ")");
  PERFORMER_PRECONDITION(mask_token >= 0 && mask_token < vocab, who, ": mask_token ", mask_token,
                         " is outside [0, ", vocab, ")");
  PERFORMER_PRECONDITION(rate > 0.0 && rate <= 1.0, who, ": rate must be in (0, 1] (got ", rate,
                         ")");
  PERFORMER_PRECONDITION(inputs.size() == n && targets.size() == n, who, ": inputs has ",
                         inputs.size(), " and targets ", targets.size(),
                         " entries, expected ", n, " (one per token)");
  const auto disjoint = [](std::span<const std::int64_t> a, std::span<const std::int64_t> b) {
    if (a.empty() || b.empty()) return true;
    // std::less gives the total order on pointers that the built-in < does not promise.
    const std::less<const std::int64_t*> before;
    return !before(a.data(), b.data() + b.size()) || !before(b.data(), a.data() + a.size());
  };
  PERFORMER_PRECONDITION(disjoint(targets, tokens) && disjoint(targets, inputs), who,
                         ": targets overlaps tokens or inputs; pass a separate buffer");
  for (std::size_t i = 0; i < n; ++i) {
    PERFORMER_PRECONDITION(tokens[i] >= 0 && tokens[i] < vocab, who, ": token ", tokens[i],
                           " at position ", i, " is outside [0, ", vocab, ")");
  }
  detail::xoshiro256ss rng(seed);
  // floor(u V) with u < 1 can round up to V once V nears 2^53: clamp rather than trust it.
  const auto draw_below = [&rng](std::int64_t bound) {
    const auto k = static_cast<std::int64_t>(rng.uniform() * static_cast<double>(bound));
    return std::min(k, bound - 1);
  };
  const auto corrupt = [&](std::size_t i) {
    const std::int64_t token = tokens[i];  // read before inputs[i], which may alias it
    targets[i] = token;
    const double u = rng.uniform();
    inputs[i] = u < 0.8 ? mask_token : (u < 0.9 ? draw_below(vocab) : token);
  };
  bool any = false;
  for (std::size_t i = 0; i < n; ++i) {
    if (rng.uniform() < rate) {
      corrupt(i);
      any = true;
    } else {
      inputs[i] = tokens[i];
      targets[i] = -1;
    }
  }
  if (!any && n > 0) corrupt(static_cast<std::size_t>(draw_below(static_cast<std::int64_t>(n))));
}

/// masked_lm_targets into new vectors. O(N) time; allocates the two results.
[[nodiscard]] inline masked_lm_example masked_lm_targets(std::span<const std::int64_t> tokens,
                                                         std::int64_t mask_token,
                                                         std::int64_t vocab, double rate,
                                                         std::uint64_t seed) {
  masked_lm_example e{std::vector<std::int64_t>(tokens.size()),
                      std::vector<std::int64_t>(tokens.size())};
  masked_lm_targets(tokens, mask_token, vocab, rate, seed, e.inputs, e.targets);
  return e;
}

}  // namespace performer
