// Portable random numbers (detail/random.hpp): SplitMix64 and xoshiro256** against independently
// computed words, standard_normal against tests/tools/normal_reference.py, portable_log against
// std::log, the moments and distribution of the normal deviates, and determinism of the streams.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <set>
#include <vector>

#include <performer/random/detail/generator.hpp>

// Named as well as anonymous: the unity build compiles several test files as one.
namespace random_generator_test {
namespace {

using performer::detail::derive_seed;
using performer::detail::portable_log;
using performer::detail::splitmix64;
using performer::detail::standard_normal;
using performer::detail::xoshiro256ss;

// Reference words, computed with Python integers from the published algorithms (written for this
// test, independently of the header):
//   M = 2**64 - 1
//   def sm(x):
//       x = (x + 0x9E3779B97F4A7C15) & M; z = x
//       z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M
//       z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M
//       return x, z ^ (z >> 31)
//   def rl(v, k): return ((v << k) | (v >> (64 - k))) & M
//   def xo(seed, n):            # xoshiro256** 1.0, state = four SplitMix64 words of the seed
//       s = []
//       for _ in range(4): seed, w = sm(seed); s.append(w)
//       out = []
//       for _ in range(n):
//           out.append(rl(s[1] * 5 & M, 7) * 9 & M)
//           t = s[1] << 17 & M
//           s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3]; s[2] ^= t; s[3] = rl(s[3], 45)
//       return out
//   [hex(w) for w in xo(0, 6)], [hex(w) for w in xo(2024, 6)], hex(xo(2024, 1000)[-1]),
//   hex(xo(2**64 - 1, 3)[-1])
// The SplitMix64 words for state 0 are also those of Vigna's reference splitmix64.c.

TEST(RandomSplitMix64, MatchesReferenceSequence) {
  std::uint64_t state = 0;
  EXPECT_EQ(splitmix64(state), 0xE220A8397B1DCDAFULL);
  EXPECT_EQ(splitmix64(state), 0x6E789E6AA1B965F4ULL);
  EXPECT_EQ(splitmix64(state), 0x06C45D188009454FULL);
  EXPECT_EQ(splitmix64(state), 0xF88BB8A8724C81ECULL);
  EXPECT_EQ(state, 4 * 0x9E3779B97F4A7C15ULL);  // the state advances by the golden gamma (mod 2^64)
}

// The generator is usable in constant expressions, where undefined behaviour is diagnosed.
static_assert([] {
  xoshiro256ss rng(0);
  return rng.next() == 0x99EC5F36CB75F2B4ULL && rng.next() == 0xBF6E1F784956452AULL;
}());

TEST(RandomXoshiro256ss, MatchesIndependentReference) {
  const std::uint64_t seed0[] = {0x99EC5F36CB75F2B4ULL, 0xBF6E1F784956452AULL,
                                 0x1A5F849D4933E6E0ULL, 0x6AA594F1262D2D2CULL,
                                 0xBBA5AD4A1F842E59ULL, 0xFFEF8375D9EBCACAULL};
  const std::uint64_t seed2024[] = {0x0E48715A13D7772EULL, 0xC837F3EE8A7A1065ULL,
                                    0x1272314B15EE5001ULL, 0x28E323A6ABE2A46BULL,
                                    0xC60DF3B261660AA7ULL, 0x3EAFF0863CCF54F5ULL};
  xoshiro256ss a(0);
  for (const auto w : seed0) EXPECT_EQ(a.next(), w);
  xoshiro256ss b(2024);
  for (const auto w : seed2024) EXPECT_EQ(b.next(), w);
  for (int i = 6; i < 999; ++i) static_cast<void>(b.next());
  EXPECT_EQ(b.next(), 0xC116AA6094B8A0E3ULL);  // the 1000th word
  xoshiro256ss c(~std::uint64_t{0});
  static_cast<void>(c.next());
  static_cast<void>(c.next());
  EXPECT_EQ(c.next(), 0x81DE31C0D260469EULL);
}

TEST(RandomXoshiro256ss, UniformIsTheTop53BitsScaled) {
  xoshiro256ss words(7);
  xoshiro256ss uniforms(7);
  for (int i = 0; i < 10000; ++i) {
    const double u = uniforms.uniform();
    EXPECT_EQ(u, std::ldexp(static_cast<double>(words.next() >> 11U), -53));
    ASSERT_GE(u, 0.0);
    ASSERT_LT(u, 1.0);
  }
}

TEST(RandomStandardNormal, MatchesPythonReference) {
  // Printed by tests/tools/normal_reference.py (an independent Python implementation of
  // SplitMix64, xoshiro256** and Marsaglia's polar method, using math.log). The C++ deviates use
  // portable_log, which may differ from math.log by a few ulp; the polar method's factor
  // sqrt(-2 log s / s) then differs by a few ulp too, far below the 1e-14 relative tolerance.
  const double expected[2][5] = {
      {0.5981026483626094, -0.8950525532379914, -2.415606685712082, -0.7626406521838989,
       -0.03668245697754931},
      {-0.7262191382447857, 0.2216227015035933, 0.46417731016247366, 1.476249461018415,
       1.0078198992420604}};
  const std::uint64_t seeds[2] = {0, 42};
  for (int s = 0; s < 2; ++s) {
    xoshiro256ss rng(seeds[s]);
    for (int i = 0; i < 5; ++i) {
      const double z = standard_normal(rng);
      EXPECT_NEAR(z, expected[s][i], 1e-14 * std::abs(expected[s][i]))
          << "seed " << seeds[s] << ", deviate " << i;
    }
  }
}

/// |a - b| in units of the spacing of doubles at |b| (b finite, nonzero).
double ulps(double a, double b) {
  const double mag = std::abs(b);
  return std::abs(a - b) / (std::nextafter(mag, std::numeric_limits<double>::infinity()) - mag);
}

TEST(RandomPortableLog, AgreesWithStdLogWithinFourUlp) {
  // Bound: for x = m 2^e, m in [sqrt(1/2), sqrt(2)), the result is fma(e, ln2_hi, e ln2_lo +
  // log m) with e ln2_hi exact. log m = 2 s p carries the rounding of f / (2 + f) (two
  // roundings), of the Horner sum p in [1, 1.01] and of the product: about 2.5 units of 2^-53
  // relative, i.e. up to 3 ulp of log m where log m sits low in its binade. That error is
  // largest relative to the result for e = 0 (x near 1, where log x = log m) and for e = +-1 with
  // cancellation (x near 1/2 or 2); for |e| >= 2 it shrinks under e ln 2 (measured: <= 1 ulp
  // beyond x in [0.25, 4)). std::log (glibc) adds < 1 ulp. Measured maximum over 2e7 points in
  // [0.25, 8): 3 ulp (in [0.5, 1.41]); the bound asserted is 4 ulp.
  std::vector<double> xs;
  // Every magnitude, log-spaced: 1e-300 ... 1e300 in 120,000 steps.
  const int steps = 120000;
  for (int k = 0; k <= steps; ++k) xs.push_back(std::pow(10.0, -300.0 + 600.0 * k / steps));
  // Random mantissas over the whole normal exponent range.
  xoshiro256ss rng(11);
  for (int k = 0; k < 60000; ++k) {
    const int e = static_cast<int>(rng.next() % 2046U) - 1021;
    xs.push_back(std::ldexp(1.0 + rng.uniform(), e - 1));
  }
  // Near 1, where log x ~ x - 1 and only a relative bound is meaningful.
  for (int k = 1; k <= 2000; ++k) {
    xs.push_back(1.0 + k * 0x1.0p-52);
    xs.push_back(1.0 - k * 0x1.0p-53);
  }
  for (int j = 1; j <= 15; ++j) {
    xs.push_back(1.0 + std::pow(10.0, -j));
    xs.push_back(1.0 - std::pow(10.0, -j));
  }
  for (int k = 0; k < 100000; ++k) xs.push_back(0.25 + 3.75 * rng.uniform());  // e in -1..2
  // Around the reduction's switch point sqrt(1/2) and at the ends of the range.
  double below = 0.70710678118654752440;
  double above = below;
  for (int k = 0; k < 64; ++k) {
    xs.push_back(below);
    xs.push_back(above);
    xs.push_back(2 * above);
    below = std::nextafter(below, 0.0);
    above = std::nextafter(above, 1.0);
  }
  xs.push_back(std::numeric_limits<double>::min());
  xs.push_back(std::numeric_limits<double>::max());
  xs.push_back(std::nextafter(1.0, 0.0));
  xs.push_back(std::nextafter(1.0, 2.0));
  // Subnormals: frexp normalises them, so they need no special path.
  for (const double x : {std::numeric_limits<double>::denorm_min(), 3 * std::numeric_limits<double>::denorm_min(),
                         1e-320, 1e-310, std::numeric_limits<double>::min() / 2}) {
    xs.push_back(x);
  }

  double worst = 0;
  double worst_x = 0;
  for (const double x : xs) {
    if (x == 1.0) continue;  // log 1 = 0 has no ulp scale: checked exactly below
    const double expected = std::log(x);
    const double err = ulps(portable_log(x), expected);
    if (err > worst) {
      worst = err;
      worst_x = x;
    }
  }
  EXPECT_LE(worst, 4.0) << "worst at x = " << worst_x;
  EXPECT_EQ(portable_log(1.0), 0.0);
  for (int e = -1074; e <= 1023; e += 7) {
    EXPECT_LE(ulps(portable_log(std::ldexp(1.0, e)), std::log(std::ldexp(1.0, e))), 1.0) << e;
  }
}

/// n standard normal deviates from one seed.
std::vector<double> normals(std::uint64_t seed, std::size_t n) {
  xoshiro256ss rng(seed);
  std::vector<double> z(n);
  for (auto& v : z) v = standard_normal(rng);
  return z;
}

TEST(RandomStandardNormal, MomentsMatchTheGaussian) {
  // Raw sample moments of n iid N(0, 1) deviates: E z^k and standard error sqrt(Var(z^k) / n)
  // with Var z = 1, Var z^2 = E z^4 - 1 = 2, Var z^3 = E z^6 = 15, Var z^4 = E z^8 - 9 = 96.
  // Each must lie within 5 standard errors (two-sided p ~ 6e-7 per moment if the generator is
  // right). The 4th moment 3 is the Gaussian kurtosis.
  const std::size_t n = 1000000;
  const auto z = normals(2021, n);
  double m[5] = {0, 0, 0, 0, 0};
  for (const double v : z) {
    const double v2 = v * v;
    m[1] += v;
    m[2] += v2;
    m[3] += v2 * v;
    m[4] += v2 * v2;
  }
  const double expected[5] = {0, 0, 1, 0, 3};
  const double variance[5] = {0, 1, 2, 15, 96};
  for (int k = 1; k <= 4; ++k) {
    const double mean = m[k] / static_cast<double>(n);
    const double se = std::sqrt(variance[k] / static_cast<double>(n));
    EXPECT_NEAR(mean, expected[k], 5 * se) << "moment " << k;
  }
}

/// Standard normal distribution function.
double big_phi(double x) { return 0.5 * std::erfc(-x / std::sqrt(2.0)); }

TEST(RandomStandardNormal, PassesChiSquareAndKolmogorovSmirnov) {
  // Bucket chi-square: 64 buckets equiprobable under N(0, 1) (bucket floor(64 Phi(z))), n = 500,000.
  // The statistic is chi^2 with 63 degrees of freedom: mean 63, sd sqrt(126) = 11.2. Threshold
  // 119 (5 sd): P(chi^2_63 > 119) ~ 3e-5 by the Wilson-Hilferty approximation.
  const std::size_t n = 500000;
  const auto z = normals(77, n);
  const int buckets = 64;
  std::vector<double> count(buckets, 0.0);
  double tail3 = 0;
  double tail4 = 0;
  for (const double v : z) {
    const int b = std::min(buckets - 1, static_cast<int>(buckets * big_phi(v)));
    count[static_cast<std::size_t>(b)] += 1;
    tail3 += std::abs(v) > 3 ? 1 : 0;
    tail4 += std::abs(v) > 4 ? 1 : 0;
  }
  const double expected = static_cast<double>(n) / buckets;
  double chi2 = 0;
  for (const double c : count) chi2 += (c - expected) * (c - expected) / expected;
  EXPECT_LT(chi2, 119.0);
  // The far tails, which 64 buckets do not resolve: binomial counts within 5 sd of
  // n P(|z| > t), P = 2 Phi(-t).
  for (const auto& [t, hits] : {std::pair{3.0, tail3}, std::pair{4.0, tail4}}) {
    const double p = 2 * big_phi(-t);
    const double mean = static_cast<double>(n) * p;
    EXPECT_NEAR(hits, mean, 5 * std::sqrt(mean * (1 - p))) << "P(|z| > " << t << ")";
  }

  // Kolmogorov-Smirnov on the first 100,000: sqrt(n) D_n converges to the Kolmogorov
  // distribution, P(K > 1.95) ~ 0.001.
  std::vector<double> sample(z.begin(), z.begin() + 100000);
  std::sort(sample.begin(), sample.end());
  const double k = static_cast<double>(sample.size());
  double d = 0;
  for (std::size_t i = 0; i < sample.size(); ++i) {
    const double f = big_phi(sample[i]);
    d = std::max({d, static_cast<double>(i + 1) / k - f, f - static_cast<double>(i) / k});
  }
  EXPECT_LT(std::sqrt(k) * d, 1.95);
}

TEST(RandomDeterminism, SameSeedSameStreamDifferentSeedsDiffer) {
  for (const std::uint64_t seed : {std::uint64_t{0}, std::uint64_t{1}, std::uint64_t{0xDEADBEEF}}) {
    xoshiro256ss a(seed);
    xoshiro256ss b(seed);
    for (int i = 0; i < 1000; ++i) ASSERT_EQ(a.next(), b.next());
    const auto za = normals(seed, 1000);
    const auto zb = normals(seed, 1000);
    // Bit for bit, not merely equal as values.
    for (std::size_t i = 0; i < za.size(); ++i) {
      ASSERT_EQ(std::bit_cast<std::uint64_t>(za[i]), std::bit_cast<std::uint64_t>(zb[i]));
    }
  }
  // Consecutive seeds (the usual way seeds are picked) give distinct first words and distinct
  // first deviates.
  std::set<std::uint64_t> words;
  std::set<double> deviates;
  for (std::uint64_t seed = 0; seed < 2000; ++seed) {
    xoshiro256ss rng(seed);
    words.insert(rng.next());
    xoshiro256ss again(seed);
    deviates.insert(standard_normal(again));
  }
  EXPECT_EQ(words.size(), 2000U);
  EXPECT_EQ(deviates.size(), 2000U);
}

TEST(RandomDeterminism, DerivedSeedsGiveDistinctUncorrelatedStreams) {
  const std::uint64_t parent = 12345;
  std::set<std::uint64_t> children;
  for (std::uint64_t stream = 0; stream < 1000; ++stream) {
    const std::uint64_t child = derive_seed(parent, stream);
    EXPECT_NE(child, parent);
    EXPECT_EQ(child, derive_seed(parent, stream));  // a pure function
    EXPECT_NE(child, derive_seed(parent + 1, stream));
    children.insert(child);
  }
  EXPECT_EQ(children.size(), 1000U);

  // Sibling streams are uncorrelated: the sample correlation of n paired deviates has standard
  // error 1 / sqrt(n); demand |r| < 5 / sqrt(n).
  const std::size_t n = 100000;
  const auto a = normals(derive_seed(parent, 0), n);
  const auto b = normals(derive_seed(parent, 1), n);
  const auto c = normals(parent, n);
  double ab = 0;
  double ac = 0;
  for (std::size_t i = 0; i < n; ++i) {
    ab += a[i] * b[i];
    ac += a[i] * c[i];
  }
  const double bound = 5 / std::sqrt(static_cast<double>(n));
  EXPECT_LT(std::abs(ab / static_cast<double>(n)), bound);
  EXPECT_LT(std::abs(ac / static_cast<double>(n)), bound);
}

}  // namespace
}  // namespace random_generator_test
