/// @file random/detail/generator.hpp
/// @brief Portable, seeded random numbers: the same seed gives the same bits with any
/// compiler, standard library and thread count. The standard distributions are avoided on
/// purpose: their algorithms are unspecified and differ between libstdc++ and libc++.
#pragma once

#include <cmath>
#include <cstdint>

namespace performer::detail {

/// SplitMix64 step (Steele, Lea, Flood 2014): expands a seed into well-mixed 64-bit words.
[[nodiscard]] constexpr std::uint64_t splitmix64(std::uint64_t& state) noexcept {
  state += 0x9E3779B97F4A7C15ULL;
  std::uint64_t z = state;
  z = (z ^ (z >> 30U)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27U)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31U);
}

/// Derives an independent child seed (for a layer, a head, a hash round) from a parent seed.
[[nodiscard]] constexpr std::uint64_t derive_seed(std::uint64_t seed, std::uint64_t stream) noexcept {
  std::uint64_t s = seed ^ (0xD1B54A32D192ED03ULL * (stream + 1));
  return splitmix64(s);
}

/// xoshiro256** 1.0 (Blackman and Vigna 2018), seeded through SplitMix64.
class xoshiro256ss {
 public:
  explicit constexpr xoshiro256ss(std::uint64_t seed) noexcept {
    for (auto& word : s_) word = splitmix64(seed);
  }

  [[nodiscard]] constexpr std::uint64_t next() noexcept {
    const std::uint64_t result = rotl(s_[1] * 5U, 7) * 9U;
    const std::uint64_t t = s_[1] << 17U;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = rotl(s_[3], 45);
    return result;
  }

  /// Uniform double in [0, 1) with 53 random bits (exact: no rounding involved).
  [[nodiscard]] constexpr double uniform() noexcept {
    return static_cast<double>(next() >> 11U) * 0x1.0p-53;
  }

 private:
  [[nodiscard]] static constexpr std::uint64_t rotl(std::uint64_t x, int k) noexcept {
    return (x << static_cast<unsigned>(k)) | (x >> static_cast<unsigned>(64 - k));
  }
  std::uint64_t s_[4]{};
};

/**
 * Natural logarithm of x > 0 built only from frexp, +, -, *, / and explicit std::fma, so its
 * bits do not depend on the compiler, the C library (glibc picks CPU-specific log variants) or
 * floating-point contraction. log x = e ln 2 + 2 atanh(s) with x = m 2^e, m in [sqrt(1/2),
 * sqrt(2)), s = (m - 1)/(m + 1), |s| <= 0.172; the atanh series to s^21 leaves a relative
 * error below 1e-17 before rounding. Accurate to a few ulp (checked against std::log).
 */
[[nodiscard]] inline double portable_log(double x) noexcept {
  int e = 0;
  double m = std::frexp(x, &e);  // exact: x = m 2^e, m in [0.5, 1)
  if (m < 0.70710678118654752440) {
    m *= 2.0;  // exact
    --e;
  }
  const double f = m - 1.0;  // exact (Sterbenz)
  const double s = f / (2.0 + f);
  const double t = s * s;
  double p = 1.0 / 21.0;  // sum_k t^k / (2k + 1), k = 0..10, by Horner's rule
  for (int k = 9; k >= 0; --k) p = std::fma(p, t, 1.0 / (2.0 * k + 1.0));
  const double log_m = 2.0 * s * p;
  constexpr double ln2_hi = 6.93147180369123816490e-01;  // high bits of ln 2 (exact times e)
  constexpr double ln2_lo = 1.90821492927058770002e-10;
  const double de = static_cast<double>(e);
  return std::fma(de, ln2_hi, std::fma(de, ln2_lo, log_m));
}

/**
 * Standard normal deviate by Marsaglia's polar method over xoshiro256**, portable bit for bit
 * (portable_log, sqrt and explicit fma only; the second deviate of each pair is discarded so
 * that the function is stateless).
 */
[[nodiscard]] inline double standard_normal(xoshiro256ss& rng) noexcept {
  for (;;) {
    const double u = std::fma(2.0, rng.uniform(), -1.0);
    const double v = std::fma(2.0, rng.uniform(), -1.0);
    const double s = std::fma(u, u, v * v);
    if (s < 1.0 && s > 0.0) return u * std::sqrt(-2.0 * portable_log(s) / s);
  }
}

}  // namespace performer::detail
