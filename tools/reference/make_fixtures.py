"""Generates the reference fixtures in tests/io/fixtures/ (see README.md in this directory).

    /usr/bin/python3 tools/reference/make_fixtures.py [--out DIR] [--check]

For each fixture NAME it writes
  NAME.safetensors           the model (docs/model_format.md), every tensor F32, each value
                             exactly representable in float, so a float and a double model
                             loaded from it hold the same numbers;
  NAME.expected.safetensors  `tokens` (I64, [N]) and `logits` (F64, [N, vocab]): the
                             reference's logits for those tokens, computed in float64; and
                             `cotangent` (F64, [N, vocab]), a random dL/d(logits);
  NAME.gradients.safetensors autograd's gradients of L = sum(cotangent * logits) with respect
                             to every parameter, F64, as a model file of the same layout
                             (FAVOR+'s projection and LSH's rotations keep their values).

Deterministic: each fixture draws from its own torch.manual_seed, and the files are byte for
byte the same on every run (--check regenerates into a temporary directory and compares).

Causal fixtures double as step-decoding traces: the reference checks here that the logits of
every prefix tokens[:t] equal the first t rows of `logits`, so feeding the tokens one at a time
must reproduce `logits` row by row.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import sys
import tempfile

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from export import load_model, read_safetensors, save_model, write_safetensors  # noqa: E402
from performer_reference import Block, ModelConfig, PerformerModel  # noqa: E402

DEFAULT_OUT = os.path.normpath(os.path.join(HERE, "..", "..", "tests", "io", "fixtures"))

N_TOKENS = 20
# LSH fixtures: every hashed vector (layer, head, round, token) must have its two largest
# candidates [x^R; -x^R] at least this far apart, so that float and double computations (whose
# hashed vectors differ by ~1e-6 relative) put it in the same bucket.
LSH_MIN_MARGIN = 1e-2

_COMMON = dict(vocab=12, layers=2, d_model=16, heads=2, d_ff=32)
_LSH = dict(kind="lsh", rounds=2, buckets=4, chunk=4, shared_qk=True)

# Every option of the format appears at least once: the three mechanisms both ways; pre- and
# post-LN; GELU and ReLU; rotary off, "half" and "interleaved"; learned positions and none;
# tied and separate heads; FAVOR+ with 16 and 8 features.
FIXTURES = [
    dict(name="exact_bidirectional", seed=101, causal=False, norm="pre", activation="gelu",
         rotary=False, max_positions=32, tie_output=False, attention=dict(kind="softmax")),
    dict(name="exact_causal", seed=102, causal=True, norm="post", activation="relu",
         rotary=True, rotary_pairs="half", max_positions=0, tie_output=True,
         attention=dict(kind="softmax")),
    dict(name="favor_bidirectional", seed=103, causal=False, norm="pre", activation="relu",
         rotary=True, rotary_pairs="interleaved", rotary_base=100.0, max_positions=32,
         tie_output=True, attention=dict(kind="favor", features=16, feature_map="positive")),
    dict(name="favor_causal", seed=104, causal=True, norm="post", activation="gelu",
         rotary=False, max_positions=32, tie_output=False, layer_norm_eps=1e-6,
         attention=dict(kind="favor", features=8, feature_map="positive")),
    dict(name="lsh_bidirectional", seed=105, causal=False, norm="post", activation="gelu",
         rotary=True, rotary_pairs="half", max_positions=32, tie_output=False,
         attention=dict(_LSH)),
    dict(name="lsh_causal", seed=106, causal=True, norm="pre", activation="relu",
         rotary=True, rotary_pairs="interleaved", max_positions=0, tie_output=True,
         attention=dict(_LSH)),
]


# Cross-attention blocks (a decoder block over an encoder's memory), one file each:
# NAME.safetensors holds the block's tensors under PyTorch's names (attn.*, cross_attn.*,
# norm1..3, ffn.*; FAVOR+'s projection once, as attn.projection, shared by both attentions),
# each F32 and exactly representable; the inputs x (F32, [N, d_model]) and memory (F32,
# [M, d_model]); memory_keep (I64, [M]: 0 for a padded memory token); and y (F64, [N, d_model]),
# the reference's output computed in float64. Its __metadata__ "config" is the block's shape.
BLOCK_N, BLOCK_M = 12, 9
BLOCK_FIXTURES = [
    dict(name="block_cross_exact", seed=201, causal=True, norm="pre", activation="gelu",
         attention=dict(kind="softmax")),
    dict(name="block_cross_favor", seed=202, causal=False, norm="post", activation="relu",
         layer_norm_eps=1e-6, attention=dict(kind="favor", features=16, feature_map="positive")),
]


def _f32(t: torch.Tensor) -> torch.Tensor:
    """Rounded to float, held in float64."""
    return t.to(torch.float32).to(torch.float64)


def initialise(model: PerformerModel) -> None:
    """Random parameters (drawn from the current torch seed), all exactly float values: weights
    N(0, 1/in), biases N(0, 0.1^2), LayerNorm gains 1 + N(0, 0.1^2), embeddings N(0, 1) (the
    positions 0.5 times that), FAVOR+ projections and LSH rotations N(0, 1) as drawn by the
    library. Biases and gains are non-trivial so that a transposed or misplaced one shows."""
    with torch.no_grad():
        for name, t in model.state_dict(keep_vars=True).items():
            if name.endswith(("norm1.weight", "norm2.weight", "norm3.weight")) or name == "norm.weight":
                v = 1 + 0.1 * torch.randn(t.shape, dtype=torch.float64)
            elif name.endswith(".bias"):
                v = 0.1 * torch.randn(t.shape, dtype=torch.float64)
            elif name == "tok_embed.weight":
                v = torch.randn(t.shape, dtype=torch.float64)
            elif name == "pos_embed.weight":
                v = 0.5 * torch.randn(t.shape, dtype=torch.float64)
            elif name.endswith(".projection") or name.endswith(".rotations"):
                v = torch.randn(t.shape, dtype=torch.float64)
            else:  # nn.Linear weights [out, in]
                v = torch.randn(t.shape, dtype=torch.float64) / t.shape[1] ** 0.5
            t.copy_(_f32(v))


def build(spec: dict):
    cfg_args = dict(_COMMON)
    cfg_args.update({k: v for k, v in spec.items() if k not in ("name", "seed")})
    cfg = ModelConfig(**cfg_args)
    torch.manual_seed(spec["seed"])
    model = PerformerModel(cfg).double()
    initialise(model)
    model.eval()
    return model


def lsh_stats(details):
    margin = min(d["margin"] for d in details)
    allowed = sum(int(d["allowed"].sum()) for d in details)
    n = details[0]["allowed"].shape[0]
    fallbacks = sum(len(d["fallback"]) for d in details)
    # pairs seen in both rounds' windows (the de-duplication of docs §6.6)
    return margin, allowed, n, fallbacks


def generate(spec: dict, out_dir: str, verbose: bool = True) -> None:
    model = build(spec)
    cfg = model.cfg
    # Draw token sequences until every LSH hash has a safe margin (only LSH ever retries).
    gen = torch.Generator().manual_seed(spec["seed"] * 1000 + 7)
    for attempt in range(1000):
        tokens = torch.randint(0, cfg.vocab, (N_TOKENS,), generator=gen, dtype=torch.int64)
        details = []
        with torch.no_grad():
            logits = model(tokens, details=details)
        if cfg.attention.kind != "lsh":
            break
        margin = min(d["margin"] for d in details)
        if margin >= LSH_MIN_MARGIN:
            break
    else:
        raise RuntimeError(f"{spec['name']}: no token sequence with LSH margins >= {LSH_MIN_MARGIN}")
    info = f"max |logit| {logits.abs().max().item():.3f}"
    if cfg.attention.kind == "lsh":
        margin, allowed, n, fallbacks = lsh_stats(details)
        full = n * (n + 1) // 2 if cfg.causal else n * n
        info += (f", token draw {attempt}, min LSH margin {margin:.4f}, window pairs "
                 f"{allowed / len(details):.1f} of {full} per head, fallbacks {fallbacks}")
        # The same buckets in float: run the reference itself in float32.
        details32 = []
        with torch.no_grad():
            build_f32 = load_copy(model, torch.float32)
            build_f32(tokens, details=details32)
        for a, b in zip(details, details32):
            if not (torch.equal(a["q_buckets"], b["q_buckets"]) and torch.equal(a["allowed"], b["allowed"])):
                raise RuntimeError(f"{spec['name']}: float32 hashes differ from float64")
    if cfg.causal:
        # Step-decoding trace: every prefix gives the same logits as the full sequence.
        worst = 0.0
        with torch.no_grad():
            for t in range(1, N_TOKENS + 1):
                worst = max(worst, (model(tokens[:t]) - logits[:t]).abs().max().item())
        if worst > 1e-12 * logits.abs().max().item():
            raise RuntimeError(f"{spec['name']}: prefix logits differ by {worst}")
        info += f", prefixes agree to {worst:.1e}"

    name = spec["name"]
    model_path = os.path.join(out_dir, f"{name}.safetensors")
    save_model(model, model_path, dtype="F32", require_exact=True)
    # Autograd's gradients of L = sum(cotangent * logits), written as a model file of the same
    # layout whose parameters are the gradients (FAVOR+'s projection and LSH's rotations, which
    # have none, keep their values), so that the C++ loader's name mapping reads them too.
    cotangent = torch.randn(logits.shape, generator=torch.Generator().manual_seed(spec["seed"] * 1000 + 11),
                            dtype=torch.float64)
    model.zero_grad()
    (cotangent * model(tokens)).sum().backward()
    gradients = load_copy(model, torch.float64)
    with torch.no_grad():
        for (pname, p), (_, g) in zip(model.named_parameters(), gradients.named_parameters()):
            # Unused, hence no .grad and a zero gradient: the final LayerNorm after post-LN
            # blocks, and the key projection of shared-QK LSH (its keys are its queries).
            unused = (pname.startswith("norm.") and cfg.norm == "post") or (
                ".attn.k_proj." in pname and cfg.attention.kind == "lsh" and cfg.attention.shared_qk)
            if p.grad is None and not unused:
                raise RuntimeError(f"{spec['name']}: {pname} has no gradient")
            g.copy_(p.grad if p.grad is not None else torch.zeros_like(g))
    save_model(gradients, os.path.join(out_dir, f"{name}.gradients.safetensors"), dtype="F64")
    write_safetensors(os.path.join(out_dir, f"{name}.expected.safetensors"),
                      {"tokens": tokens, "logits": logits.to(torch.float64), "cotangent": cotangent},
                      metadata={"format": "performer-fixture", "model": f"{name}.safetensors",
                                "gradients": f"{name}.gradients.safetensors",
                                "generator": "tools/reference/make_fixtures.py"},
                      dtypes={"tokens": "I64", "logits": "F64", "cotangent": "F64"})
    # Read back through the file: the same logits, bit for bit.
    again = load_model(model_path)
    with torch.no_grad():
        back = again(tokens)
    if not torch.equal(back, logits):
        raise RuntimeError(f"{name}: the model read back gives different logits")
    expected, _ = read_safetensors(os.path.join(out_dir, f"{name}.expected.safetensors"))
    assert torch.equal(expected["tokens"], tokens) and torch.equal(expected["logits"], logits)
    assert torch.equal(expected["cotangent"], cotangent)
    if verbose:
        print(f"{name}: {info}")


def generate_block(spec: dict, out_dir: str, verbose: bool = True) -> None:
    args = dict(_COMMON)
    args.update({k: v for k, v in spec.items() if k not in ("name", "seed")})
    cfg = ModelConfig(**args)
    torch.manual_seed(spec["seed"])
    block = Block(cfg, cross_attention=True).double()
    initialise(block)
    block.eval()
    x = _f32(torch.randn(BLOCK_N, cfg.d_model, dtype=torch.float64))
    memory = _f32(torch.randn(BLOCK_M, cfg.d_model, dtype=torch.float64))
    memory_keep = torch.ones(BLOCK_M, dtype=torch.int64)
    memory_keep[2] = memory_keep[7] = 0
    with torch.no_grad():
        y = block(x, memory=memory, memory_mask=memory_keep)
        # The padded memory tokens are never read: garbage there changes nothing.
        garbage = memory.clone()
        garbage[2] = 1e3
        if not torch.equal(block(x, memory=garbage, memory_mask=memory_keep), y):
            raise RuntimeError(f"{spec['name']}: a padded memory token changed the output")
        # A change of the memory must show, or the fixture would not test cross-attention.
        moved = (block(x, memory=2 * memory, memory_mask=memory_keep) - y).abs().max()
        if moved < 1e-3:
            raise RuntimeError(f"{spec['name']}: the output does not depend on the memory")
    tensors = {name: t.to(torch.float32) for name, t in block.state_dict().items()}
    tensors.update(x=x.to(torch.float32), memory=memory.to(torch.float32),
                   memory_keep=memory_keep, y=y)
    config = {k: v for k, v in cfg.to_dict().items()
              if k in ("d_model", "heads", "d_ff", "causal", "norm", "activation",
                       "layer_norm_eps", "attention")}
    path = os.path.join(out_dir, f"{spec['name']}.safetensors")
    write_safetensors(path, tensors,
                      metadata={"format": "performer-block-fixture", "config": json.dumps(config),
                                "generator": "tools/reference/make_fixtures.py"},
                      dtypes={"memory_keep": "I64", "y": "F64"})
    if verbose:
        print(f"{spec['name']}: max |y| {y.abs().max().item():.3f}, moving the memory moves y by "
              f"{moved.item():.3f}")


def load_copy(model: PerformerModel, dtype: torch.dtype) -> PerformerModel:
    other = PerformerModel(model.cfg).to(dtype)
    other.load_state_dict({k: v.to(dtype) for k, v in model.state_dict().items()})
    return other


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=DEFAULT_OUT, help="output directory (default: %(default)s)")
    parser.add_argument("--check", action="store_true",
                        help="regenerate into a temporary directory and compare with --out")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            for spec in FIXTURES:
                generate(spec, tmp, verbose=False)
            for spec in BLOCK_FIXTURES:
                generate_block(spec, tmp, verbose=False)
            names = sorted(os.listdir(tmp))
            match, mismatch, errors = filecmp.cmpfiles(args.out, tmp, names, shallow=False)
            for n in mismatch + errors:
                print(f"differs or missing: {n}")
            print(f"{len(match)} of {len(names)} files identical")
            return 0 if not mismatch and not errors else 1
    os.makedirs(args.out, exist_ok=True)
    for spec in FIXTURES:
        generate(spec, args.out)
    for spec in BLOCK_FIXTURES:
        generate_block(spec, args.out)
    total = sum(os.path.getsize(os.path.join(args.out, f)) for f in os.listdir(args.out)
                if f.endswith(".safetensors"))
    print(f"{len(FIXTURES) + len(BLOCK_FIXTURES)} fixtures in {args.out}, {total} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
