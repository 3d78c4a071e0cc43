/// @file nn/batched_attention.hpp
/// @brief Any attention mechanism over a whole batch of multi-head sequences, zero-copy over the
/// layouts PyTorch code holds, parallel over batch x heads.
#pragma once

#include <cstddef>
#include <cstdint>
#include <exception>
#include <span>
#include <type_traits>
#include <vector>

#include "../core/attention_mask.hpp"
#include "../core/concepts.hpp"
#include "../core/detail/parallel.hpp"
#include "../core/error.hpp"
#include "../core/types.hpp"

namespace performer {

/// How a batch of multi-head sequences lies in one contiguous buffer.
enum class head_layout {
  /// [B, N, H*d]: each token's heads side by side, as after PyTorch's projections
  /// (`nn.Linear` on a batch_first [B, N, D] input). Head h of a sequence is a strided view.
  bnhd,
  /// [B, H, N, d]: each head's tokens contiguous, as after `.view(B, N, H, d).transpose(1, 2)
  /// .contiguous()` (PyTorch's scaled_dot_product_attention layout).
  bhnd,
};

/**
 * @brief A non-owning view of B sequences of N tokens with H heads of width d, over a
 * contiguous row-major buffer of B * N * H * d scalars in one of the head_layout orders.
 *
 * `T` is `const float` (or double) for inputs, `float` for outputs. head(b, h) is an N x d Eigen
 * map (no copy) that a mechanism's `forward` takes directly. O(1) to make and to slice.
 */
template <class T>
struct head_batch {
  T* data = nullptr;
  index_t batch = 0;   ///< B
  index_t heads = 0;   ///< H
  index_t tokens = 0;  ///< N (the padded length of every sequence)
  index_t width = 0;   ///< d, the head width
  head_layout layout = head_layout::bnhd;

  using matrix_type = std::conditional_t<std::is_const_v<T>, const row_matrix<std::remove_const_t<T>>,
                                         row_matrix<std::remove_const_t<T>>>;
  using head_map = Eigen::Map<matrix_type, Eigen::Unaligned, Eigen::OuterStride<>>;

  /// Scalars in the whole buffer.
  [[nodiscard]] std::size_t size() const noexcept {
    return static_cast<std::size_t>(batch * heads * tokens * width);
  }

  /// Rows first..first+rows of head h of sequence b, as an rows x d map.
  [[nodiscard]] head_map head(index_t b, index_t h, index_t first, index_t rows) const {
    if (layout == head_layout::bnhd) {
      return head_map(data + ((b * tokens + first) * heads + h) * width, rows, width,
                      Eigen::OuterStride<>(heads * width));
    }
    return head_map(data + ((b * heads + h) * tokens + first) * width, rows, width,
                    Eigen::OuterStride<>(width));
  }
  /// Head h of sequence b, all N rows.
  [[nodiscard]] head_map head(index_t b, index_t h) const { return head(b, h, 0, tokens); }
};

/// A [B, N, H*d] view (head_layout::bnhd) of `data`.
template <class T>
[[nodiscard]] head_batch<T> bnhd_view(T* data, index_t batch, index_t tokens, index_t heads,
                                      index_t width) noexcept {
  return {data, batch, heads, tokens, width, head_layout::bnhd};
}

/// A [B, H, N, d] view (head_layout::bhnd) of `data`.
template <class T>
[[nodiscard]] head_batch<T> bhnd_view(T* data, index_t batch, index_t heads, index_t tokens,
                                      index_t width) noexcept {
  return {data, batch, heads, tokens, width, head_layout::bhnd};
}

/**
 * @brief Which tokens of a batch are real, and causality, for batched_attention.
 *
 * - `query_lengths`, `key_lengths`: empty (every sequence is full) or B entries in [0, N]:
 *   sequence b has that many real queries (keys and values); the rest is padding that is
 *   never read. Each sequence is attended exactly as if it were passed alone, unpadded, and its
 *   padded output rows are set to zero. For self-attention pass the same lengths twice
 *   (padded() does).
 * - `key_mask`: empty, or B x N_k entries row-major (nonzero keeps the key, as in
 *   attention_mask; the opposite of PyTorch's key_padding_mask), for masks that are not a
 *   length: sequence b's real keys are masked by its row.
 * - `causal`: query i sees keys j <= i (needs N_q == N_k and equal lengths).
 */
struct batch_mask {
  bool causal = false;
  std::span<const index_t> query_lengths{};
  std::span<const index_t> key_lengths{};
  std::span<const std::uint8_t> key_mask{};

  /// Self-attention over sequences of the given lengths.
  [[nodiscard]] static batch_mask padded(std::span<const index_t> lengths, bool causal = false) {
    return {causal, lengths, lengths, {}};
  }
};

/// Scratch memory of batched_attention: one mechanism workspace per thread. Reuse it across
/// calls: once it has seen the shapes, a call allocates nothing more than the mechanism does.
template <attention_mechanism A>
struct batched_workspace {
  std::vector<typename A::workspace_type> lanes;
  std::vector<std::exception_ptr> errors;
  std::vector<index_t> error_items;
};

namespace detail {

template <class T>
void check_batch_view(const char* who, const char* name, const head_batch<T>& x) {
  PERFORMER_PRECONDITION(x.batch >= 0 && x.heads >= 0 && x.tokens >= 0 && x.width >= 0, who,
                         ": ", name, " has a negative extent");
  PERFORMER_PRECONDITION(x.data != nullptr || x.size() == 0, who, ": ", name,
                         " has no data for ", x.size(), " scalars");
}

template <class T, class U>
[[nodiscard]] bool buffers_overlap(const head_batch<T>& a, const head_batch<U>& b) noexcept {
  if (a.size() == 0 || b.size() == 0) return false;
  const auto* a0 = reinterpret_cast<const char*>(a.data);
  const auto* b0 = reinterpret_cast<const char*>(b.data);
  return a0 < b0 + b.size() * sizeof(U) && b0 < a0 + a.size() * sizeof(T);
}

inline void check_lengths(const char* who, const char* name, std::span<const index_t> lengths,
                          index_t batch, index_t tokens) {
  if (lengths.empty()) return;
  PERFORMER_PRECONDITION(lengths.size() == static_cast<std::size_t>(batch), who, ": ", name,
                         " has ", lengths.size(), " entries, expected ", batch,
                         " (one per sequence) or none");
  for (std::size_t b = 0; b < lengths.size(); ++b) {
    PERFORMER_PRECONDITION(lengths[b] >= 0 && lengths[b] <= tokens, who, ": ", name, "[", b,
                           "] is ", lengths[b], ", outside [0, ", tokens, "]");
  }
}

/// Sequence b's length: lengths[b], or every row when no lengths are given.
[[nodiscard]] inline index_t length_of(std::span<const index_t> lengths, index_t b,
                                      index_t tokens) noexcept {
  return lengths.empty() ? tokens : lengths[static_cast<std::size_t>(b)];
}

}  // namespace detail

/**
 * @brief out = attention(q, k, v) for every head of every sequence of a batch.
 *
 * q is B x H x N_q x d, k is B x H x N_k x d, v is B x H x N_k x d_v and out is
 * B x H x N_q x d_v, each in either layout (they may differ). Every (sequence, head) pair runs
 * `a.forward` on zero-copy views; d_v may differ from d (cross-attention and value widths
 * independent of the key width). The pairs run in parallel over the available OpenMP threads when
 * there are at least as many pairs as threads; otherwise one after another, each with all the
 * threads for the mechanism's own parallel loops (a single long sequence). Either way every
 * output bit is independent of the thread count, as each mechanism's is.
 *
 * Complexity: B H times the mechanism's cost at the real lengths; workspace one mechanism
 * workspace per thread.
 *
 * @throws performer::invalid_argument on mismatched extents, lengths or a key mask of the wrong
 * size, out overlapping an input, causal attention with N_q != N_k or unequal lengths; and what
 * a.forward throws for a sequence (non-finite real tokens, a mechanism that does not support
 * causal), its message prefixed with the sequence and head. When several pairs fail, the first
 * in (b, h) order is reported, whatever the thread count.
 */
template <attention_mechanism A>
void batched_attention(const A& a, const head_batch<const typename A::scalar_type>& q,
                       const head_batch<const typename A::scalar_type>& k,
                       const head_batch<const typename A::scalar_type>& v,
                       const head_batch<typename A::scalar_type>& out, const batch_mask& mask,
                       batched_workspace<A>& ws) {
  constexpr const char* who = "batched_attention";
  detail::check_batch_view(who, "q", q);
  detail::check_batch_view(who, "k", k);
  detail::check_batch_view(who, "v", v);
  detail::check_batch_view(who, "out", out);
  PERFORMER_PRECONDITION(k.batch == q.batch && v.batch == q.batch && out.batch == q.batch, who,
                         ": batch sizes differ (q ", q.batch, ", k ", k.batch, ", v ", v.batch,
                         ", out ", out.batch, ")");
  PERFORMER_PRECONDITION(k.heads == q.heads && v.heads == q.heads && out.heads == q.heads, who,
                         ": head counts differ (q ", q.heads, ", k ", k.heads, ", v ", v.heads,
                         ", out ", out.heads, ")");
  PERFORMER_PRECONDITION(k.width == q.width, who, ": k has head width ", k.width, " but q has ",
                         q.width);
  PERFORMER_PRECONDITION(v.tokens == k.tokens, who, ": v has ", v.tokens, " tokens but k has ",
                         k.tokens);
  PERFORMER_PRECONDITION(out.tokens == q.tokens && out.width == v.width, who, ": out has ",
                         out.tokens, " tokens of width ", out.width, ", expected ", q.tokens,
                         " of width ", v.width);
  PERFORMER_PRECONDITION(!detail::buffers_overlap(out, q) && !detail::buffers_overlap(out, k) &&
                             !detail::buffers_overlap(out, v),
                         who, ": out overlaps an input; pass a separate output buffer");
  detail::check_lengths(who, "query_lengths", mask.query_lengths, q.batch, q.tokens);
  detail::check_lengths(who, "key_lengths", mask.key_lengths, q.batch, k.tokens);
  PERFORMER_PRECONDITION(mask.key_mask.empty() ||
                             mask.key_mask.size() == static_cast<std::size_t>(q.batch * k.tokens),
                         who, ": key_mask has ", mask.key_mask.size(), " entries, expected ",
                         q.batch * k.tokens, " (B x N_k) or none");
  const auto query_length = [&](index_t b) {
    return detail::length_of(mask.query_lengths, b, q.tokens);
  };
  const auto key_length = [&](index_t b) { return detail::length_of(mask.key_lengths, b, k.tokens); };
  if (mask.causal) {
    PERFORMER_PRECONDITION(q.tokens == k.tokens, who,
                           ": causal masking needs as many queries as keys (N_q = ", q.tokens,
                           ", N_k = ", k.tokens, ")");
    for (index_t b = 0; b < q.batch; ++b) {
      PERFORMER_PRECONDITION(query_length(b) == key_length(b), who,
                             ": causal masking needs equal query and key lengths (sequence ", b,
                             " has ", query_length(b), " and ", key_length(b), ")");
    }
  }

  const index_t items = q.batch * q.heads;
  // Across pairs when they can keep every thread busy; otherwise inside the mechanism.
  const bool across = items >= detail::available_threads();
  const index_t lanes = across ? detail::lanes_for(items) : 1;
  if (static_cast<index_t>(ws.lanes.size()) < lanes) ws.lanes.resize(static_cast<std::size_t>(lanes));
  ws.errors.assign(static_cast<std::size_t>(lanes), nullptr);
  ws.error_items.assign(static_cast<std::size_t>(lanes), items);

  const auto run = [&](index_t item, index_t lane) {
    const index_t b = item / q.heads;
    const index_t h = item % q.heads;
    const auto lane_index = static_cast<std::size_t>(lane);
    if (ws.error_items[lane_index] < item) return;  // this lane already failed on an earlier pair
    const index_t nq = query_length(b);
    const index_t nk = key_length(b);
    auto result = out.head(b, h);
    try {
      if (nq > 0 && nk > 0) {
        attention_mask m{mask.causal, {}};
        if (!mask.key_mask.empty()) {
          m.key_mask = mask.key_mask.subspan(static_cast<std::size_t>(b * k.tokens),
                                             static_cast<std::size_t>(nk));
        }
        a.forward(q.head(b, h, 0, nq), k.head(b, h, 0, nk), v.head(b, h, 0, nk),
                  result.topRows(nq), m, ws.lanes[lane_index]);
      } else {
        result.topRows(nq).setZero();  // no key to see: the concept's zero row
      }
      result.bottomRows(out.tokens - nq).setZero();
    } catch (const invalid_argument& e) {
      ws.errors[lane_index] = std::make_exception_ptr(
          invalid_argument(detail::message(who, ": sequence ", b, ", head ", h, ": ", e.what())));
      ws.error_items[lane_index] = item;
    } catch (...) {  // std::bad_alloc and the like pass through unchanged
      ws.errors[lane_index] = std::current_exception();
      ws.error_items[lane_index] = item;
    }
  };
  if (across) {
    detail::parallel_for(items, run);
  } else {
    for (index_t item = 0; item < items; ++item) run(item, 0);
  }
  // Static scheduling gives each lane increasing items, so each lane's first failure is its
  // earliest; the earliest over lanes is the first in (b, h) order.
  std::size_t first = 0;
  for (std::size_t l = 1; l < ws.error_items.size(); ++l) {
    if (ws.error_items[l] < ws.error_items[first]) first = l;
  }
  if (ws.errors[first]) std::rethrow_exception(ws.errors[first]);
}

/// Convenience overload with its own workspace.
template <attention_mechanism A>
void batched_attention(const A& a, const head_batch<const typename A::scalar_type>& q,
                       const head_batch<const typename A::scalar_type>& k,
                       const head_batch<const typename A::scalar_type>& v,
                       const head_batch<typename A::scalar_type>& out,
                       const batch_mask& mask = {}) {
  batched_workspace<A> ws;
  batched_attention(a, q, k, v, out, mask, ws);
}

}  // namespace performer
