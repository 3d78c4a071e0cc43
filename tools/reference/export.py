"""Reads and writes performer model files (docs/model_format.md) and plain safetensors files.

The container is written by hand (struct + json), without the safetensors package:
8-byte little-endian header length N, a JSON header padded with spaces to a multiple of 8,
then the tensors' raw little-endian C-order bytes, in the order of the header.

    /usr/bin/python3 tools/reference/export.py show FILE          # header and metadata
    /usr/bin/python3 tools/reference/export.py roundtrip FILE     # read, rebuild, write, compare

Library use:
    save_model(model, path, dtype="F32")   # or "F64"
    model = load_model(path)               # a PerformerModel in float64
    write_safetensors(path, {"tokens": t, "logits": l}, metadata={...})
    tensors, metadata = read_safetensors(path)
"""

from __future__ import annotations

import json
import os
import struct
import sys
from typing import Dict, Optional, Tuple

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from performer_reference import ModelConfig, PerformerModel  # noqa: E402

FORMAT = "performer-model"
FORMAT_VERSION = "1"

_DTYPES = {
    "F64": (torch.float64, 8),
    "F32": (torch.float32, 4),
    "I64": (torch.int64, 8),
    "I32": (torch.int32, 4),
}
_BY_TORCH = {v[0]: k for k, v in _DTYPES.items()}


def _tensor_bytes(t: torch.Tensor) -> bytes:
    # torch CPU tensors are little-endian on every platform torch supports; check anyway.
    if sys.byteorder != "little":
        raise RuntimeError("big-endian host: byte swapping is not implemented")
    return t.detach().contiguous().cpu().numpy().tobytes(order="C")


def write_safetensors(path: str, tensors: Dict[str, torch.Tensor],
                      metadata: Optional[Dict[str, str]] = None,
                      dtypes: Optional[Dict[str, str]] = None) -> None:
    """Writes `tensors` (name -> tensor) in the order given. `dtypes` maps a name to "F32",
    "F64", "I64" or "I32" (default: the tensor's own type). Every metadata value must be a str."""
    header: Dict[str, object] = {}
    if metadata:
        for k, v in metadata.items():
            if not isinstance(v, str):
                raise TypeError(f"metadata {k!r} must be a string")
        header["__metadata__"] = dict(metadata)
    blobs = []
    offset = 0
    for name, t in tensors.items():
        code = (dtypes or {}).get(name) or _BY_TORCH.get(t.dtype)
        if code not in _DTYPES:
            raise TypeError(f"{name}: unsupported dtype {t.dtype}")
        data = _tensor_bytes(t.to(_DTYPES[code][0]))
        header[name] = {"dtype": code, "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * ((-len(text)) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


def read_header(path: str) -> dict:
    """The JSON header of a safetensors file (with its "__metadata__")."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n).decode("utf-8"))


def read_safetensors(path: str) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """Returns ({name: tensor in its stored dtype}, metadata)."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    metadata = header.pop("__metadata__", {})
    data = raw[8 + n:]
    tensors = {}
    for name, info in header.items():
        dtype, size = _DTYPES[info["dtype"]]
        b, e = info["data_offsets"]
        shape = info["shape"]
        count = 1
        for s in shape:
            count *= s
        if e - b != count * size or e > len(data):
            raise ValueError(f"{path}: {name}: bad data_offsets {info['data_offsets']}")
        t = torch.frombuffer(bytearray(data[b:e]), dtype=dtype) if count else torch.empty(0, dtype=dtype)
        tensors[name] = t.reshape(shape).clone()
    return tensors, metadata


def model_tensors(model: PerformerModel) -> Dict[str, torch.Tensor]:
    """The file's tensor set: the state_dict (parameters and the projection / rotation buffers)."""
    return {name: t for name, t in model.state_dict().items()}


def save_model(model: PerformerModel, path: str, dtype: str = "F32",
               require_exact: bool = False) -> None:
    """Writes `model` with every tensor stored as `dtype` ("F32" or "F64"). With require_exact,
    refuses a value that the chosen type does not hold exactly."""
    if dtype not in ("F32", "F64"):
        raise ValueError("dtype must be F32 or F64")
    tensors = model_tensors(model)
    if require_exact:
        for name, t in tensors.items():
            stored = t.to(_DTYPES[dtype][0]).to(torch.float64)
            if not torch.equal(stored, t.to(torch.float64)):
                raise ValueError(f"{name} is not exactly representable as {dtype}")
    metadata = {"format": FORMAT, "format_version": FORMAT_VERSION,
                "config": model.cfg.to_json()}
    write_safetensors(path, tensors, metadata, {name: dtype for name in tensors})


def load_model(path: str, dtype: torch.dtype = torch.float64) -> PerformerModel:
    """Reads a model file into a PerformerModel of `dtype` (float64 by default). Strict: every
    expected tensor present with its shape, nothing else."""
    tensors, metadata = read_safetensors(path)
    if metadata.get("format") != FORMAT or metadata.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: not a {FORMAT} version {FORMAT_VERSION} file")
    cfg = ModelConfig.from_dict(json.loads(metadata["config"]))
    model = PerformerModel(cfg).to(dtype)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise ValueError(f"{path}: missing {missing}, unexpected {extra}")
    for name, t in tensors.items():
        if tuple(t.shape) != tuple(expected[name].shape):
            raise ValueError(f"{path}: {name} is {list(t.shape)}, expected {list(expected[name].shape)}")
    model.load_state_dict({k: v.to(dtype) for k, v in tensors.items()}, strict=True)
    return model


def _main(argv) -> int:
    if len(argv) != 3 or argv[1] not in ("show", "roundtrip"):
        print(__doc__)
        return 2
    path = argv[2]
    if argv[1] == "show":
        tensors, metadata = read_safetensors(path)
        for k, v in metadata.items():
            print(f"{k}: {v}")
        for name, t in tensors.items():
            print(f"{name}: {t.dtype} {list(t.shape)}")
        return 0
    model = load_model(path)
    tensors, _ = read_safetensors(path)
    stored = {info["dtype"] for name, info in read_header(path).items() if name != "__metadata__"}
    tmp = path + ".roundtrip.tmp"
    save_model(model, tmp, dtype=stored.pop() if len(stored) == 1 else "F64")
    same = open(tmp, "rb").read() == open(path, "rb").read()
    os.remove(tmp)
    print("identical bytes" if same else "bytes differ")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(_main(sys.argv))
