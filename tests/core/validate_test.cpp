// all_finite, the finiteness check behind every input and result check: one non-finite
// entry anywhere (head, vectorised body, scalar tail) must be found, for both scalars and for
// views with strides.
#include <gtest/gtest.h>

#include <limits>

#include <performer/core/validate.hpp>
#include <performer/core/types.hpp>

// Named as well as anonymous: the unity build compiles several test files as one.
namespace core_validate_test {
namespace {

template <class T>
void expect_every_position_found() {
  using performer::row_matrix;
  const T bad[] = {std::numeric_limits<T>::quiet_NaN(), std::numeric_limits<T>::infinity(),
                   -std::numeric_limits<T>::infinity()};
  // 7 x 13: an odd size, so Eigen's packet loop leaves a scalar tail.
  row_matrix<T> m = row_matrix<T>::Constant(7, 13, std::numeric_limits<T>::max());
  m(3, 4) = std::numeric_limits<T>::lowest();
  m(5, 5) = std::numeric_limits<T>::denorm_min();
  ASSERT_TRUE(performer::all_finite(m));  // huge and tiny finite values are finite
  for (const T b : bad) {
    for (performer::index_t i = 0; i < m.size(); ++i) {
      row_matrix<T> x = m;
      x.data()[i] = b;
      ASSERT_FALSE(performer::all_finite(x)) << "entry " << i << " = " << b;
      // A strided view (every other column) sees the entry only when it is in the view.
      const bool in_view = (i % 13) % 2 == 0;
      const auto view = x(Eigen::all, Eigen::seq(0, Eigen::last, 2));
      ASSERT_EQ(performer::all_finite(view), !in_view) << "entry " << i;
    }
  }
  EXPECT_TRUE(performer::all_finite(row_matrix<T>(0, 5)));  // vacuously
}

TEST(Validate, AllFiniteFindsEveryNonFiniteEntry) {
  expect_every_position_found<float>();
  expect_every_position_found<double>();
}

}  // namespace
}  // namespace core_validate_test
