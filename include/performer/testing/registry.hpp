/// @file testing/registry.hpp
/// @brief The registry of the library's attention mechanisms: one list, used by the tests (typed
/// suites, determinism fingerprints, memory bounds), the fuzzers and the benchmarks, so that a
/// new mechanism or feature map is added in one place and every harness picks it up.
///
/// Each entry is a type with a name, a family, whether it approximates softmax attention, and
/// `make<T>(d, m, seed)` building the mechanism for head width d, m random features (ignored by
/// mechanisms without features) and a seed. `for_each_mechanism(f)` calls f(Entry{}) for every
/// entry, in the order below. No GoogleTest needed.
#pragma once

#include <cstdint>
#include <string_view>
#include <tuple>

#include "../core/types.hpp"
#include "../favor/favor_attention.hpp"
#include "../favor/features/elu_features.hpp"
#include "../favor/features/favor_plus_plus_features.hpp"
#include "../favor/features/hyperbolic_features.hpp"
#include "../favor/features/positive_features.hpp"
#include "../favor/features/relu_features.hpp"
#include "../favor/features/trigonometric_features.hpp"
#include "../lsh/lsh_attention.hpp"
#include "../softmax/softmax_attention.hpp"
#include "../softmax/tiled_softmax_attention.hpp"

namespace performer::registry {

/// What a harness needs to know about an entry beyond its type.
enum class family { softmax, favor, lsh };

/// The materialized exact reference: O(N^2) memory.
struct softmax {
  static constexpr std::string_view name = "softmax";
  static constexpr family kind = family::softmax;
  static constexpr bool approximate = false;
  static constexpr bool quadratic_memory = true;
  template <class T>
  using type = softmax_attention<T>;
  template <class T>
  static type<T> make(index_t /*d*/, index_t /*m*/, std::uint64_t /*seed*/) {
    return {};
  }
};

/// Exact attention by online softmax over tiles.
struct tiled {
  static constexpr std::string_view name = "tiled";
  static constexpr family kind = family::softmax;
  static constexpr bool approximate = false;
  static constexpr bool quadratic_memory = false;
  template <class T>
  using type = tiled_softmax_attention<T>;
  template <class T>
  static type<T> make(index_t /*d*/, index_t /*m*/, std::uint64_t /*seed*/) {
    return {};
  }
};

/// FAVOR with feature map Map (a template over the scalar), orthogonal projections.
template <template <class> class Map, const char* Name>
struct favor_with {
  static constexpr std::string_view name = Name;
  static constexpr family kind = family::favor;
  static constexpr bool approximate = true;
  static constexpr bool quadratic_memory = false;
  template <class T>
  using type = favor_attention<T, Map<T>>;
  template <class T>
  static type<T> make(index_t d, index_t m, std::uint64_t seed) {
    return type<T>(d, m, seed);
  }
};

inline constexpr char favor_positive_name[] = "favor";
inline constexpr char favor_hyperbolic_name[] = "favor_hyp";
inline constexpr char favor_trigonometric_name[] = "favor_trig";
inline constexpr char favor_relu_name[] = "favor_relu";
inline constexpr char favor_elu_name[] = "favor_elu";
inline constexpr char favor_plus_plus_name[] = "favor_pp";

using favor = favor_with<positive_features, favor_positive_name>;
using favor_hyperbolic = favor_with<hyperbolic_features, favor_hyperbolic_name>;
using favor_trigonometric = favor_with<trigonometric_features, favor_trigonometric_name>;
using favor_relu = favor_with<relu_features, favor_relu_name>;
using favor_elu = favor_with<elu_features, favor_elu_name>;
using favor_plus_plus = favor_with<favor_plus_plus_features, favor_plus_plus_name>;

/// Reformer LSH with its default options (shared-QK, buckets scaled with N).
struct lsh {
  static constexpr std::string_view name = "lsh";
  static constexpr family kind = family::lsh;
  static constexpr bool approximate = true;
  static constexpr bool quadratic_memory = false;
  static constexpr bool shared_qk = true;
  template <class T>
  using type = lsh_attention<T>;
  template <class T>
  static type<T> make(index_t d, index_t /*m*/, std::uint64_t seed) {
    return type<T>(d, {.seed = seed});
  }
};

/// Reformer LSH with separate queries and keys hashed alike: approximates the same attention
/// as the others, so its error against exact attention is meaningful.
struct lsh_qk {
  static constexpr std::string_view name = "lsh_qk";
  static constexpr family kind = family::lsh;
  static constexpr bool approximate = true;
  static constexpr bool quadratic_memory = false;
  static constexpr bool shared_qk = false;
  template <class T>
  using type = lsh_attention<T>;
  template <class T>
  static type<T> make(index_t d, index_t /*m*/, std::uint64_t seed) {
    return type<T>(d, {.shared_qk = false, .seed = seed});
  }
};

/// True when the entry's keys are its queries (shared-QK LSH): pass q as k.
template <class Entry>
[[nodiscard]] constexpr bool keys_are_queries() {
  if constexpr (requires { Entry::shared_qk; }) {
    return Entry::shared_qk;
  } else {
    return false;
  }
}

/// Every entry, in display order.
using all = std::tuple<softmax, tiled, favor, favor_hyperbolic, favor_trigonometric, favor_relu,
                       favor_elu, favor_plus_plus, lsh, lsh_qk>;

/// Calls f(Entry{}) for every entry of `all`, in order.
template <class F>
void for_each_mechanism(F&& f) {
  std::apply([&](auto... entry) { (f(entry), ...); }, all{});
}

}  // namespace performer::registry
