#!/usr/bin/env python3
"""Writes the seed corpus of performer_fuzz_attention into tests/fuzz/corpus/ (or argv[1]).

Each seed is one 24-byte header (layout in fuzz_attention.cpp) followed by mask bytes and a few
value bytes; the harness fills the remaining matrix entries with smooth pseudo-random values.
Deterministic: rerunning rewrites the same files.
"""
import os
import sys

ENTRIES = ["softmax", "tiled", "favor_positive", "favor_hyperbolic", "favor_trigonometric",
           "favor_relu", "favor_elu", "favor_plus_plus", "decoder", "attend", "block", "lsh"]

# Value bytes: 0..223 decode to (b - 112) / 16 * scale; 224 + i are specials.
NAN, INF, NINF, DENORM, ONE_E30, FLT_MAX = 226, 227, 228, 229, 235, 237
SCALE_1, SCALE_1E30, SCALE_1E_30, SCALE_1E_42 = 0, 5, 4, 14


def size(s):
    """The byte the harness decodes to size s (size_of: b < 192 -> b % 17, else b % 41)."""
    assert 0 <= s <= 40
    return s if s <= 16 else 192 + (s - 192 % 41) % 41


def seed(entry, *, double=False, causal=False, mask=0, history=False, strided=False, n_q=6,
         n_k=6, d=4, d_v=3, m=8, shape=0, p=(), scales=(0, 0, 0, 0), tail=()):
    flags = (1 if double else 0) | (2 if causal else 0) | (mask << 2) \
        | (0x20 if history else 0) | (0x40 if strided else 0)
    params = list(p) + [0] * (12 - len(p))
    head = [ENTRIES.index(entry), flags] + [size(x) for x in (n_q, n_k, d, d_v, m)] + [shape] \
        + params + list(scales)
    assert len(head) == 24
    # A short run of smooth values: -1, -0.5, 0, 0.5, 1, 1.5, ...
    values = [96, 104, 112, 120, 128, 136, 88, 144]
    return bytes(head + list(tail) + values)


SEEDS = {
    "softmax-float": seed("softmax"),
    "softmax-double-causal-random-mask": seed("softmax", double=True, causal=True, mask=2,
                                              tail=[0b10110110]),
    "softmax-fully-padded": seed("softmax", mask=3, n_q=1, n_k=1, d=1, d_v=1),
    "softmax-nan-value": seed("softmax", n_q=2, n_k=3, d=2, d_v=2, tail=[112, NAN]),
    "softmax-huge-logits": seed("softmax", scales=(SCALE_1E30, SCALE_1E30, 0, 0)),
    "softmax-out-aliases-q": seed("softmax", shape=204),
    "tiled-strided-history": seed("tiled", history=True, strided=True, n_q=9, n_k=11,
                                  p=[2, 4]),
    "favor-positive-causal-segments": seed("favor_positive", causal=True, n_q=20, n_k=20, m=16,
                                           p=[0, 0, 7, 2, 1, 3, 5, 0, 0, 0, 2, 0x35]),
    "favor-positive-float-double-acc": seed("favor_positive", mask=6, p=[3, 0, 4, 1, 0, 0, 9]),
    "favor-hyperbolic-gaussian": seed("favor_hyperbolic", double=True, p=[2] + [0] * 9 + [2, 7]),
    "favor-trigonometric": seed("favor_trigonometric", m=12),
    "favor-relu-set-matrix": seed("favor_relu", p=[0, 0, 3, 3, 0, 0, 1, 0, 1], m=4),
    "favor-elu-causal": seed("favor_elu", causal=True, n_q=7, n_k=7),
    "favor-plus-plus-adaptive": seed("favor_plus_plus", double=True, p=[0, 0, 5, 5, 0, 0, 2, 1]),
    "favor-plus-plus-set-a": seed("favor_plus_plus", causal=True, p=[1, 0, 5, 5, 0, 0, 2, 0x22]),
    "decoder-positive-prime": seed("decoder", n_q=9, p=[0, 0, 4, 4, 0, 0, 1, 0, 0, 3, 1]),
    "decoder-favor-plus-plus": seed("decoder", double=True, n_q=5, p=[1, 5]),
    "attend-tiled-colmajor": seed("attend", p=[1, 3, 5]),
    "attend-lsh": seed("attend", double=True, p=[3, 2, 1, 4, 1]),
    "block-softmax-pre-ln": seed("block", n_q=5, mask=2, p=[2, 4, 1, 0, 0, 0], tail=[0b11101]),
    "block-favor-post-ln-causal": seed("block", causal=True, n_q=6, m=8,
                                       p=[2, 4, 0b011, 16, 1, 2, 3]),
    "block-stack-parameters": seed("block", n_q=3, p=[1, 4, 0b101001, 8, 0, 1, 2, 2, 0, 2]),
    "lsh-zero-rotation-oracle": seed("lsh", n_q=10, n_k=12, p=[3, 2, 8, 2]),
    "lsh-shared-qk-causal": seed("lsh", causal=True, n_q=16, n_k=16, p=[1, 3, 3, 1, 7]),
    "lsh-fuzzed-rotations": seed("lsh", double=True, p=[2, 1, 4, 4]),
    "extreme-denormal-values": seed("softmax", scales=(SCALE_1E_42, SCALE_1E_42, SCALE_1E_42, 0),
                                    tail=[DENORM, ONE_E30, FLT_MAX]),
}


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "corpus")
    os.makedirs(out, exist_ok=True)
    for i, (name, data) in enumerate(sorted(SEEDS.items())):
        with open(os.path.join(out, f"{i:02d}-{name}"), "wb") as f:
            f.write(data)
    print(f"wrote {len(SEEDS)} seeds to {out}")


if __name__ == "__main__":
    main()
