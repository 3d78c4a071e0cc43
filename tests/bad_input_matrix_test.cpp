// The bad-input matrix (docs/bad_input_matrix.md): every public entry point against every kind
// of bad input, one TEST per cell, named <EntryPoint>_<BadInput> as in the document's tables.
//
// A throwing cell checks three things: the exception is performer::invalid_argument, its
// message starts with "<function>: " (so a user can tell which call failed), and the message
// says which check fired (a short fragment such as "empty query"). Cells with a documented
// non-throwing behaviour (a query with no visible key gets a zero row, the FAVOR stabiliser
// keeps large logits finite, ...) check that behaviour instead.
//
// Cells marked "found here" were bugs this matrix exposed (now fixed); they stay as regressions.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <exception>
#include <limits>
#include <string>
#include <string_view>
#include <typeinfo>
#include <vector>

#include <performer/performer.hpp>
#include <performer/testing/helpers.hpp>

namespace {

using performer::attention_mask;
using performer::index;
using performer::row_matrix;
using performer::row_vector;
using performer::vector;
using performer::conformance::random_matrix;
using performer::conformance::relative_difference;

// ---- Helpers ------------------------------------------------------------------------------------

/// Fails unless `call` throws performer::invalid_argument whose message starts with
/// "<who>: " and contains `fragment`. The prefix is what tells a user which call failed; the
/// fragment proves that the intended check fired, not some earlier one.
template <class Call>
void expect_invalid(Call&& call, std::string_view who, std::string_view fragment, const char* file,
                    int line) {
  const std::string prefix = std::string(who) + ": ";
  try {
    call();
  } catch (const performer::invalid_argument& e) {
    const std::string_view what = e.what();
    if (!what.starts_with(prefix)) {
      ADD_FAILURE_AT(file, line) << "the message does not start with \"" << prefix
                                 << "\": " << what;
    }
    if (what.find(fragment) == std::string_view::npos) {
      ADD_FAILURE_AT(file, line) << "the message does not say \"" << fragment << "\": " << what;
    }
    return;
  } catch (const std::exception& e) {
    ADD_FAILURE_AT(file, line) << "threw " << typeid(e).name() << " (" << e.what()
                               << "), not performer::invalid_argument";
    return;
  }
  ADD_FAILURE_AT(file, line) << "did not throw; expected performer::invalid_argument from " << who
                             << " saying \"" << fragment << "\"";
}

// The call goes last so that commas in template arguments need no extra parentheses; the cast
// to void accepts [[nodiscard]] calls and constructor expressions alike.
#define EXPECT_INVALID(who, fragment, ...) \
  expect_invalid([&] { static_cast<void>(__VA_ARGS__); }, who, fragment, __FILE__, __LINE__)

/// Runs a cell for float, then for double: the checks are generic, and a scalar-specific
/// shortcut in a check would show up as a difference between the two.
template <class Check>
void for_float_and_double(Check check) {
  {
    SCOPED_TRACE("float");
    check.template operator()<float>();
  }
  {
    SCOPED_TRACE("double");
    check.template operator()<double>();
  }
}

template <class T>
constexpr T nan_v = std::numeric_limits<T>::quiet_NaN();
template <class T>
constexpr T inf_v = std::numeric_limits<T>::infinity();

/// A finite value whose square overflows T (3.7e19 in float, 2.7e154 in double).
template <class T>
T overflowing_root() {
  return T(2) * std::sqrt(std::numeric_limits<T>::max());
}

template <class M>
bool is_zero_row(const M& m, index i) {
  return (m.row(i).array() == typename M::Scalar(0)).all();
}

// Small shapes everywhere: the whole file runs in milliseconds. d == dv so that an output can
// alias q or k as well as v.
constexpr index n = 6;
constexpr index d = 4;
constexpr index dv = 4;

// ---- Section 1: attention forward ---------------------------------------------------------------
// Each *_row struct is one entry point (a column of the document's table): a mechanism and the
// path its mask selects. make<T>() builds it for head width d with small blocks, so that even
// n = 6 crosses tile, block and chunk boundaries. Each function below is one kind of bad input
// (a row of the table), run on the entry point it is given.

struct softmax_row {
  static constexpr const char* who = "softmax_attention::forward";
  static constexpr bool causal = false;
  static constexpr bool windowed = false;  // every query may see every key
  template <class T>
  static auto make() {
    return performer::softmax_attention<T>{};
  }
};

struct tiled_row {
  static constexpr const char* who = "tiled_softmax_attention::forward";
  static constexpr bool causal = false;
  static constexpr bool windowed = false;
  template <class T>
  static auto make() {
    return performer::tiled_softmax_attention<T>(4, 4);
  }
};

struct favor_row {
  static constexpr const char* who = "favor_attention::forward";
  static constexpr bool causal = false;
  static constexpr bool windowed = false;
  template <class T>
  static auto make() {
    return performer::favor_attention<T>(d, 8, 1, {}, {}, {.block = 4, .chunk = 2});
  }
};

struct favor_causal_row : favor_row {
  static constexpr bool causal = true;
};

struct lsh_row {
  static constexpr const char* who = "lsh_attention::forward";
  static constexpr bool causal = false;
  // A query sees only the keys its hash puts near it, so it may legitimately see none.
  static constexpr bool windowed = true;
  template <class T>
  static auto make() {
    return performer::lsh_attention<T>(
        d, {.buckets = 4, .hashes = 2, .chunk = 2, .shared_qk = true, .seed = 1});
  }
};

struct lsh_separate_row : lsh_row {
  template <class T>
  static auto make() {
    return performer::lsh_attention<T>(
        d, {.buckets = 4, .hashes = 2, .chunk = 2, .shared_qk = false, .seed = 1});
  }
};

/// Valid inputs for one entry point; each cell breaks one of them.
template <class Row, class T>
struct attention_case {
  using attention = decltype(Row::template make<T>());
  attention a = Row::template make<T>();
  row_matrix<T> q = random_matrix<T>(n, d, 1);
  row_matrix<T> k = random_matrix<T>(n, d, 2);
  row_matrix<T> v = random_matrix<T>(n, dv, 3);
  row_matrix<T> out = row_matrix<T>::Zero(n, dv);
  typename attention::workspace_type ws{};
  attention_mask mask{Row::causal, {}};
};

template <class Row>
void empty_query() {
  for_float_and_double([]<class T>() {
    attention_case<Row, T> c;
    const row_matrix<T> q(0, d);
    row_matrix<T> out(0, dv);
    EXPECT_INVALID(Row::who, "empty query", c.a.forward(q, c.k, c.v, out, c.mask, c.ws));
  });
}

template <class Row>
void empty_keys() {
  for_float_and_double([]<class T>() {
    attention_case<Row, T> c;
    const row_matrix<T> k(0, d);
    const row_matrix<T> v(0, dv);
    EXPECT_INVALID(Row::who, "empty key", c.a.forward(c.q, k, v, c.out, c.mask, c.ws));
  });
}

template <class Row>
void zero_head_width() {
  for_float_and_double([]<class T>() {
    attention_case<Row, T> c;
    const row_matrix<T> q(n, 0);
    const row_matrix<T> k(n, 0);
    EXPECT_INVALID(Row::who, "zero head width", c.a.forward(q, k, c.v, c.out, c.mask, c.ws));
  });
}

template <class Row>
void zero_value_width() {
  for_float_and_double([]<class T>() {
    attention_case<Row, T> c;
    const row_matrix<T> v(n, 0);
    row_matrix<T> out(n, 0);
    EXPECT_INVALID(Row::who, "zero value width", c.a.forward(c.q, c.k, v, out, c.mask, c.ws));
  });
}

template <class Row>
void key_width_mismatch() {
  for_float_and_double([]<class T>() {
    attention_case<Row, T> c;
    const row_matrix<T> k = random_matrix<T>(n, d - 1, 2);
    EXPECT_INVALID(Row::who, "need the same width", c.a.forward(c.q, k, c.v, c.out, c.mask, c.ws));
  });
}

template <class Row>
void value_rows_mismatch() {
  for_float_and_double([]<class T>() {
    attention_case<Row, T> c;
    const row_matrix<T> v = random_matrix<T>(n - 1, dv, 3);
    EXPECT_INVALID(Row::who, "same number of rows", c.a.forward(c.q, c.k, v, c.out, c.mask, c.ws));
  });
}

template <class Row>
void wrong_out_shape() {
  for_float_and_double([]<class T>() {
    attention_case<Row, T> c;
    row_matrix<T> wide(n, dv + 1);
    row_matrix<T> short_out(n - 1, dv);
    EXPECT_INVALID(Row::who, "out is", c.a.forward(c.q, c.k, c.v, wide, c.mask, c.ws));
    EXPECT_INVALID(Row::who, "out is", c.a.forward(c.q, c.k, c.v, short_out, c.mask, c.ws));
  });
}

template <class Row>
void key_mask_length() {
  for_float_and_double([]<class T>() {
    attention_case<Row, T> c;
    for (const index length : {n - 1, n + 1}) {
      const std::vector<std::uint8_t> keep(static_cast<std::size_t>(length), 1);
      const attention_mask mask{Row::causal, keep};
      EXPECT_INVALID(Row::who, "key_mask has", c.a.forward(c.q, c.k, c.v, c.out, mask, c.ws));
    }
  });
}

/// Causal with N_q != N_k, whatever the row's own mode (every library mechanism supports
/// causal, so "causal unsupported" is n/a for all of them).
template <class Row>
void causal_cross_length() {
  for_float_and_double([]<class T>() {
    attention_case<Row, T> c;
    const row_matrix<T> q = random_matrix<T>(n - 1, d, 1);
    row_matrix<T> out(n - 1, dv);
    EXPECT_INVALID(Row::who, "causal masking needs as many queries as keys",
                   c.a.forward(q, c.k, c.v, out, attention_mask{true, {}}, c.ws));
  });
}

/// One bad value in each of q, k and v in turn; the message names the argument.
template <class Row>
void non_finite_input(bool nan) {
  for_float_and_double([nan]<class T>() {
    attention_case<Row, T> c;
    const T bad = nan ? nan_v<T> : inf_v<T>;
    row_matrix<T> q = c.q;
    row_matrix<T> k = c.k;
    row_matrix<T> v = c.v;
    q(2, 1) = bad;
    k(n - 1, d - 1) = -bad;  // -inf for the infinity cell
    v(0, 0) = bad;
    const std::string fragment = "(6x4) contains a NaN or an infinity";
    EXPECT_INVALID(Row::who, "q " + fragment, c.a.forward(q, c.k, c.v, c.out, c.mask, c.ws));
    EXPECT_INVALID(Row::who, "k " + fragment, c.a.forward(c.q, k, c.v, c.out, c.mask, c.ws));
    EXPECT_INVALID(Row::who, "v " + fragment, c.a.forward(c.q, c.k, v, c.out, c.mask, c.ws));
  });
}

template <class Row>
void nan_input() {
  non_finite_input<Row>(true);
}

template <class Row>
void inf_input() {
  non_finite_input<Row>(false);
}

/// out is q, k or v itself, or a block overlapping part of v's memory.
template <class Row>
void out_aliases_input() {
  for_float_and_double([]<class T>() {
    attention_case<Row, T> c;
    EXPECT_INVALID(Row::who, "out overlaps", c.a.forward(c.q, c.k, c.v, c.q, c.mask, c.ws));
    EXPECT_INVALID(Row::who, "out overlaps", c.a.forward(c.q, c.k, c.v, c.k, c.mask, c.ws));
    EXPECT_INVALID(Row::who, "out overlaps", c.a.forward(c.q, c.k, c.v, c.v, c.mask, c.ws));
    row_matrix<T> buffer = random_matrix<T>(n + 2, dv, 4);
    EXPECT_INVALID(Row::who, "out overlaps",
                   c.a.forward(c.q, c.k, buffer.topRows(n), buffer.bottomRows(n), c.mask, c.ws));
  });
}

/// FAVOR and LSH are built for one head width (the projection's, the rotations'); q and k of
/// another width are rejected even when they agree with each other.
template <class Row>
void mechanism_head_width() {
  for_float_and_double([]<class T>() {
    attention_case<Row, T> c;
    const row_matrix<T> q = random_matrix<T>(n, d + 4, 1);
    const row_matrix<T> k = random_matrix<T>(n, d + 4, 2);
    EXPECT_INVALID(Row::who, "head width", c.a.forward(q, k, c.v, c.out, c.mask, c.ws));
  });
}

/// Documented: a query that sees no key gets an exact zero row. Every key padded gives zeros
/// everywhere; under causal masking with key 0 padded, query 0 alone sees nothing.
template <class Row>
void no_visible_key() {
  for_float_and_double([]<class T>() {
    attention_case<Row, T> c;
    const std::vector<std::uint8_t> none(n, 0);
    c.out.setConstant(nan_v<T>);  // every entry must be written
    c.a.forward(c.q, c.k, c.v, c.out, attention_mask{Row::causal, none}, c.ws);
    for (index i = 0; i < n; ++i) {
      EXPECT_TRUE(is_zero_row(c.out, i)) << "row " << i << ": " << c.out.row(i);
    }

    std::vector<std::uint8_t> first_padded(n, 1);
    first_padded[0] = 0;
    c.out.setConstant(nan_v<T>);
    c.a.forward(c.q, c.k, c.v, c.out, attention_mask{true, first_padded}, c.ws);
    EXPECT_TRUE(is_zero_row(c.out, 0)) << c.out.row(0);
    EXPECT_TRUE(c.out.bottomRows(n - 1).allFinite());
    if constexpr (!Row::windowed) {
      for (index i = 1; i < n; ++i) EXPECT_FALSE(is_zero_row(c.out, i)) << "row " << i;
    }
  });
}

/// Finite inputs whose logits q.k / sqrt(d) are -inf, NaN (+inf plus -inf in the dot product)
/// or +inf in T: the README promises invalid_argument, never a silent wrong row. Before the fix
/// of the "logit overflow gives the zero row" bug (tests/fuzz/crashes/README.md), exact
/// attention returned the zero row that means "no visible key" for the first two.
template <class Row>
void logit_overflow() {
  for_float_and_double([]<class T>() {
    attention_case<Row, T> c;
    if constexpr (Row::windowed) {
      // Opposite vectors never share an LSH bucket; zero rotations put every token in bucket 0,
      // so the query does see the key whose logit overflows.
      for (index r = 0; r < c.a.options().hashes; ++r) {
        c.a.set_rotation(r, row_matrix<T>::Zero(d, c.a.options().buckets / 2));
      }
    }
    const T big = overflowing_root<T>();
    row_matrix<T> q = row_matrix<T>::Zero(1, d);
    row_matrix<T> k = row_matrix<T>::Zero(1, d);
    const row_matrix<T> v = row_matrix<T>::Ones(1, dv);
    row_matrix<T> out(1, dv);
    q(0, 0) = big;
    k(0, 0) = -big;
    EXPECT_INVALID(Row::who, "overflow", c.a.forward(q, k, v, out, c.mask, c.ws));  // -inf
    q(0, 1) = big;
    k(0, 1) = big;
    EXPECT_INVALID(Row::who, "overflow", c.a.forward(q, k, v, out, c.mask, c.ws));  // NaN
    q(0, 1) = 0;
    k(0, 0) = big;
    k(0, 1) = 0;
    EXPECT_INVALID(Row::who, "overflow", c.a.forward(q, k, v, out, c.mask, c.ws));  // +inf
  });
}

/// FAVOR's stabiliser (README, "Numerical stabiliser"): norms of 100 give softmax logits of
/// about 1e4 / sqrt(d), far beyond exp's range, yet the result is finite and each entry stays
/// within the values' range (positive features: a convex combination).
template <class Row>
void large_logits_finite() {
  for_float_and_double([]<class T>() {
    attention_case<Row, T> c;
    const row_matrix<T> q = c.q.rowwise().normalized() * T(100);
    const row_matrix<T> k = c.k.rowwise().normalized() * T(100);
    c.a.forward(q, k, c.v, c.out, c.mask, c.ws);
    ASSERT_TRUE(c.out.allFinite()) << c.out;
    const T slack = T(1e-4);
    for (index j = 0; j < dv; ++j) {
      EXPECT_GE(c.out.col(j).minCoeff(), c.v.col(j).minCoeff() - slack);
      EXPECT_LE(c.out.col(j).maxCoeff(), c.v.col(j).maxCoeff() + slack);
    }
  });
}

/// FAVOR: a key whose squared norm overflows T has weight 0 (its log scale is -inf). A query
/// whose every visible key is like that has keys but a zero normaliser; that is not the zero
/// row of "no visible key", so it is reported as an overflow.
template <class Row>
void key_norm_overflow() {
  for_float_and_double([]<class T>() {
    attention_case<Row, T> c;
    row_matrix<T> k = row_matrix<T>::Zero(1, d);
    k(0, 0) = T(4) * std::sqrt(std::numeric_limits<T>::max());
    const row_matrix<T> q = c.q.topRows(1);
    const row_matrix<T> v = c.v.topRows(1);
    row_matrix<T> out(1, dv);
    EXPECT_INVALID(Row::who, "overflow", c.a.forward(q, k, v, out, c.mask, c.ws));
  });
}

/// Shared-QK takes the keys from q, so k must have q's shape (its values are not read).
template <class Row>
void shared_qk_shape() {
  for_float_and_double([]<class T>() {
    attention_case<Row, T> c;
    const row_matrix<T> k = random_matrix<T>(n - 1, d, 2);
    const row_matrix<T> v = random_matrix<T>(n - 1, dv, 3);
    EXPECT_INVALID(Row::who, "shared_qk requires k to have q's shape",
                   c.a.forward(c.q, k, v, c.out, c.mask, c.ws));
  });
}

// softmax_attention::forward
TEST(BadInput, SoftmaxForward_EmptyQuery) { empty_query<softmax_row>(); }
TEST(BadInput, SoftmaxForward_EmptyKeys) { empty_keys<softmax_row>(); }
TEST(BadInput, SoftmaxForward_ZeroHeadWidth) { zero_head_width<softmax_row>(); }
TEST(BadInput, SoftmaxForward_ZeroValueWidth) { zero_value_width<softmax_row>(); }
TEST(BadInput, SoftmaxForward_KeyWidthMismatch) { key_width_mismatch<softmax_row>(); }
TEST(BadInput, SoftmaxForward_ValueRowsMismatch) { value_rows_mismatch<softmax_row>(); }
TEST(BadInput, SoftmaxForward_WrongOutShape) { wrong_out_shape<softmax_row>(); }
TEST(BadInput, SoftmaxForward_KeyMaskLength) { key_mask_length<softmax_row>(); }
TEST(BadInput, SoftmaxForward_CausalCrossLength) { causal_cross_length<softmax_row>(); }
TEST(BadInput, SoftmaxForward_NaN) { nan_input<softmax_row>(); }
TEST(BadInput, SoftmaxForward_Inf) { inf_input<softmax_row>(); }
TEST(BadInput, SoftmaxForward_OutAliasesInput) { out_aliases_input<softmax_row>(); }
TEST(BadInput, SoftmaxForward_NoVisibleKey) { no_visible_key<softmax_row>(); }
TEST(BadInput, SoftmaxForward_LogitOverflow) { logit_overflow<softmax_row>(); }

// tiled_softmax_attention::forward
TEST(BadInput, TiledForward_EmptyQuery) { empty_query<tiled_row>(); }
TEST(BadInput, TiledForward_EmptyKeys) { empty_keys<tiled_row>(); }
TEST(BadInput, TiledForward_ZeroHeadWidth) { zero_head_width<tiled_row>(); }
TEST(BadInput, TiledForward_ZeroValueWidth) { zero_value_width<tiled_row>(); }
TEST(BadInput, TiledForward_KeyWidthMismatch) { key_width_mismatch<tiled_row>(); }
TEST(BadInput, TiledForward_ValueRowsMismatch) { value_rows_mismatch<tiled_row>(); }
TEST(BadInput, TiledForward_WrongOutShape) { wrong_out_shape<tiled_row>(); }
TEST(BadInput, TiledForward_KeyMaskLength) { key_mask_length<tiled_row>(); }
TEST(BadInput, TiledForward_CausalCrossLength) { causal_cross_length<tiled_row>(); }
TEST(BadInput, TiledForward_NaN) { nan_input<tiled_row>(); }
TEST(BadInput, TiledForward_Inf) { inf_input<tiled_row>(); }
TEST(BadInput, TiledForward_OutAliasesInput) { out_aliases_input<tiled_row>(); }
TEST(BadInput, TiledForward_NoVisibleKey) { no_visible_key<tiled_row>(); }
TEST(BadInput, TiledForward_LogitOverflow) { logit_overflow<tiled_row>(); }

// favor_attention::forward, bidirectional
TEST(BadInput, FavorForward_EmptyQuery) { empty_query<favor_row>(); }
TEST(BadInput, FavorForward_EmptyKeys) { empty_keys<favor_row>(); }
TEST(BadInput, FavorForward_ZeroHeadWidth) { zero_head_width<favor_row>(); }
TEST(BadInput, FavorForward_ZeroValueWidth) { zero_value_width<favor_row>(); }
TEST(BadInput, FavorForward_KeyWidthMismatch) { key_width_mismatch<favor_row>(); }
TEST(BadInput, FavorForward_ValueRowsMismatch) { value_rows_mismatch<favor_row>(); }
TEST(BadInput, FavorForward_WrongOutShape) { wrong_out_shape<favor_row>(); }
TEST(BadInput, FavorForward_KeyMaskLength) { key_mask_length<favor_row>(); }
TEST(BadInput, FavorForward_NaN) { nan_input<favor_row>(); }
TEST(BadInput, FavorForward_Inf) { inf_input<favor_row>(); }
TEST(BadInput, FavorForward_OutAliasesInput) { out_aliases_input<favor_row>(); }
TEST(BadInput, FavorForward_MechanismHeadWidth) { mechanism_head_width<favor_row>(); }
TEST(BadInput, FavorForward_NoVisibleKey) { no_visible_key<favor_row>(); }
TEST(BadInput, FavorForward_LargeLogitsFinite) { large_logits_finite<favor_row>(); }
TEST(BadInput, FavorForward_KeyNormOverflow) { key_norm_overflow<favor_row>(); }

// favor_attention::forward, causal
TEST(BadInput, FavorCausalForward_EmptyQuery) { empty_query<favor_causal_row>(); }
TEST(BadInput, FavorCausalForward_EmptyKeys) { empty_keys<favor_causal_row>(); }
TEST(BadInput, FavorCausalForward_ZeroHeadWidth) { zero_head_width<favor_causal_row>(); }
TEST(BadInput, FavorCausalForward_ZeroValueWidth) { zero_value_width<favor_causal_row>(); }
TEST(BadInput, FavorCausalForward_KeyWidthMismatch) { key_width_mismatch<favor_causal_row>(); }
TEST(BadInput, FavorCausalForward_ValueRowsMismatch) { value_rows_mismatch<favor_causal_row>(); }
TEST(BadInput, FavorCausalForward_WrongOutShape) { wrong_out_shape<favor_causal_row>(); }
TEST(BadInput, FavorCausalForward_KeyMaskLength) { key_mask_length<favor_causal_row>(); }
TEST(BadInput, FavorCausalForward_CausalCrossLength) { causal_cross_length<favor_causal_row>(); }
TEST(BadInput, FavorCausalForward_NaN) { nan_input<favor_causal_row>(); }
TEST(BadInput, FavorCausalForward_Inf) { inf_input<favor_causal_row>(); }
TEST(BadInput, FavorCausalForward_OutAliasesInput) { out_aliases_input<favor_causal_row>(); }
TEST(BadInput, FavorCausalForward_MechanismHeadWidth) { mechanism_head_width<favor_causal_row>(); }
TEST(BadInput, FavorCausalForward_NoVisibleKey) { no_visible_key<favor_causal_row>(); }
TEST(BadInput, FavorCausalForward_LargeLogitsFinite) { large_logits_finite<favor_causal_row>(); }
TEST(BadInput, FavorCausalForward_KeyNormOverflow) { key_norm_overflow<favor_causal_row>(); }

// lsh_attention::forward, shared-QK (the default)
TEST(BadInput, LshForward_EmptyQuery) { empty_query<lsh_row>(); }
TEST(BadInput, LshForward_EmptyKeys) { empty_keys<lsh_row>(); }
TEST(BadInput, LshForward_ZeroHeadWidth) { zero_head_width<lsh_row>(); }
TEST(BadInput, LshForward_ZeroValueWidth) { zero_value_width<lsh_row>(); }
TEST(BadInput, LshForward_KeyWidthMismatch) { key_width_mismatch<lsh_row>(); }
TEST(BadInput, LshForward_ValueRowsMismatch) { value_rows_mismatch<lsh_row>(); }
TEST(BadInput, LshForward_WrongOutShape) { wrong_out_shape<lsh_row>(); }
TEST(BadInput, LshForward_KeyMaskLength) { key_mask_length<lsh_row>(); }
TEST(BadInput, LshForward_CausalCrossLength) { causal_cross_length<lsh_row>(); }
TEST(BadInput, LshForward_NaN) { nan_input<lsh_row>(); }
TEST(BadInput, LshForward_Inf) { inf_input<lsh_row>(); }
TEST(BadInput, LshForward_OutAliasesInput) { out_aliases_input<lsh_row>(); }
TEST(BadInput, LshForward_MechanismHeadWidth) { mechanism_head_width<lsh_row>(); }
TEST(BadInput, LshForward_SharedQkShape) { shared_qk_shape<lsh_row>(); }
TEST(BadInput, LshForward_NoVisibleKey) { no_visible_key<lsh_row>(); }

// lsh_attention::forward, separate keys (shared_qk = false)
TEST(BadInput, LshSeparateForward_EmptyQuery) { empty_query<lsh_separate_row>(); }
TEST(BadInput, LshSeparateForward_EmptyKeys) { empty_keys<lsh_separate_row>(); }
TEST(BadInput, LshSeparateForward_ZeroHeadWidth) { zero_head_width<lsh_separate_row>(); }
TEST(BadInput, LshSeparateForward_ZeroValueWidth) { zero_value_width<lsh_separate_row>(); }
TEST(BadInput, LshSeparateForward_KeyWidthMismatch) { key_width_mismatch<lsh_separate_row>(); }
TEST(BadInput, LshSeparateForward_ValueRowsMismatch) { value_rows_mismatch<lsh_separate_row>(); }
TEST(BadInput, LshSeparateForward_WrongOutShape) { wrong_out_shape<lsh_separate_row>(); }
TEST(BadInput, LshSeparateForward_KeyMaskLength) { key_mask_length<lsh_separate_row>(); }
TEST(BadInput, LshSeparateForward_CausalCrossLength) { causal_cross_length<lsh_separate_row>(); }
TEST(BadInput, LshSeparateForward_NaN) { nan_input<lsh_separate_row>(); }
TEST(BadInput, LshSeparateForward_Inf) { inf_input<lsh_separate_row>(); }
TEST(BadInput, LshSeparateForward_OutAliasesInput) { out_aliases_input<lsh_separate_row>(); }
TEST(BadInput, LshSeparateForward_MechanismHeadWidth) { mechanism_head_width<lsh_separate_row>(); }
TEST(BadInput, LshSeparateForward_NoVisibleKey) { no_visible_key<lsh_separate_row>(); }
TEST(BadInput, LshSeparateForward_LogitOverflow) { logit_overflow<lsh_separate_row>(); }

// performer::attend: forwards to the mechanism (here softmax_attention) and allocates out, so
// out's shape and aliasing cannot be wrong; the message names the mechanism's forward.
namespace attend_cells {

constexpr const char* who = "softmax_attention::forward";

template <class T>
row_matrix<T> attend(const row_matrix<T>& q, const row_matrix<T>& k, const row_matrix<T>& v,
                     const attention_mask& mask = {}) {
  return performer::attend(performer::softmax_attention<T>{}, q, k, v, mask);
}

}  // namespace attend_cells

TEST(BadInput, Attend_EmptySequences) {
  for_float_and_double([]<class T>() {
    const auto q = random_matrix<T>(n, d, 1);
    const auto v = random_matrix<T>(n, dv, 3);
    EXPECT_INVALID(attend_cells::who, "empty query",
                   attend_cells::attend<T>(row_matrix<T>(0, d), q, v));
    EXPECT_INVALID(attend_cells::who, "empty key",
                   attend_cells::attend<T>(q, row_matrix<T>(0, d), row_matrix<T>(0, dv)));
  });
}

TEST(BadInput, Attend_ZeroWidths) {
  for_float_and_double([]<class T>() {
    const auto q = random_matrix<T>(n, d, 1);
    const auto v = random_matrix<T>(n, dv, 3);
    EXPECT_INVALID(attend_cells::who, "zero head width",
                   attend_cells::attend<T>(row_matrix<T>(n, 0), row_matrix<T>(n, 0), v));
    EXPECT_INVALID(attend_cells::who, "zero value width",
                   attend_cells::attend<T>(q, q, row_matrix<T>(n, 0)));
  });
}

TEST(BadInput, Attend_MismatchedShapes) {
  for_float_and_double([]<class T>() {
    const auto q = random_matrix<T>(n, d, 1);
    const auto v = random_matrix<T>(n, dv, 3);
    EXPECT_INVALID(attend_cells::who, "need the same width",
                   attend_cells::attend<T>(q, random_matrix<T>(n, d - 1, 2), v));
    EXPECT_INVALID(attend_cells::who, "same number of rows",
                   attend_cells::attend<T>(q, q, v.topRows(n - 1)));
  });
}

TEST(BadInput, Attend_KeyMaskLength) {
  for_float_and_double([]<class T>() {
    const auto q = random_matrix<T>(n, d, 1);
    const std::vector<std::uint8_t> keep(n + 1, 1);
    EXPECT_INVALID(attend_cells::who, "key_mask has",
                   attend_cells::attend<T>(q, q, q, {false, keep}));
  });
}

TEST(BadInput, Attend_CausalCrossLength) {
  for_float_and_double([]<class T>() {
    const auto q = random_matrix<T>(n, d, 1);
    EXPECT_INVALID(attend_cells::who, "causal masking",
                   attend_cells::attend<T>(q.topRows(n - 1), q, q, {true, {}}));
  });
}

TEST(BadInput, Attend_NaNAndInf) {
  for_float_and_double([]<class T>() {
    const auto q = random_matrix<T>(n, d, 1);
    row_matrix<T> nan = q;
    nan(1, 1) = nan_v<T>;
    row_matrix<T> inf = q;
    inf(2, 2) = -inf_v<T>;
    EXPECT_INVALID(attend_cells::who, "q (6x4) contains a NaN", attend_cells::attend<T>(nan, q, q));
    EXPECT_INVALID(attend_cells::who, "v (6x4) contains a NaN", attend_cells::attend<T>(q, q, inf));
  });
}

TEST(BadInput, Attend_ColumnMajorNaN) {
  // attend copies a column-major input into row-major storage first; the copy is checked.
  for_float_and_double([]<class T>() {
    Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic> q = random_matrix<T>(n, d, 1);
    q(3, 0) = nan_v<T>;
    const auto k = random_matrix<T>(n, d, 2);
    EXPECT_INVALID(attend_cells::who, "q (6x4) contains a NaN",
                   performer::attend(performer::softmax_attention<T>{}, q, k, k));
  });
}

TEST(BadInput, Attend_NoVisibleKey) {
  for_float_and_double([]<class T>() {
    const auto q = random_matrix<T>(n, d, 1);
    const std::vector<std::uint8_t> none(n, 0);
    const auto out = attend_cells::attend<T>(q, q, q, {false, none});
    EXPECT_TRUE((out.array() == T(0)).all()) << out;
  });
}

TEST(BadInput, Attend_LogitOverflow) {
  for_float_and_double([]<class T>() {
    row_matrix<T> q(1, 1);
    row_matrix<T> k(1, 1);
    q << overflowing_root<T>();
    k << -overflowing_root<T>();
    EXPECT_INVALID(attend_cells::who, "overflow",
                   attend_cells::attend<T>(q, k, row_matrix<T>::Ones(1, 1)));
  });
}

// ---- Section 2: constructors, setters and the other entry points of the mechanisms --------------

TEST(BadInput, TiledCtor_NonPositiveTiles) {
  for_float_and_double([]<class T>() {
    using tiled = performer::tiled_softmax_attention<T>;
    EXPECT_INVALID("tiled_softmax_attention", "tile sizes must be positive", tiled(0, 4));
    EXPECT_INVALID("tiled_softmax_attention", "tile sizes must be positive", tiled(4, 0));
    EXPECT_INVALID("tiled_softmax_attention", "tile sizes must be positive", tiled(-1));
  });
}

// favor_attention's constructor builds its projection first, so a non-positive width or
// feature count is reported by random_projection's constructor (the message names
// random_projection, not favor_attention).
TEST(BadInput, FavorCtor_NonPositiveHeadDim) {
  for_float_and_double([]<class T>() {
    using favor = performer::favor_attention<T>;
    EXPECT_INVALID("random_projection", "input width must be positive", favor(0, 8));
    EXPECT_INVALID("random_projection", "input width must be positive", favor(-1, 8));
  });
}

TEST(BadInput, FavorCtor_NonPositiveFeatures) {
  for_float_and_double([]<class T>() {
    using favor = performer::favor_attention<T>;
    EXPECT_INVALID("random_projection", "number of features must be positive", favor(d, 0));
    EXPECT_INVALID("random_projection", "number of features must be positive", favor(d, -3));
  });
}

TEST(BadInput, FavorCtor_NonPositiveOptions) {
  for_float_and_double([]<class T>() {
    using favor = performer::favor_attention<T>;
    for (const index bad : {index{0}, index{-1}}) {
      SCOPED_TRACE(bad);
      EXPECT_INVALID("favor_attention", "must be positive", favor(d, 8, 1, {}, {}, {.block = bad}));
      EXPECT_INVALID("favor_attention", "must be positive", favor(d, 8, 1, {}, {}, {.chunk = bad}));
      EXPECT_INVALID("favor_attention", "must be positive",
                     favor(d, 8, 1, {}, {}, {.segments = bad}));
      EXPECT_INVALID("favor_attention", "must be positive",
                     favor(d, 8, 1, {}, {}, {.min_segment = bad}));
    }
  });
}

TEST(BadInput, RandomProjectionCtor_NonPositive) {
  for_float_and_double([]<class T>() {
    using projection = performer::random_projection<T>;
    EXPECT_INVALID("random_projection", "number of features must be positive", projection(0, d));
    EXPECT_INVALID("random_projection", "input width must be positive", projection(8, 0));
    EXPECT_INVALID("random_projection", "input width must be positive",
                   performer::random_projection<T, performer::gaussian_sampler>(8, -2));
  });
}

TEST(BadInput, RandomProjectionSetMatrix_WrongShape) {
  for_float_and_double([]<class T>() {
    performer::random_projection<T> p(8, d, 1);
    const row_matrix<T> before = p.matrix();
    EXPECT_INVALID("random_projection::set_matrix", "expected 8x4",
                   p.set_matrix(row_matrix<T>::Ones(9, d)));
    EXPECT_INVALID("random_projection::set_matrix", "expected 8x4",
                   p.set_matrix(row_matrix<T>::Ones(8, d + 1)));
    EXPECT_EQ(p.matrix(), before);  // a rejected matrix changes nothing
  });
}

TEST(BadInput, RandomProjectionSetMatrix_NonFinite) {
  for_float_and_double([]<class T>() {
    // Through favor_attention::projection(), the way a user installs a trained matrix.
    performer::favor_attention<T> favor(d, 8, 1);
    const row_matrix<T> before = favor.projection().matrix();
    for (const T bad : {nan_v<T>, inf_v<T>, -inf_v<T>}) {
      row_matrix<T> w = before;
      w(3, 2) = bad;
      EXPECT_INVALID("random_projection::set_matrix", "contains a NaN or an infinity",
                     favor.projection().set_matrix(w));
    }
    EXPECT_EQ(favor.projection().matrix(), before);
  });
}

TEST(BadInput, LshCtor_NonPositiveHeadDim) {
  for_float_and_double([]<class T>() {
    EXPECT_INVALID("lsh_attention", "head_dim must be positive", performer::lsh_attention<T>(0));
    EXPECT_INVALID("lsh_attention", "head_dim must be positive", performer::lsh_attention<T>(-4));
  });
}

TEST(BadInput, LshCtor_BadBuckets) {
  for_float_and_double([]<class T>() {
    using lsh = performer::lsh_attention<T>;
    for (const index bad : {index{-2}, index{0}, index{1}, index{3}, index{31}}) {
      SCOPED_TRACE(bad);
      EXPECT_INVALID("lsh_attention", "buckets must be even and at least 2",
                     lsh(d, {.buckets = bad}));
    }
    EXPECT_INVALID("lsh_attention", "buckets must be at most", lsh(d, {.buckets = index{1} << 31}));
  });
}

TEST(BadInput, LshCtor_BadHashesAndChunk) {
  for_float_and_double([]<class T>() {
    using lsh = performer::lsh_attention<T>;
    EXPECT_INVALID("lsh_attention", "hashes must be at least 1", lsh(d, {.hashes = 0}));
    EXPECT_INVALID("lsh_attention", "hashes must be at least 1", lsh(d, {.hashes = -1}));
    EXPECT_INVALID("lsh_attention", "chunk must be at least 1", lsh(d, {.chunk = 0}));
    EXPECT_INVALID("lsh_attention", "chunk must be at least 1", lsh(d, {.chunk = -5}));
  });
}

template <class T>
performer::lsh_attention<T> small_lsh() {
  return performer::lsh_attention<T>(d, {.buckets = 4, .hashes = 2, .chunk = 2, .seed = 1});
}

TEST(BadInput, LshRotation_RoundOutOfRange) {
  for_float_and_double([]<class T>() {
    const auto lsh = small_lsh<T>();
    EXPECT_INVALID("lsh_attention::rotation", "round -1 is out of range", lsh.rotation(-1));
    EXPECT_INVALID("lsh_attention::rotation", "round 2 is out of range", lsh.rotation(2));
  });
}

TEST(BadInput, LshSetRotation_RoundOutOfRange) {
  for_float_and_double([]<class T>() {
    auto lsh = small_lsh<T>();
    const row_matrix<T> r = random_matrix<T>(d, 2, 5);
    EXPECT_INVALID("lsh_attention::set_rotation", "out of range", lsh.set_rotation(-1, r));
    EXPECT_INVALID("lsh_attention::set_rotation", "out of range", lsh.set_rotation(2, r));
  });
}

TEST(BadInput, LshSetRotation_WrongShape) {
  for_float_and_double([]<class T>() {
    auto lsh = small_lsh<T>();
    const row_matrix<T> before = lsh.rotation(0);
    EXPECT_INVALID("lsh_attention::set_rotation", "expected 4x2",
                   lsh.set_rotation(0, random_matrix<T>(d, 3, 5)));
    EXPECT_INVALID("lsh_attention::set_rotation", "expected 4x2",
                   lsh.set_rotation(0, random_matrix<T>(d - 1, 2, 5)));
    EXPECT_EQ(lsh.rotation(0), before);
  });
}

TEST(BadInput, LshSetRotation_NonFinite) {
  for_float_and_double([]<class T>() {
    auto lsh = small_lsh<T>();
    for (const T bad : {nan_v<T>, inf_v<T>}) {
      row_matrix<T> r = random_matrix<T>(d, 2, 5);
      r(1, 1) = bad;
      EXPECT_INVALID("lsh_attention::set_rotation", "rotation (4x2) contains a NaN",
                     lsh.set_rotation(1, r));
    }
  });
}

TEST(BadInput, LshSetRotation_ZeroMatrix) {
  // Documented: a zero rotation sends every vector to bucket 0 (all ties; the first index wins).
  for_float_and_double([]<class T>() {
    auto lsh = small_lsh<T>();
    lsh.set_rotation(1, row_matrix<T>::Zero(d, 2));
    const auto x = random_matrix<T>(n, d, 6);
    for (index i = 0; i < n; ++i) EXPECT_EQ(lsh.bucket_of(x.row(i), 1), 0) << "row " << i;
  });
}

TEST(BadInput, LshBucketOf_WrongSize) {
  for_float_and_double([]<class T>() {
    const auto lsh = small_lsh<T>();
    EXPECT_INVALID("lsh_attention::bucket_of", "x has 5 entries, expected 4",
                   lsh.bucket_of(row_vector<T>::Ones(d + 1), 0));
    EXPECT_INVALID("lsh_attention::bucket_of", "x has 0 entries, expected 4",
                   lsh.bucket_of(row_vector<T>(0), 0));
  });
}

TEST(BadInput, LshBucketOf_NonFinite) {
  for_float_and_double([]<class T>() {
    const auto lsh = small_lsh<T>();
    for (const T bad : {nan_v<T>, inf_v<T>, -inf_v<T>}) {
      row_vector<T> x = row_vector<T>::Ones(d);
      x(2) = bad;
      EXPECT_INVALID("lsh_attention::bucket_of", "contains a NaN or an infinity",
                     lsh.bucket_of(x, 0));
    }
  });
}

TEST(BadInput, LshBucketOf_RoundOutOfRange) {
  for_float_and_double([]<class T>() {
    const auto lsh = small_lsh<T>();
    EXPECT_INVALID("lsh_attention::bucket_of", "out of range",
                   lsh.bucket_of(row_vector<T>::Ones(d), 2));
    EXPECT_INVALID("lsh_attention::bucket_of", "out of range",
                   lsh.bucket_of(row_vector<T>::Ones(d), -1));
  });
}

TEST(BadInput, LshBucketOf_ZeroVector) {
  // Documented: a zero vector has no direction and goes to bucket 0 in every round.
  for_float_and_double([]<class T>() {
    const auto lsh = small_lsh<T>();
    EXPECT_EQ(lsh.bucket_of(row_vector<T>::Zero(d), 0), 0);
    EXPECT_EQ(lsh.bucket_of(row_vector<T>::Zero(d), 1), 0);
  });
}

TEST(BadInput, LshBuckets_WrongWidth) {
  for_float_and_double([]<class T>() {
    const auto lsh = small_lsh<T>();
    EXPECT_INVALID("lsh_attention::buckets", "expected 4 columns",
                   lsh.buckets(random_matrix<T>(n, d + 1, 1), 0));
  });
}

TEST(BadInput, LshBuckets_NonFinite) {
  for_float_and_double([]<class T>() {
    const auto lsh = small_lsh<T>();
    row_matrix<T> x = random_matrix<T>(n, d, 1);
    x(4, 0) = nan_v<T>;
    EXPECT_INVALID("lsh_attention::buckets", "x (6x4) contains a NaN", lsh.buckets(x, 0));
    x(4, 0) = inf_v<T>;
    EXPECT_INVALID("lsh_attention::buckets", "x (6x4) contains a NaN", lsh.buckets(x, 0));
  });
}

TEST(BadInput, LshBuckets_RoundOutOfRange) {
  for_float_and_double([]<class T>() {
    const auto lsh = small_lsh<T>();
    EXPECT_INVALID("lsh_attention::buckets", "out of range",
                   lsh.buckets(random_matrix<T>(n, d, 1), 2));
  });
}

TEST(BadInput, LshBuckets_Empty) {
  // No rows is not an error here: there is nothing to hash, and the result is empty.
  for_float_and_double([]<class T>() {
    const auto lsh = small_lsh<T>();
    EXPECT_TRUE(lsh.buckets(row_matrix<T>(0, d), 0).empty());
  });
}

// ---- Section 3: favor_decoder -------------------------------------------------------------------

template <class T>
performer::favor_attention<T> decoder_attention() {
  return performer::favor_attention<T>(d, 8, 1);
}

TEST(BadInput, DecoderCtor_ZeroValueDim) {
  for_float_and_double([]<class T>() {
    const auto favor = decoder_attention<T>();
    EXPECT_INVALID("favor_decoder", "value_dim must be positive",
                   performer::favor_decoder<T>(favor, 0));
  });
}

// Found here: a negative value_dim used to reach Eigen (the state is sized in the member
// initialisers) and fail an Eigen assertion. It is now checked before anything is sized.
TEST(BadInput, DecoderCtor_NegativeValueDim) {
  for_float_and_double([]<class T>() {
    const auto favor = decoder_attention<T>();
    EXPECT_INVALID("favor_decoder", "value_dim must be positive",
                   performer::favor_decoder<T>(favor, -1));
  });
}

TEST(BadInput, DecoderPrime_WrongShapes) {
  for_float_and_double([]<class T>() {
    performer::favor_decoder<T> dec(decoder_attention<T>(), dv);
    const auto k = random_matrix<T>(3, d, 1);
    const auto v = random_matrix<T>(3, dv, 2);
    EXPECT_INVALID("favor_decoder::prime", "expected n x 4",
                   dec.prime(random_matrix<T>(3, d + 1, 1), v));
    EXPECT_INVALID("favor_decoder::prime", "expected n x 4",
                   dec.prime(k, random_matrix<T>(3, dv - 1, 2)));
    EXPECT_INVALID("favor_decoder::prime", "expected n x 4", dec.prime(k, v.topRows(2)));
    EXPECT_EQ(dec.position(), 0);  // nothing was folded in
  });
}

TEST(BadInput, DecoderPrime_NonFinite) {
  for_float_and_double([]<class T>() {
    performer::favor_decoder<T> dec(decoder_attention<T>(), dv);
    for (const T bad : {nan_v<T>, inf_v<T>, -inf_v<T>}) {
      row_matrix<T> k = random_matrix<T>(3, d, 1);
      row_matrix<T> v = random_matrix<T>(3, dv, 2);
      const row_matrix<T> good_k = k;
      k(2, 3) = bad;
      EXPECT_INVALID("favor_decoder::prime", "k (3x4) contains a NaN", dec.prime(k, v));
      v(0, 1) = bad;
      EXPECT_INVALID("favor_decoder::prime", "v (3x4) contains a NaN", dec.prime(good_k, v));
    }
    // Checked before any token is folded in: a rejected prefix leaves the state untouched.
    EXPECT_EQ(dec.position(), 0);
  });
}

TEST(BadInput, DecoderPrime_Empty) {
  // "Same as calling step() on each token": no tokens, nothing happens.
  for_float_and_double([]<class T>() {
    performer::favor_decoder<T> dec(decoder_attention<T>(), dv);
    dec.prime(row_matrix<T>(0, d), row_matrix<T>(0, dv));
    EXPECT_EQ(dec.position(), 0);
  });
}

TEST(BadInput, DecoderStep_WrongShapes) {
  for_float_and_double([]<class T>() {
    performer::favor_decoder<T> dec(decoder_attention<T>(), dv);
    const row_vector<T> x = random_matrix<T>(1, d, 1);
    const row_vector<T> v = random_matrix<T>(1, dv, 2);
    const row_vector<T> wide = random_matrix<T>(1, d + 1, 3);
    row_vector<T> out(dv);
    row_vector<T> wide_out(dv + 1);
    EXPECT_INVALID("favor_decoder::step", "expected 4", dec.step(wide, x, v, out));
    EXPECT_INVALID("favor_decoder::step", "expected 4", dec.step(x, wide, v, out));
    EXPECT_INVALID("favor_decoder::step", "expected 4", dec.step(x, x, wide, out));
    EXPECT_INVALID("favor_decoder::step", "expected 4", dec.step(x, x, v, wide_out));
    EXPECT_EQ(dec.position(), 0);
  });
}

TEST(BadInput, DecoderStep_NonFinite) {
  for_float_and_double([]<class T>() {
    performer::favor_decoder<T> dec(decoder_attention<T>(), dv);
    const row_vector<T> x = random_matrix<T>(1, d, 1);
    const row_vector<T> v = random_matrix<T>(1, dv, 2);
    row_vector<T> out(dv);
    for (const T bad : {nan_v<T>, inf_v<T>, -inf_v<T>}) {
      row_vector<T> b = x;
      b(1) = bad;
      EXPECT_INVALID("favor_decoder::step", "q (1x4) contains a NaN", dec.step(b, x, v, out));
      EXPECT_INVALID("favor_decoder::step", "k (1x4) contains a NaN", dec.step(x, b, v, out));
      EXPECT_INVALID("favor_decoder::step", "v (1x4) contains a NaN", dec.step(x, x, b, out));
    }
    // Values are checked before the token is folded in, so a stream survives a rejected token.
    EXPECT_EQ(dec.position(), 0);
  });
}

TEST(BadInput, DecoderStep_OutAliasesInput) {
  // Not checked, and harmless: step reads q, k and v before it writes out.
  for_float_and_double([]<class T>() {
    const auto favor = decoder_attention<T>();
    const row_matrix<T> q = random_matrix<T>(1, d, 1);
    const row_matrix<T> k = random_matrix<T>(1, d, 2);
    const row_matrix<T> v = random_matrix<T>(1, dv, 3);
    performer::favor_decoder<T> separate(favor, dv);
    row_vector<T> expected(dv);
    separate.step(q.row(0), k.row(0), v.row(0), expected);
    for (int which = 0; which < 3; ++which) {
      performer::favor_decoder<T> dec(favor, dv);
      row_matrix<T> qa = q;
      row_matrix<T> ka = k;
      row_matrix<T> va = v;
      row_matrix<T>& target = which == 0 ? qa : which == 1 ? ka : va;
      dec.step(qa.row(0), ka.row(0), va.row(0), target.row(0));
      EXPECT_EQ(row_vector<T>(target.row(0)), expected) << "out aliasing input " << which;
    }
  });
}

// A finite key whose squared norm overflows T has a weight below T's range: 0, as if absent.
// The batch causal path drops it and stays finite; the decoder must give the same outputs,
// token by token. Before the fix of "decoder-float-first-key-norm-overflow-nan-state"
// (tests/fuzz/crashes/README.md) such a key made the decoder's state NaN and every later step
// threw. Here the huge key is token 1, so that every query still sees a key with a weight.
TEST(BadInput, DecoderStep_KeyNormOverflow) {
  for_float_and_double([]<class T>() {
    const performer::favor_attention<T> favor(2, 4, 1);
    row_matrix<T> q(3, 2);
    row_matrix<T> k(3, 2);
    row_matrix<T> v(3, 1);
    q << T(0.5), T(0.25), T(0.5), T(0.25), T(-0.5), T(0.75);
    k << T(0.25), T(-0.5), overflowing_root<T>(), T(0), T(0), T(0);
    v << T(3), T(100), T(1);
    row_matrix<T> batch(3, 1);
    typename performer::favor_attention<T>::workspace_type ws;
    favor.forward(q, k, v, batch, attention_mask{true, {}}, ws);
    ASSERT_TRUE(batch.allFinite()) << batch;

    performer::favor_decoder<T> dec(favor, 1);
    row_vector<T> out(1);
    for (index t = 0; t < 3; ++t) {
      dec.step(q.row(t), k.row(t), v.row(t), out);
      EXPECT_TRUE(out.allFinite()) << "token " << t << ": " << out;
      EXPECT_LE(relative_difference(out, batch.row(t)), 1e-5) << "token " << t;
    }
    EXPECT_EQ(dec.position(), 3);

    // The same key through prime().
    dec.reset();
    dec.prime(k.topRows(2), v.topRows(2));
    dec.step(q.row(2), k.row(2), v.row(2), out);
    EXPECT_LE(relative_difference(out, batch.row(2)), 1e-5);
  });
}

// The fuzzer's case: the huge key comes first, through prime(). It must leave the state as it
// was (weight 0), so the next token's output is that token's value, its only weighted key.
TEST(BadInput, DecoderPrime_FirstKeyNormOverflow) {
  for_float_and_double([]<class T>() {
    const performer::favor_attention<T> favor(2, 4, 1);
    performer::favor_decoder<T> dec(favor, 1);
    row_matrix<T> k(1, 2);
    k << overflowing_root<T>(), T(0);
    dec.prime(k, row_matrix<T>::Constant(1, 1, T(100)));
    EXPECT_EQ(dec.position(), 1);
    row_vector<T> q(2);
    q << T(0.5), T(0.25);
    row_vector<T> out(1);
    dec.step(q, row_vector<T>::Zero(2), row_vector<T>::Ones(1), out);
    EXPECT_NEAR(out(0), T(1), 1e-5) << out;
  });
}

// ---- Section 4: feature maps --------------------------------------------------------------------
// Each map's apply(w, x, phi, log_scale) checks shapes only (O(1)); values are the callers' to
// check (favor_attention::forward and favor_decoder do).

template <class Map, class T>
struct map_case {
  static constexpr index m = 3;
  Map map{};
  row_matrix<T> w = random_matrix<T>(m, d, 7);
  row_matrix<T> x = random_matrix<T>(n, d, 8);
  index features = map.feature_count(m, d);
  row_matrix<T> phi = row_matrix<T>(n, features);
  vector<T> log_scale = vector<T>(n);
};

template <template <class> class Map>
void map_x_width(const char* who) {
  for_float_and_double([who]<class T>() {
    map_case<Map<T>, T> c;
    const row_matrix<T> x = random_matrix<T>(n, d + 1, 8);
    EXPECT_INVALID(who, "but the projection has width", c.map.apply(c.w, x, c.phi, c.log_scale));
  });
}

template <template <class> class Map>
void map_phi_shape(const char* who) {
  for_float_and_double([who]<class T>() {
    map_case<Map<T>, T> c;
    row_matrix<T> short_phi(n - 1, c.features);
    row_matrix<T> wide_phi(n, c.features + 1);
    EXPECT_INVALID(who, "phi is", c.map.apply(c.w, c.x, short_phi, c.log_scale));
    EXPECT_INVALID(who, "phi is", c.map.apply(c.w, c.x, wide_phi, c.log_scale));
  });
}

template <template <class> class Map>
void map_log_scale_size(const char* who) {
  for_float_and_double([who]<class T>() {
    map_case<Map<T>, T> c;
    vector<T> log_scale(n + 1);
    EXPECT_INVALID(who, "log_scale has", c.map.apply(c.w, c.x, c.phi, log_scale));
  });
}

template <template <class> class Map>
void map_empty_x() {
  // No rows: nothing to map, nothing written, no error (a zero-row block is a valid view).
  for_float_and_double([]<class T>() {
    map_case<Map<T>, T> c;
    const row_matrix<T> x(0, d);
    row_matrix<T> phi(0, c.features);
    vector<T> log_scale(0);
    c.map.apply(c.w, x, phi, log_scale);
  });
}

/// Documented (feature_map concept): the exponential maps scale x before squaring its norm, so
/// log_scale stays finite while |x~|^2 = |x|^2 / sqrt(d) fits in T, even when |x|^2 does not;
/// beyond, log_scale is -inf (a weight below T's range), or +inf for the trigonometric map. phi
/// stays finite either way.
template <template <class> class Map>
void map_huge_norm(bool grows) {
  for_float_and_double([grows]<class T>() {
    map_case<Map<T>, T> c;
    const T root = std::sqrt(std::numeric_limits<T>::max());
    row_matrix<T> x = row_matrix<T>::Zero(2, d);
    x(0, 0) = T(1.2) * root;  // |x|^2 overflows, |x~|^2 = 0.72 max does not (d = 4)
    x(1, 0) = T(4) * root;    // |x~|^2 = 8 max overflows
    row_matrix<T> phi(2, c.features);
    vector<T> log_scale(2);
    c.map.apply(c.w, x, phi, log_scale);
    EXPECT_TRUE(phi.allFinite()) << phi;
    EXPECT_TRUE(std::isfinite(log_scale(0))) << log_scale(0);
    EXPECT_EQ(log_scale(1), grows ? inf_v<T> : -inf_v<T>);
  });
}

/// A projection with no rows (m = 0) or inputs of zero width (d = 0) give an empty or
/// meaningless feature vector. favor_attention cannot build either, but apply() is public.
/// Expected, as for the attentions' empty and zero-width inputs: invalid_argument.
template <template <class> class Map>
void map_empty_projection(const char* who) {
  for_float_and_double([who]<class T>() {
    const Map<T> map{};
    const row_matrix<T> w(0, d);
    const row_matrix<T> x = random_matrix<T>(n, d, 8);
    row_matrix<T> phi(n, map.feature_count(0, d));
    vector<T> log_scale(n);
    EXPECT_INVALID(who, "", map.apply(w, x, phi, log_scale));
  });
}

template <template <class> class Map>
void map_zero_width(const char* who) {
  for_float_and_double([who]<class T>() {
    const Map<T> map{};
    const row_matrix<T> w(3, 0);
    const row_matrix<T> x(n, 0);
    row_matrix<T> phi(n, map.feature_count(3, 0));
    vector<T> log_scale(n);
    EXPECT_INVALID(who, "", map.apply(w, x, phi, log_scale));
  });
}

TEST(BadInput, PositiveApply_XWidth) {
  map_x_width<performer::positive_features>("positive_features::apply");
}
TEST(BadInput, PositiveApply_PhiShape) {
  map_phi_shape<performer::positive_features>("positive_features::apply");
}
TEST(BadInput, PositiveApply_LogScaleSize) {
  map_log_scale_size<performer::positive_features>("positive_features::apply");
}
TEST(BadInput, PositiveApply_EmptyX) { map_empty_x<performer::positive_features>(); }
TEST(BadInput, PositiveApply_HugeNorm) { map_huge_norm<performer::positive_features>(false); }

TEST(BadInput, HyperbolicApply_XWidth) {
  map_x_width<performer::hyperbolic_features>("hyperbolic_features::apply");
}
TEST(BadInput, HyperbolicApply_PhiShape) {
  map_phi_shape<performer::hyperbolic_features>("hyperbolic_features::apply");
}
TEST(BadInput, HyperbolicApply_LogScaleSize) {
  map_log_scale_size<performer::hyperbolic_features>("hyperbolic_features::apply");
}
TEST(BadInput, HyperbolicApply_EmptyX) { map_empty_x<performer::hyperbolic_features>(); }
TEST(BadInput, HyperbolicApply_HugeNorm) { map_huge_norm<performer::hyperbolic_features>(false); }

TEST(BadInput, TrigonometricApply_XWidth) {
  map_x_width<performer::trigonometric_features>("trigonometric_features::apply");
}
TEST(BadInput, TrigonometricApply_PhiShape) {
  map_phi_shape<performer::trigonometric_features>("trigonometric_features::apply");
}
TEST(BadInput, TrigonometricApply_LogScaleSize) {
  map_log_scale_size<performer::trigonometric_features>("trigonometric_features::apply");
}
TEST(BadInput, TrigonometricApply_EmptyX) { map_empty_x<performer::trigonometric_features>(); }
TEST(BadInput, TrigonometricApply_HugeNorm) {
  map_huge_norm<performer::trigonometric_features>(true);
}

TEST(BadInput, ReluApply_XWidth) { map_x_width<performer::relu_features>("relu_features::apply"); }
TEST(BadInput, ReluApply_PhiShape) {
  map_phi_shape<performer::relu_features>("relu_features::apply");
}
TEST(BadInput, ReluApply_LogScaleSize) {
  map_log_scale_size<performer::relu_features>("relu_features::apply");
}
TEST(BadInput, ReluApply_EmptyX) { map_empty_x<performer::relu_features>(); }

// elu_features uses no projection: w is ignored, so its width cannot be wrong.
TEST(BadInput, EluApply_PhiShape) { map_phi_shape<performer::elu_features>("elu_features::apply"); }
TEST(BadInput, EluApply_LogScaleSize) {
  map_log_scale_size<performer::elu_features>("elu_features::apply");
}
TEST(BadInput, EluApply_EmptyX) { map_empty_x<performer::elu_features>(); }

TEST(BadInput, FavorPlusPlusApply_XWidth) {
  map_x_width<performer::favor_plus_plus_features>("favor_plus_plus_features::apply");
}
TEST(BadInput, FavorPlusPlusApply_PhiShape) {
  map_phi_shape<performer::favor_plus_plus_features>("favor_plus_plus_features::apply");
}
TEST(BadInput, FavorPlusPlusApply_LogScaleSize) {
  map_log_scale_size<performer::favor_plus_plus_features>("favor_plus_plus_features::apply");
}
TEST(BadInput, FavorPlusPlusApply_EmptyX) { map_empty_x<performer::favor_plus_plus_features>(); }
TEST(BadInput, FavorPlusPlusApply_HugeNorm) {
  map_huge_norm<performer::favor_plus_plus_features>(false);
}

// Found here: m = 0 used to fail an Eigen assertion in the maps that take a row maximum of phi
// (positive, hyperbolic, FAVOR++) and pass in the others; d = 0 gave NaN features (the input
// scale d^(-1/4) is infinite) or meaningless ones. apply() now rejects both.
TEST(BadInput, PositiveApply_EmptyProjection) {
  map_empty_projection<performer::positive_features>("positive_features::apply");
}
TEST(BadInput, HyperbolicApply_EmptyProjection) {
  map_empty_projection<performer::hyperbolic_features>("hyperbolic_features::apply");
}
TEST(BadInput, TrigonometricApply_EmptyProjection) {
  map_empty_projection<performer::trigonometric_features>("trigonometric_features::apply");
}
TEST(BadInput, ReluApply_EmptyProjection) {
  map_empty_projection<performer::relu_features>("relu_features::apply");
}
TEST(BadInput, FavorPlusPlusApply_EmptyProjection) {
  map_empty_projection<performer::favor_plus_plus_features>("favor_plus_plus_features::apply");
}
TEST(BadInput, PositiveApply_ZeroWidth) {
  map_zero_width<performer::positive_features>("positive_features::apply");
}
TEST(BadInput, HyperbolicApply_ZeroWidth) {
  map_zero_width<performer::hyperbolic_features>("hyperbolic_features::apply");
}
TEST(BadInput, TrigonometricApply_ZeroWidth) {
  map_zero_width<performer::trigonometric_features>("trigonometric_features::apply");
}
TEST(BadInput, ReluApply_ZeroWidth) {
  map_zero_width<performer::relu_features>("relu_features::apply");
}
TEST(BadInput, EluApply_ZeroWidth) {
  map_zero_width<performer::elu_features>("elu_features::apply");
}
TEST(BadInput, FavorPlusPlusApply_ZeroWidth) {
  map_zero_width<performer::favor_plus_plus_features>("favor_plus_plus_features::apply");
}

TEST(BadInput, FavorPlusPlusSetA_OutOfRange) {
  for_float_and_double([]<class T>() {
    performer::favor_plus_plus_features<T> map;
    map.set_a(-0.25);
    for (const double bad : {0.125, 0.2, 1.0}) {
      EXPECT_INVALID("favor_plus_plus_features::set_a", "below 1/8", map.set_a(bad));
    }
    EXPECT_EQ(map.a(), -0.25);  // a rejected A leaves the stored one
  });
}

TEST(BadInput, FavorPlusPlusSetA_NonFinite) {
  for_float_and_double([]<class T>() {
    performer::favor_plus_plus_features<T> map;
    for (const double bad : {nan_v<double>, inf_v<double>, -inf_v<double>}) {
      EXPECT_INVALID("favor_plus_plus_features::set_a", "must be finite", map.set_a(bad));
    }
    EXPECT_EQ(map.a(), 0.0);
  });
}

TEST(BadInput, FavorPlusPlusOptimalA_BadShapes) {
  for_float_and_double([]<class T>() {
    using map = performer::favor_plus_plus_features<T>;
    const auto q = random_matrix<T>(n, d, 1);
    const char* who = "favor_plus_plus_features::optimal_a";
    EXPECT_INVALID(who, "q is 0x4", map::optimal_a(row_matrix<T>(0, d), q));
    EXPECT_INVALID(who, "k is 0x4", map::optimal_a(q, row_matrix<T>(0, d)));
    EXPECT_INVALID(who, "k is 6x3", map::optimal_a(q, random_matrix<T>(n, d - 1, 2)));
    map m;  // calibrate() goes through optimal_a()
    EXPECT_INVALID(who, "k is 6x3", m.calibrate(q, random_matrix<T>(n, d - 1, 2)));
  });
}

// Found here: optimal_a() and calibrate() did not check values, so a NaN in q gave A = NaN,
// which set_a() would reject, and every later call failed with a misleading message.
TEST(BadInput, FavorPlusPlusCalibrate_NonFinite) {
  for_float_and_double([]<class T>() {
    performer::favor_plus_plus_features<T> map;
    row_matrix<T> q = random_matrix<T>(n, d, 1);
    q(0, 0) = nan_v<T>;
    const auto k = random_matrix<T>(n, d, 2);
    EXPECT_INVALID("favor_plus_plus_features::optimal_a", "NaN",
                   performer::favor_plus_plus_features<T>::optimal_a(q, k));
    EXPECT_INVALID("favor_plus_plus_features::optimal_a", "NaN", map.calibrate(q, k));
    EXPECT_EQ(map.a(), 0.0);
  });
}

// Found here: optimal_a(q, k, key_mask) read key_mask[j] for every key without checking its
// length, so a short mask was read out of bounds (forward checks it first; direct calls did not).
TEST(BadInput, FavorPlusPlusOptimalA_KeyMaskLength) {
  for_float_and_double([]<class T>() {
    const auto q = random_matrix<T>(n, d, 1);
    const std::vector<std::uint8_t> short_mask(2, 1);
    EXPECT_INVALID("favor_plus_plus_features::optimal_a", "key_mask",
                   performer::favor_plus_plus_features<T>::optimal_a(q, q, short_mask));
  });
}

// The trigonometric map's estimate phi(q).phi(k) can be exactly 0; its documentation promises
// an exception then ("an exception when the normaliser is exactly zero"), not the zero row that
// means "no visible key". The construction: with w = [[0, 1], [1, 0]], q = 0 and k~ = (pi, 0),
// the estimate is (cos 0 + cos pi) / 2 = 0 exactly in float and double (cos of the rounded pi
// rounds to -1). Any message naming forward will do: the wording is the overflow check's.
TEST(BadInput, TrigonometricForward_ZeroNormaliser) {
  for_float_and_double([]<class T>() {
    performer::favor_attention<T, performer::trigonometric_features<T>> favor(2, 2, 1);
    row_matrix<T> w(2, 2);
    w << 0, 1, 1, 0;
    favor.projection().set_matrix(w);
    const row_matrix<T> q = row_matrix<T>::Zero(1, 2);
    row_matrix<T> k(1, 2);
    k << static_cast<T>(3.14159265358979323846 * std::pow(2.0, 0.25)), 0;  // k~ = k 2^(-1/4)
    const row_matrix<T> v = row_matrix<T>::Ones(1, 2);
    row_matrix<T> out(1, 2);
    typename decltype(favor)::workspace_type ws;
    EXPECT_INVALID("favor_attention::forward", "",
                   favor.forward(q, k, v, out, attention_mask{}, ws));
  });
}

// ---- Section 5: the Transformer block and stack -------------------------------------------------

template <class T>
using block_of = performer::transformer_block<performer::softmax_attention<T>>;
template <class T>
using stack_of = performer::transformer_stack<performer::softmax_attention<T>>;

constexpr index d_model = 8;

TEST(BadInput, BlockCtor_NonPositiveWidthOrHeads) {
  for_float_and_double([]<class T>() {
    using B = block_of<T>;
    EXPECT_INVALID("transformer_block", "d_model must be positive", B({.d_model = 0}, {}));
    EXPECT_INVALID("transformer_block", "d_model must be positive", B({.d_model = -8}, {}));
    EXPECT_INVALID("transformer_block", "heads must be positive",
                   B({.d_model = 8, .heads = 0}, {}));
    EXPECT_INVALID("transformer_block", "heads must be positive",
                   B({.d_model = 8, .heads = -2}, {}));
  });
}

TEST(BadInput, BlockCtor_HeadsNotDividing) {
  for_float_and_double([]<class T>() {
    EXPECT_INVALID("transformer_block", "heads (3) does not divide d_model (8)",
                   block_of<T>({.d_model = 8, .heads = 3}, {}));
  });
}

TEST(BadInput, BlockCtor_NegativeDff) {
  for_float_and_double([]<class T>() {
    EXPECT_INVALID("transformer_block", "d_ff must be >= 0",
                   block_of<T>({.d_model = 8, .d_ff = -1}, {}));
  });
}

TEST(BadInput, BlockCtor_BadLayerNormEps) {
  for_float_and_double([]<class T>() {
    for (const double bad : {0.0, -1e-5, nan_v<double>, inf_v<double>}) {
      SCOPED_TRACE(bad);
      EXPECT_INVALID("transformer_block", "layer_norm_eps must be positive and finite",
                     block_of<T>({.d_model = 8, .layer_norm_eps = bad}, {}));
    }
  });
}

template <class T>
struct block_case {
  block_of<T> b{{.d_model = d_model, .heads = 2}, {}, 3};
  row_matrix<T> x = random_matrix<T>(n, d_model, 1);
  row_matrix<T> y = row_matrix<T>::Zero(n, d_model);
  typename block_of<T>::workspace_type ws{};
};

constexpr const char* block_forward = "transformer_block::forward";

TEST(BadInput, BlockForward_EmptySequence) {
  for_float_and_double([]<class T>() {
    block_case<T> c;
    const row_matrix<T> x(0, d_model);
    row_matrix<T> y(0, d_model);
    EXPECT_INVALID(block_forward, "empty sequence", c.b.forward(x, y, {}, c.ws));
  });
}

TEST(BadInput, BlockForward_WrongWidth) {
  for_float_and_double([]<class T>() {
    block_case<T> c;
    const row_matrix<T> x = random_matrix<T>(n, d_model + 1, 1);
    EXPECT_INVALID(block_forward, "but d_model is 8", c.b.forward(x));
  });
}

TEST(BadInput, BlockForward_WrongOutShape) {
  for_float_and_double([]<class T>() {
    block_case<T> c;
    row_matrix<T> y(n - 1, d_model);
    EXPECT_INVALID(block_forward, "y is 5x8, expected 6x8", c.b.forward(c.x, y, {}, c.ws));
  });
}

TEST(BadInput, BlockForward_KeyMaskLength) {
  for_float_and_double([]<class T>() {
    block_case<T> c;
    const std::vector<std::uint8_t> keep(n - 1, 1);
    EXPECT_INVALID(block_forward, "key_mask has 5 entries", c.b.forward(c.x, keep));
  });
}

TEST(BadInput, BlockForward_OutAliasesInput) {
  for_float_and_double([]<class T>() {
    block_case<T> c;
    EXPECT_INVALID(block_forward, "y overlaps x", c.b.forward(c.x, c.x, {}, c.ws));
    row_matrix<T> buffer = random_matrix<T>(n + 1, d_model, 2);
    EXPECT_INVALID(block_forward, "y overlaps x",
                   c.b.forward(buffer.topRows(n), buffer.bottomRows(n), {}, c.ws));
  });
}

TEST(BadInput, BlockForward_NaNAndInf) {
  for_float_and_double([]<class T>() {
    block_case<T> c;
    for (const T bad : {nan_v<T>, inf_v<T>, -inf_v<T>}) {
      row_matrix<T> x = c.x;
      x(n - 1, 0) = bad;
      EXPECT_INVALID(block_forward, "x (6x8) contains a NaN or an infinity", c.b.forward(x));
    }
  });
}

TEST(BadInput, BlockForward_MechanismRejects) {
  // Documented ("anything the mechanism rejects"): a FAVOR mechanism built for head width 8 in
  // a block whose heads are 4 wide is accepted by the constructor and rejected, by the
  // mechanism, on the first forward call.
  for_float_and_double([]<class T>() {
    using B = performer::transformer_block<performer::favor_attention<T>>;
    const B b({.d_model = d_model, .heads = 2}, performer::favor_attention<T>(8, 8, 1), 1);
    EXPECT_INVALID("favor_attention::forward", "projection is for head width 8",
                   b.forward(random_matrix<T>(n, d_model, 1)));
  });
}

TEST(BadInput, BlockForward_AllPadded) {
  // Every token padded: each head's queries see no key and get zero rows (documented), so the
  // attention sublayer adds only its bias; the block's output stays finite.
  for_float_and_double([]<class T>() {
    block_case<T> c;
    const std::vector<std::uint8_t> none(n, 0);
    const row_matrix<T> y = c.b.forward(c.x, none);
    EXPECT_TRUE(y.allFinite()) << y;
  });
}

TEST(BadInput, BlockForward_ResultOverflow) {
  // Finite input and parameters whose residual sum overflows: x + b_o with x near max/2 and an
  // output bias of max is +inf. The block checks its result, so no infinity or NaN leaves it.
  for_float_and_double([]<class T>() {
    block_case<T> c;
    auto p = c.b.parameters();
    p.b_o.setConstant(std::numeric_limits<T>::max());
    c.b.set_parameters(p);
    // Two distinct values per row: its LayerNorm is well defined once rescaled.
    row_matrix<T> x(n, d_model);
    for (index j = 0; j < d_model; ++j) {
      x.col(j).setConstant(std::numeric_limits<T>::max() / (j % 2 == 0 ? 3 : 2));
    }
    EXPECT_INVALID(block_forward, "overflow", c.b.forward(x));
  });
}

// Finite input near the largest T, whose LayerNorm row sums overflow. A NaN out of the first
// LayerNorm would reach the mechanism, whose error ("softmax_attention::forward: q (6x4)
// contains a NaN or an infinity") blames a q the user never passed. Acceptable outcomes: a
// finite result (a LayerNorm that rescales such rows), or an error from the block itself.
// Rows of alternating sign and rows of one repeated value (variance 0) are both tried.
TEST(BadInput, BlockForward_LayerNormOverflow) {
  for_float_and_double([]<class T>() {
    block_case<T> c;
    const T half = std::numeric_limits<T>::max() / 2;
    row_matrix<T> alternating(n, d_model);
    for (index j = 0; j < d_model; ++j) alternating.col(j).setConstant(j % 2 == 0 ? half : -half);
    const row_matrix<T> constant = row_matrix<T>::Constant(n, d_model, half);
    for (const row_matrix<T>* x : {static_cast<const row_matrix<T>*>(&alternating), &constant}) {
      SCOPED_TRACE(x == &constant ? "constant rows" : "alternating rows");
      try {
        const row_matrix<T> y = c.b.forward(*x);
        EXPECT_TRUE(y.allFinite()) << y;
      } catch (const performer::invalid_argument& e) {
        EXPECT_TRUE(std::string_view(e.what()).starts_with("transformer_block::forward: "))
            << e.what();
      }
    }
  });
}

TEST(BadInput, BlockSetParameters_WrongShape) {
  for_float_and_double([]<class T>() {
    block_case<T> c;
    const auto before = c.b.parameters();
    const char* who = "transformer_block::set_parameters";
    auto p = before;
    p.w_q = row_matrix<T>::Zero(d_model, d_model + 1);
    EXPECT_INVALID(who, "w_q is 8x9, expected 8x8", c.b.set_parameters(p));
    p = before;
    p.b_k = row_vector<T>::Zero(d_model - 1);
    EXPECT_INVALID(who, "b_k is 1x7, expected 1x8", c.b.set_parameters(p));
    p = before;
    p.norm2_gain = row_vector<T>::Zero(0);
    EXPECT_INVALID(who, "norm2_gain is 1x0", c.b.set_parameters(p));
    p = before;
    p.w_ff1 = row_matrix<T>::Zero(d_model, 4 * d_model - 1);
    EXPECT_INVALID(who, "w_ff1 is 8x31, expected 8x32", c.b.set_parameters(p));
    EXPECT_EQ(c.b.parameters().w_q, before.w_q);  // checked before anything is replaced
  });
}

TEST(BadInput, BlockSetParameters_NonFinite) {
  for_float_and_double([]<class T>() {
    block_case<T> c;
    const auto before = c.b.parameters();
    const char* who = "transformer_block::set_parameters";
    auto p = before;
    p.w_o(2, 3) = nan_v<T>;
    EXPECT_INVALID(who, "w_o (8x8) contains a NaN", c.b.set_parameters(p));
    p = before;
    p.b_ff1(5) = inf_v<T>;
    EXPECT_INVALID(who, "b_ff1 (1x32) contains a NaN", c.b.set_parameters(p));
    p = before;
    p.norm1_bias(0) = -inf_v<T>;
    EXPECT_INVALID(who, "norm1_bias (1x8) contains a NaN", c.b.set_parameters(p));
    EXPECT_EQ(c.b.parameters().w_o, before.w_o);
  });
}

TEST(BadInput, StackCtor_NonPositiveLayers) {
  for_float_and_double([]<class T>() {
    EXPECT_INVALID("transformer_stack", "layers must be positive",
                   stack_of<T>({.d_model = d_model}, 0, performer::softmax_attention<T>{}));
    EXPECT_INVALID("transformer_stack", "layers must be positive",
                   stack_of<T>({.d_model = d_model}, -1, performer::softmax_attention<T>{}));
  });
}

TEST(BadInput, StackCtor_BadConfig) {
  // Documented: "or as transformer_block": each layer's constructor checks the config.
  for_float_and_double([]<class T>() {
    EXPECT_INVALID(
        "transformer_block", "does not divide",
        stack_of<T>({.d_model = d_model, .heads = 3}, 2, performer::softmax_attention<T>{}));
    EXPECT_INVALID("transformer_block", "layer_norm_eps",
                   stack_of<T>({.d_model = d_model, .layer_norm_eps = 0}, 2,
                               performer::softmax_attention<T>{}));
  });
}

template <class T>
struct stack_case {
  stack_of<T> s{{.d_model = d_model, .heads = 2}, 2, performer::softmax_attention<T>{}, 3};
  row_matrix<T> x = random_matrix<T>(n, d_model, 1);
  row_matrix<T> y = row_matrix<T>::Zero(n, d_model);
  typename stack_of<T>::workspace_type ws{};
};

// "Same contract as the block's": the first layer checks x and the mask, so these messages
// name transformer_block::forward.
TEST(BadInput, StackForward_EmptySequence) {
  for_float_and_double([]<class T>() {
    stack_case<T> c;
    EXPECT_INVALID(block_forward, "empty sequence", c.s.forward(row_matrix<T>(0, d_model)));
  });
}

TEST(BadInput, StackForward_WrongWidth) {
  for_float_and_double([]<class T>() {
    stack_case<T> c;
    EXPECT_INVALID(block_forward, "but d_model is 8",
                   c.s.forward(random_matrix<T>(n, d_model - 1, 1)));
  });
}

TEST(BadInput, StackForward_WrongOutShape) {
  // Checked by the stack itself: with an even number of layers no block sees y.
  for_float_and_double([]<class T>() {
    stack_case<T> c;
    row_matrix<T> y(n, d_model + 1);
    EXPECT_INVALID("transformer_stack::forward", "y is 6x9 but x is 6x8",
                   c.s.forward(c.x, y, {}, c.ws));
  });
}

TEST(BadInput, StackForward_KeyMaskLength) {
  for_float_and_double([]<class T>() {
    stack_case<T> c;
    const std::vector<std::uint8_t> keep(n + 1, 1);
    EXPECT_INVALID(block_forward, "key_mask has 7 entries", c.s.forward(c.x, keep));
  });
}

TEST(BadInput, StackForward_NaNAndInf) {
  for_float_and_double([]<class T>() {
    stack_case<T> c;
    for (const T bad : {nan_v<T>, inf_v<T>, -inf_v<T>}) {
      row_matrix<T> x = c.x;
      x(0, 7) = bad;
      EXPECT_INVALID(block_forward, "x (6x8) contains a NaN or an infinity", c.s.forward(x));
    }
  });
}

// y overlapping x, for an odd and an even number of layers. Before the fix of
// "stack-even-layers-accepts-y-aliasing-x" (tests/fuzz/crashes/README.md) the even case was
// accepted, because no single layer ever saw x and y together.
TEST(BadInput, StackForward_OutAliasesInput) {
  for_float_and_double([]<class T>() {
    for (const index layers : {1, 2, 3}) {
      SCOPED_TRACE(layers);
      const stack_of<T> s({.d_model = d_model, .heads = 2}, layers,
                          performer::softmax_attention<T>{}, 3);
      typename stack_of<T>::workspace_type ws;
      row_matrix<T> x = random_matrix<T>(n, d_model, 1);
      EXPECT_INVALID("transformer_stack::forward", "overlaps", s.forward(x, x, {}, ws));
    }
  });
}

TEST(BadInput, StackForward_AllPadded) {
  for_float_and_double([]<class T>() {
    stack_case<T> c;
    const std::vector<std::uint8_t> none(n, 0);
    const row_matrix<T> y = c.s.forward(c.x, none);
    EXPECT_TRUE(y.allFinite()) << y;
  });
}

// The last block's output is finite (entries near +-max), but the stack's final LayerNorm sums
// a row to +inf. Before the fix of "stack-final-layer-norm-nan" (tests/fuzz/crashes/README.md)
// the stack returned the NaN rows without an exception. Never a silent NaN: either a finite
// result (a LayerNorm that rescales such rows) or an error from the stack.
TEST(BadInput, StackForward_FinalLayerNormOverflow) {
  for_float_and_double([]<class T>() {
    stack_of<T> s({.d_model = 4, .heads = 1}, 1, performer::softmax_attention<T>{}, 3);
    auto p = s.layer(0).parameters();
    for (auto* w : {&p.w_q, &p.w_k, &p.w_v, &p.w_o, &p.w_ff1, &p.w_ff2}) w->setZero();
    constexpr T top = std::numeric_limits<T>::max();
    p.b_ff2 << std::numeric_limits<T>::lowest(), top, top, top;
    s.layer(0).set_parameters(p);
    const row_matrix<T> x = row_matrix<T>::Zero(3, 4);
    // The block alone is fine: its output is x + b_ff2, finite.
    ASSERT_TRUE(s.layer(0).forward(x).allFinite());
    try {
      const row_matrix<T> y = s.forward(x);
      EXPECT_TRUE(y.allFinite()) << y;
    } catch (const performer::invalid_argument& e) {
      EXPECT_TRUE(std::string_view(e.what()).starts_with("transformer_stack::forward: "))
          << e.what();
    }
  });
}

// Found here: layer(l) used std::vector::at, so an index out of range threw std::out_of_range
// with the standard library's message instead of performer::invalid_argument.
TEST(BadInput, StackLayer_OutOfRange) {
  for_float_and_double([]<class T>() {
    stack_case<T> c;
    EXPECT_INVALID("transformer_stack::layer", "out of range", c.s.layer(2));
    EXPECT_INVALID("transformer_stack::layer", "out of range", c.s.layer(-1));
  });
}

}  // namespace
