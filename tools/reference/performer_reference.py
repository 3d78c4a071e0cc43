"""PyTorch reference implementation of performer's ``transformer_model``.

Independent code written from the mathematics in docs/algorithms.md and the layout in
docs/model_format.md, not translated from the C++ headers: it evaluates every mechanism in its
plainest (quadratic, masked) form, so that it can serve as an oracle for the library's blocked,
chunked, stabilised and parallel implementations.

- exact softmax attention (docs/algorithms.md §1), scale 1/sqrt(d);
- FAVOR+ with positive features and a given projection W (§2, §3.1): the weight of key j for
  query i is phi(q_i) . phi(k_j), phi(x) = exp(W x~ - |x~|^2/2)/sqrt(m), x~ = x d^(-1/4);
  out_i = sum_j a_ij v_j / sum_j a_ij over the visible keys (causal: j <= i). Evaluated as a
  softmax over j of log a_ij (a logsumexp over the features), which is the same quantity;
- Reformer LSH attention with given rotations (§6): angular hash argmax([x^R; -x^R]) of the
  unit vector, per round the visible keys of each bucket in position order cut into chunks of c,
  a query's window = its chunk of its bucket and the one before, causal masking, shared-QK keys
  q_j/|q_j| with the self logit replaced by -|l| - 1e5, softmax over the union of the rounds'
  windows (each key once), and the local-attention fallback of §6.10;
- the Transformer block (pre-LN / post-LN, exact GELU / ReLU, optional rotary embedding with
  "half" or "interleaved" pairing), the stack's final LayerNorm (pre-LN only), token embedding,
  learned absolute positions and the output head (tied or not).

Parameter names are those of docs/model_format.md, so ``model.state_dict()`` (parameters plus
the ``projection`` / ``rotations`` buffers) is exactly the tensor set of a model file.

Run everything in float64 for reference values: ``PerformerModel(config).double()``.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

SELF_PENALTY = 1e5  # Reformer appendix A: a token attends to itself only when alone


# ---------------------------------------------------------------------------------------------
# Configuration (the "config" object of a model file's __metadata__)
# ---------------------------------------------------------------------------------------------

@dataclass
class AttentionConfig:
    kind: str = "softmax"  # "softmax", "favor" or "lsh"
    features: int = 0  # favor: m
    feature_map: str = "positive"  # favor
    rounds: int = 0  # lsh: h
    buckets: int = 0  # lsh: b (even, 2..128)
    chunk: int = 0  # lsh: c
    shared_qk: bool = True  # lsh

    def to_dict(self) -> dict:
        if self.kind == "softmax":
            return {"kind": "softmax"}
        if self.kind == "favor":
            return {"kind": "favor", "features": self.features, "feature_map": self.feature_map}
        if self.kind == "lsh":
            return {"kind": "lsh", "rounds": self.rounds, "buckets": self.buckets,
                    "chunk": self.chunk, "shared_qk": self.shared_qk}
        raise ValueError(f"unknown attention kind {self.kind!r}")

    @staticmethod
    def from_dict(d: dict) -> "AttentionConfig":
        kind = d["kind"]
        if kind == "softmax":
            return AttentionConfig(kind="softmax")
        if kind == "favor":
            fmap = d.get("feature_map", "positive")
            if fmap != "positive":
                raise ValueError(f"the reference implements the positive feature map only, not {fmap!r}")
            return AttentionConfig(kind="favor", features=int(d["features"]), feature_map=fmap)
        if kind == "lsh":
            return AttentionConfig(kind="lsh", rounds=int(d["rounds"]), buckets=int(d["buckets"]),
                                   chunk=int(d["chunk"]), shared_qk=bool(d.get("shared_qk", True)))
        raise ValueError(f"unknown attention kind {kind!r}")


@dataclass
class ModelConfig:
    vocab: int
    layers: int
    d_model: int
    heads: int
    d_ff: int
    causal: bool = False
    norm: str = "pre"  # "pre" or "post"
    activation: str = "gelu"  # "gelu" (exact) or "relu"
    layer_norm_eps: float = 1e-5
    rotary: bool = False
    rotary_base: float = 10000.0
    rotary_pairs: str = "half"  # "half" or "interleaved"
    max_positions: int = 0
    tie_output: bool = False
    attention: AttentionConfig = field(default_factory=AttentionConfig)

    def __post_init__(self):
        if isinstance(self.attention, dict):
            self.attention = AttentionConfig.from_dict(self.attention)
        if self.d_model % self.heads:
            raise ValueError("heads must divide d_model")
        if self.d_ff <= 0:
            raise ValueError("d_ff must be positive (explicit in the file format)")
        if self.norm not in ("pre", "post"):
            raise ValueError(f"norm must be 'pre' or 'post', not {self.norm!r}")
        if self.activation not in ("gelu", "relu"):
            raise ValueError(f"activation must be 'gelu' or 'relu', not {self.activation!r}")
        if self.rotary_pairs not in ("half", "interleaved"):
            raise ValueError(f"rotary_pairs must be 'half' or 'interleaved', not {self.rotary_pairs!r}")
        if self.rotary and self.head_dim % 2:
            raise ValueError("rotary embedding needs an even head width")
        a = self.attention
        if a.kind == "lsh" and (a.buckets < 2 or a.buckets % 2 or a.buckets > 128 or a.rounds < 1
                                or a.chunk < 1):
            raise ValueError("lsh needs rounds >= 1, chunk >= 1 and even buckets in [2, 128]")
        if a.kind == "favor" and a.features < 1:
            raise ValueError("favor needs features >= 1")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.heads

    def to_dict(self) -> dict:
        d = asdict(self)
        d["attention"] = self.attention.to_dict()
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @staticmethod
    def from_dict(d: dict) -> "ModelConfig":
        d = dict(d)
        d["attention"] = AttentionConfig.from_dict(d["attention"])
        return ModelConfig(**d)


# ---------------------------------------------------------------------------------------------
# Attention mechanisms, one head: q [Nq, d], k [Nk, d], v [Nk, dv] -> [Nq, dv]
# key_mask: None or a bool tensor [Nk] (True keeps the key).
# ---------------------------------------------------------------------------------------------

def _visibility(n_q: int, n_k: int, causal: bool, key_mask, device) -> torch.Tensor:
    """[Nq, Nk] bool: key j is visible to query i under the masks (docs §1)."""
    vis = torch.ones(n_q, n_k, dtype=torch.bool, device=device)
    if causal:
        if n_q != n_k:
            raise ValueError("causal attention needs as many queries as keys")
        vis = torch.tril(vis)
    if key_mask is not None:
        vis = vis & key_mask.to(torch.bool).view(1, n_k)
    return vis


def _masked_softmax_average(logits: torch.Tensor, allowed: torch.Tensor,
                            v: torch.Tensor) -> torch.Tensor:
    """out_i = sum_{j allowed} softmax_j(logits_ij) v_j; a row with nothing allowed is 0."""
    masked = logits.masked_fill(~allowed, float("-inf"))
    has_any = allowed.any(dim=1, keepdim=True)
    masked = torch.where(has_any, masked, torch.zeros_like(masked))
    row_max = masked.max(dim=1, keepdim=True).values
    w = torch.exp(masked - row_max)
    w = torch.where(allowed, w, torch.zeros_like(w))
    w = w / w.sum(dim=1, keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)
    return w @ v


def softmax_attention(q, k, v, causal=False, key_mask=None):
    """Exact attention, docs §1: softmax(q k^T / sqrt(d)) v over the visible keys."""
    d = q.shape[-1]
    logits = (q @ k.transpose(0, 1)) / math.sqrt(d)
    return _masked_softmax_average(logits, _visibility(q.shape[0], k.shape[0], causal, key_mask,
                                                       q.device), v)


def positive_log_features(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """log phi(x) for the FAVOR+ positive map (docs §3.1): [N, m] with
    log phi_f(x) = w_f . x~ - |x~|^2 / 2 - log(m) / 2, x~ = x d^(-1/4)."""
    d = x.shape[-1]
    m = w.shape[0]
    xs = x * d ** -0.25
    return xs @ w.transpose(0, 1) - 0.5 * (xs * xs).sum(dim=-1, keepdim=True) - 0.5 * math.log(m)


def favor_attention(q, k, v, projection, causal=False, key_mask=None):
    """FAVOR+ (docs §2.2, §2.3): a_ij = phi(q_i) . phi(k_j) > 0 and
    out_i = sum_j a_ij v_j / sum_j a_ij over the visible keys (j <= i when causal).

    Evaluated quadratically: log a_ij = logsumexp_f(log phi_f(q_i) + log phi_f(k_j)), then a
    masked softmax over j of log a_ij, which equals the ratio above (no approximation)."""
    lq = positive_log_features(q, projection)  # [Nq, m]
    lk = positive_log_features(k, projection)  # [Nk, m]
    log_a = torch.logsumexp(lq.unsqueeze(1) + lk.unsqueeze(0), dim=-1)  # [Nq, Nk]
    return _masked_softmax_average(log_a, _visibility(q.shape[0], k.shape[0], causal, key_mask,
                                                      q.device), v)


def lsh_hash(x: torch.Tensor, rotation: torch.Tensor):
    """Angular LSH (docs §6.2) of the rows of x with one rotation R [d, b/2]: the bucket
    argmax([x^ R ; -x^ R]) of x^ = x / |x| (first index on a tie; a zero row goes to bucket 0)
    and the margin between the largest and the second largest of the b candidates."""
    norms = x.norm(dim=-1, keepdim=True)
    unit = torch.where(norms > 0, x / torch.where(norms > 0, norms, torch.ones_like(norms)),
                       torch.zeros_like(x))
    p = unit @ rotation
    scores = torch.cat([p, -p], dim=-1)  # [N, b]
    top = scores.max(dim=-1, keepdim=True).values
    # first index reaching the maximum
    idx = torch.arange(scores.shape[-1], device=x.device).expand_as(scores)
    bucket = torch.where(scores == top, idx, torch.full_like(idx, scores.shape[-1])).min(dim=-1).values
    bucket = torch.where(norms.squeeze(-1) > 0, bucket, torch.zeros_like(bucket))
    two = scores.topk(2, dim=-1).values
    margin = two[:, 0] - two[:, 1]
    return bucket, margin


def lsh_windows(q_buckets, k_buckets, key_keep, chunk: int, causal: bool) -> torch.Tensor:
    """The union over rounds of every query's window (docs §6.3, §6.4): [Nq, Nk] bool.

    q_buckets [h, Nq], k_buckets [h, Nk] (long), key_keep [Nk] bool. In each round the kept keys
    of each bucket, in position order, are cut into chunks of `chunk`; query i, at position
    p_i = floor(i Nk / Nq), sits in chunk floor(#{kept keys of its bucket at positions < p_i} / c)
    and sees its chunk and the previous one of its bucket; causal drops keys j > i."""
    h, n_q = q_buckets.shape
    n_k = k_buckets.shape[1]
    union = torch.zeros(n_q, n_k, dtype=torch.bool)
    for r in range(h):
        kb = k_buckets[r].tolist()
        qb = q_buckets[r].tolist()
        key_chunk = [-1] * n_k
        rank = {}
        for j in range(n_k):
            if key_keep[j]:
                key_chunk[j] = rank.get(kb[j], 0) // chunk
                rank[kb[j]] = rank.get(kb[j], 0) + 1
        for i in range(n_q):
            p = i if n_q == n_k else (i * n_k) // n_q
            before = sum(1 for j in range(p) if key_keep[j] and kb[j] == qb[i])
            c = before // chunk
            for j in range(n_k):
                if key_keep[j] and kb[j] == qb[i] and key_chunk[j] in (c - 1, c):
                    union[i, j] = True
    if causal:
        union &= torch.tril(torch.ones(n_q, n_k, dtype=torch.bool))
    return union


def lsh_attention(q, k, v, rotations, chunk: int, causal=False, key_mask=None, shared_qk=True,
                  return_details=False):
    """Reformer LSH attention (docs §6) with given rotations [h, d, b/2].

    Shared QK (the Reformer, and the library's default): token j's key is q_j / |q_j| (a zero row
    stays zero), buckets come from the queries, and `k` is not used. The logit is
    q_i . k_j / sqrt(d); the self logit l becomes -|l| - 1e5. The output is softmax attention over
    the union of the rounds' windows (each key counted once), or, for a query whose windows hold
    no visible key although the mask leaves it some, local attention over the `chunk` visible keys
    nearest before its position (its own included), else the first `chunk` visible keys (§6.10)."""
    n_q, d = q.shape
    if shared_qk:
        if k.shape[0] != n_q:
            raise ValueError("shared_qk needs as many keys as queries")
        norms = q.norm(dim=-1, keepdim=True)
        keys = torch.where(norms > 0, q / torch.where(norms > 0, norms, torch.ones_like(norms)),
                           torch.zeros_like(q))
    else:
        keys = k
    n_k = keys.shape[0]
    keep = torch.ones(n_k, dtype=torch.bool) if key_mask is None else key_mask.to(torch.bool)
    h = rotations.shape[0]
    q_buckets, margins = [], []
    k_buckets = []
    for r in range(h):
        bq, mq = lsh_hash(q, rotations[r])
        q_buckets.append(bq)
        margins.append(mq)
        if shared_qk:
            k_buckets.append(bq)
        else:
            bk, mk = lsh_hash(keys, rotations[r])
            k_buckets.append(bk)
            margins.append(mk)
    q_buckets = torch.stack(q_buckets)
    k_buckets = torch.stack(k_buckets)
    allowed = lsh_windows(q_buckets, k_buckets, keep.tolist(), chunk, causal)

    visible = _visibility(n_q, n_k, causal, keep, q.device)
    fallback = []
    for i in range(n_q):
        if allowed[i].any() or not visible[i].any():
            continue
        fallback.append(i)
        p = i if n_q == n_k else (i * n_k) // n_q
        kept = [j for j in range(n_k) if keep[j]]
        before = [j for j in kept if j <= p]
        window = before[-chunk:] if before else kept[:chunk]
        for j in window:
            allowed[i, j] = True
        if causal:
            allowed[i] &= visible[i]

    logits = (q @ keys.transpose(0, 1)) / math.sqrt(d)
    if shared_qk:
        diag = torch.arange(min(n_q, n_k))
        logits[diag, diag] = -logits[diag, diag].abs() - SELF_PENALTY
    out = _masked_softmax_average(logits, allowed, v)
    if return_details:
        return out, {"q_buckets": q_buckets, "k_buckets": k_buckets, "allowed": allowed,
                     "margin": torch.stack(margins).min().item(), "fallback": fallback}
    return out


# ---------------------------------------------------------------------------------------------
# Rotary position embedding (RoFormer; docs: nn/rotary_embedding)
# ---------------------------------------------------------------------------------------------

def rotary(x: torch.Tensor, base: float, pairs: str, first_position: int = 0) -> torch.Tensor:
    """x [N, heads, d]: the channel pair (a, b) of frequency theta_i = base^(-2i/d), i < d/2, at
    position p becomes (a cos(p theta_i) - b sin(p theta_i), a sin(p theta_i) + b cos(p theta_i)).
    Pairs: "half" = (i, i + d/2), "interleaved" = (2i, 2i + 1). Angles in float64."""
    n, _, d = x.shape
    half = d // 2
    inv_freq = torch.tensor([base ** (-2.0 * i / d) for i in range(half)], dtype=torch.float64)
    pos = torch.arange(first_position, first_position + n, dtype=torch.float64)
    angle = pos[:, None] * inv_freq[None, :]  # [N, d/2]
    cos = torch.cos(angle).to(x.dtype)[:, None, :]
    sin = torch.sin(angle).to(x.dtype)[:, None, :]
    if pairs == "half":
        a, b = x[..., :half], x[..., half:]
        return torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1)
    a, b = x[..., 0::2], x[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = a * cos - b * sin
    out[..., 1::2] = a * sin + b * cos
    return out


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------

class MultiHeadAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        D = cfg.d_model
        self.q_proj = nn.Linear(D, D)
        self.k_proj = nn.Linear(D, D)
        self.v_proj = nn.Linear(D, D)
        self.o_proj = nn.Linear(D, D)
        a = cfg.attention
        d = cfg.head_dim
        if a.kind == "favor":
            # rows are the random directions w_f, shared by the layer's heads
            self.register_buffer("projection", torch.randn(a.features, d))
        elif a.kind == "lsh":
            self.register_buffer("rotations", torch.randn(a.rounds, d, a.buckets // 2))

    def forward(self, x: torch.Tensor, key_mask=None, details: Optional[list] = None,
                memory: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Self-attention over x; with `memory`, cross-attention from x to it: keys and values
        from the memory, key_mask over its tokens, never causal, never rotary."""
        cfg = self.cfg
        n = x.shape[0]
        H, d = cfg.heads, cfg.head_dim
        source = x if memory is None else memory
        causal = cfg.causal and memory is None
        q = self.q_proj(x).view(n, H, d)
        k = self.k_proj(source).view(source.shape[0], H, d)
        v = self.v_proj(source).view(source.shape[0], H, d)
        if cfg.rotary and memory is None:
            q = rotary(q, cfg.rotary_base, cfg.rotary_pairs)
            k = rotary(k, cfg.rotary_base, cfg.rotary_pairs)
        heads = []
        a = cfg.attention
        for hd in range(H):
            qh, kh, vh = q[:, hd, :], k[:, hd, :], v[:, hd, :]
            if a.kind == "softmax":
                o = softmax_attention(qh, kh, vh, causal, key_mask)
            elif a.kind == "favor":
                o = favor_attention(qh, kh, vh, self.projection, causal, key_mask)
            else:
                o, info = lsh_attention(qh, kh, vh, self.rotations, a.chunk, causal, key_mask,
                                        a.shared_qk, return_details=True)
                if details is not None:
                    details.append(info)
            heads.append(o)
        return self.o_proj(torch.cat(heads, dim=-1))


class FeedForward(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.d_model, cfg.d_ff)
        self.fc2 = nn.Linear(cfg.d_ff, cfg.d_model)
        self.activation = cfg.activation

    def forward(self, x):
        h = self.fc1(x)
        h = F.gelu(h) if self.activation == "gelu" else F.relu(h)  # exact GELU: x Phi(x)
        return self.fc2(h)


class Block(nn.Module):
    """Pre-LN: y = x + MHA(LN1(x)); y = y + FFN(LN2(y)).
    Post-LN: y = LN1(x + MHA(x)); y = LN2(y + FFN(y)).
    With cross_attention (a decoder block over an encoder's memory), between the two: pre-LN
    y = y + MHA_c(LN3(y), memory), post-LN y = LN3(y + MHA_c(y, memory)); MHA_c has its own
    projections and shares the mechanism (FAVOR+'s projection, LSH's rotations) with MHA, as the
    library's block runs one mechanism object for both."""

    def __init__(self, cfg: ModelConfig, cross_attention: bool = False):
        super().__init__()
        self.pre = cfg.norm == "pre"
        self.norm1 = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.attn = MultiHeadAttention(cfg)
        self.norm2 = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.ffn = FeedForward(cfg)
        self.cross_attention = cross_attention
        if cross_attention:
            self.norm3 = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
            self.cross_attn = MultiHeadAttention(cfg)
            for shared in ("projection", "rotations"):
                if hasattr(self.attn, shared):
                    delattr(self.cross_attn, shared)

    def _cross(self, x, memory, memory_mask, details):
        # Shared at each call, not once: .double() or load_state_dict replaces attn's buffers.
        if hasattr(self.attn, "projection"):
            self.cross_attn.projection = self.attn.projection
        if hasattr(self.attn, "rotations"):
            self.cross_attn.rotations = self.attn.rotations
        return self.cross_attn(x, memory_mask, details, memory=memory)

    def forward(self, x, key_mask=None, details=None, memory=None, memory_mask=None):
        if self.cross_attention and memory is None:
            raise ValueError("a cross-attention block needs the encoder's memory")
        if self.pre:
            y = x + self.attn(self.norm1(x), key_mask, details)
            if self.cross_attention:
                y = y + self._cross(self.norm3(y), memory, memory_mask, details)
            return y + self.ffn(self.norm2(y))
        y = self.norm1(x + self.attn(x, key_mask, details))
        if self.cross_attention:
            y = self.norm3(y + self._cross(y, memory, memory_mask, details))
        return self.norm2(y + self.ffn(y))


class TiedHead(nn.Module):
    """The output head when tied to the token embedding: only its bias (``head.bias``)."""

    def __init__(self, vocab: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(vocab))


class PerformerModel(nn.Module):
    """Token ids [N] -> logits [N, vocab]: h0 = E[tokens] + P[0..N), the blocks, the final
    LayerNorm (pre-LN only), logits = h W^T + b (W = E when tied)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        D = cfg.d_model
        self.tok_embed = nn.Embedding(cfg.vocab, D)
        if cfg.max_positions > 0:
            self.pos_embed = nn.Embedding(cfg.max_positions, D)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(D, eps=cfg.layer_norm_eps)
        self.head = TiedHead(cfg.vocab) if cfg.tie_output else nn.Linear(D, cfg.vocab)

    def hidden(self, tokens: torch.Tensor, key_mask=None, details=None) -> torch.Tensor:
        n = tokens.shape[0]
        if self.cfg.max_positions > 0 and n > self.cfg.max_positions:
            raise ValueError(f"{n} tokens but positions for {self.cfg.max_positions}")
        h = self.tok_embed(tokens)
        if self.cfg.max_positions > 0:
            h = h + self.pos_embed.weight[:n]
        for layer in self.layers:
            h = layer(h, key_mask, details)
        if self.cfg.norm == "pre":
            h = self.norm(h)
        return h

    def forward(self, tokens: torch.Tensor, key_mask=None, details=None) -> torch.Tensor:
        h = self.hidden(tokens, key_mask, details)
        if self.cfg.tie_output:
            return h @ self.tok_embed.weight.transpose(0, 1) + self.head.bias
        return self.head(h)


def clone_model(model: PerformerModel) -> PerformerModel:
    return copy.deepcopy(model)
