#!/usr/bin/env python3
"""Writes the seed corpora of performer's fuzz targets into tests/fuzz/corpus/<family>/ (or
argv[1]/<family>/), one directory per target: softmax, favor, lsh, nn.

Each seed is one 24-byte header (layout in fuzzing.hpp; the entry byte and the parameters
p[0..11] are documented at the top of each fuzz_<family>.cpp) followed by mask bytes and a few
value bytes; the harness fills the remaining matrix entries with smooth pseudo-random values.
Deterministic: rerunning rewrites the same files. It replaces the numbered seeds (NN-name) and
never touches the regression seeds (regression-*), which are minimised fuzzer findings.
"""
import glob
import os
import sys

# Entry bytes. softmax: softmax, tiled, attend over a registry mechanism.
SOFTMAX, TILED, ATTEND = 0, 1, 2
# The registry's mechanisms, in its order (include/performer/testing/registry.hpp): attend's
# p[0] and the nn target's entry byte index it.
REGISTRY = ["softmax", "tiled", "favor", "favor_hyp", "favor_trig", "favor_relu", "favor_elu",
            "favor_pp", "lsh", "lsh_qk"]
# favor: the registry's FAVOR maps, in its order; + 6 runs favor_decoder instead of forward.
FAVOR_MAPS = ["positive", "hyperbolic", "trigonometric", "relu", "elu", "favor_plus_plus"]
# lsh: the hash family.
ANGULAR, SIGN = 0, 1

# Value bytes: 0..223 decode to (b - 112) / 16 * scale; 224 + i are specials.
NAN, INF, NINF, DENORM, ONE_E30, FLT_MAX = 226, 227, 228, 229, 235, 237
SCALE_1, SCALE_1E30, SCALE_1E_30, SCALE_1E_42 = 0, 5, 4, 14


def favor(kind, decoder=False):
    return FAVOR_MAPS.index(kind) + (6 if decoder else 0)


def mech(name):
    return REGISTRY.index(name)


def size(s):
    """The byte the harness decodes to size s (size_of: b < 192 -> b % 17, else b % 41)."""
    assert 0 <= s <= 40
    return s if s <= 16 else 192 + (s - 192 % 41) % 41


def seed(entry, *, double=False, causal=False, mask=0, history=False, strided=False, n_q=6,
         n_k=6, d=4, d_v=3, m=8, shape=0, p=(), scales=(0, 0, 0, 0), tail=()):
    flags = (1 if double else 0) | (2 if causal else 0) | (mask << 2) \
        | (0x20 if history else 0) | (0x40 if strided else 0)
    params = list(p) + [0] * (12 - len(p))
    head = [entry, flags] + [size(x) for x in (n_q, n_k, d, d_v, m)] + [shape] \
        + params + list(scales)
    assert len(head) == 24
    # A short run of smooth values: -1, -0.5, 0, 0.5, 1, 1.5, ...
    values = [96, 104, 112, 120, 128, 136, 88, 144]
    return bytes(head + list(tail) + values)


SEEDS = {
    "softmax": {
        "softmax-float": seed(SOFTMAX),
        "softmax-double-causal-random-mask": seed(SOFTMAX, double=True, causal=True, mask=2,
                                                  tail=[0b10110110]),
        "softmax-fully-padded": seed(SOFTMAX, mask=3, n_q=1, n_k=1, d=1, d_v=1),
        "softmax-nan-value": seed(SOFTMAX, n_q=2, n_k=3, d=2, d_v=2, tail=[112, NAN]),
        "softmax-huge-logits": seed(SOFTMAX, scales=(SCALE_1E30, SCALE_1E30, 0, 0)),
        "softmax-out-aliases-q": seed(SOFTMAX, shape=204),
        "extreme-denormal-values": seed(SOFTMAX,
                                        scales=(SCALE_1E_42, SCALE_1E_42, SCALE_1E_42, 0),
                                        tail=[DENORM, ONE_E30, FLT_MAX]),
        "tiled-strided-history": seed(TILED, history=True, strided=True, n_q=9, n_k=11,
                                      p=[2, 4]),
        "attend-tiled-colmajor": seed(ATTEND, p=[mech("tiled"), 3, 5]),
        "attend-lsh": seed(ATTEND, double=True, p=[mech("lsh"), 2, 1, 4, 1]),
        "attend-lsh-qk-cross": seed(ATTEND, n_q=5, n_k=9, p=[mech("lsh_qk"), 0x80, 1, 2, 3]),
        "attend-favor-plus-plus-masked": seed(ATTEND, mask=2, p=[mech("favor_pp"), 0, 0, 0, 7],
                                              tail=[0b110101]),
        "attend-favor-trigonometric": seed(ATTEND, double=True, p=[mech("favor_trig")]),
    },
    "favor": {
        "favor-positive-causal-segments": seed(favor("positive"), causal=True, n_q=20, n_k=20,
                                               m=16, p=[0, 0, 7, 2, 1, 3, 5, 0, 0, 0, 2, 0x35]),
        "favor-positive-float-double-acc": seed(favor("positive"), mask=6,
                                                p=[3, 0, 4, 1, 0, 0, 9]),
        "favor-hyperbolic-gaussian": seed(favor("hyperbolic"), double=True,
                                          p=[2] + [0] * 9 + [2, 7]),
        "favor-trigonometric": seed(favor("trigonometric"), m=12),
        "favor-relu-set-matrix": seed(favor("relu"), p=[0, 0, 3, 3, 0, 0, 1, 0, 1], m=4),
        "favor-elu-causal": seed(favor("elu"), causal=True, n_q=7, n_k=7),
        "favor-plus-plus-adaptive": seed(favor("favor_plus_plus"), double=True,
                                         p=[0, 0, 5, 5, 0, 0, 2, 1]),
        "favor-plus-plus-set-a": seed(favor("favor_plus_plus"), causal=True,
                                      p=[1, 0, 5, 5, 0, 0, 2, 0x22]),
        "favor-plus-plus-calibrate-masked": seed(favor("favor_plus_plus"), mask=2,
                                                 p=[0, 0, 5, 5, 0, 0, 3, 0b1101, 16],
                                                 tail=[0b101011]),
        "decoder-positive-prime": seed(favor("positive", decoder=True), n_q=9,
                                       p=[0, 0, 4, 4, 0, 0, 1, 0, 0, 3, 1]),
        "decoder-favor-plus-plus": seed(favor("favor_plus_plus", decoder=True), double=True,
                                        n_q=5, p=[1, 5]),
    },
    "lsh": {
        "lsh-zero-rotation-oracle": seed(ANGULAR, n_q=10, n_k=12, p=[3, 2, 8, 2]),
        "lsh-zero-rotation-oracle-shared-qk": seed(ANGULAR, causal=True, n_q=9, n_k=9,
                                                   p=[1, 3, 2, 3]),
        "lsh-shared-qk-causal": seed(ANGULAR, causal=True, n_q=16, n_k=16, p=[1, 3, 3, 1, 7]),
        "lsh-fuzzed-rotations": seed(ANGULAR, double=True, p=[2, 1, 4, 4]),
        "lsh-automatic-buckets": seed(ANGULAR, n_q=16, n_k=16, p=[7, 2, 2, 1, 9, 0, 0x11]),
        "lsh-rotation-for-automatic-buckets": seed(ANGULAR, n_q=8, n_k=8,
                                                   p=[7, 1, 3, 4, 0, 0, 0x20, 1]),
        "lsh-fallback-separate-keys": seed(ANGULAR, causal=True, mask=2, n_q=16, n_k=16,
                                           p=[30, 1, 1, 0, 3], tail=[0b11011011, 0b10111101]),
        "lsh-factorised-buckets": seed(ANGULAR, double=True, n_q=12, n_k=12,
                                       p=[0x80 | 60, 1, 2, 0, 5]),
        "lsh-sign-projection": seed(SIGN, n_q=12, n_k=12, p=[3, 2, 3, 0, 1]),
        "lsh-sign-projection-cross": seed(SIGN, n_q=7, n_k=13, p=[7, 3, 2, 0, 4, 0, 0x30, 5]),
    },
    "nn": {
        "block-softmax-pre-ln": seed(mech("softmax"), n_q=5, mask=2, p=[2, 4, 1, 0, 0, 0],
                                     tail=[0b11101]),
        "block-favor-post-ln-causal": seed(mech("favor"), causal=True, n_q=6, m=8,
                                           p=[2, 4, 0b011, 16, 1, 2, 3]),
        "block-stack-parameters": seed(mech("tiled"), n_q=3,
                                       p=[1, 4, 0b101001, 8, 0, 1, 2, 2, 0, 2]),
        "block-lsh-qk-causal": seed(mech("lsh_qk"), causal=True, n_q=7,
                                    p=[2, 4, 0b001, 0, 0, 0, 1, 2, 3]),
        "stack-favor-plus-plus-final-norm": seed(mech("favor_pp"), n_q=4, m=6,
                                                 p=[1, 4, 0b10100001, 0, 0, 0, 0, 0, 0, 2, 0,
                                                    0b0110]),
    },
}


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "corpus")
    for family, seeds in SEEDS.items():
        out = os.path.join(root, family)
        os.makedirs(out, exist_ok=True)
        for old in glob.glob(os.path.join(out, "[0-9][0-9]-*")):
            os.remove(old)
        for i, (name, data) in enumerate(sorted(seeds.items())):
            with open(os.path.join(out, f"{i:02d}-{name}"), "wb") as f:
                f.write(data)
        print(f"wrote {len(seeds)} seeds to {out}")


if __name__ == "__main__":
    main()
