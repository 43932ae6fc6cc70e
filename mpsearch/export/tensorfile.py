"""safetensors files streamed tensor by tensor: written without building them in memory, read one tensor
(or a range of one) at a time without mapping the file.

safetensors' `save_file` serialises every tensor to bytes in memory before writing (and the export's
`blobs` layout concatenated them before that: two whole copies of a 1.3 GB SDXL checkpoint), and
`load_file` maps the file, whose pages stay resident while any tensor views them. The layout is
safetensors' documented one: an 8-byte little-endian header length, a JSON header
`{"__metadata__": {...}, name: {"dtype", "shape", "data_offsets"}}` padded with spaces to a multiple of
8 bytes, then the tensors' bytes. safetensors reads what `save` writes and `Reader` reads what
safetensors writes (tested); a damaged file raises safetensors' own `SafetensorError`.

    save("w.safetensors", {"blob.uint8": [codes_a, codes_b], "bias": b}, metadata={"schema": "..."})
    r = Reader("w.safetensors"); r.get("blob.uint8", start=10, count=4)   # 4 elements from the 10th
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import torch

DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
          torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
          torch.bool: "BOOL"}  # fmt: skip
TORCH = {v: k for k, v in DTYPES.items()}


def _raw(t: torch.Tensor):
    """The tensor's bytes as a buffer (no copy for a contiguous CPU tensor)."""
    return t.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy()


def save(path: str | Path, tensors: dict[str, torch.Tensor | list[torch.Tensor]],
         metadata: dict[str, str] | None = None) -> int:
    """Write `tensors` as a safetensors file; a list is stored as one 1-D tensor, the concatenation of its
    parts (same dtype), streamed part by part. Returns the header's size in bytes (length field included)."""
    header: dict[str, object] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name, t in tensors.items():
        parts = t if isinstance(t, list) else [t]
        dtypes = {p.dtype for p in parts}
        if len(dtypes) != 1:
            raise ValueError(f"tensor {name!r}: parts of {len(dtypes)} dtypes, one expected")
        n = sum(p.numel() for p in parts)
        size = n * parts[0].element_size()
        shape = [n] if isinstance(t, list) else list(t.shape)
        header[name] = {"dtype": DTYPES[parts[0].dtype], "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for t in tensors.values():
            for part in t if isinstance(t, list) else [t]:
                if part.numel():
                    f.write(_raw(part))
    return 8 + len(text)


class Reader:
    """Tensors of a safetensors file read on demand into fresh memory (the file is not mapped)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        from safetensors import SafetensorError

        try:
            with open(self.path, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(n))
        except (struct.error, ValueError) as e:  # safetensors' own error type: callers report damaged files
            raise SafetensorError(f"{self.path}: not a safetensors header ({e})") from None
        self.data_start = 8 + n
        self.metadata = header.pop("__metadata__", None) or {}
        self.entries = header
        self._file = open(self.path, "rb")  # noqa: SIM115  (kept open for the reads; closed by close())

    def keys(self) -> list[str]:
        return list(self.entries)

    def shape(self, name: str) -> list[int]:
        return self.entries[name]["shape"]

    def get(self, name: str, start: int = 0, count: int | None = None, device: str | torch.device = "cpu"):
        """Tensor `name` (or `count` elements of it from element `start`, flattened), in new memory."""
        e = self.entries[name]
        dtype = TORCH[e["dtype"]]
        item = torch.empty((), dtype=dtype).element_size()
        total = math.prod(e["shape"])
        whole = count is None and start == 0
        count = total - start if count is None else count
        if start < 0 or count < 0 or start + count > total:
            raise ValueError(f"{self.path}: elements [{start}, {start + count}) of {name!r}, which has {total}")
        buf = torch.empty(count * item, dtype=torch.uint8)
        self._file.seek(self.data_start + e["data_offsets"][0] + start * item)
        if count and self._file.readinto(buf.numpy()) != buf.numel():
            from safetensors import SafetensorError

            raise SafetensorError(f"{self.path}: file ends inside tensor {name!r}")
        out = buf.view(dtype).reshape(e["shape"] if whole else [count])
        return out if torch.device(device).type == "cpu" else out.to(device)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
