"""PyTorch speed baseline: tokens per second of the whole model (issue 16) or of one FAVOR+ head.

The model is the library's transformer_model as in docs/model_format.md (parameter names and
shapes of performer_reference.PerformerModel), run with the fast forms a PyTorch user would run,
not the quadratic oracle of performer_reference.py:

- exact attention: torch's batched matmul softmax per [B, H, N, d],
  softmax(q k^T / sqrt(d)) v, as nn.MultiheadAttention and performer-pytorch do it in torch 1.13
  (1.13 has no scaled_dot_product_attention). The scores of all heads at once take
  B H N^2 4 bytes (8 GiB at N = 16,384, H = 8, float32) and softmax writes a second such tensor;
  when twice that exceeds half the available memory the heads are processed one at a time
  (same matmuls, one [N, N] matrix live; "--exact-heads" forces either way). The choice is printed.
- FAVOR+ in linear form, as performer-pytorch's softmax_kernel + linear_attention (own code):
  u = W x~, x~ = x d^(-1/4); phi(x) = exp(u - |x~|^2/2 - shift) / sqrt(m) with performer-pytorch's
  stabiliser: shift = the row's max of u for queries, the max of u over all keys for keys; then
  out = D^-1 (phi(Q) (phi(K)^T V)), D = diag(phi(Q) phi(K)^T 1). Both shifts cancel exactly
  (a per-query factor in numerator and denominator; one factor for all keys). performer-pytorch
  also adds eps = 1e-4 to every feature, a bias the library does not have (docs/algorithms.md
  §3.5): here eps = 0 unless --eps is given, so the fast form is the library's mathematics.

Default model (the configuration the C++ side times): vocab 32, 2 layers, d_model 512, 8 heads
(d = 64), d_ff 2048, pre-LN, exact GELU, no rotary, no learned positions, untied head,
bidirectional, float32; FAVOR+ with m = 256 positive features and a Gaussian orthogonal random
projection per layer (orthogonal d x d blocks, rows rescaled to chi-distributed norms).
Parameters are random (timing only). --model FILE loads a model file instead (export.load_model,
then float32); --save FILE writes the generated model(s) for the C++ side to load.

Before timing it checks, in float64 on N = 64, the fast FAVOR+ and exact attention against the
quadratic reference (mechanism per head and whole model, relative to max |reference|, must be
<= 1e-10).

BLAS: Debian's torch calls whatever libblas.so.3 resolves to, by default the netlib reference BLAS
(~15-20x slower float32 GEMM than OpenBLAS); the script prints the loaded BLAS and warns. Run it
with OpenBLAS (tools/reference/README.md, "Speed baseline").

--head times FAVOR+ alone on one head (q, k, v of [1, 1, N, 64] from N(0, 1), m = 256,
bidirectional; issue 18) instead of the model; --mechanism, --batch, --exact-heads, --model and
--save do not apply to it and are refused with it.

Output (stable, one line per configuration):
    torch  <mechanism> N=<n> threads=<t> median_s=<x> tokens_per_s=<y>
    torch  favor_head N=<n> threads=<t> median_s=<x> min_s=<fastest call> tokens_per_s=<y>
plus "# "-prefixed header lines (versions, parallel_info summary, check results, notes).

    /usr/bin/python3 tools/reference/bench_torch.py --threads 1 2
    /usr/bin/python3 tools/reference/bench_torch.py --mechanism favor --n 4096 --threads 1
    /usr/bin/python3 tools/reference/bench_torch.py --head --n 16384 --threads 1   # one head
"""

from __future__ import annotations

import argparse
import ctypes
import os
import re
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from export import load_model, save_model  # noqa: E402
from performer_reference import (AttentionConfig, ModelConfig, PerformerModel,  # noqa: E402
                                 favor_attention, rotary, softmax_attention)

CHECK_TOLERANCE = 1e-10


def bench_config(kind: str) -> ModelConfig:
    attention = (AttentionConfig(kind="favor", features=256) if kind == "favor"
                 else AttentionConfig(kind="softmax"))
    return ModelConfig(vocab=32, layers=2, d_model=512, heads=8, d_ff=2048, causal=False,
                       norm="pre", activation="gelu", rotary=False, max_positions=0,
                       tie_output=False, attention=attention)


def gaussian_orthogonal_projection(m: int, d: int, generator=None) -> torch.Tensor:
    """[m, d]: stacked orthogonal d x d blocks (QR of a Gaussian matrix, signs fixed by R's
    diagonal so Q is Haar), each row rescaled to the norm of an independent N(0, I_d) vector."""
    blocks = []
    for _ in range((m + d - 1) // d):
        g = torch.randn(d, d, generator=generator, dtype=torch.float64)
        q, r = torch.linalg.qr(g)
        q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)
        blocks.append(q.transpose(0, 1))
    rows = torch.cat(blocks)[:m]
    norms = torch.randn(m, d, generator=generator, dtype=torch.float64).norm(dim=1, keepdim=True)
    return rows * norms


# ---------------------------------------------------------------------------------------------
# Fast attention forms on [B, H, N, d]
# ---------------------------------------------------------------------------------------------

def exact_attention_fast(q, k, v, heads_at_once: bool = True):
    """softmax(q k^T / sqrt(d)) v, batched over [B, H]; or head by head (one [N, N] matrix)."""
    scale = q.shape[-1] ** -0.5
    if heads_at_once:
        return torch.softmax((q * scale) @ k.transpose(-1, -2), dim=-1) @ v
    out = torch.empty(q.shape[:-1] + (v.shape[-1],), dtype=v.dtype, device=v.device)
    for b in range(q.shape[0]):
        for h in range(q.shape[1]):
            out[b, h] = torch.softmax((q[b, h] * scale) @ k[b, h].transpose(0, 1), dim=-1) @ v[b, h]
    return out


def positive_features_fast(x, projection, is_query: bool, eps: float = 0.0):
    """FAVOR+ positive features of x [B, H, N, d] with projection [m, d], performer-pytorch's
    stabiliser (query: per-row max; key: max over the whole tensor). [B, H, N, m]."""
    d = x.shape[-1]
    m = projection.shape[0]
    xs = x * d ** -0.25
    u = xs @ projection.transpose(0, 1)  # [B, H, N, m]
    half_sq = 0.5 * (xs * xs).sum(dim=-1, keepdim=True)  # |x~|^2 / 2
    shift = u.amax(dim=-1, keepdim=True) if is_query else u.max()
    phi = torch.exp(u - half_sq - shift)
    if eps:
        phi = phi + eps
    return phi * m ** -0.5


def linear_attention_fast(phi_q, phi_k, v):
    """D^-1 (phi(Q) (phi(K)^T V)), bidirectional; the N x N matrix is never formed."""
    context = phi_k.transpose(-1, -2) @ v  # [B, H, m, dv]
    denom = phi_q @ phi_k.sum(dim=-2).unsqueeze(-1)  # [B, H, N, 1]
    return (phi_q @ context) / denom


def favor_attention_fast(q, k, v, projection, eps: float = 0.0):
    return linear_attention_fast(positive_features_fast(q, projection, True, eps),
                                 positive_features_fast(k, projection, False, eps), v)


# ---------------------------------------------------------------------------------------------
# The model: PerformerModel's parameters (same state_dict), batched forward with the fast forms
# ---------------------------------------------------------------------------------------------

class FastAttention(nn.Module):
    """Same parameters and buffers as performer_reference.MultiHeadAttention."""

    def __init__(self, cfg: ModelConfig, exact_heads_at_once: bool = True, eps: float = 0.0):
        super().__init__()
        self.cfg = cfg
        D = cfg.d_model
        self.q_proj = nn.Linear(D, D)
        self.k_proj = nn.Linear(D, D)
        self.v_proj = nn.Linear(D, D)
        self.o_proj = nn.Linear(D, D)
        if cfg.attention.kind == "favor":
            self.register_buffer("projection", torch.randn(cfg.attention.features, cfg.head_dim))
        self.exact_heads_at_once = exact_heads_at_once
        self.eps = eps

    def forward(self, x):  # [B, N, D]
        cfg = self.cfg
        B, N, D = x.shape
        H, d = cfg.heads, cfg.head_dim
        q = self.q_proj(x).view(B, N, H, d)
        k = self.k_proj(x).view(B, N, H, d)
        v = self.v_proj(x).view(B, N, H, d)
        if cfg.rotary:
            q = torch.stack([rotary(q[b], cfg.rotary_base, cfg.rotary_pairs) for b in range(B)])
            k = torch.stack([rotary(k[b], cfg.rotary_base, cfg.rotary_pairs) for b in range(B)])
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, N, d]
        if cfg.attention.kind == "favor":
            o = favor_attention_fast(q, k, v, self.projection, self.eps)
        else:
            o = exact_attention_fast(q, k, v, self.exact_heads_at_once)
        return self.o_proj(o.transpose(1, 2).reshape(B, N, D))


class FastBlock(nn.Module):
    def __init__(self, cfg: ModelConfig, **attn_options):
        super().__init__()
        self.pre = cfg.norm == "pre"
        self.norm1 = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.attn = FastAttention(cfg, **attn_options)
        self.norm2 = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.fc1 = nn.Linear(cfg.d_model, cfg.d_ff)
        self.fc2 = nn.Linear(cfg.d_ff, cfg.d_model)
        self.gelu = cfg.activation == "gelu"

    def ffn(self, x):
        h = self.fc1(x)
        return self.fc2(F.gelu(h) if self.gelu else F.relu(h))

    def forward(self, x):
        if self.pre:
            y = x + self.attn(self.norm1(x))
            return y + self.ffn(self.norm2(y))
        y = self.norm1(x + self.attn(x))
        return self.norm2(y + self.ffn(y))


class FastModel(nn.Module):
    """Token ids [B, N] -> logits [B, N, vocab]; load_state_dict takes a PerformerModel's."""

    def __init__(self, cfg: ModelConfig, **attn_options):
        super().__init__()
        if cfg.causal or cfg.attention.kind not in ("softmax", "favor"):
            raise ValueError("the speed baseline covers bidirectional softmax and FAVOR+ models only")
        self.cfg = cfg
        D = cfg.d_model
        self.tok_embed = nn.Embedding(cfg.vocab, D)
        if cfg.max_positions > 0:
            self.pos_embed = nn.Embedding(cfg.max_positions, D)
        self.layers = nn.ModuleList(FastBlock(cfg, **attn_options) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(D, eps=cfg.layer_norm_eps)
        if cfg.tie_output:
            self.head = nn.Module()
            self.head.bias = nn.Parameter(torch.zeros(cfg.vocab))
        else:
            self.head = nn.Linear(D, cfg.vocab)

    @staticmethod
    def _rename(state: dict) -> dict:
        # PerformerModel keeps the FFN in a submodule "ffn"; FastBlock holds fc1/fc2 directly.
        return {k.replace(".ffn.fc", ".fc"): v for k, v in state.items()}

    @classmethod
    def from_reference(cls, ref: PerformerModel, **attn_options) -> "FastModel":
        # convert first: load_state_dict copies into the existing tensors, in their dtype
        fast = cls(ref.cfg, **attn_options).to(dtype=next(ref.parameters()).dtype)
        fast.load_state_dict(cls._rename(ref.state_dict()), strict=True)
        return fast

    def forward(self, tokens):
        n = tokens.shape[-1]
        h = self.tok_embed(tokens)
        if self.cfg.max_positions > 0:
            h = h + self.pos_embed.weight[:n]
        for layer in self.layers:
            h = layer(h)
        if self.cfg.norm == "pre":
            h = self.norm(h)
        if self.cfg.tie_output:
            return h @ self.tok_embed.weight.transpose(0, 1) + self.head.bias
        return self.head(h)


# ---------------------------------------------------------------------------------------------
# Check against the quadratic reference
# ---------------------------------------------------------------------------------------------

def rel_diff(a, b) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def check_against_reference(n: int = 64) -> bool:
    """Float64, N = n: fast forms vs performer_reference, mechanism per head and whole model."""
    g = torch.Generator().manual_seed(1234)
    ok = True
    results = []
    d, m, H = 64, 256, 8
    proj = gaussian_orthogonal_projection(m, d, g)
    q = torch.randn(1, H, n, d, generator=g, dtype=torch.float64)
    k = torch.randn(1, H, n, d, generator=g, dtype=torch.float64)
    v = torch.randn(1, H, n, d, generator=g, dtype=torch.float64)
    fast = favor_attention_fast(q, k, v, proj)
    ref = torch.stack([favor_attention(q[0, h], k[0, h], v[0, h], proj) for h in range(H)]).unsqueeze(0)
    results.append(("favor mechanism", rel_diff(fast, ref)))
    ref_sm = torch.stack([softmax_attention(q[0, h], k[0, h], v[0, h]) for h in range(H)]).unsqueeze(0)
    results.append(("exact mechanism, heads at once", rel_diff(exact_attention_fast(q, k, v, True), ref_sm)))
    results.append(("exact mechanism, head by head", rel_diff(exact_attention_fast(q, k, v, False), ref_sm)))
    for kind in ("favor", "softmax"):
        torch.manual_seed(99)
        ref_model = PerformerModel(bench_config(kind)).double().eval()
        if kind == "favor":
            for layer in ref_model.layers:
                layer.attn.projection.copy_(gaussian_orthogonal_projection(m, d, g))
        tokens = torch.randint(0, ref_model.cfg.vocab, (n,), generator=g)
        with torch.inference_mode():
            want = ref_model(tokens)
            for heads_at_once in ((True, False) if kind == "softmax" else (True,)):
                got = FastModel.from_reference(ref_model, exact_heads_at_once=heads_at_once)(
                    tokens.unsqueeze(0))[0]
                label = "favor model" if kind == "favor" else (
                    "exact model, " + ("heads at once" if heads_at_once else "head by head"))
                results.append((label, rel_diff(got, want)))
    # the loader path (--model): the bidirectional fixtures, with positions, rotary, tied head
    for name in ("exact_bidirectional", "favor_bidirectional"):
        path = os.path.join(HERE, "..", "..", "tests", "io", "fixtures", name + ".safetensors")
        if os.path.exists(path):
            ref_model = load_model(path).eval()
            tokens = torch.randint(0, ref_model.cfg.vocab, (n,), generator=g)
            n_pos = ref_model.cfg.max_positions
            tokens = tokens[:n_pos] if n_pos else tokens
            with torch.inference_mode():
                got = FastModel.from_reference(ref_model)(tokens.unsqueeze(0))[0]
                results.append((f"fixture {name}", rel_diff(got, ref_model(tokens))))
    for label, r in results:
        good = r <= CHECK_TOLERANCE
        ok &= good
        print(f"# check {label}: N={n if 'fixture' not in label else 'max'} float64 max_rel_diff={r:.3e} "
              f"{'ok' if good else 'FAIL'} (tolerance {CHECK_TOLERANCE:g})")
    return ok


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------

def parallel_summary() -> str:
    lines = [ln.strip() for ln in torch.__config__.parallel_info().splitlines()]
    keep = [ln for ln in lines if ln.startswith(("at::get_num_threads", "at::get_num_interop",
                                                 "OpenMP", "MKL", "Intel(R) MKL-DNN",
                                                 "ATen parallel backend",
                                                 "std::thread::hardware_concurrency"))]
    return "; ".join(" ".join(ln.split()) for ln in keep)


def blas_info() -> str:
    found = re.search(r"BLAS_INFO=[^,\s]*", torch.__config__.show())
    return found.group(0) if found else "BLAS_INFO=?"


def blas_library() -> str:
    """The BLAS shared library the process has loaded (after one float32 matmul): Debian's torch
    calls whatever libblas.so.3 resolves to, the netlib reference BLAS unless an optimised one is
    installed or put first on LD_LIBRARY_PATH."""
    torch.ones(64, 64) @ torch.ones(64, 64)
    libs = set()
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.split()[-1]
                if "blas" in os.path.basename(path).lower():
                    libs.add(os.path.realpath(path))
    except OSError:
        return "?"
    return " ".join(sorted(libs)) or "none found"


def set_threads(threads: int) -> None:
    """torch.set_num_threads, and the same count for OpenBLAS if it is the loaded BLAS (torch
    built with BLAS_INFO=generic does not tell OpenBLAS itself)."""
    torch.set_num_threads(threads)
    for path in blas_library().split():
        if "openblas" in os.path.basename(path):
            try:
                ctypes.CDLL(path).openblas_set_num_threads(ctypes.c_int(threads))
            except (OSError, AttributeError):
                pass


def matmul_gflops(threads: int) -> float:
    """float32 GEMM rate, [4096, 512] x [512, 2048] (the FFN's first product at N = 4096)."""
    set_threads(threads)
    a, b = torch.randn(4096, 512), torch.randn(512, 2048)
    a @ b
    t0 = time.perf_counter()
    a @ b
    return 2 * 4096 * 512 * 2048 / (time.perf_counter() - t0) / 1e9


def mem_available_bytes() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def exact_heads_at_once(mode: str, batch: int, heads: int, n: int, elem: int) -> bool:
    if mode != "auto":
        return mode == "all"
    need = 2 * batch * heads * n * n * elem  # scores + softmax output
    return need <= mem_available_bytes() // 2


def time_model(model, tokens, runs: int) -> float:
    with torch.inference_mode():
        model(tokens)  # warm-up
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            out = model(tokens)
            times.append(time.perf_counter() - t0)
        if not torch.isfinite(out).all():
            print("# warning: non-finite logits", flush=True)
    return statistics.median(times)


def time_head(n: int, threads: int, runs: int, eps: float, seed: int) -> list[float]:
    """Seconds of each run of favor_attention_fast on one head, [1, 1, N, 64] float32 inputs drawn
    from N(0, 1), m = 256 (bench_favor_bf16's float_favor/bidirectional shape)."""
    g = torch.Generator().manual_seed(seed + n)
    q, k, v = (torch.randn(1, 1, n, 64, generator=g) for _ in range(3))
    projection = gaussian_orthogonal_projection(256, 64, g).float()
    set_threads(threads)
    with torch.inference_mode():
        favor_attention_fast(q, k, v, projection, eps)  # warm-up
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            out = favor_attention_fast(q, k, v, projection, eps)
            times.append(time.perf_counter() - t0)
        if not torch.isfinite(out).all():
            print("# warning: non-finite output", flush=True)
    return times


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mechanism", nargs="+", choices=("favor", "exact"), default=["favor", "exact"])
    ap.add_argument("--n", nargs="+", type=int, default=[16384, 4096])
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--runs", type=int, default=5, help="timed runs after one warm-up (median)")
    ap.add_argument("--exact-heads", choices=("auto", "all", "one"), default="auto",
                    help="exact attention: all heads in one batched matmul, or one at a time")
    ap.add_argument("--eps", type=float, default=0.0,
                    help="FAVOR+ feature eps (performer-pytorch: 1e-4; library: 0)")
    ap.add_argument("--model", help="load this model file instead (its attention decides the "
                    "mechanism; --mechanism is ignored)")
    ap.add_argument("--save", help="write the generated model to SAVE.<mechanism>.safetensors (F32)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-check", action="store_true")
    ap.add_argument("--check-only", action="store_true")
    ap.add_argument("--head", action="store_true",
                    help="time FAVOR+ alone on one head (d = d_v = 64, m = 256), not the model")
    args = ap.parse_args(argv)
    if args.head:
        model_only = [name for name, given in (("--mechanism", args.mechanism != ["favor", "exact"]),
                                                ("--batch", args.batch != 1),
                                                ("--exact-heads", args.exact_heads != "auto"),
                                                ("--model", args.model), ("--save", args.save))
                      if given]
        if model_only:
            ap.error(f"{', '.join(model_only)}: not with --head (one FAVOR+ head, no model)")

    print(f"# torch {torch.__version__} {blas_info()}")
    print(f"# parallel_info: {parallel_summary()}")
    blas = blas_library()
    print(f"# blas library: {blas}; sgemm 4096x512x2048 threads=1: "
          f"{matmul_gflops(1):.1f} GFLOP/s", flush=True)
    if "openblas" not in blas and "mkl" not in blas:
        print("# WARNING: not an optimised BLAS (Debian's default libblas.so.3 is the netlib "
              "reference BLAS, ~15x slower GEMM): not a fair baseline; see README 'Speed baseline'",
              flush=True)
    if not args.skip_check:
        set_threads(1)
        if not check_against_reference():
            print("# check FAILED")
            return 1
    if args.check_only:
        return 0
    if args.head:
        for n in args.n:
            for t in args.threads:
                times = time_head(n, t, args.runs, args.eps, args.seed)
                med = statistics.median(times)
                print(f"torch  favor_head N={n} threads={t} median_s={med:.6f} "
                      f"min_s={min(times):.6f} tokens_per_s={n / med:.1f}", flush=True)
        return 0

    refs = {}
    if args.model:
        ref = load_model(args.model, dtype=torch.float32)
        refs["favor" if ref.cfg.attention.kind == "favor" else "exact"] = ref
        print(f"# model {args.model}: {ref.cfg.to_json()}")
    else:
        for mech in args.mechanism:
            torch.manual_seed(args.seed)
            ref = PerformerModel(bench_config("favor" if mech == "favor" else "softmax"))
            if mech == "favor":
                g = torch.Generator().manual_seed(args.seed + 1)
                for layer in ref.layers:
                    layer.attn.projection.copy_(
                        gaussian_orthogonal_projection(256, ref.cfg.head_dim, g))
            refs[mech] = ref.float().eval()
            if args.save:
                path = f"{args.save}.{mech}.safetensors"
                save_model(refs[mech], path, dtype="F32")
                print(f"# saved {path}")
        print(f"# model: {bench_config('softmax').to_json()} (attention: softmax, or favor with "
              "m = 256, Gaussian orthogonal projection)")

    for mech, ref in refs.items():
        for n in args.n:
            heads_at_once = exact_heads_at_once(args.exact_heads, args.batch, ref.cfg.heads, n, 4)
            if mech == "exact":
                print(f"# exact N={n}: {'all heads in one batched matmul' if heads_at_once else 'heads one at a time (memory)'}")
            model = FastModel.from_reference(ref, exact_heads_at_once=heads_at_once,
                                             eps=args.eps).float().eval()
            g = torch.Generator().manual_seed(args.seed + n)
            tokens = torch.randint(0, ref.cfg.vocab, (args.batch, n), generator=g)
            for t in args.threads:
                set_threads(t)
                med = time_model(model, tokens, args.runs)
                print(f"torch  {mech} N={n} threads={t} median_s={med:.6f} "
                      f"tokens_per_s={args.batch * n / med:.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
