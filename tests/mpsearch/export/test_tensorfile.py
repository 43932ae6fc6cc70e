"""Streamed safetensors files: safetensors reads what `save` writes, `Reader` reads what safetensors
writes, ranges of a tensor read alone, and bad requests fail with the tensor's name."""

from __future__ import annotations

import pytest
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from mpsearch.export.tensorfile import Reader, save
from mpsearch.export.write import safetensors_header_bytes


def _tensors():
    g = torch.Generator().manual_seed(0)
    return {"w": torch.randn(3, 5, generator=g).half(), "codes": torch.randint(0, 255, (7,), generator=g).to(torch.uint8),
            "signed": torch.randint(-8, 8, (2, 2, 3), generator=g).to(torch.int8), "bf": torch.randn(4).bfloat16(),
            "scalar": torch.tensor(3.5), "empty": torch.zeros(0, 4), "flag": torch.tensor([True, False])}


def test_safetensors_reads_what_save_writes(tmp_path):
    ts = _tensors()
    parts = [torch.arange(5, dtype=torch.uint8), torch.arange(7, dtype=torch.uint8).reshape(7, 1)]
    head = save(tmp_path / "a.safetensors", {**ts, "blob": parts}, metadata={"schema": "x", "layout": "blobs"})
    got = load_file(str(tmp_path / "a.safetensors"))
    assert set(got) == {*ts, "blob"}
    assert all(torch.equal(got[k], v) and got[k].dtype == v.dtype for k, v in ts.items())
    assert torch.equal(got["blob"], torch.cat([p.reshape(-1) for p in parts]))  # parts stream as one 1-D tensor
    with safe_open(str(tmp_path / "a.safetensors"), "pt") as f:
        assert f.metadata() == {"schema": "x", "layout": "blobs"}
    assert head == safetensors_header_bytes(tmp_path / "a.safetensors") and head % 8 == 0
    data = sum(v.numel() * v.element_size() for v in ts.values()) + 12
    assert (tmp_path / "a.safetensors").stat().st_size == head + data  # the tensors' bytes, nothing else


def test_reader_reads_safetensors_files_whole_and_by_range(tmp_path):
    ts = _tensors()
    save_file(ts, str(tmp_path / "b.safetensors"), metadata={"k": "v"})
    with Reader(tmp_path / "b.safetensors") as r:
        assert r.metadata == {"k": "v"} and set(r.keys()) == set(ts)
        for k, v in ts.items():
            got = r.get(k)
            assert got.dtype == v.dtype and torch.equal(got, v)
        assert torch.equal(r.get("w", start=4, count=6), ts["w"].reshape(-1)[4:10])
        assert r.get("codes", start=7).numel() == 0
        with pytest.raises(ValueError, match="'codes', which has 7"):
            r.get("codes", start=5, count=3)


def test_reader_refuses_a_truncated_file(tmp_path):
    save(tmp_path / "c.safetensors", {"w": torch.ones(100)})
    raw = (tmp_path / "c.safetensors").read_bytes()
    (tmp_path / "c.safetensors").write_bytes(raw[:-40])
    with Reader(tmp_path / "c.safetensors") as r, pytest.raises(SafetensorError, match="ends inside tensor 'w'"):
        r.get("w")
    (tmp_path / "c.safetensors").write_bytes(raw[:12])
    with pytest.raises(SafetensorError, match="not a safetensors header"):
        Reader(tmp_path / "c.safetensors")


def test_parts_of_mixed_dtypes_are_refused(tmp_path):
    with pytest.raises(ValueError, match="'blob': parts of 2 dtypes"):
        save(tmp_path / "d.safetensors", {"blob": [torch.zeros(2, dtype=torch.uint8), torch.zeros(2)]})
