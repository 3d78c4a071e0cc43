/// @file favor/favor_gradient.hpp
/// @brief The backward pass of FAVOR+ attention, bidirectional and causal, through every
/// differentiable feature map, with the projection held fixed (docs/algorithms.md §9.3, §9.4).
#pragma once

#include <algorithm>
#include <limits>

#include "../core/detail/online_softmax.hpp"
#include "../core/gradient.hpp"
#include "../core/types.hpp"
#include "favor_attention.hpp"
#include "feature_map.hpp"
#include "state.hpp"

namespace performer {

/**
 * @brief Gradients of favor_attention (accumulating in T) with respect to q, k and v.
 *
 * With query features Q' and weighted key features K' (weights exp(log_scale - shift)), out =
 * num / den, num = Q' S, den = Q' z. Given g = dout / den and h = -(dout . out) / den per query:
 * dQ' = g S^T + h z^T, dK'_j = G v_j + H and dv_j = G^T K'_j with the adjoint state
 * G = sum_i Q'_i g_i^T, H = sum_i Q'_i h_i over the queries that see key j; the feature map's
 * backward takes dQ' and dK' (and the log scales' share) to dq and dk.
 *
 * The forward (this struct's, not favor_attention's own) keeps key states in saved_type, so
 * that the backward need not map every key once more to rebuild them:
 * - Bidirectional: with S and z from the forward, two sweeps over blocks of B rows (queries:
 *   dq, G and H; keys: dk and dv). Workspace O(B M + M d_v), independent of N.
 * - Causal: stretches of P = B ceil(M / B) tokens, from the last. Each starts from the
 *   forward's state of the keys before it, maps its queries and keys once, and runs forward
 *   through its chunks (each query's g, h and shift: the stabiliser's running maximum, a
 *   constant of the forward; then dq), then back through them, carrying G and H as a suffix
 *   state rescaled like the forward's prefix state (dk and dv). No per-token prefix state is
 *   stored: the forward keeps ceil(N / P) states, O(N (d_v + 1) / P M) <= O(N (d_v + 1)) since
 *   P >= M, and the backward's workspace is O(P (M + d_v) + C^2 + M d_v), independent of N.
 * - With a default saved_type the backward first computes those key states itself (one more
 *   pass over the keys), for a caller that ran favor_attention::forward instead.
 * - Every sweep runs on one thread in a fixed order (parallelism belongs to the batch and
 *   heads above it), so the result does not depend on the thread count.
 *
 * Time O(N m d + N M d_v), plus O(N C (M + d_v)) causal: about 2 forwards (each feature map
 * runs once more, and its backward once per input).
 * FAVOR++'s A is held fixed at the value the forward fitted (favor_attention::map_for).
 */
template <real_scalar T, class FeatureMap, projection_sampler Sampler>
  requires differentiable_feature_map<FeatureMap, T>
struct attention_gradient<favor_attention<T, FeatureMap, Sampler, T>> {
  using attention_type = favor_attention<T, FeatureMap, Sampler, T>;

  /// The forward's key states (see above): one bidirectional, ceil(N / P) causal. The
  /// backward recomputes the features either way.
  struct saved_type {
    std::vector<favor_state<T>> states;
    index_t keys = -1;  ///< N_k of the forward that filled it; -1: none (or it threw)
    bool causal = false;
  };

  /// Scratch: P (or B, or C) rows of features, their gradients and their queries' g, h and
  /// shifts; the key states when the backward computes them itself.
  struct workspace_type {
    typename attention_type::lane_type lane;  ///< the forward's feature and weight buffers
    row_matrix<T> dphi, g, scores, mix;
    row_matrix<T> folded;  ///< causal: a chunk's key features, weighted by the fold
    vector<T> dlog, den, h, factor, shift;
    favor_state<T> state, adjoint;
    std::vector<favor_state<T>> starts;  ///< causal, without a forward's saved states
  };

  /// favor_attention::forward, keeping the key states in `saved`.
  static void forward(const attention_type& a, const const_matrix_ref<T>& q,
                      const const_matrix_ref<T>& k, const const_matrix_ref<T>& v,
                      matrix_ref<T> out, const attention_mask& mask,
                      typename attention_type::workspace_type& ws, saved_type& saved) {
    saved.keys = -1;
    a.run(q, k, v, out, mask, ws, &saved.states, stretch_blocks(a));
    saved.keys = k.rows();
    saved.causal = mask.causal;
  }

  /**
   * @brief dq, dk, dv of sum(dout .* out), out = a's forward on (q, k, v, mask).
   * @throws performer::invalid_argument as check_backward_args, on a head width other than the
   * projection's, if saved is neither default-constructed nor from a forward with these
   * arguments' shapes and masking, or if a gradient is not finite.
   */
  static void backward(const attention_type& a, const const_matrix_ref<T>& q,
                       const const_matrix_ref<T>& k, const const_matrix_ref<T>& v,
                       const const_matrix_ref<T>& out, const const_matrix_ref<T>& dout,
                       matrix_ref<T> dq, matrix_ref<T> dk, matrix_ref<T> dv,
                       const attention_mask& mask, workspace_type& ws, const saved_type& /*saved*/);

 private:
  static constexpr T minus_inf = -std::numeric_limits<T>::infinity();

  /// Blocks per causal stretch: P = B ceil(M / B) >= M tokens, so that ceil(N / P) kept states
  /// of M (d_v + 1) values never outgrow N (d_v + 1).
  static index_t stretch_blocks(const attention_type& a) {
    return (a.feature_count() + a.options().block - 1) / a.options().block;
  }
  /// P, the tokens of a causal stretch.
  static index_t stretch_rows(const attention_type& a) {
    return a.options().block * stretch_blocks(a);
  }

  /// One backward call's arguments and the steps over them.
  struct sweep {
    const attention_type& a;
    FeatureMap map;
    const const_matrix_ref<T>& q;
    const const_matrix_ref<T>& k;
    const const_matrix_ref<T>& v;
    const const_matrix_ref<T>& out;
    const const_matrix_ref<T>& dout;
    matrix_ref<T>& dq;
    matrix_ref<T>& dk;
    matrix_ref<T>& dv;
    const attention_mask& mask;
    workspace_type& ws;
    const saved_type& saved;

    [[nodiscard]] index_t block() const { return a.options().block; }
    [[nodiscard]] index_t stretch() const { return stretch_rows(a); }
    [[nodiscard]] index_t chunk() const { return std::min(a.options().backward_chunk, block()); }
    [[nodiscard]] index_t rows_at(index_t r0, index_t n) const {
      return std::min(block(), n - r0);
    }

    void prepare() const {
      const index_t m = a.feature_count();
      const index_t rows = mask.causal ? stretch() : block();
      for (auto* phi : {&ws.lane.phi_q, &ws.lane.phi_k, &ws.dphi}) phi->resize(rows, m);
      for (auto* vec : {&ws.lane.log_q, &ws.lane.log_k, &ws.dlog, &ws.den, &ws.factor,
                        &ws.lane.weights}) {
        vec->resize(rows);
      }
      ws.scores.resize(chunk(), chunk());
      ws.mix.resize(chunk(), chunk());
      ws.folded.resize(chunk(), m);
      ws.state.reset(m, v.cols());
      ws.adjoint.reset(m, v.cols());
      ws.g.resize(rows, v.cols());
      ws.h.resize(rows);
      ws.shift.resize(rows);
    }

    /// The forward's features of rows [r0, r0 + rows) of x; padded keys get log scale -inf.
    void features(const const_matrix_ref<T>& x, index_t r0, index_t rows, row_matrix<T>& phi,
                  vector<T>& log_scale, bool keys) const {
      a.features_of(map, x, r0, rows, phi, log_scale, keys ? &mask : nullptr);
    }

    /// g = dout / den and h = -(dout . out) / den for queries [t0, t0 + rows) into g_rows and
    /// h_rows; a query with den = 0 sees no key (the forward refused any other), so it has none.
    template <class G, class H>
    void adjoints(index_t t0, index_t rows, const vector<T>& den, G g_rows, H h_rows) const {
      for (index_t i = 0; i < rows; ++i) {
        if (den(i) == T(0)) {
          g_rows.row(i).setZero();
          h_rows(i) = T(0);
        } else {
          g_rows.row(i) = dout.row(t0 + i) / den(i);
          h_rows(i) = -g_rows.row(i).dot(out.row(t0 + i));
        }
      }
    }

    /// dk rows [r0, r0 + rows) from dphi (the keys' feature gradient): the log scale's share
    /// is dphi . phi per row (d/dlog_scale of phi exp(log_scale)).
    void key_backward(index_t r0, index_t rows) const {
      auto dphi = ws.dphi.topRows(rows);
      auto dlog = ws.dlog.head(rows);
      dlog = dphi.cwiseProduct(ws.lane.phi_k.topRows(rows)).rowwise().sum();
      map.backward(a.projection().matrix(), k.middleRows(r0, rows), ws.lane.phi_k.topRows(rows),
                   ws.lane.log_k.head(rows), dphi, dlog, dk.middleRows(r0, rows));
    }

    /// S, z of every key (bidirectional): the forward's, or computed as it computes them.
    void key_state() const {
      if (saved.keys >= 0) {
        ws.state = saved.states[0];
      } else {
        a.key_state(map, k, v, mask, 0, k.rows(), ws.state, ws.lane);
      }
    }

    /// Pass 2 (bidirectional): dq, and the adjoint state G, H of every query.
    void query_sweep() const {
      const favor_state<T>& st = ws.state;
      for (index_t q0 = 0; q0 < q.rows(); q0 += block()) {
        const index_t rows = rows_at(q0, q.rows());
        features(q, q0, rows, ws.lane.phi_q, ws.lane.log_q, false);
        const auto phi = ws.lane.phi_q.topRows(rows);
        auto g = ws.g.topRows(rows);
        auto h = ws.h.head(rows);
        ws.den.head(rows).noalias() = phi * st.norm;
        adjoints(q0, rows, ws.den, g, h);
        ws.adjoint.sum.noalias() += phi.transpose() * g;
        ws.adjoint.norm.noalias() += phi.transpose() * h;
        auto dphi = ws.dphi.topRows(rows);
        dphi.noalias() = g * st.sum.transpose();
        dphi.noalias() += h * st.norm.transpose();
        ws.dlog.head(rows).setZero();  // a query's own scale cancels in out
        map.backward(a.projection().matrix(), q.middleRows(q0, rows), phi, ws.lane.log_q.head(rows),
                     dphi, ws.dlog.head(rows), dq.middleRows(q0, rows));
      }
    }

    /// Pass 3 (bidirectional): dk and dv.
    void key_sweep() const {
      const favor_state<T>& st = ws.state;
      const favor_state<T>& adj = ws.adjoint;
      for (index_t k0 = 0; k0 < k.rows(); k0 += block()) {
        const index_t rows = rows_at(k0, k.rows());
        features(k, k0, rows, ws.lane.phi_k, ws.lane.log_k, true);
        auto w = ws.lane.weights.head(rows);
        for (index_t j = 0; j < rows; ++j) w(j) = detail::shifted_exp(ws.lane.log_k(j), st.shift);
        const auto phi = ws.lane.phi_k.topRows(rows);
        auto dphi = ws.dphi.topRows(rows);
        dphi.noalias() = v.middleRows(k0, rows) * adj.sum.transpose();
        dphi.rowwise() += adj.norm.transpose();
        dphi = w.asDiagonal() * dphi;
        auto dv_rows = dv.middleRows(k0, rows);
        dv_rows.noalias() = phi * adj.sum;
        dv_rows = w.asDiagonal() * dv_rows;
        key_backward(k0, rows);
      }
    }

    /// A_ij = exp(log_k_j - shift_i) for j <= i, else 0, over the chunk's C x C `into`.
    template <class LogK, class Shift, class Into>
    static void causal_weights(const LogK& log_k, const Shift& shift, Into into) {
      for (index_t i = 0; i < into.rows(); ++i) {
        for (index_t j = 0; j <= i; ++j) into(i, j) = detail::shifted_exp(log_k(j), shift(i));
        into.row(i).tail(into.cols() - i - 1).setZero();
      }
    }

    /// The causal backward: stretches from the last, each from the keys before it.
    void causal() const {
      const std::vector<favor_state<T>>& starts = saved.keys >= 0 ? saved.states : key_states();
      const index_t n = q.rows(), p = stretch();
      for (index_t s0 = (n - 1) / p * p; s0 >= 0; s0 -= p) {
        causal_stretch(s0, std::min(p, n - s0), starts[static_cast<std::size_t>(s0 / p)]);
      }
    }

    /// Without a forward's states: the state of the keys before each stretch, a prefix of
    /// the stretches' own key states as the forward's is of its blocks'.
    const std::vector<favor_state<T>>& key_states() const {
      const index_t n = k.rows(), p = stretch();
      auto& starts = ws.starts;
      starts.resize(static_cast<std::size_t>((n + p - 1) / p));
      starts[0].reset(a.feature_count(), v.cols());
      for (std::size_t s = 1; s < starts.size(); ++s) {
        const auto s0 = static_cast<index_t>(s - 1) * p;
        a.key_state(map, k, v, mask, s0, s0 + p, ws.state, ws.lane);
        starts[s] = starts[s - 1];
        starts[s].add(ws.state);
      }
      return starts;
    }

    /// Tokens [s0, s0 + rows): forward through the chunks from `start` (each query's shift,
    /// g, h and dq), then back through them (dk and dv), the features mapped once for both.
    void causal_stretch(index_t s0, index_t rows, const favor_state<T>& start) const {
      favor_state<T>& st = ws.state;
      st = start;
      features(q, s0, rows, ws.lane.phi_q, ws.lane.log_q, false);
      features(k, s0, rows, ws.lane.phi_k, ws.lane.log_k, true);
      for (index_t c = 0; c < rows; c += chunk()) {
        forward_chunk(s0 + c, c, std::min(chunk(), rows - c), st);
      }
      ws.dlog.head(rows).setZero();
      map.backward(a.projection().matrix(), q.middleRows(s0, rows), ws.lane.phi_q.topRows(rows),
                   ws.lane.log_q.head(rows), ws.dphi.topRows(rows), ws.dlog.head(rows),
                   dq.middleRows(s0, rows));
      for (index_t c = (rows - 1) / chunk() * chunk(); c >= 0; c -= chunk()) {
        reverse_chunk(s0 + c, c, std::min(chunk(), rows - c));
      }
      key_backward(s0, rows);
    }

    /// Tokens [t0, t0 + rows), rows [r0, r0 + rows) of the stretch's buffers.
    void forward_chunk(index_t t0, index_t r0, index_t rows, favor_state<T>& st) const {
      const auto phi_q = ws.lane.phi_q.middleRows(r0, rows);
      const auto log_k = ws.lane.log_k.segment(r0, rows);
      const auto v_c = v.middleRows(t0, rows);
      auto shift = ws.shift.segment(r0, rows);
      auto factor = ws.factor.head(rows);
      T running = st.shift;
      for (index_t i = 0; i < rows; ++i) {
        running = std::max(running, log_k(i));
        shift(i) = running;
        factor(i) = detail::shifted_exp(st.shift, running);
      }
      auto weights = ws.mix.topLeftCorner(rows, rows);
      causal_weights(log_k, shift, weights);
      auto p = ws.scores.topLeftCorner(rows, rows);
      p.noalias() = phi_q * ws.lane.phi_k.middleRows(r0, rows).transpose();
      p.array() *= weights.array();
      auto den = ws.den.head(rows);
      den.noalias() = phi_q * st.norm;
      den = factor.cwiseProduct(den) + p.rowwise().sum();
      auto g = ws.g.middleRows(r0, rows);
      auto h = ws.h.segment(r0, rows);
      adjoints(t0, rows, ws.den, g, h);
      // dQ'_i = factor_i (g_i S^T + h_i z^T) + sum_{j <= i} A_ij (g_i . v_j + h_i) K'_j.
      auto dphi = ws.dphi.middleRows(r0, rows);
      dphi.noalias() = g * st.sum.transpose();
      dphi.noalias() += h * st.norm.transpose();
      dphi = factor.asDiagonal() * dphi;
      auto e = p;  // P is spent: reuse its storage for E = (g V^T + h 1^T) .* A
      e.noalias() = g * v_c.transpose();
      e.colwise() += h;
      e.array() *= weights.array();
      dphi.noalias() += e * ws.lane.phi_k.middleRows(r0, rows);
      // The chunk's keys join the carried state at the chunk's last shift, as in the forward.
      // accumulate weights the features it folds in place: the reverse sweep needs them as
      // they are, so it folds a copy.
      auto folded = ws.folded.topRows(rows);
      folded = ws.lane.phi_k.middleRows(r0, rows);
      a.accumulate(folded, log_k, v_c, st, shift(rows - 1), ws.lane);
    }

    /// Tokens [t0, t0 + rows), rows [r0, r0 + rows) of the stretch's buffers: dk and dv,
    /// carrying the adjoint suffix state G, H.
    void reverse_chunk(index_t t0, index_t r0, index_t rows) const {
      favor_state<T>& adj = ws.adjoint;  // relative to the shift of the first later token
      auto phi_q = ws.lane.phi_q.middleRows(r0, rows);
      const auto phi_k = ws.lane.phi_k.middleRows(r0, rows);
      const auto log_k = ws.lane.log_k.segment(r0, rows);
      const auto v_c = v.middleRows(t0, rows);
      const auto shift = ws.shift.segment(r0, rows);
      const auto g = ws.g.middleRows(r0, rows);
      const auto h = ws.h.segment(r0, rows);
      auto weights = ws.mix.topLeftCorner(rows, rows);
      causal_weights(log_k, shift, weights);
      auto dphi = ws.dphi.middleRows(r0, rows);
      auto dv_c = dv.middleRows(t0, rows);
      // Later queries: dK'_j = e^(log_k_j - shift) (G v_j + H), dv_j = e^(...) G^T K'_j.
      if (adj.shift == minus_inf) {
        dphi.setZero();
        dv_c.setZero();
      } else {
        auto later = ws.factor.head(rows);
        for (index_t j = 0; j < rows; ++j) later(j) = detail::shifted_exp(log_k(j), adj.shift);
        dphi.noalias() = v_c * adj.sum.transpose();
        dphi.rowwise() += adj.norm.transpose();
        dphi = later.asDiagonal() * dphi;
        dv_c.noalias() = phi_k * adj.sum;
        dv_c = later.asDiagonal() * dv_c;
      }
      // Within the chunk: dK' += E^T Q', dv += P^T g.
      auto p = ws.scores.topLeftCorner(rows, rows);
      p.noalias() = phi_q * phi_k.transpose();
      p.array() *= weights.array();
      dv_c.noalias() += p.transpose() * g;
      auto e = p;
      e.noalias() = g * v_c.transpose();
      e.colwise() += h;
      e.array() *= weights.array();
      dphi.noalias() += e.transpose() * phi_q;
      // The chunk's queries join the suffix state at the chunk's first shift (the smallest).
      const T first = shift(0);
      // With no later query yet the state is empty (its shift -inf is no token's).
      const T carried = adj.shift == minus_inf ? T(0) : detail::shifted_exp(first, adj.shift);
      if (carried != T(1)) {
        adj.sum *= carried;
        adj.norm *= carried;
      }
      adj.shift = first;
      if (first == minus_inf) return;  // these queries see no key: g = h = 0
      for (index_t i = 0; i < rows; ++i) phi_q.row(i) *= detail::shifted_exp(first, shift(i));
      adj.sum.noalias() += phi_q.transpose() * g;
      adj.norm.noalias() += phi_q.transpose() * h;
    }
  };
};

template <real_scalar T, class FeatureMap, projection_sampler Sampler>
  requires differentiable_feature_map<FeatureMap, T>
void attention_gradient<favor_attention<T, FeatureMap, Sampler, T>>::backward(
    const attention_type& a, const const_matrix_ref<T>& q, const const_matrix_ref<T>& k,
    const const_matrix_ref<T>& v, const const_matrix_ref<T>& out, const const_matrix_ref<T>& dout,
    matrix_ref<T> dq, matrix_ref<T> dk, matrix_ref<T> dv, const attention_mask& mask,
    workspace_type& ws, const saved_type& saved) {
  constexpr const char* who = "attention_gradient<favor_attention>::backward";
  check_backward_args<T>(who, q, k, v, out, dout, dq, dk, dv, mask);
  PERFORMER_PRECONDITION(q.cols() == a.projection().dim(), who, ": q is ", detail::shape(q),
                         " but the projection is for head width ", a.projection().dim());
  if (saved.keys >= 0 || !saved.states.empty()) {
    const index_t p = stretch_rows(a);
    const auto kept = static_cast<std::size_t>(mask.causal ? (k.rows() + p - 1) / p : 1);
    PERFORMER_PRECONDITION(
        saved.keys == k.rows() && saved.causal == mask.causal && saved.states.size() == kept &&
            saved.states[0].sum.rows() == a.feature_count() &&
            saved.states[0].sum.cols() == v.cols(),
        who, ": saved does not come from a forward with these arguments (", detail::shape(k),
        " keys, ", mask.causal ? "causal" : "bidirectional", ")");
  }
  const sweep s{a, a.map_for(q, k, mask), q, k, v, out, dout, dq, dk, dv, mask, ws, saved};
  s.prepare();
  if (mask.causal) {
    s.causal();
  } else {
    s.key_state();
    s.query_sweep();
    s.key_sweep();
  }
  require_finite_result(who, dq);
  require_finite_result(who, dk);
  require_finite_result(who, dv);
}

}  // namespace performer
