/// @file tests/fuzz/fuzz_lsh.cpp
/// @brief performer_fuzz_lsh: lsh_attention with the default angular_hash and the example
/// sign_projection_hash family.
///
/// Entry byte (header [0], modulo 2): 0 angular_hash, 1 sign_projection_hash.
/// Parameters: p[0] buckets (below 128: 2 (1 + p % 32), or 0 = automatic when p % 8 == 7;
/// from 128: small odd, zero and negative counts, 4 (v - 16) up to 444 (angular_hash factorises
/// above 128), and one beyond lsh_max_buckets); p[1] % 6 hashes (0 included); p[2] chunk (0,
/// negative, 1..48); p[3] flags: 1 shared-QK, 2 zero-rotation oracle (angular: zero rotations
/// and one chunk), 4 user rotations (angular), 8 a bad rotation (one column more; with p[7]
/// bit 7 also one row more), 16 redraw the family; p[4], p[5] the seed; p[6] the round (low
/// nibble, modulo hashes + 1) and n_keys (bits 4..5: 0, N_k, -1, 1 + p[7] % 64) for buckets();
/// p[7] rotation half width when the bucket count is automatic or above 128, and the bucket
/// count asked of rotation(); scale[3] the rotations' values.
///
/// Oracles: LSH with zero rotations and one chunk == softmax (performer::oracle, shared-QK
/// included); and for any family and options, LSH == exact softmax over each query's key set,
/// rebuilt from the buckets() API and the documented chunking: the union of its windows over
/// the rounds, or the documented fallback (the chunk-many nearest visible keys) when the
/// windows hold no visible key; workspace_type::fallback_queries counts those queries.
#include <bit>

#include "contract.hpp"

namespace fuzz {

/// Each query's keys (lsh_attention.hpp, class comment): in every round, the visible keys of
/// the query's bucket in position order, cut into chunks of c; the query sits at position
/// p_i = floor(i N_k / N_q) and in the chunk that counts the keys of its bucket before p_i; its
/// window is that chunk and the one before, without keys after i under causal masking. The
/// union over the rounds, or if that is empty though the mask leaves the query keys, the c
/// visible keys nearest before p_i (itself included), else the first c after it.
template <class T, class Mech>
std::vector<std::vector<index_t>> lsh_key_sets(const Mech& mech, const attention_case<T>& c,
                                               index_t& fallbacks) {
  const index_t n_q = c.q.rows(), n_k = c.k.rows(), chunk = mech.options().chunk;
  const bool shared = mech.options().shared_qk;
  std::vector<index_t> visible;
  for (index_t j = 0; j < n_k; ++j) {
    if (c.mask.keeps(j)) visible.push_back(j);
  }
  std::vector<std::vector<index_t>> sets(static_cast<std::size_t>(n_q));
  for (index_t r = 0; r < mech.options().hashes; ++r) {
    std::vector<index_t> qb, kb;
    const outcome o = guarded("lsh_attention::buckets (reference)", lsh_names, [&] {
      qb = mech.buckets(c.q, r, n_k);
      kb = shared ? qb : mech.buckets(c.k, r, n_k);
    });
    if (!o.ok) bug(cat("lsh_attention::buckets rejected what forward accepted: ", o.message));
    std::vector<std::vector<index_t>> members(static_cast<std::size_t>(mech.bucket_count(n_k)));
    for (const index_t j : visible) members[static_cast<std::size_t>(kb[static_cast<std::size_t>(j)])].push_back(j);
    for (index_t i = 0; i < n_q; ++i) {
      const index_t p = n_q == n_k ? i : i * n_k / n_q;
      const auto& keys = members[static_cast<std::size_t>(qb[static_cast<std::size_t>(i)])];
      const auto before = static_cast<index_t>(std::lower_bound(keys.begin(), keys.end(), p) - keys.begin());
      const index_t qc = before / chunk;
      const index_t hi = std::min(static_cast<index_t>(keys.size()), (qc + 1) * chunk);
      for (index_t t = std::max<index_t>(0, (qc - 1) * chunk); t < hi; ++t) {
        const index_t j = keys[static_cast<std::size_t>(t)];
        if (!c.h.causal() || j <= i) sets[static_cast<std::size_t>(i)].push_back(j);
      }
    }
  }
  fallbacks = 0;
  const auto count = static_cast<index_t>(visible.size());
  for (index_t i = 0; i < n_q; ++i) {
    auto& s = sets[static_cast<std::size_t>(i)];
    std::sort(s.begin(), s.end());
    s.erase(std::unique(s.begin(), s.end()), s.end());
    if (!s.empty() || !c.sees_a_key(i)) continue;
    ++fallbacks;
    const index_t p = n_q == n_k ? i : i * n_k / n_q;
    const auto at = static_cast<index_t>(std::upper_bound(visible.begin(), visible.end(), p) - visible.begin());
    const index_t first = at > 0 ? std::max<index_t>(0, at - chunk) : 0;
    const index_t last = at > 0 ? at : std::min(chunk, count);
    s.assign(visible.begin() + first, visible.begin() + last);
  }
  return sets;
}

/// Exact softmax attention of each query over its key set, in long double; shared-QK keys are
/// q_j / |q_j| (zero stays zero) and a query's own key counts only when it is alone.
template <class T>
row_matrix<double> softmax_over(const attention_case<T>& c, std::vector<std::vector<index_t>> sets,
                                bool shared) {
  using ld = long double;
  const index_t d = c.q.cols();
  row_matrix<double> out = row_matrix<double>::Zero(c.q.rows(), c.v.cols());
  std::vector<ld> s, acc(static_cast<std::size_t>(c.v.cols()));
  for (index_t i = 0; i < c.q.rows(); ++i) {
    auto& keys = sets[static_cast<std::size_t>(i)];
    if (shared && keys.size() > 1) std::erase(keys, i);
    if (keys.empty()) continue;
    s.clear();
    for (const index_t j : keys) {
      ld dot = 0, norm = 0;
      for (index_t col = 0; col < d; ++col) {
        const ld key = shared ? static_cast<ld>(c.q(j, col)) : static_cast<ld>(c.k(j, col));
        dot += static_cast<ld>(c.q(i, col)) * key;
        norm += key * key;
      }
      if (shared && norm > 0) dot /= std::sqrt(norm);
      s.push_back(dot / std::sqrt(static_cast<ld>(d)));
    }
    const ld top = *std::max_element(s.begin(), s.end());
    ld total = 0;
    std::fill(acc.begin(), acc.end(), 0.0L);
    for (std::size_t t = 0; t < keys.size(); ++t) {
      const ld w = std::exp(s[t] - top);
      total += w;
      for (index_t col = 0; col < c.v.cols(); ++col) acc[static_cast<std::size_t>(col)] += w * static_cast<ld>(c.v(keys[t], col));
    }
    for (index_t col = 0; col < c.v.cols(); ++col) out(i, col) = static_cast<double>(acc[static_cast<std::size_t>(col)] / total);
  }
  return out;
}

template <class T, class Hash>
void lsh_entry(byte_reader& r, const header& h) {
  constexpr bool angular = std::is_same_v<Hash, performer::angular_hash<T>>;
  using mech_type = performer::lsh_attention<T, Hash>;
  performer::lsh_options o;
  const index_t v0 = h.p[0] & 0x7fU;
  if ((h.p[0] & 0x80U) == 0) {
    o.buckets = h.p[0] % 8 == 7 ? 0 : 2 * (1 + h.p[0] % 32);
    if (!angular && (h.p[0] & 0x40U) == 0) o.buckets = static_cast<index_t>(std::bit_floor(static_cast<std::uint64_t>(o.buckets)));
  } else {
    o.buckets = v0 < 16 ? v0 - 8 : v0 == 127 ? performer::lsh_max_buckets + 2 : 4 * (v0 - 16);
  }
  o.hashes = h.p[1] % 6;
  o.chunk = small(h.p[2], 48, 4);
  o.shared_qk = (h.p[3] & 1U) != 0;
  const bool oracle = angular && (h.p[3] & 2U) != 0;
  const bool set_rotations = angular && (h.p[3] & 4U) != 0;
  const bool bad_rotation = !oracle && (h.p[3] & 8U) != 0;
  const bool redraw = !oracle && (h.p[3] & 16U) != 0;
  o.seed = h.p[4] | (static_cast<std::uint64_t>(h.p[5]) << 8U);
  if (oracle) {  // every key in one bucket (explicit: user rotations need it) and one chunk
    o.buckets = 2 * (1 + h.p[0] % 32);
    o.chunk = std::max<index_t>(o.chunk, h.n_k + 1);
  }
  const index_t head_dim = h.d + (h.shape_mode() == mode::head_dim ? 1 : 0);
  std::optional<mech_type> mech;
  const outcome made = guarded("lsh_attention()", lsh_names, [&] { mech.emplace(head_dim, o); });
  expect_acceptance("lsh_attention()", made,
                    head_dim <= 0 || o.hashes < 1 || o.chunk < 1 ||
                        (o.buckets != 0 && (o.buckets < 2 || o.buckets % 2 != 0)) ||
                        o.buckets > performer::lsh_max_buckets);
  if (!made.ok) return;
  const attention_case<T> c = read_case<T>(r, h);

  // b for n keys: the option, else 2 n / chunk rounded to the nearest power of two (>= 2).
  const auto buckets_for = [&](index_t n) {
    const index_t b = mech->bucket_count(n);
    const double target = 2.0 * static_cast<double>(n) / static_cast<double>(o.chunk);
    if (o.buckets != 0 ? b != o.buckets
                       : (!std::has_single_bit(static_cast<std::uint64_t>(b)) ||
                          (target <= 2 ? b != 2 : !(b * b <= 2 * target * target && 2 * b * b >= target * target)))) {
      bug(cat("lsh_attention::bucket_count(", n, ") = ", b, " with buckets = ", o.buckets, ", chunk ", o.chunk));
    }
    return b;
  };
  // User rotations (angular): half widths per round, 0 where the draw applies.
  std::vector<index_t> user(static_cast<std::size_t>(o.hashes), 0);
  const auto family_rejects = [&](index_t b) -> std::string {
    if constexpr (angular) {
      for (const index_t half : user) {
        if (half > 0 && (b > 128 || 2 * half != b)) return "a user rotation for another bucket count";
      }
    } else {
      if (!std::has_single_bit(static_cast<std::uint64_t>(b))) return "buckets not a power of two";
    }
    return {};
  };
  if constexpr (angular) {
    for (index_t round = 0; round < o.hashes && (oracle || set_rotations); ++round) {
      const index_t half = (o.buckets >= 2 && o.buckets <= 128 ? o.buckets / 2 : 1 + h.p[7] % 64) +
                           (bad_rotation ? 1 : 0);
      const index_t rows = head_dim + (bad_rotation && (h.p[7] & 0x80U) != 0 ? 1 : 0);
      const row_matrix<T> rot = oracle ? row_matrix<T>(row_matrix<T>::Zero(head_dim, half))
                                       : read_matrix<T>(r, rows, half, h.scale[3]);
      const outcome so = guarded("angular_hash::set_rotation", lsh_names,
                                 [&] { mech->hash_family().set_rotation(round, rot); });
      expect_acceptance("angular_hash::set_rotation", so,
                        rows != head_dim || half < 1 || half > 64 || !all_finite(rot));
      if (!so.ok) continue;
      user[static_cast<std::size_t>(round)] = half;
      if (!same_bits(mech->hash_family().rotation(round, 2 * half), rot)) bug("angular_hash::rotation differs");
    }
    const index_t round = h.p[6] % (o.hashes + 1);
    // Mostly a valid count (2..128); with bit 7 set, odd, negative and too large ones.
    const index_t b = (h.p[7] & 0x80U) != 0 ? 2 * static_cast<index_t>(h.p[7] & 0x7fU) - 4 + (h.p[7] & 1U)
                                             : 2 * (1 + h.p[7] % 64);
    row_matrix<T> rot;
    const outcome ro = guarded("angular_hash::rotation", lsh_names,
                               [&] { rot = mech->hash_family().rotation(round, b); });
    expect_acceptance("angular_hash::rotation", ro, round >= o.hashes || b < 2 || b % 2 != 0 || b > 128);
    if (ro.ok && (rot.rows() != head_dim || rot.cols() != b / 2)) bug("angular_hash::rotation: wrong shape");
  }
  if (redraw) {
    mech->hash_family().redraw(o.seed + 1);
    std::fill(user.begin(), user.end(), 0);
  }

  // The hashing API: buckets in range; one row alone gets the bucket it gets among all.
  {
    const index_t round = (h.p[6] & 0xfU) % (o.hashes + 1);
    const int choice = (h.p[6] >> 4U) & 3U;
    const index_t n_keys = choice == 0 ? 0 : choice == 1 ? c.k.rows() : choice == 2 ? -1 : 1 + h.p[7] % 64;
    const index_t eff = n_keys > 0 ? n_keys : c.q.rows();
    const index_t b = buckets_for(eff);
    std::vector<index_t> all;
    const outcome bo = guarded("lsh_attention::buckets", lsh_names,
                               [&] { all = mech->buckets(c.q, round, n_keys); });
    expect_acceptance("lsh_attention::buckets", bo,
                      round >= o.hashes || c.q.cols() != head_dim || !all_finite(c.q) || n_keys < 0 ||
                          !family_rejects(b).empty());
    if (bo.ok) {
      if (static_cast<index_t>(all.size()) != c.q.rows()) bug("lsh_attention::buckets: wrong size");
      for (const index_t bucket : all) {
        if (bucket < 0 || bucket >= b) bug(cat("lsh_attention::buckets: bucket ", bucket, " out of [0, ", b, ")"));
        if (oracle && bucket != 0) bug("lsh_attention::buckets: zero rotation but bucket != 0");
      }
      for (index_t i = 0; i < std::min<index_t>(c.q.rows(), 3); ++i) {
        index_t one = -1;
        guarded("lsh_attention::buckets (one row)", lsh_names,
                [&] { one = mech->buckets(c.q.row(i), round, eff)[0]; });
        if (one != all[static_cast<std::size_t>(i)]) {
          bug(cat("lsh_attention::buckets(row ", i, ") = ", one, " but among all rows ",
                  all[static_cast<std::size_t>(i)]));
        }
      }
    }
  }

  expectations e{{lsh_names.begin(), lsh_names.end()}, true, true, exact_rel(c), head_dim,
                 o.shared_qk, family_rejects(buckets_for(c.k.rows()))};
  const auto out = run_attention("lsh_attention::forward", *mech, c, e);
  if (!out) return;
  const double rel = 4 * exact_rel(c) + 8.0 * static_cast<double>(o.hashes);
  // Shared-QK keys are unit vectors: the logits' error bound uses |k_j| <= 1.
  const double delta = exact_delta(c.q, o.shared_qk ? row_matrix<T>(row_matrix<T>::Ones(c.k.rows(), 1)) : c.k);
  if (oracle && delta <= 0.05) {  // every key in one bucket and one chunk: exact softmax
    compare("lsh_attention (zero rotations, one chunk) vs softmax", *out,
            performer::oracle::softmax_attention(c.q, c.k, c.v, c.am(), {.shared_qk = o.shared_qk}),
            c.v, delta, rel);
  }
  index_t fallbacks = 0;
  const auto sets = lsh_key_sets(*mech, c, fallbacks);
  typename mech_type::workspace_type ws;
  row_matrix<T> again(c.q.rows(), c.v.cols());
  const outcome o2 = guarded("lsh_attention::forward (again)", lsh_names,
                             [&] { mech->forward(c.q, c.k, c.v, again, c.am(), ws); });
  if (!o2.ok) bug(cat("lsh_attention::forward: rejected a copy of what it accepted: ", o2.message));
  if (tracing()) std::fprintf(stderr, "  (%ld fallback queries)\n", static_cast<long>(fallbacks));
  if (ws.fallback_queries != fallbacks) {
    bug(cat("lsh_attention: ", ws.fallback_queries, " fallback queries, expected ", fallbacks));
  }
  if (delta <= 0.05) {
    compare("lsh_attention vs softmax over its windows", *out, softmax_over(c, sets, o.shared_qk),
            c.v, delta, rel);
  }
}

template <class T>
void run(byte_reader& r, const header& h) {
  if (h.entry % 2U == 0) {
    lsh_entry<T, performer::angular_hash<T>>(r, h);
  } else {
    lsh_entry<T, performer::sign_projection_hash<T>>(r, h);
  }
}

}  // namespace fuzz

PERFORMER_FUZZ_TARGET(fuzz::run)
