// The ceilings the kernels are reported against ("% ceil"): for each mechanism, the same
// matrix products on the same shapes, with the same threads, and nothing else (no exps, no
// gathers, no bookkeeping). A kernel does those products and more, so it cannot beat its
// ceiling except by timing noise; the harness times the two interleaved in one process.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "workloads.hpp"

namespace performer::bench {

/// Walks a ceiling's matrix products: when computing it runs them; when counting it only adds
/// up their flops (2 per multiply-add) and touches no buffer. One walk serves both, so a
/// ceiling's flop count and its work cannot disagree, and counting allocates nothing.
class product_walk {
 public:
  explicit product_walk(bool compute) : compute_(compute) {}
  [[nodiscard]] bool computing() const { return compute_; }
  [[nodiscard]] double flops() const { return flops_; }

  /// A (rows x depth) by (depth x cols) product, which `f` performs.
  template <class F>
  void product(index_t rows, index_t depth, index_t cols, F&& f) {
    if (compute_) {
      f();
    } else {
      flops_ +=
          2.0 * static_cast<double>(rows) * static_cast<double>(depth) * static_cast<double>(cols);
    }
  }

  /// body(i, lane) for i < count: on threads as the library's parallel_for runs it when
  /// computing and `parallel`; in order when counting (the count is not atomic).
  template <class Body>
  void for_items(index_t count, bool parallel, Body&& body) {
    if (compute_ && parallel) {
      detail::parallel_for(count, body);
    } else {
      for (index_t i = 0; i < count; ++i) body(i, index_t{0});
    }
  }

 private:
  bool compute_;
  double flops_ = 0;
};

/// Scratch filled with a normal value: uninitialised memory could hold denormals, which slow
/// floating-point products down and would lower the ceiling.
inline row_matrix<T> scratch(index_t rows, index_t cols) {
  return row_matrix<T>::Constant(rows, cols, T(0.01));
}

/// A ceiling as a workload: counts its flops once; its first call allocates its scratch and
/// output (so that, run as a kernel, its memory figure is what its products need).
template <class C>
workload ceiling_workload(std::shared_ptr<C> c) {
  product_walk count(false);
  c->walk(count);
  workload w;
  w.run = [c, allocated = false]() mutable {
    if (!allocated) {
      c->allocate();
      allocated = true;
    }
    product_walk p(true);
    c->walk(p);
  };
  w.flops = [flops = count.flops()] { return flops; };
  return w;
}

/// Flops of a ceiling's products (without allocating its scratch).
template <class C>
double counted_flops(const std::shared_ptr<C>& c) {
  product_walk count(false);
  c->walk(count);
  return count.flops();
}

// ---- Exact attention ------------------------------------------------------------------------

/// Materialized softmax: W = Q K^T / sqrt(d) (N_q x N_k), then W V. Queries are rows
/// [q0, q0 + n_q) (a key/value-cache step is one row against all keys).
struct materialized_products {
  std::shared_ptr<const head_buffers> b;
  index_t q0 = 0, n_q = 0;
  row_matrix<T> weights, out;

  void allocate() {
    weights = scratch(n_q, b->k.rows());
    out = scratch(n_q, b->v.cols());
  }
  void walk(product_walk& p) {
    const index_t d = b->q.cols();
    const index_t n_k = b->k.rows();
    const T scale = T(1) / std::sqrt(static_cast<T>(d));
    p.product(n_q, d, n_k,
              [&] { weights.noalias() = scale * (b->q.middleRows(q0, n_q) * b->k.transpose()); });
    p.product(n_q, n_k, b->v.cols(), [&] { out.noalias() = weights * b->v; });
  }
};

/// Tiled softmax: per (query tile, key tile) S = Q_t K_t^T / sqrt(d) and acc += S V_t, key
/// tiles up to the tile's last query when causal, as tiled_softmax_attention cuts them.
struct tiled_products {
  std::shared_ptr<const head_buffers> b;
  index_t query_block = 0, key_block = 0;
  bool causal = false;
  row_matrix<T> tile, out;

  void allocate() {
    tile = scratch(std::min(query_block, b->q.rows()), std::min(key_block, b->k.rows()));
    out = scratch(b->q.rows(), b->v.cols());
  }
  void walk(product_walk& p) {
    const index_t n_q = b->q.rows();
    const index_t d = b->q.cols();
    const T scale = T(1) / std::sqrt(static_cast<T>(d));
    for (index_t q0 = 0; q0 < n_q; q0 += query_block) {
      const index_t rows = std::min(query_block, n_q - q0);
      const index_t key_end = causal ? q0 + rows : b->k.rows();
      // Zeroing the accumulator is the kernel's too, and O(N d): it keeps repeated runs finite.
      if (p.computing()) out.middleRows(q0, rows).setZero();
      for (index_t k0 = 0; k0 < key_end; k0 += key_block) {
        const index_t cols = std::min(key_block, key_end - k0);
        p.product(rows, d, cols, [&] {
          tile.topLeftCorner(rows, cols).noalias() =
              scale * (b->q.middleRows(q0, rows) * b->k.middleRows(k0, cols).transpose());
        });
        p.product(rows, cols, b->v.cols(), [&] {
          out.middleRows(q0, rows).noalias() +=
              tile.topLeftCorner(rows, cols) * b->v.middleRows(k0, cols);
        });
      }
    }
  }
};

template <class Scalar>
auto ceiling_for(const softmax_attention<Scalar>&, std::shared_ptr<const head_buffers> b, bool,
                 const typename softmax_attention<Scalar>::workspace_type&) {
  auto c = std::make_shared<materialized_products>();
  c->b = std::move(b);
  c->n_q = c->b->q.rows();
  return c;
}

template <class Scalar>
auto ceiling_for(const tiled_softmax_attention<Scalar>& a, std::shared_ptr<const head_buffers> b,
                 bool causal, const typename tiled_softmax_attention<Scalar>::workspace_type&) {
  auto c = std::make_shared<tiled_products>();
  c->b = std::move(b);
  c->query_block = a.query_block();
  c->key_block = a.key_block();
  c->causal = causal;
  return c;
}

// ---- FAVOR ----------------------------------------------------------------------------------

/// FAVOR's products on favor_attention's blocks, segments and causal chunks: the projection
/// X W^T (m columns, into the first m of M feature columns; none for maps without a
/// projection, such as elu + 1, whose M = d), S += phi(K)^T V, and phi(Q) S; causal adds per
/// chunk of C rows phi(Q_c) phi(K_c)^T and its product with V_c. Causal blocks are independent
/// here: the kernel's prefix over the blocks' states and its merges (M d_v additions per chunk),
/// the normalisers (matrix-vector) and the feature maps' exps are the kernel's extra work.
/// With `own` (the kernel's own_products()), on performer's float kernels as the kernel runs
/// them: on its operands' layouts (W^T, the keys' features transposed per block) and with the
/// chunk's two products in bands of 16 queries that skip the blocks above the diagonal.
struct favor_product_ceiling {
  std::shared_ptr<const head_buffers> b;
  row_matrix<T> w;       // m x d projection; empty when the map does not project
  index_t features = 0;  // M
  favor_options options;
  bool causal = false;
  bool own = false;
  row_matrix<T> w_t;  // own: W^T, d x m
  struct lane {
    row_matrix<T> phi_q, phi_k, num, scores, phi_k_t;  // phi_k_t: own causal, M x B
  };
  std::vector<lane> lanes;
  std::vector<row_matrix<T>> states;

  [[nodiscard]] index_t segments(index_t n) const {
    return std::clamp<index_t>(n / options.min_segment, 1, options.segments);
  }
  static index_t segment_start(index_t n, index_t count, index_t s) { return n * s / count; }

  void allocate() {
    const index_t n = b->q.rows();
    const index_t blocks = (n + options.block - 1) / options.block;
    const index_t s = segments(n);
    const index_t lane_count =
        std::max({detail::lanes_for(s), detail::lanes_for(blocks), index_t{1}});
    lanes.resize(static_cast<std::size_t>(lane_count));
    const index_t c = std::min(options.block, options.chunk);
    for (auto& l : lanes) {
      l = {scratch(options.block, features), scratch(options.block, features),
           scratch(options.block, b->v.cols()), scratch(c, c), scratch(features, options.block)};
    }
    states.assign(static_cast<std::size_t>(std::max(s, lane_count)),
                  scratch(features, b->v.cols()));
  }

  void project(product_walk& p, const row_matrix<T>& x, index_t r0, index_t rows,
               row_matrix<T>& phi) {
    if (w.rows() == 0) return;
    p.product(rows, x.cols(), w.rows(), [&] {
      if (own && w_t.size() > 0) {
        detail::fp32::product({&x(r0, 0), rows, x.cols(), 1},
                              {w_t.data(), w_t.rows(), w_t.cols(), w_t.cols()}, phi.data(),
                              phi.cols(), /*accumulate=*/false);
      } else {
        phi.topRows(rows).leftCols(w.rows()).noalias() = x.middleRows(r0, rows) * w.transpose();
      }
    });
  }

  void key_state(product_walk& p, index_t begin, index_t end, row_matrix<T>& st, lane& l) {
    if (p.computing()) st.setZero();
    for (index_t k0 = begin; k0 < end; k0 += options.block) {
      const index_t rows = std::min(options.block, end - k0);
      project(p, b->k, k0, rows, l.phi_k);
      fold(p, l.phi_k, 0, k0, rows, st);
    }
  }

  /// st += phi.middleRows(r0, rows)^T V.middleRows(v0, rows).
  void fold(product_walk& p, const row_matrix<T>& phi, index_t r0, index_t v0, index_t rows,
            row_matrix<T>& st) const {
    const row_matrix<T>& v = b->v;
    p.product(features, rows, v.cols(), [&] {
      if (own) {
        detail::fp32::product({&phi(r0, 0), features, 1, phi.cols()},
                              {&v(v0, 0), rows, v.cols(), v.cols()}, st.data(), st.cols());
      } else {
        st.noalias() += phi.middleRows(r0, rows).transpose() * v.middleRows(v0, rows);
      }
    });
  }

  /// out = phi.middleRows(r0, rows) st. Only the product reads st and the lanes: a count
  /// walks before they are allocated.
  void carried(product_walk& p, const row_matrix<T>& phi, index_t r0, index_t rows,
               const row_matrix<T>& st, row_matrix<T>& out) const {
    p.product(rows, features, b->v.cols(), [&] {
      if (own) {
        detail::fp32::product({&phi(r0, 0), rows, phi.cols(), 1},
                              {st.data(), st.rows(), st.cols(), st.cols()}, out.data(),
                              out.cols(), /*accumulate=*/false);
      } else {
        out.topRows(rows).noalias() = phi.middleRows(r0, rows) * st;
      }
    });
  }

  /// A chunk's scores phi(Q_c) phi(K_c)^T and num += scores V_c: whole with Eigen, in bands of
  /// 16 queries below the diagonal on performer's kernel.
  void chunk(product_walk& p, lane& l, index_t c, index_t rows, index_t v0) const {
    const row_matrix<T>& v = b->v;
    if (!own) {
      p.product(rows, features, rows, [&] {
        l.scores.topLeftCorner(rows, rows).noalias() =
            l.phi_q.middleRows(c, rows) * l.phi_k.middleRows(c, rows).transpose();
      });
      p.product(rows, rows, v.cols(), [&] {
        l.num.topRows(rows).noalias() +=
            l.scores.topLeftCorner(rows, rows) * v.middleRows(v0, rows);
      });
      return;
    }
    detail::for_causal_bands(rows, [&](index_t i0, index_t queries, index_t keys) {
      p.product(queries, features, keys, [&] {
        detail::fp32::product({&l.phi_q(c + i0, 0), queries, features, 1},
                              {l.phi_k_t.data() + c, features, keys, l.phi_k_t.cols()},
                              &l.scores(i0, 0), l.scores.cols(), /*accumulate=*/false);
      });
    });
    detail::for_causal_bands(rows, [&](index_t i0, index_t queries, index_t keys) {
      p.product(queries, keys, v.cols(), [&] {
        detail::fp32::product({&l.scores(i0, 0), queries, l.scores.cols(), 1},
                              {&v(v0, 0), keys, v.cols(), v.cols()}, &l.num(i0, 0),
                              l.num.cols());
      });
    });
  }

  void walk(product_walk& p) {
    const index_t n = b->q.rows();
    const index_t blocks = (n + options.block - 1) / options.block;
    if (!causal) {
      const index_t s = segments(n);
      p.for_items(s, true, [&](index_t i, index_t ln) {
        key_state(p, segment_start(n, s, i), segment_start(n, s, i + 1), states[i], lanes[ln]);
      });
      p.for_items(blocks, true, [&](index_t blk, index_t ln) {
        lane& l = lanes[ln];
        const index_t q0 = blk * options.block;
        const index_t rows = std::min(options.block, n - q0);
        project(p, b->q, q0, rows, l.phi_q);
        carried(p, l.phi_q, 0, rows, states[0], l.num);
      });
      return;
    }
    // Causal: every block maps its queries and keys once; per chunk the carried product, the
    // masked product and its product with V, and the fold.
    p.for_items(blocks, true, [&](index_t blk, index_t ln) {
      lane& l = lanes[ln];
      row_matrix<T>& st = states[ln];
      if (p.computing()) st.setZero();
      const index_t b0 = blk * options.block;
      const index_t block_rows = std::min(options.block, n - b0);
      project(p, b->q, b0, block_rows, l.phi_q);
      project(p, b->k, b0, block_rows, l.phi_k);
      for (index_t c = 0; c < block_rows; c += options.chunk) {
        const index_t rows = std::min(options.chunk, block_rows - c);
        carried(p, l.phi_q, c, rows, st, l.num);
        chunk(p, l, c, rows, b0 + c);
        fold(p, l.phi_k, c, b0 + c, rows, st);
      }
    });
  }
};

/// FAVOR with the accumulator in the data's scalar (every registry entry); a mixed-precision
/// instance has casts a float ceiling would not show, so it gets none.
template <class Map, class Sampler>
auto ceiling_for(const favor_attention<T, Map, Sampler, T>& a,
                 std::shared_ptr<const head_buffers> b, bool causal,
                 const typename favor_attention<T, Map, Sampler, T>::workspace_type&) {
  auto c = std::make_shared<favor_product_ceiling>();
  c->b = std::move(b);
  if constexpr (Map::uses_projection) c->w = a.projection().matrix();
  // The kernel projects on performer's kernel only for a map whose projection it can take.
  if constexpr (projected_feature_map<Map, T>) c->w_t = a.projection().transposed();
  c->own = a.own_products();
  c->features = a.feature_count();
  c->options = a.options();
  c->causal = causal;
  return c;
}

// ---- LSH ------------------------------------------------------------------------------------

/// LSH's two products per key tile (logits = Q_t K_t^T, then logits V_t) on the (queries,
/// keys) shape of every tile the last forward multiplied, fallback windows included, on
/// contiguous tiles: the gathers, hashing, sorting and softmax bookkeeping are the kernel's
/// extra work.
struct lsh_products {
  std::shared_ptr<const head_buffers> b;
  std::vector<std::pair<index_t, index_t>> tiles;  // (queries, keys)
  bool parallel = false;
  struct lane {
    row_matrix<T> queries, keys, values, logits, partial;
  };
  std::vector<lane> lanes;

  void allocate() {
    lanes.resize(static_cast<std::size_t>(detail::lanes_for(static_cast<index_t>(tiles.size()))));
    const index_t d = b->q.cols();
    const index_t dv = b->v.cols();
    for (auto& l : lanes) {
      l = {scratch(detail::lsh_query_tile, d), scratch(detail::lsh_key_tile, d),
           scratch(detail::lsh_key_tile, dv), scratch(detail::lsh_query_tile, detail::lsh_key_tile),
           scratch(detail::lsh_query_tile, dv)};
    }
  }
  void walk(product_walk& p) {
    const index_t d = b->q.cols();
    const index_t dv = b->v.cols();
    p.for_items(static_cast<index_t>(tiles.size()), parallel, [&](index_t i, index_t ln) {
      lane& l = lanes[ln];
      // Named copies, not structured bindings: clang 14 cannot capture bindings in a lambda.
      const index_t rows = tiles[static_cast<std::size_t>(i)].first;
      const index_t w = tiles[static_cast<std::size_t>(i)].second;
      p.product(rows, d, w, [&] {
        l.logits.topLeftCorner(rows, w).noalias() =
            l.queries.topRows(rows) * l.keys.topRows(w).transpose();
      });
      p.product(rows, w, dv, [&] {
        l.partial.topRows(rows).noalias() = l.logits.topLeftCorner(rows, w) * l.values.topRows(w);
      });
    });
  }
};

/// Appends the key tiles of one window as attend_window cuts them: B_k keys at a time,
/// stopping, when causal, at a tile that starts after the group's last query.
inline void lsh_window_tiles(std::vector<std::pair<index_t, index_t>>& tiles, index_t rows,
                             index_t last_query, const index_t* keys, index_t count, bool causal) {
  for (index_t w0 = 0; w0 < count; w0 += detail::lsh_key_tile) {
    if (causal && keys[w0] > last_query) break;
    tiles.emplace_back(rows, std::min(detail::lsh_key_tile, count - w0));
  }
}

/// Rebuilds, from the workspace of the last forward (self-attention, N_q = N_k = n), every
/// round's work items and the fallback windows.
template <class Hash>
auto ceiling_for(const lsh_attention<T, Hash>& a, std::shared_ptr<const head_buffers> b,
                 bool causal, typename lsh_attention<T, Hash>::workspace_type& ws) {
  auto c = std::make_shared<lsh_products>();
  const index_t n = b->q.rows();
  const index_t d = b->q.cols();
  c->b = std::move(b);
  auto& plan = ws.plan;
  for (index_t r = 0; r < a.options().hashes; ++r) {
    plan.plan_round(r, n, n, detail::lsh_query_tile);
    for (const auto& it : plan.items) {
      const index_t last_query =
          plan.query_order[static_cast<std::size_t>(it.q_begin + it.q_count - 1)];
      lsh_window_tiles(c->tiles, it.q_count, last_query, plan.key_order.data() + it.w_begin,
                       it.w_end - it.w_begin, causal);
    }
  }
  const auto& visible = plan.visible_keys;
  const index_t chunk = a.options().chunk;
  for (index_t f = 0; f < ws.fallback_queries; ++f) {
    const index_t i = ws.fallback[static_cast<std::size_t>(f)];
    const auto at =
        static_cast<index_t>(std::upper_bound(visible.begin(), visible.end(), i) - visible.begin());
    const index_t first = at > 0 ? std::max<index_t>(0, at - chunk) : 0;
    const index_t last = at > 0 ? at : std::min(chunk, static_cast<index_t>(visible.size()));
    lsh_window_tiles(c->tiles, 1, i, visible.data() + first, last - first, causal);
  }
  // The kernel's own test for running its items on threads.
  c->parallel = static_cast<double>(n) * static_cast<double>(std::min(chunk, n)) * 2.0 *
                    static_cast<double>(d + c->b->v.cols()) >=
                static_cast<double>(index_t{1} << 20);
  return c;
}

}  // namespace performer::bench
