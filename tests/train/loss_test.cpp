// Covers performer/train/loss.hpp: cross_entropy against an independent log-sum-exp in long
// double and its gradient against central finite differences, ignored rows, huge logits, the
// in-place form, float; masked_lm_targets' determinism, its rate and 80/10/10 split within
// binomial tolerances, its at-least-one guarantee; and every documented error.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <vector>

#include <performer/testing/expect_invalid.hpp>
#include <performer/train/loss.hpp>

#include "support/gradient_check.hpp"

// Named as well as anonymous: the unity build compiles several test files as one.
namespace train_loss_test {
namespace {

using performer::index_t;
using performer::row_matrix;
using performer::test::finite_difference_gradient;
using performer::test::gaussian_matrix;
using performer::test::relative_error;
using ids = std::vector<std::int64_t>;

/// cross_entropy's value, with its gradient discarded.
template <class T>
double loss_of(const row_matrix<T>& logits, const ids& targets, std::int64_t ignore = -1) {
  row_matrix<T> scratch(logits.rows(), logits.cols());
  return performer::cross_entropy<T>(logits, targets, scratch, ignore);
}

// The definition, -log(exp(l_t) / sum_j exp(l_j)) averaged, in long double without the max
// shift (the logits are small): a different evaluation from the library's.
TEST(CrossEntropy, ValueMatchesTheDefinition) {
  const row_matrix<double> logits = gaussian_matrix(3, 5, 1, 2.0);
  const ids targets{4, 0, 2};
  long double expected = 0;
  for (index_t i = 0; i < 3; ++i) {
    long double z = 0;
    for (index_t j = 0; j < 5; ++j) z += std::exp(static_cast<long double>(logits(i, j)));
    expected -= std::log(std::exp(static_cast<long double>(logits(i, targets[i]))) / z);
  }
  expected /= 3;
  EXPECT_NEAR(loss_of(logits, targets), static_cast<double>(expected), 1e-15);
}

TEST(CrossEntropy, GradientMatchesFiniteDifferences) {
  const row_matrix<double> logits = gaussian_matrix(5, 7, 2);
  const ids targets{3, -1, 0, 6, 3};  // one ignored row: count = 4
  row_matrix<double> dlogits(5, 7);
  performer::cross_entropy<double>(logits, targets, dlogits);
  const auto expected = finite_difference_gradient(
      [&](const row_matrix<double>& l) { return loss_of(l, targets); }, logits);
  EXPECT_LE(relative_error(dlogits, expected), 1e-7);
  EXPECT_TRUE(dlogits.row(1).isZero(0.0));
  // Each counted row sums to (1 - 1) / count = 0: the softmax minus one one-hot.
  EXPECT_LE(dlogits.rowwise().sum().cwiseAbs().maxCoeff(), 1e-16);
}

TEST(CrossEntropy, IgnoredRowsContributeNothing) {
  row_matrix<double> logits = gaussian_matrix(4, 6, 3);
  const ids targets{2, 7, 5, 7};  // ignore = 7, a value beyond the vocabulary
  const double loss = loss_of(logits, targets, 7);
  row_matrix<double> counted(2, 6);
  counted << logits.row(0), logits.row(2);
  EXPECT_NEAR(loss, loss_of(counted, ids{2, 5}), 1e-15);
  logits.row(1).setConstant(1e30);  // changes nothing: the row is not read for the loss
  logits.row(3) = gaussian_matrix(1, 6, 4);
  row_matrix<double> dlogits(4, 6);
  EXPECT_EQ(performer::cross_entropy<double>(logits, targets, dlogits, 7), loss);
  EXPECT_TRUE(dlogits.row(1).isZero(0.0) && dlogits.row(3).isZero(0.0));
}

// Logits of +-1e4 overflow exp in any type without the max shift; with it the loss is exact.
TEST(CrossEntropy, HugeLogitsStayFinite) {
  const auto check = [](auto scalar) {
    using T = decltype(scalar);
    const row_matrix<T> logits{{T(1e4), T(0), T(-1e4)}, {T(1e4), T(1e4), T(-1e4)}};
    row_matrix<T> dlogits(2, 3);
    // Row 0, target 1: loss 1e4 (+ log(1 + e^-1e4 + e^-2e4) = 0); row 1, target 0: log 2.
    const double loss = performer::cross_entropy<T>(logits, ids{1, 0}, dlogits);
    EXPECT_NEAR(loss, (1e4 + std::log(2.0)) / 2, 1e-9);
    EXPECT_TRUE(dlogits.allFinite());
    EXPECT_NEAR(static_cast<double>(dlogits(0, 1)), -0.5, 1e-7);
    EXPECT_NEAR(static_cast<double>(dlogits(1, 0)), -0.25, 1e-7);
  };
  check(0.0);
  check(0.0f);
}

TEST(CrossEntropy, InPlaceAndFloatAgree) {
  const row_matrix<double> logits = gaussian_matrix(6, 9, 5, 3.0);
  const ids targets{0, 8, -1, 4, 4, 1};
  row_matrix<double> dlogits(6, 9);
  const double loss = performer::cross_entropy<double>(logits, targets, dlogits);
  row_matrix<double> in_place = logits;
  EXPECT_EQ(performer::cross_entropy<double>(in_place, targets, in_place), loss);
  EXPECT_TRUE(in_place == dlogits);
  const row_matrix<float> logits_f = logits.cast<float>();
  row_matrix<float> dlogits_f(6, 9);
  EXPECT_NEAR(performer::cross_entropy<float>(logits_f, targets, dlogits_f), loss, 1e-6);
  EXPECT_LE(relative_error(dlogits_f.cast<double>(), dlogits), 1e-6);
}

TEST(CrossEntropy, RejectsEachDocumentedError) {
  const row_matrix<double> logits = gaussian_matrix(3, 4, 6);
  row_matrix<double> dlogits(3, 4), wrong(3, 5);
  using performer::cross_entropy;
  PERFORMER_EXPECT_INVALID("cross_entropy", "target 4 at row 1 is outside [0, 4)",
                           cross_entropy<double>(logits, ids{0, 4, 1}, dlogits));
  PERFORMER_EXPECT_INVALID("cross_entropy", "target -2 at row 2 is outside [0, 4)",
                           cross_entropy<double>(logits, ids{0, 1, -2}, dlogits));
  PERFORMER_EXPECT_INVALID("cross_entropy", "targets has 2 entries but logits has 3 rows",
                           cross_entropy<double>(logits, ids{0, 1}, dlogits));
  PERFORMER_EXPECT_INVALID("cross_entropy", "dlogits is 3x5, expected 3x4",
                           cross_entropy<double>(logits, ids{0, 1, 2}, wrong));
  PERFORMER_EXPECT_INVALID("cross_entropy", "every target is the ignored id -1",
                           cross_entropy<double>(logits, ids{-1, -1, -1}, dlogits));
  row_matrix<double> no_vocab(3, 0);
  PERFORMER_EXPECT_INVALID("cross_entropy", "the vocabulary is empty",
                           cross_entropy<double>(no_vocab, ids{0, 0, 0}, no_vocab));
  for (const double bad : {std::numeric_limits<double>::quiet_NaN(),
                           std::numeric_limits<double>::infinity()}) {
    row_matrix<double> l = logits;
    l(2, 3) = bad;
    PERFORMER_EXPECT_INVALID("cross_entropy", "logits (3x4) contains a NaN or an infinity",
                             cross_entropy<double>(l, ids{0, 1, 2}, dlogits));
  }
  row_matrix<double> shared(3, 5);
  shared.leftCols(4) = logits;
  PERFORMER_EXPECT_INVALID("cross_entropy", "dlogits partly overlaps logits",
                           cross_entropy<double>(shared.leftCols(4), ids{0, 1, 2},
                                                 shared.rightCols(4)));
}

/// Chosen positions and, among them, how many became the mask token or stayed unchanged.
struct census {
  std::int64_t chosen = 0, masked = 0, unchanged = 0;
};

census count(const ids& tokens, const performer::masked_lm_example& e, std::int64_t mask) {
  census c;
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    if (e.targets[i] == -1) {
      EXPECT_EQ(e.inputs[i], tokens[i]) << "an unchosen position changed at " << i;
      continue;
    }
    EXPECT_EQ(e.targets[i], tokens[i]) << "a target is not the original token at " << i;
    ++c.chosen;
    c.masked += e.inputs[i] == mask;
    c.unchanged += e.inputs[i] == tokens[i];
  }
  return c;
}

/// Tokens 1 .. vocab - 1 (never the mask token 0), from a fixed seed.
ids some_tokens(std::size_t n, std::int64_t vocab, std::uint64_t seed) {
  performer::detail::xoshiro256ss rng(seed);
  ids t(n);
  const auto others = static_cast<std::uint64_t>(vocab - 1);
  for (auto& x : t) x = 1 + static_cast<std::int64_t>(rng.next() % others);
  return t;
}

TEST(MaskedLmTargets, SameSeedSameOutputAndInPlaceAgrees) {
  const ids tokens = some_tokens(500, 1000, 7);
  const auto a = performer::masked_lm_targets(tokens, 0, 1000, 0.15, 42);
  const auto b = performer::masked_lm_targets(tokens, 0, 1000, 0.15, 42);
  const auto c = performer::masked_lm_targets(tokens, 0, 1000, 0.15, 43);
  EXPECT_EQ(a.inputs, b.inputs);
  EXPECT_EQ(a.targets, b.targets);
  EXPECT_NE(a.targets, c.targets);
  ids in_place = tokens, targets(tokens.size());
  performer::masked_lm_targets(in_place, 0, 1000, 0.15, 42, in_place, targets);
  EXPECT_EQ(in_place, a.inputs);
  EXPECT_EQ(targets, a.targets);
}

// N = 200,000 Bernoulli(0.15) choices: standard deviation sqrt(p (1 - p) / N) = 8.0e-4 of the
// fraction; 5 sigma (4e-3) fails a correct implementation with probability 6e-7, and catches a
// rate off by 0.005 or more. Among ~30,000 chosen positions the mask share 0.8 has deviation
// sqrt(0.8 0.2 / 30000) = 2.3e-3 (5 sigma: 0.012) and the unchanged share 0.1 (+ 0.1 / vocab
// from random draws of the token itself) 1.7e-3 (5 sigma: 0.009).
TEST(MaskedLmTargets, RateAndSplitMatchBert) {
  const std::int64_t vocab = 1000;
  const ids tokens = some_tokens(200000, vocab, 8);
  const auto e = performer::masked_lm_targets(tokens, 0, vocab, 0.15, 2024);
  const census c = count(tokens, e, 0);
  const double n = static_cast<double>(tokens.size());
  const double chosen = static_cast<double>(c.chosen);
  EXPECT_NEAR(chosen / n, 0.15, 5 * std::sqrt(0.15 * 0.85 / n));
  EXPECT_NEAR(static_cast<double>(c.masked) / chosen, 0.8, 5 * std::sqrt(0.8 * 0.2 / chosen));
  EXPECT_NEAR(static_cast<double>(c.unchanged) / chosen, 0.1, 5 * std::sqrt(0.1 * 0.9 / chosen));
  // The rest are random tokens: in range, and spread over the vocabulary, not one value.
  std::vector<int> seen(static_cast<std::size_t>(vocab), 0);
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    if (e.targets[i] != -1 && e.inputs[i] != 0 && e.inputs[i] != tokens[i]) {
      ASSERT_GE(e.inputs[i], 0);
      ASSERT_LT(e.inputs[i], vocab);
      seen[static_cast<std::size_t>(e.inputs[i])] = 1;
    }
  }
  EXPECT_GT(std::accumulate(seen.begin(), seen.end(), 0), 900);  // ~3,000 draws over 1,000 ids
}

TEST(MaskedLmTargets, AlwaysChoosesAPositionOfANonEmptySequence) {
  for (std::size_t n = 1; n <= 6; ++n) {
    const ids tokens = some_tokens(n, 50, n);
    for (std::uint64_t seed = 0; seed < 200; ++seed) {
      const auto e = performer::masked_lm_targets(tokens, 0, 50, 0.01, seed);
      const census c = count(tokens, e, 0);
      EXPECT_GE(c.chosen, 1) << "length " << n << ", seed " << seed;
      // Its loss is therefore defined.
      row_matrix<double> logits = row_matrix<double>::Zero(static_cast<index_t>(n), 50);
      EXPECT_NEAR(loss_of(logits, e.targets), std::log(50.0), 1e-14);
    }
  }
  const auto empty = performer::masked_lm_targets(ids{}, 0, 50, 0.15, 1);
  EXPECT_TRUE(empty.inputs.empty() && empty.targets.empty());
}

TEST(MaskedLmTargets, RejectsEachDocumentedError) {
  const ids tokens{1, 2, 3};
  ids inputs(3), targets(3), short_out(2);
  using performer::masked_lm_targets;
  PERFORMER_EXPECT_INVALID("masked_lm_targets", "vocab must be positive (got 0)",
                           masked_lm_targets(tokens, 0, 0, 0.15, 1));
  PERFORMER_EXPECT_INVALID("masked_lm_targets", "mask_token 10 is outside [0, 10)",
                           masked_lm_targets(tokens, 10, 10, 0.15, 1));
  PERFORMER_EXPECT_INVALID("masked_lm_targets", "token 3 at position 2 is outside [0, 3)",
                           masked_lm_targets(tokens, 0, 3, 0.15, 1));
  for (const double rate : {0.0, -0.1, 1.5, std::numeric_limits<double>::quiet_NaN()}) {
    PERFORMER_EXPECT_INVALID("masked_lm_targets", "rate must be in (0, 1]",
                             masked_lm_targets(tokens, 0, 10, rate, 1));
  }
  PERFORMER_EXPECT_INVALID("masked_lm_targets", "inputs has 3 and targets 2 entries, expected 3",
                           masked_lm_targets(tokens, 0, 10, 0.15, 1, inputs, short_out));
  PERFORMER_EXPECT_INVALID("masked_lm_targets", "targets overlaps tokens or inputs",
                           masked_lm_targets(tokens, 0, 10, 0.15, 1, inputs, inputs));
}

}  // namespace
}  // namespace train_loss_test
