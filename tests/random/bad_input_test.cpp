// The random family's bad input (docs/bad_input_matrix.md §2): random_projection's constructor
// and set_matrix, and the samplers' sizes.
#include <gtest/gtest.h>

#include <string>
#include <utility>

#include <performer/random/example_sampler.hpp>
#include <performer/random/projection.hpp>
#include <performer/random/sampler.hpp>

#include "support/bad_input_cells.hpp"

namespace performer::test {
// Named as well as anonymous: the unity build compiles several test files as one.
namespace random_bad_input_test {
namespace {

constexpr index_t d = 4;

TEST(RandomBadInput, RandomProjectionCtor_NonPositive) {
  for_float_and_double([]<class T>() {
    using projection = random_projection<T>;
    PERFORMER_EXPECT_INVALID("random_projection", "number of features must be positive (got 0)",
                             projection(0, d));
    PERFORMER_EXPECT_INVALID("random_projection", "input width must be positive (got 0)",
                             projection(8, 0));
    PERFORMER_EXPECT_INVALID("random_projection", "input width must be positive (got -2)",
                             random_projection<T, gaussian_sampler>(8, -2));
  });
}

TEST(RandomBadInput, RandomProjectionSetMatrix_WrongShape) {
  for_float_and_double([]<class T>() {
    random_projection<T> p(8, d, 1);
    const row_matrix<T> before = p.matrix();
    PERFORMER_EXPECT_INVALID("random_projection::set_matrix", "w is 9x4, expected 8x4",
                             p.set_matrix(row_matrix<T>::Ones(9, d)));
    PERFORMER_EXPECT_INVALID("random_projection::set_matrix", "w is 8x5, expected 8x4",
                             p.set_matrix(row_matrix<T>::Ones(8, d + 1)));
    PERFORMER_EXPECT_INVALID("random_projection::set_matrix", "w is 0x0, expected 8x4",
                             p.set_matrix(row_matrix<T>()));
    EXPECT_EQ(p.matrix(), before);  // a rejected matrix changes nothing
  });
}

TEST(RandomBadInput, RandomProjectionSetMatrix_NonFinite) {
  for_float_and_double([]<class T>() {
    random_projection<T, gaussian_sampler> p(8, d, 1);
    const row_matrix<T> before = p.matrix();
    for (const T bad : {nan_v<T>, inf_v<T>, -inf_v<T>}) {
      row_matrix<T> w = before;
      w(3, 2) = bad;
      PERFORMER_EXPECT_INVALID("random_projection::set_matrix",
                               "w (8x4) contains a NaN or an infinity", p.set_matrix(w));
    }
    EXPECT_EQ(p.matrix(), before);
  });
}

// set_matrix takes any Eigen expression and converts it to T: a double matrix that is finite
// in double can hold a value beyond float's range, which would be stored as an infinity.
TEST(RandomBadInput, RandomProjectionSetMatrix_BeyondT) {
  random_projection<float> p(2, 2, 1);
  const row_matrix<float> before = p.matrix();
  row_matrix<double> w(2, 2);
  w << 1e300, 0, 0, 1;
  PERFORMER_EXPECT_INVALID("random_projection::set_matrix",
                           "w (2x2) has entries beyond the range of the scalar type",
                           p.set_matrix(w));
  EXPECT_EQ(p.matrix(), before);
  w(0, 0) = 1e30;  // within float's range: accepted, rounded
  p.set_matrix(w);
  EXPECT_EQ(p.matrix()(0, 0), 1e30f);
}

// Every sampler needs m > 0 rows of width d > 0; the orthogonal one used to loop forever on
// d = 0 (its blocks are d wide).
template <class Sampler>
void expect_sizes_checked(const char* who) {
  for (const auto& size : {std::pair<index_t, index_t>{0, d}, {3, 0}, {-1, d}, {3, -2}}) {
    // Named copies, not structured bindings: clang 14 cannot capture bindings in a lambda.
    const index_t m = size.first;
    const index_t width = size.second;
    SCOPED_TRACE(testing::Message() << m << " x " << width);
    PERFORMER_EXPECT_INVALID(
        who, "m (" + std::to_string(m) + ") and d (" + std::to_string(width) + ") must be positive",
        Sampler{}.sample(m, width, 1));
  }
  EXPECT_EQ(Sampler{}.sample(1, 1, 1).size(), 1);
}

TEST(RandomBadInput, Samplers_NonPositiveSizes) {
  expect_sizes_checked<gaussian_sampler>("gaussian_sampler::sample");
  expect_sizes_checked<orthogonal_sampler>("orthogonal_sampler::sample");
  expect_sizes_checked<antithetic_sampler>("antithetic_sampler::sample");
}

}  // namespace
}  // namespace random_bad_input_test
}  // namespace performer::test
