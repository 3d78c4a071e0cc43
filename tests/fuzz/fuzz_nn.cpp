/// @file tests/fuzz/fuzz_nn.cpp
/// @brief performer_fuzz_nn: transformer_block and transformer_stack over every mechanism of
/// the registry.
///
/// Entry byte (header [0]): the registry mechanism (modulo the registry's size: softmax, tiled,
/// the FAVOR maps, lsh, lsh_qk), built by make_mechanism from p[6], p[7], p[8], p[10] for head
/// width d_model / heads (one more in head_dim shape mode, which the block must reject).
/// Parameters: p[0] % 9 heads; p[1] d_model (p[2] bit 0: a multiple of heads); p[2] flags:
/// 2 post-LN, 4 ReLU (else GELU), 8 set_parameters (16: w_ff1 one column too wide), 0x20 a
/// stack (else one block), 0x40 the allocating forward overload, 0x80 stack set_final_norm
/// (p[11] bit 0: gain one entry too wide); p[3] d_ff (0 = 4 d_model, negative included);
/// p[4] % 8 LayerNorm eps (0, negative, NaN and inf included); p[9] % 4 layers (0 included);
/// p[10] the seed; p[11] bits 1..3 the layer index asked of layer() (-1..6); N = N_q; x from
/// scale[0], parameters from scale[3]. Shape modes give a wrong x width, a wrong y shape, y
/// aliasing x and a mechanism of the wrong head width.
///
/// Checks: the common acceptance rules (shapes, mask, aliasing, non-finite x, configuration,
/// parameters); only y written (guard cells); a finite result; no rejection of moderate input
/// with default parameters.
#include "contract.hpp"

namespace fuzz {

inline constexpr std::array<std::string_view, 8> block_names = {
    "transformer_block", "transformer_stack", "softmax_attention", "tiled_softmax_attention",
    "favor_attention", "lsh_attention", "angular_hash", "favor_plus_plus_features"};

template <class T>
typename performer::block_parameters<T> read_parameters(byte_reader& r, index_t d, index_t ff,
                                                        double s, bool wrong) {
  performer::block_parameters<T> p;
  p.w_q = read_matrix<T>(r, d, d, s);
  p.w_k = read_matrix<T>(r, d, d, s);
  p.w_v = read_matrix<T>(r, d, d, s);
  p.w_o = read_matrix<T>(r, d, d, s);
  p.b_q = read_matrix<T>(r, 1, d, s);
  p.b_k = read_matrix<T>(r, 1, d, s);
  p.b_v = read_matrix<T>(r, 1, d, s);
  p.b_o = read_matrix<T>(r, 1, d, s);
  p.norm1_gain = read_matrix<T>(r, 1, d, s);
  p.norm1_bias = read_matrix<T>(r, 1, d, s);
  p.norm2_gain = read_matrix<T>(r, 1, d, s);
  p.norm2_bias = read_matrix<T>(r, 1, d, s);
  p.w_ff1 = read_matrix<T>(r, d, ff + (wrong ? 1 : 0), s);
  p.b_ff1 = read_matrix<T>(r, 1, ff, s);
  p.w_ff2 = read_matrix<T>(r, ff, d, s);
  p.b_ff2 = read_matrix<T>(r, 1, d, s);
  return p;
}

template <class T>
bool all_finite_parameters(const performer::block_parameters<T>& p) {
  return all_finite(p.w_q) && all_finite(p.w_k) && all_finite(p.w_v) && all_finite(p.w_o) &&
         all_finite(p.b_q) && all_finite(p.b_k) && all_finite(p.b_v) && all_finite(p.b_o) &&
         all_finite(p.norm1_gain) && all_finite(p.norm1_bias) && all_finite(p.norm2_gain) &&
         all_finite(p.norm2_bias) && all_finite(p.w_ff1) && all_finite(p.b_ff1) &&
         all_finite(p.w_ff2) && all_finite(p.b_ff2);
}

template <class T, class Mech>
void run_block(byte_reader& r, const header& h, const performer::block_config& cfg, bool cfg_invalid,
               const Mech& mech, bool mech_dim_mismatch, bool must_succeed) {
  using block_type = performer::transformer_block<Mech>;
  using stack_type = performer::transformer_stack<Mech>;
  const std::uint8_t f = h.p[2];
  const bool use_stack = (f & 0x20U) != 0;
  const index_t layers = h.p[9] % 4;
  std::optional<block_type> block;
  std::optional<stack_type> stack;
  const outcome made = guarded(use_stack ? "transformer_stack()" : "transformer_block()", block_names, [&] {
    if (use_stack) {
      stack.emplace(cfg, layers, mech, h.p[10]);
    } else {
      block.emplace(cfg, mech, h.p[10]);
    }
  });
  expect_acceptance(use_stack ? "transformer_stack()" : "transformer_block()", made,
                    cfg_invalid || (use_stack && layers <= 0));
  if (!made.ok) return;
  block_type& target = use_stack ? stack->layer(stack->layers() - 1) : *block;
  const index_t d = cfg.d_model;
  const index_t ff = target.config().d_ff;
  if (ff != (cfg.d_ff == 0 ? 4 * d : cfg.d_ff)) bug("transformer_block::config: d_ff not resolved");
  if (use_stack) {
    const index_t l = static_cast<index_t>((h.p[11] >> 1U) & 7U) - 1;
    const outcome o = guarded("transformer_stack::layer", block_names, [&] { static_cast<void>(stack->layer(l)); });
    expect_acceptance("transformer_stack::layer", o, l < 0 || l >= layers);
  }

  const mode md = h.shape_mode();
  const index_t n = h.n_q;
  const mask_data mask = read_mask(r, h.mask_mode(), n);
  const row_matrix<T> x = read_matrix<T>(r, n, d + (md == mode::k_width ? 1 : 0), h.scale[0]);

  bool default_parameters = true;
  if ((f & 8U) != 0) {  // user parameters, possibly huge, possibly of the wrong shape
    const bool wrong = (f & 16U) != 0;
    auto p = read_parameters<T>(r, d, ff, h.scale[3], wrong);
    const bool finite = all_finite_parameters(p);
    const outcome o = guarded("transformer_block::set_parameters", block_names,
                              [&] { target.set_parameters(std::move(p)); });
    expect_acceptance("transformer_block::set_parameters", o, wrong || !finite);
    default_parameters = !o.ok;
  }
  if (use_stack && (f & 0x80U) != 0) {  // the final LayerNorm's parameters
    const bool wrong = (h.p[11] & 1U) != 0;
    const performer::row_vector<T> gain = read_matrix<T>(r, 1, d + (wrong ? 1 : 0), h.scale[3]);
    const performer::row_vector<T> bias = read_matrix<T>(r, 1, d, h.scale[3]);
    const outcome o = guarded("transformer_stack::set_final_norm", block_names,
                              [&] { stack->set_final_norm(gain, bias); });
    expect_acceptance("transformer_stack::set_final_norm", o, wrong || !all_finite(gain) || !all_finite(bias));
    if (o.ok) default_parameters = false;
  }

  const bool convenience = (f & 0x40U) != 0;
  const bool alias = !convenience && (md == mode::alias_q || md == mode::alias_v);
  row_matrix<T> x_store = x, y_store;
  index_t y_r0 = 0, y_c0 = 0;
  const index_t y_rows = n + (!convenience && md == mode::out_rows ? 1 : 0);
  const index_t y_cols = d + (!convenience && md == mode::out_cols ? 1 : 0);
  if (!alias) {
    if (h.strided()) {
      y_r0 = 1;
      y_c0 = 1;
      y_store.setConstant(y_rows + 2, y_cols + 2, call_buffers<T>::guard);
    } else {
      y_store.resize(y_rows, y_cols);
    }
    y_store.block(y_r0, y_c0, y_rows, y_cols).setConstant(std::numeric_limits<T>::quiet_NaN());
  }
  std::string reason;
  if (n == 0) reason = "empty sequence";
  else if (x.cols() != d) reason = "x width != d_model";
  else if (y_rows != n || y_cols != d) reason = "y shape";
  else if (mask.wrong_length) reason = "key_mask length";
  else if (alias && x.size() > 0) reason = "y overlaps x";
  else if (!all_finite(x)) reason = "non-finite x";
  else if (mech_dim_mismatch) reason = "head width != the mechanism's";

  row_matrix<T> y;
  const std::span<const std::uint8_t> km(mask.bytes);
  const char* who = use_stack ? "transformer_stack::forward" : "transformer_block::forward";
  const auto y_view = [&] {
    return alias ? matrix_ref<T>(x_store) : matrix_ref<T>(y_store.block(y_r0, y_c0, y_rows, y_cols));
  };
  const outcome o = guarded(who, block_names, [&] {
    if (convenience) {
      y = use_stack ? stack->forward(x_store, km) : block->forward(x_store, km);
    } else if (use_stack) {
      typename stack_type::workspace_type ws;
      stack->forward(x_store, y_view(), km, ws);
    } else {
      typename block_type::workspace_type ws;
      block->forward(x_store, y_view(), km, ws);
    }
  });
  if (!o.ok) {
    // With default (Xavier) parameters and moderate input nothing can overflow.
    if (reason.empty() && must_succeed && default_parameters && moderate(x) && cfg.layer_norm_eps >= 1e-12) {
      bug(cat(who, ": rejected moderate input with default parameters: ", o.message));
    }
    return;
  }
  if (!reason.empty()) bug(cat(who, ": accepted invalid input (", reason, ")"));
  if (!convenience) {
    y = alias ? x_store : row_matrix<T>(y_store.block(y_r0, y_c0, y_rows, y_cols));
    for (index_t i = 0; i < y_store.rows(); ++i) {
      for (index_t j = 0; j < y_store.cols(); ++j) {
        const bool inside = i >= y_r0 && i < y_r0 + y_rows && j >= y_c0 && j < y_c0 + y_cols;
        if (!inside && y_store(i, j) != call_buffers<T>::guard) bug(cat(who, ": wrote outside y"));
      }
    }
  }
  if (y.rows() != n || y.cols() != d) bug(cat(who, ": result has the wrong shape"));
  if (!all_finite(y)) bug(cat(who, ": accepted call returned a non-finite result"));
}

template <class T>
void run(byte_reader& r, const header& h) {
  const std::uint8_t f = h.p[2];
  const index_t heads = h.p[0] % 9;
  performer::block_config cfg;
  cfg.heads = heads;
  cfg.d_model = (f & 1U) != 0 ? heads * (h.p[1] % 11) : h.p[1] % 41;
  cfg.d_ff = (h.p[3] & 0x80U) != 0 ? static_cast<index_t>(h.p[3] & 0x7fU) - 8 : h.p[3] % 64;
  cfg.causal = h.causal();
  cfg.norm = (f & 2U) != 0 ? performer::norm_placement::post : performer::norm_placement::pre;
  cfg.ffn_activation = (f & 4U) != 0 ? performer::activation::relu : performer::activation::gelu;
  static constexpr double eps_table[8] = {1e-5, 1e-6, 1e-12, 1.0, 0.0, -1e-5,
                                          std::numeric_limits<double>::quiet_NaN(),
                                          std::numeric_limits<double>::infinity()};
  cfg.layer_norm_eps = eps_table[h.p[4] % 8];
  const bool cfg_invalid = cfg.d_model <= 0 || cfg.heads <= 0 || cfg.d_model % cfg.heads != 0 ||
                           cfg.d_ff < 0 || !(std::isfinite(cfg.layer_norm_eps) && cfg.layer_norm_eps > 0);
  const index_t dh = heads > 0 ? cfg.d_model / heads : 0;
  const bool dim_mode = h.shape_mode() == mode::head_dim;
  with_mechanism(h.entry, [&](auto entry) {
    using E = decltype(entry);
    // Exact attention takes any head width; the others are built for one.
    constexpr bool sized = E::kind != registry::family::softmax;
    const index_t mech_dim = dh + (sized && dim_mode ? 1 : 0);
    const auto mech = make_mechanism<E, T>(mech_dim, h.m, {h.p[6], h.p[7], h.p[8], h.p[10]});
    if (!mech) return;
    attention_case<T> none;
    run_block<T>(r, h, cfg, cfg_invalid, *mech, sized && dim_mode,
                 expectations_for<E>(none, mech_dim).must_succeed_moderate);
  });
}

}  // namespace fuzz

PERFORMER_FUZZ_TARGET(fuzz::run)
