"""Writes the cross-check cases (see ../README.md, "Cross-check against the C++ library"):
mechanism cases (random q, k, v, key masks) and model cases (the fixture files, read back through
export.load_model), each with the reference's float64 output.

    /usr/bin/python3 make_cases.py OUT.txt [FIXTURE_DIR]    (default: tests/io/fixtures)

Format: records
  case NAME
  cfg KEY VALUE           (ints / floats / words)
  mat NAME ROWS COLS      followed by ROWS*COLS values (%.17g), row-major
  end
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import torch
from performer_reference import softmax_attention, favor_attention, lsh_attention
from export import load_model, read_safetensors

out = open(sys.argv[1], "w")


def mat(name, t):
    t = t.detach().to(torch.float64)
    if t.dim() == 1:
        t = t.view(1, -1)
    out.write(f"mat {name} {t.shape[0]} {t.shape[1]}\n")
    out.write(" ".join("%.17g" % x for x in t.flatten().tolist()) + "\n")


def cfg(k, v):
    if isinstance(v, bool):
        v = int(v)
    out.write(f"cfg {k} {v}\n")


def f32(t):
    return t.to(torch.float32).to(torch.float64)


torch.manual_seed(1)
count = 0
# ---- mechanisms ---------------------------------------------------------------------------
for n, d in [(20, 8), (37, 8), (9, 4)]:
    for causal in (False, True):
        for masked in (False, True):
            q = f32(torch.randn(n, d))
            k = f32(torch.randn(n, d))
            v = f32(torch.randn(n, d))
            mask = None
            if masked:
                mask = torch.rand(n) > 0.3
                mask[0] = False  # a causal query 0 sees nothing: zero row
                mask[n // 2: n // 2 + 3] = False
            for kind in ("softmax", "favor", "lsh_shared", "lsh_separate"):
                extra = {}
                if kind == "softmax":
                    ref = softmax_attention(q, k, v, causal, mask)
                elif kind == "favor":
                    m = 16
                    W = f32(torch.randn(m, d))
                    extra["W"] = W
                    ref = favor_attention(q, k, v, W, causal, mask)
                else:
                    shared = kind == "lsh_shared"
                    rounds, buckets, chunk = 3, 4, 3
                    # retry rotations until every hash has a safe margin
                    for _ in range(200):
                        R = f32(torch.randn(rounds, d, buckets // 2))
                        ref, det = lsh_attention(q, k, v, R, chunk, causal, mask, shared, return_details=True)
                        if det["margin"] > 1e-3:
                            break
                    extra["R"] = R
                    extra["fallbacks"] = len(det["fallback"])
                    extra["pairs"] = int(det["allowed"].sum())
                out.write(f"case mech_{kind}_n{n}_d{d}_{'causal' if causal else 'bi'}{'_masked' if masked else ''}\n")
                cfg("mech", kind)
                cfg("causal", causal)
                if kind == "favor":
                    cfg("features", 16)
                    mat("W", extra["W"])
                if kind.startswith("lsh"):
                    cfg("rounds", 3); cfg("buckets", 4); cfg("chunk", 3)
                    cfg("shared", kind == "lsh_shared")
                    cfg("ref_fallbacks", extra["fallbacks"])
                    cfg("ref_pairs", extra["pairs"])
                    for r in range(3):
                        mat(f"R{r}", extra["R"][r])
                mat("q", q); mat("k", k); mat("v", v)
                if mask is not None:
                    mat("mask", mask.to(torch.float64))
                mat("expected", ref)
                out.write("end\n")
                count += 1

# ---- models (from the fixture files) ----------------------------------------------------
fx = sys.argv[2] if len(sys.argv) > 2 else os.path.join(HERE, "..", "..", "..", "tests", "io", "fixtures")
for f in sorted(os.listdir(fx)):
    if not f.endswith(".expected.safetensors"):
        continue
    name = f[: -len(".expected.safetensors")]
    model = load_model(os.path.join(fx, name + ".safetensors"))
    exp, _ = read_safetensors(os.path.join(fx, f))
    c = model.cfg
    out.write(f"case model_{name}\n")
    cfg("mech", "model")
    for key, val in c.to_dict().items():
        if key == "attention":
            for k2, v2 in val.items():
                cfg("attention." + k2, v2)
        else:
            cfg(key, val)
    sd = model.state_dict()
    for key, t in sd.items():
        if key.endswith(".rotations"):
            for r in range(t.shape[0]):
                mat(f"{key}.{r}", t[r])
        else:
            mat(key, t)
    mat("tokens", exp["tokens"].to(torch.float64))
    mat("expected", exp["logits"])
    out.write("end\n")
    count += 1
out.close()
print(count, "cases")
