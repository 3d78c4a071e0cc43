// Every mechanism of the library (and a user-written one) through the reusable conformance suite.
#include <performer/performer.hpp>
#include <performer/testing/conformance.hpp>

#include "user_attention.hpp"

namespace performer::conformance {
namespace {

template <class A>
struct default_maker {
  using attention_type = A;
  static A make(performer::index /*head_dim*/) { return A{}; }
};

template <class T>
struct small_tiles_maker {
  using attention_type = performer::tiled_softmax_attention<T>;
  // Tiles smaller than the test sequences, so tile boundaries are exercised.
  static attention_type make(performer::index /*head_dim*/) { return attention_type(4, 6); }
};

using exact_makers =
    ::testing::Types<default_maker<performer::softmax_attention<float>>,
                     default_maker<performer::softmax_attention<double>>,
                     default_maker<performer::tiled_softmax_attention<float>>,
                     default_maker<performer::tiled_softmax_attention<double>>,
                     small_tiles_maker<float>, small_tiles_maker<double>>;
INSTANTIATE_TYPED_TEST_SUITE_P(exact, attention_conformance, exact_makers);

using user_makers = ::testing::Types<default_maker<performer::test::mean_attention<float>>>;
INSTANTIATE_TYPED_TEST_SUITE_P(user, attention_conformance, user_makers);

}  // namespace
}  // namespace performer::conformance
