/// @file tests/fuzz/fuzz_favor.cpp
/// @brief performer_fuzz_favor: favor_attention with every feature map of the registry, and
/// favor_decoder.
///
/// Entry byte (header [0], modulo 12): the map is registry FAVOR entry (entry % 6), in registry
/// order: positive, hyperbolic, trigonometric, relu, elu, FAVOR++; entries 0..5 run
/// favor_attention::forward, 6..11 favor_decoder (prime, step, reset, position).
/// Parameters: p[0] % 4 the sampler (orthogonal chi norms, orthogonal fixed norms, Gaussian,
/// float data with double accumulation); p[2..5] favor_options block, chunk, segments,
/// min_segment (0 and negative included); p[6] seed; p[7] FAVOR++: bit 0 adaptive, bit 1 set_a
/// (bits 5..7 pick A, out-of-range ones included), bit 2 / bit 3 pass the key mask / the key
/// mask as query mask to calibrate; p[8] flags: 1 set_matrix (2: one row too many), 4 redraw,
/// 8 redraw interval 1 and on_call, 16 FAVOR++ calibrate; p[9] decoder: tokens primed; p[10]
/// bit 0 decoder reset and replay, bit 1 a second layout from p[11]; scale[3] the values of a
/// user projection.
///
/// Oracles: forward == the FAVOR estimate recomputed in double from the library's features
/// (favor_reference.hpp), under the fuzzed layout and a second one; the decoder == the causal
/// estimate token by token, and a replay after reset() gives the same bits; calibrate fits A
/// in [min_adaptive_a, 0] and padded rows cannot move it.
#include "favor_reference.hpp"

namespace fuzz {

template <class T, class Att>
void run_decoder(byte_reader& r, const header& h, const Att& att, index_t head_dim) {
  using decoder_type = performer::favor_decoder<T, typename Att::feature_map_type,
                                                typename Att::sampler_type, typename Att::accumulator_type>;
  constexpr map_kind kind = kind_of<T, typename Att::feature_map_type>();
  const std::initializer_list<std::string_view> names = {"favor_decoder"};
  const mode md = h.shape_mode();
  const index_t n = h.n_q;
  const index_t d_v = h.d_v;
  std::optional<decoder_type> dec;
  const outcome made = guarded("favor_decoder()", names, [&] { dec.emplace(att, d_v); });
  expect_acceptance("favor_decoder()", made, d_v <= 0);
  if (!made.ok) return;

  attention_case<T> c;
  c.h = h;
  c.h.flags |= 2U;  // causal, no key mask
  c.q = read_matrix<T>(r, n, h.d, h.scale[0]);
  c.k = read_matrix<T>(r, n, h.d + (md == mode::k_width ? 1 : 0), h.scale[1]);
  c.v = read_matrix<T>(r, n + (md == mode::v_rows ? 1 : 0), d_v, h.scale[2]);
  const index_t out_w = d_v + (md == mode::out_cols ? 1 : 0);
  const index_t primed = h.p[9] % (n + 1);

  struct run_result {
    row_matrix<T> out;
    index_t folded = 0;
    bool all_ok = true;              // no rejection of invalid input (the reference applies)
    std::vector<index_t> overflowed;  // valid steps rejected as overflowing (token folded)
  };
  const auto run = [&](decoder_type& de) {
    run_result res;
    res.out.setConstant(n, out_w, std::numeric_limits<T>::quiet_NaN());
    {
      const auto pk = c.k.topRows(primed);
      const auto pv = c.v.topRows(std::min(c.v.rows(), primed + (md == mode::v_rows ? 1 : 0)));
      const bool invalid = pk.cols() != head_dim || pv.cols() != d_v || pk.rows() != pv.rows() ||
                           !all_finite(pk) || !all_finite(pv);
      const index_t before = de.position();
      const outcome o = guarded("favor_decoder::prime", names, [&] { de.prime(pk, pv); });
      // A key whose features overflow T is rejected (documented), after the keys before it
      // were folded: position() tells how many.
      const bool overflow = !o.ok && !invalid && o.message.find("overflow") != std::string::npos;
      if (!overflow) expect_acceptance("favor_decoder::prime", o, invalid);
      if (o.ok) {
        res.folded += primed;
      } else {
        res.all_ok = false;
        if (overflow) {
          if (de.position() < before || de.position() >= before + primed) {
            bug(cat("favor_decoder::prime: position ", de.position(), " after rejecting one of ",
                    primed, " keys from position ", before));
          }
          res.folded += de.position() - before;
        }
      }
    }
    for (index_t t = primed; t < n; ++t) {
      const bool invalid = c.q.cols() != head_dim || c.k.cols() != head_dim || out_w != d_v ||
                           !all_finite(c.q.row(t)) || !all_finite(c.k.row(t)) ||
                           !all_finite(c.v.row(t));
      const index_t before_step = de.position();
      const outcome o = guarded("favor_decoder::step", names, [&] {
        de.step(c.q.row(t), c.k.row(t), c.v.row(t), res.out.row(t));
      });
      if (o.ok && invalid) bug("favor_decoder::step: accepted invalid input");
      if (!o.ok) {
        if (invalid) {
          res.all_ok = false;
        } else {
          if (o.message.find("overflow") == std::string::npos) {
            bug(cat("favor_decoder::step: rejected valid input: ", o.message));
          }
          // Documented: features of q or k that overflow leave the state as it was; an output
          // that overflows leaves the token folded.
          const index_t advanced = de.position() - before_step;
          if (advanced != 0 && advanced != 1) bug("favor_decoder::step: position moved by more than 1");
          res.overflowed.push_back(t);
          res.folded += advanced;
        }
        continue;
      }
      ++res.folded;
      if (!all_finite(res.out.row(t))) bug("favor_decoder::step: accepted call returned a non-finite result");
    }
    if (de.position() != res.folded) {
      bug(cat("favor_decoder::position: ", de.position(), " after folding ", res.folded, " tokens"));
    }
    return res;
  };

  const run_result first = run(*dec);
  if ((h.p[10] & 1U) != 0) {  // reset() forgets everything: a replay gives the same bits
    dec->reset();
    if (dec->position() != 0) bug("favor_decoder::reset: position() is not 0");
    const run_result again = run(*dec);
    if (!same_bits(first.out, again.out)) bug("favor_decoder: replay after reset() differs");
  }
  // Every emitted row against the causal estimate (the outputs of forward with causal = true).
  if (!first.all_ok || md != mode::valid || n == primed) return;
  // What forward accepts, step must not reject, where the features are bounded by the
  // stabiliser (|phi| <= 1, weights <= 1, so the state stays within n max|v|). relu and elu
  // features are unbounded: the decoder's state sum_j phi(k_j) v_j^T may then overflow where
  // the batch pass, multiplying phi(q) . phi(k) first, does not; both outcomes are documented.
  // Also, the decoder rescales its state when the running maximum of the keys' log scales rises,
  // where the batch pass rescales after its products: when the log scales spread by more than
  // the exponent range of T, old state entries underflow to 0 in the decoder only, and a query
  // resting on them gets a vanishing normaliser (reported) where the batch does not.
  bool wide_spread = false;
  {
    row_matrix<T> phi(n, att.feature_count());
    performer::vector<T> log_k(n);
    att.feature_map().apply(att.projection().matrix(), c.k, phi, log_k);
    const double spread = static_cast<double>(log_k.maxCoeff()) - static_cast<double>(log_k.minCoeff());
    wide_spread = !(spread < 0.5 * -std::log(static_cast<double>(std::numeric_limits<T>::min())));
  }
  const bool bounded = kind != map_kind::relu && kind != map_kind::elu;
  if (!first.overflowed.empty() && bounded && !wide_spread) {
    row_matrix<T> batch(n, d_v);
    typename Att::workspace_type ws;
    const outcome ob = guarded("favor_attention::forward (decoder reference)", favor_names, [&] {
      att.forward(c.q, c.k, c.v, batch, attention_mask{true, {}}, ws);
    });
    if (ob.ok && max_abs(c.v) <= static_cast<double>(std::numeric_limits<T>::max()) * 1e-6) {
      bug(cat("favor_decoder::step ", first.overflowed.front(),
              " rejected as overflowing, but the causal favor_attention::forward accepts the same "
              "tokens"));
    }
    return;
  }
  if (!first.overflowed.empty()) return;
  check_favor("favor_decoder::step vs the causal FAVOR estimate", first.out, favor_estimate(att, c),
              c, att.feature_count(), favor_delta(att, c, false), primed);
}

/// FAVOR++: calibrate(q, k, key_mask, query_mask) rejects exactly the documented bad input, fits
/// A in [min_adaptive_a, 0] and ignores what padded rows hold.
template <class T, class Map>
void check_calibrate(Map& map, const attention_case<T>& c, std::uint8_t p7) {
  const std::span<const std::uint8_t> km = (p7 & 4U) != 0 ? c.am().key_mask : std::span<const std::uint8_t>{};
  const std::span<const std::uint8_t> qm = (p7 & 8U) != 0 ? c.am().key_mask : std::span<const std::uint8_t>{};
  const auto kept = [](std::span<const std::uint8_t> m, index_t i) {
    return m.empty() || m[static_cast<std::size_t>(i)] != 0;
  };
  const auto wrong = [](std::span<const std::uint8_t> m, index_t rows) {
    return !m.empty() && m.size() != static_cast<std::size_t>(rows);
  };
  bool invalid = c.q.rows() == 0 || c.k.rows() == 0 || c.q.cols() != c.k.cols() ||
                 c.q.cols() == 0 || wrong(km, c.k.rows()) || wrong(qm, c.q.rows());
  // Padded rows may hold anything: a copy with NaN there must give the same A.
  row_matrix<T> q2 = c.q, k2 = c.k;
  for (index_t i = 0; !invalid && i < c.q.rows(); ++i) {
    if (!kept(qm, i)) q2.row(i).setConstant(std::numeric_limits<T>::quiet_NaN());
    invalid = kept(qm, i) && !all_finite(c.q.row(i));
  }
  for (index_t j = 0; !invalid && j < c.k.rows(); ++j) {
    if (!kept(km, j)) k2.row(j).setConstant(std::numeric_limits<T>::quiet_NaN());
    invalid = kept(km, j) && !all_finite(c.k.row(j));
  }
  const outcome o = guarded("favor_plus_plus_features::calibrate", favor_names,
                            [&] { map.calibrate(c.q, c.k, km, qm); });
  expect_acceptance("favor_plus_plus_features::calibrate", o, invalid);
  if (!o.ok) return;
  if (!(map.a() >= Map::min_adaptive_a && map.a() <= 0.0)) {
    bug(cat("favor_plus_plus_features::calibrate: A = ", map.a(), " outside [min_adaptive_a, 0]"));
  }
  const double a1 = map.a();
  double a2 = 0;
  const outcome o2 = guarded("favor_plus_plus_features::optimal_a", favor_names,
                             [&] { a2 = Map::optimal_a(q2, k2, km, qm); });
  if (!o2.ok || std::memcmp(&a1, &a2, sizeof a1) != 0) {
    bug(cat("favor_plus_plus_features::optimal_a: padded rows moved A from ", a1, " to ", a2));
  }
}

template <class T, class Map, class Sampler, class Acc = T>
void run_favor(byte_reader& r, const header& h, Sampler sampler, bool decoder) {
  using attention_type = performer::favor_attention<T, Map, Sampler, Acc>;
  constexpr map_kind kind = kind_of<T, Map>();
  constexpr bool plus_plus = kind == map_kind::favor_plus_plus;
  performer::favor_options opt;
  opt.block = small(h.p[2], 48, 4);
  opt.chunk = small(h.p[3], 48, 4);
  opt.segments = small(h.p[4], 4, 2);
  opt.min_segment = small(h.p[5], 24, 2);
  const std::uint64_t seed = h.p[6];
  const mode md = h.shape_mode();
  const index_t head_dim = h.d + (md == mode::head_dim ? 1 : 0);
  const std::uint8_t f = h.p[8];
  const bool adaptive = plus_plus && (h.p[7] & 1U) != 0;

  Map map{};
  if constexpr (plus_plus) {
    map = Map(adaptive);
    if ((h.p[7] & 2U) != 0) {
      static constexpr double as[8] = {0.0, -0.1, -1.0, 0.1, 0.125, 0.2,
                                       std::numeric_limits<double>::quiet_NaN(), -1e10};
      const double a = as[h.p[7] >> 5U];
      const outcome o = guarded("favor_plus_plus_features::set_a", favor_names, [&] { map.set_a(a); });
      expect_acceptance("favor_plus_plus_features::set_a", o, !(std::isfinite(a) && a < 0.125));
    }
  }

  std::optional<attention_type> att;
  const outcome made = guarded("favor_attention()", favor_names, [&] {
    att.emplace(head_dim, h.m, seed, map, sampler, opt);
  });
  expect_acceptance("favor_attention()", made,
                    h.m <= 0 || head_dim <= 0 || opt.block <= 0 || opt.chunk <= 0 ||
                        opt.segments <= 0 || opt.min_segment <= 0);
  if (!made.ok) return;
  const index_t expected_features = kind == map_kind::elu ? head_dim
                                  : (kind == map_kind::hyperbolic || kind == map_kind::trigonometric)
                                      ? 2 * h.m
                                      : h.m;
  if (att->feature_count() != expected_features) {
    bug(cat("favor_attention::feature_count: ", att->feature_count(), ", expected ", expected_features));
  }

  if ((f & 4U) != 0) att->projection().redraw();
  if ((f & 8U) != 0) {
    att->projection().set_redraw_interval(1);
    if (!att->projection().on_call()) bug("random_projection::on_call: no redraw at interval 1");
  }

  if (decoder) {
    run_decoder<T>(r, h, *att, head_dim);
    return;
  }

  const attention_case<T> c = read_case<T>(r, h);
  bool moderate_w = true;
  if ((f & 1U) != 0) {  // a user-supplied projection matrix
    const index_t rows = h.m + ((f & 2U) != 0 ? 1 : 0);
    const row_matrix<T> w = read_matrix<T>(r, rows, head_dim, h.scale[3]);
    const double drawn = max_row_norm(att->projection().matrix());
    const outcome o = guarded("random_projection::set_matrix", favor_names,
                              [&] { att->projection().set_matrix(w); });
    expect_acceptance("random_projection::set_matrix", o, rows != h.m || !all_finite(w));
    // The features' exponents spread by |w_i| |x~|: the promise for moderate input holds for
    // rows no longer than the library's own draw (entries of 8 at d = 13 are 7 times longer,
    // and their features underflow float at |x| <= 8).
    if (o.ok) moderate_w = max_row_norm(w) <= drawn;
  }
  bool a_in_range = true;  // FAVOR++: the A forward uses is one the library would fit
  if constexpr (plus_plus) {
    if ((f & 16U) != 0) check_calibrate(att->feature_map(), c, h.p[7]);
    a_in_range = (adaptive && !c.h.causal()) || att->feature_map().a() >= Map::min_adaptive_a;
  }

  // The zero-row rule and the common contract here; the values against the reference below.
  // Moderate input must not be rejected by a positive map (with an A the library could fit).
  expectations e{{favor_names.begin(), favor_names.end()}, false,
                 kind != map_kind::trigonometric && moderate_w && a_in_range, 0, head_dim, false, {}};
  const auto out = run_attention("favor_attention::forward", *att, c, e);
  if (!out) return;
  const double delta = favor_delta(*att, c, adaptive && !c.h.causal());
  const favor_reference ref = favor_estimate(*att, c);
  check_favor(cat("favor_attention::forward (block/chunk/segments/min_segment ", opt.block, "/",
                  opt.chunk, "/", opt.segments, "/", opt.min_segment, ")"),
              *out, ref, c, att->feature_count(), delta);

  // Another blocking, chunking and segmentation changes only the order of the sums.
  if ((h.p[10] & 2U) == 0) return;
  performer::favor_options other;
  other.block = 1 + static_cast<index_t>(h.p[11] % 40);
  other.chunk = 1 + static_cast<index_t>((h.p[11] >> 2U) % 9);
  other.segments = 1 + (h.p[11] & 1U);
  other.min_segment = 1 + (h.p[11] >> 4U);
  attention_type att2(head_dim, h.m, seed, att->feature_map(), sampler, other);
  att2.projection().set_matrix(att->projection().matrix());
  row_matrix<T> out2(c.q.rows(), c.v.cols());
  typename attention_type::workspace_type ws;
  const outcome o2 = guarded("favor_attention::forward (other layout)", favor_names,
                             [&] { att2.forward(c.q, c.k, c.v, out2, c.am(), ws); });
  if (!o2.ok) return;
  check_favor(cat("favor_attention::forward (block/chunk/segments/min_segment ", other.block, "/",
                  other.chunk, "/", other.segments, "/", other.min_segment, ")"),
              out2, ref, c, att->feature_count(), delta);
}

template <class T>
void run(byte_reader& r, const header& h) {
  const bool decoder = (h.entry % 12U) >= 6;
  with_family_member<registry::family::favor>(h.entry % 6U, [&](auto entry) {
    using Map = typename decltype(entry)::template type<T>::feature_map_type;
    switch (h.p[0] % 4U) {
      case 0: run_favor<T, Map>(r, h, performer::orthogonal_sampler{}, decoder); break;
      case 1:
        run_favor<T, Map>(r, h, performer::orthogonal_sampler{performer::row_norms::fixed}, decoder);
        break;
      case 2: run_favor<T, Map>(r, h, performer::gaussian_sampler{}, decoder); break;
      default:
        // float data with double accumulation (the supported mixed pairing), else orthogonal.
        if constexpr (std::is_same_v<T, float>) {
          run_favor<T, Map, performer::orthogonal_sampler, double>(r, h, performer::orthogonal_sampler{},
                                                                   decoder);
        } else {
          run_favor<T, Map>(r, h, performer::orthogonal_sampler{}, decoder);
        }
        break;
    }
  });
}

}  // namespace fuzz

PERFORMER_FUZZ_TARGET(fuzz::run)
