// Cross-check of tools/reference against the C++ library (see ../README.md): reads the cases
// make_cases.py wrote, builds each mechanism or model through the library's own API (not the
// io loader) in double and in float, and prints max |C++ - reference| / max |reference|.
// Pass: <= 1e-12 in double, <= 1e-5 in float.
//
//   g++ -std=c++20 -O2 -I include -I /usr/include/eigen3 tools/reference/crosscheck/check.cpp -o check
//   ./check CASES.txt [MUTATION]
//
// MUTATION deliberately configures the C++ side wrongly, to show that the check notices:
// chunk (LSH chunk + 1), pairs (the other rotary pairing), norm (pre <-> post), act (GELU <->
// ReLU), base (rotary base x 1.01), no_final_norm, favor_W_other (the other layer's projection),
// rounds_swap (LSH rotations in reverse round order: the union of windows does not depend on
// the order, so this one must still pass).
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <performer/performer.hpp>

using namespace performer;
using MatD = row_matrix<double>;
static std::string mutation;

struct Case {
  std::string name;
  std::map<std::string, std::string> cfg;
  std::map<std::string, MatD> mats;
  const MatD& m(const std::string& k) const {
    auto it = mats.find(k);
    if (it == mats.end()) throw std::runtime_error("missing matrix " + k + " in " + name);
    return it->second;
  }
  bool has(const std::string& k) const { return mats.count(k) > 0; }
  std::string s(const std::string& k) const {
    auto it = cfg.find(k);
    if (it == cfg.end()) throw std::runtime_error("missing cfg " + k + " in " + name);
    return it->second;
  }
  long i(const std::string& k) const { return std::stol(s(k)); }
  double d(const std::string& k) const { return std::stod(s(k)); }
};

std::vector<Case> read_cases(const char* path) {
  std::ifstream in(path);
  std::vector<Case> cases;
  std::string word;
  while (in >> word) {
    if (word == "case") {
      cases.emplace_back();
      in >> cases.back().name;
    } else if (word == "cfg") {
      std::string k, v;
      in >> k >> v;
      cases.back().cfg[k] = v;
    } else if (word == "mat") {
      std::string k;
      long r, c;
      in >> k >> r >> c;
      MatD m(r, c);
      for (long a = 0; a < r; ++a)
        for (long b = 0; b < c; ++b) in >> m(a, b);
      cases.back().mats[k] = m;
    } else if (word == "end") {
    } else {
      throw std::runtime_error("bad token " + word);
    }
  }
  return cases;
}

template <class T>
row_matrix<T> cast(const MatD& m) {
  return m.cast<T>();
}

template <class T>
double rel_diff(const row_matrix<T>& got, const MatD& want) {
  const double scale = std::max(want.cwiseAbs().maxCoeff(), 1e-300);
  return (got.template cast<double>() - want).cwiseAbs().maxCoeff() / scale;
}

// ---- mechanisms ------------------------------------------------------------------------------
template <class T, class Attention>
double run_mech(const Case& c, const Attention& att) {
  const row_matrix<T> q = cast<T>(c.m("q")), k = cast<T>(c.m("k")), v = cast<T>(c.m("v"));
  std::vector<std::uint8_t> mask;
  if (c.has("mask")) {
    const MatD& m = c.m("mask");
    for (long j = 0; j < m.cols(); ++j) mask.push_back(m(0, j) != 0 ? 1 : 0);
  }
  row_matrix<T> out(q.rows(), v.cols());
  typename Attention::workspace_type ws;
  att.forward(q, k, v, out, attention_mask{c.i("causal") != 0, mask}, ws);
  if constexpr (requires { ws.fallback_queries; }) {
    if (ws.fallback_queries != c.i("ref_fallbacks"))
      std::printf("  !! %s: fallback queries C++ %ld, reference %ld\n", c.name.c_str(),
                  (long)ws.fallback_queries, c.i("ref_fallbacks"));
  }
  return rel_diff(out, c.m("expected"));
}

template <class T>
double mech(const Case& c) {
  const std::string kind = c.s("mech");
  const index_t d = c.m("q").cols();
  if (kind == "softmax") return run_mech<T>(c, softmax_attention<T>{});
  if (kind == "favor") {
    favor_attention<T> a(d, c.i("features"));
    a.projection().set_matrix(cast<T>(c.m("W")));
    return run_mech<T>(c, a);
  }
  lsh_options o;
  o.buckets = c.i("buckets");
  o.hashes = c.i("rounds");
  o.chunk = c.i("chunk") + (mutation == "chunk");
  o.shared_qk = c.i("shared") != 0;
  lsh_attention<T> a(d, o);
  for (index_t r = 0; r < o.hashes; ++r)
    a.hash_family().set_rotation(r, cast<T>(c.m("R" + std::to_string(mutation == "rounds_swap" ? o.hashes - 1 - r : r))));
  return run_mech<T>(c, a);
}

// ---- models ----------------------------------------------------------------------------------
std::string L(index_t l, const char* rest) { return "layers." + std::to_string(l) + "." + rest; }

template <class T, class Attention, class Make>
double run_model(const Case& c, Make make) {
  model_config mc;
  mc.vocab = c.i("vocab");
  mc.layers = c.i("layers");
  mc.max_positions = c.i("max_positions");
  mc.tie_output = c.i("tie_output") != 0;
  block_config& b = mc.block;
  b.d_model = c.i("d_model");
  b.heads = c.i("heads");
  b.d_ff = c.i("d_ff");
  b.causal = c.i("causal") != 0;
  b.norm = (c.s("norm") == "pre") != (mutation == "norm") ? norm_placement::pre : norm_placement::post;
  b.ffn_activation = (c.s("activation") == "gelu") != (mutation == "act") ? activation::gelu : activation::relu;
  b.layer_norm_eps = c.d("layer_norm_eps");
  b.rotary = c.i("rotary") != 0;
  b.rotary_base = c.d("rotary_base") * (mutation == "base" ? 1.01 : 1.0);
  b.rotary_pairs = (c.s("rotary_pairs") == "half") != (mutation == "pairs") ? rotary_pairing::half : rotary_pairing::interleaved;
  transformer_model<Attention> model(mc, [&](index_t l) { return make(l); }, 7);
  for (index_t l = 0; l < mc.layers; ++l) {
    block_parameters<T> p;
    p.w_q = cast<T>(c.m(L(l, "attn.q_proj.weight")).transpose());
    p.w_k = cast<T>(c.m(L(l, "attn.k_proj.weight")).transpose());
    p.w_v = cast<T>(c.m(L(l, "attn.v_proj.weight")).transpose());
    p.w_o = cast<T>(c.m(L(l, "attn.o_proj.weight")).transpose());
    p.b_q = cast<T>(c.m(L(l, "attn.q_proj.bias")));
    p.b_k = cast<T>(c.m(L(l, "attn.k_proj.bias")));
    p.b_v = cast<T>(c.m(L(l, "attn.v_proj.bias")));
    p.b_o = cast<T>(c.m(L(l, "attn.o_proj.bias")));
    p.norm1_gain = cast<T>(c.m(L(l, "norm1.weight")));
    p.norm1_bias = cast<T>(c.m(L(l, "norm1.bias")));
    p.norm2_gain = cast<T>(c.m(L(l, "norm2.weight")));
    p.norm2_bias = cast<T>(c.m(L(l, "norm2.bias")));
    p.w_ff1 = cast<T>(c.m(L(l, "ffn.fc1.weight")).transpose());
    p.b_ff1 = cast<T>(c.m(L(l, "ffn.fc1.bias")));
    p.w_ff2 = cast<T>(c.m(L(l, "ffn.fc2.weight")).transpose());
    p.b_ff2 = cast<T>(c.m(L(l, "ffn.fc2.bias")));
    model.stack().layer(l).set_parameters(p);
  }
  if (mutation != "no_final_norm") model.stack().set_final_norm(cast<T>(c.m("norm.weight")), cast<T>(c.m("norm.bias")));
  model_parameters<T> mp;
  mp.token_embedding = cast<T>(c.m("tok_embed.weight"));
  mp.position_embedding =
      mc.max_positions > 0 ? cast<T>(c.m("pos_embed.weight")) : row_matrix<T>(0, b.d_model);
  if (!mc.tie_output) mp.w_out = cast<T>(c.m("head.weight").transpose());
  mp.b_out = cast<T>(c.m("head.bias"));
  model.set_parameters(mp);
  std::vector<std::int64_t> tokens;
  for (long j = 0; j < c.m("tokens").cols(); ++j) tokens.push_back((std::int64_t)c.m("tokens")(0, j));
  const row_matrix<T> logits = model.forward(tokens);
  return rel_diff(logits, c.m("expected"));
}

template <class T>
double model(const Case& c) {
  const std::string kind = c.s("attention.kind");
  const index_t dh = c.i("d_model") / c.i("heads");
  if (kind == "softmax") {
    return run_model<T, softmax_attention<T>>(c, [](index_t) { return softmax_attention<T>{}; });
  }
  if (kind == "favor") {
    return run_model<T, favor_attention<T>>(c, [&](index_t l) {
      favor_attention<T> a(dh, c.i("attention.features"));
      a.projection().set_matrix(cast<T>(c.m(L(mutation == "favor_W_other" ? 1 - l : l, "attn.projection"))));
      return a;
    });
  }
  return run_model<T, lsh_attention<T>>(c, [&](index_t l) {
    lsh_options o;
    o.buckets = c.i("attention.buckets");
    o.hashes = c.i("attention.rounds");
    o.chunk = c.i("attention.chunk") + (mutation == "chunk");
    o.shared_qk = c.s("attention.shared_qk") == "1" || c.s("attention.shared_qk") == "True";
    lsh_attention<T> a(dh, o);
    for (index_t r = 0; r < o.hashes; ++r)
      a.hash_family().set_rotation(r, cast<T>(c.m(L(l, "attn.rotations.") + std::to_string(mutation == "rounds_swap" ? o.hashes - 1 - r : r))));
    return a;
  });
}

int main(int argc, char** argv) {
  if (argc > 2) mutation = argv[2];
  const auto cases = read_cases(argc > 1 ? argv[1] : "cases.txt");
  std::map<std::string, std::pair<double, double>> worst;  // family -> (double, float)
  int failures = 0;
  for (const auto& c : cases) {
    const bool is_model = c.s("mech") == "model";
    double dd, ff;
    try {
      dd = is_model ? model<double>(c) : mech<double>(c);
      ff = is_model ? model<float>(c) : mech<float>(c);
    } catch (const std::exception& e) {
      std::printf("%-48s EXCEPTION %s\n", c.name.c_str(), e.what());
      ++failures;
      continue;
    }
    const bool ok = dd <= 1e-12 && ff <= 1e-5;
    if (!ok) ++failures;
    std::printf("%-48s double %.3e  float %.3e %s\n", c.name.c_str(), dd, ff, ok ? "" : "  <-- FAIL");
    const std::string fam = is_model ? c.name : "mech_" + c.s("mech");
    auto& w = worst[fam];
    w.first = std::max(w.first, dd);
    w.second = std::max(w.second, ff);
  }
  std::printf("\nworst relative difference (max |C++ - ref| / max |ref|):\n");
  for (const auto& [k, w] : worst) std::printf("  %-40s double %.3e  float %.3e\n", k.c_str(), w.first, w.second);
  std::printf("%zu cases, %d failures\n", cases.size(), failures);
  return failures == 0 ? 0 : 1;
}
