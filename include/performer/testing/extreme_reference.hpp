/// @file testing/extreme_reference.hpp
/// @brief How the extreme-values suite (testing/extreme_values.hpp) judges a maker's results:
/// the one trait a maker declares for it. Kept apart from the suite so that makers can name it
/// without pulling in the suite.
#pragma once

namespace performer::conformance {

/**
 * @brief What attention_extreme_values compares a mechanism with. A maker declares
 * `static constexpr extreme_reference extreme_values = extreme_reference::...;` (default:
 * contract_only).
 *
 * - softmax: the mechanism is exact softmax attention (shared-QK with Reformer's self-penalty
 *   when the maker says shared_qk): it must equal a long double reference within a bound
 *   derived from the rounding analysis, and may refuse only when q.k or the value sums do not
 *   fit in its scalar.
 * - favor: a favor_attention (or anything with its feature_map(), projection(), options() and
 *   feature_count()): its estimate is recomputed in long double from its own features, the
 *   float one is compared with its double twin (the same projection), and it may refuse only
 *   where some row is not well-conditioned in its scalar.
 * - lsh_window: an lsh_attention: with every token hashed to one bucket it is exact softmax
 *   over its chunk windows (long double reference), and a float mechanism matches its double
 *   twin (the same hash functions) wherever their buckets agree.
 * - contract_only: only the contract (finite output or the documented overflow refusal, no
 *   zero row for a query that sees keys, the values' hull when the maker is convex); the
 *   reference comparisons report themselves skipped.
 */
enum class extreme_reference { softmax, favor, lsh_window, contract_only };

}  // namespace performer::conformance
