"""Memory plan of a profile run: how many rows, slots and images fit a memory ceiling (`--max-memory`).

The profiler's peak memory is the weights (and the FP reference, when on the device) plus what the
rows in flight need: denoiser activations per row (output measurements: `max_batch` rows per forward;
image measurements: slots × rows per step while sampling), the autograd graph per row (Fisher) and the
VAE decoder per image. Each grows linearly with its batch, so `probe` measures each at 1 and 2 rows
at 2 and 4 rows (after a first call that fills the caches) and `MemoryModel.peak(kind, rows)` predicts
`fixed + base + rows · per_row`, where `fixed` is the pipeline's weights on the device plus the
session's fake-quant weight cache once full (one copy of every quantizable weight per candidate width);
`fit` chooses the largest batches whose predicted peak fits.

Peaks are measured with the device's allocator on CUDA (`torch.cuda.max_memory_allocated`) and, on the
CPU, by `LiveBytes`: every tensor an op creates is counted from its creation to the death of the last
tensor that views its storage, so the same model can be tested on a machine without a GPU.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from mpsearch.profiling.calibration import decode as decode_images
from mpsearch.profiling.engine import Profiler

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}  # fmt: skip
KINDS = ("forward", "fisher", "decode")


def parse_bytes(text: str | int | float) -> int:
    """'22GiB' (2^30), '24GB' (10^9), '512MiB', '1e9' or a number → bytes; ValueError naming the text."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d*)?(?:e\d+)?)\s*([KMGT]i?B|B)?\s*", str(text), re.I)
        if m is None:
            raise ValueError(f"--max-memory {text!r}: expected bytes such as 22GiB, 24GB, 512MiB or 8000000000")
        value = float(m.group(1)) * _UNITS[(m.group(2) or "").upper()]
    if not value > 0:
        raise ValueError(f"--max-memory {text!r}: must be positive")
    return int(value)


class LiveBytes(TorchDispatchMode):
    """Peak bytes of tensors created by ops while active (each storage counted once, freed when the
    last tensor viewing it dies): peak memory of CPU work, where torch keeps no allocator statistics."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self._refs: dict[int, list[int]] = {}  # storage pointer -> [tensors alive, bytes]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                self._track(t)
        return out

    def _track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        ptr, n = storage.data_ptr(), storage.nbytes()
        if n == 0:
            return
        ref = self._refs.get(ptr)
        if ref is None:
            ref = self._refs[ptr] = [0, n]
            self.live += n
            self.peak = max(self.peak, self.live)
        ref[0] += 1
        weakref.finalize(t, self._release, ptr)

    def _release(self, ptr: int) -> None:
        ref = self._refs.get(ptr)
        if ref is None:
            return
        ref[0] -= 1
        if ref[0] == 0:
            self.live -= ref[1]
            del self._refs[ptr]


def peak_bytes(fn: Callable[[], object], device: torch.device | str) -> int:
    """Bytes allocated at the peak of `fn()` above what was allocated before it, on `device`."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    with LiveBytes() as mode:
        fn()
    return mode.peak


@dataclass(frozen=True)
class Line:
    """`base + rows · per_row` bytes."""

    base: int
    per_row: int

    def at(self, rows: int) -> int:
        return self.base + rows * self.per_row

    def rows_within(self, budget: int) -> int:
        """The most rows whose bytes stay within `budget` (0 when not even one fits)."""
        if self.per_row <= 0:
            return 1 << 30 if self.base <= budget else 0
        return max(0, (budget - self.base) // self.per_row)


def line_of(measure: Callable[[int], int], a: int = 2, b: int = 4) -> Line:
    """The line through `measure(a)` and `measure(b)` (bytes at `a` and `b` rows), after one call at 1 row
    so that what a first call creates and keeps (fake-quant weight caches) is not counted per row."""
    measure(1)
    at_a, at_b = measure(a), measure(b)
    per_row = max(0, (at_b - at_a) // (b - a))
    return Line(max(0, at_a - a * per_row), per_row)


@dataclass(frozen=True)
class MemoryModel:
    """Predicted peak bytes of each kind of work: `fixed` (weights, reference and caches already on the
    device) plus the fake-quant weight cache plus its line in rows (`forward`: denoiser rows per call without gradients; `fisher`: rows
    per forward + backward; `decode`: images per VAE decode)."""

    fixed: int
    lines: dict[str, Line]
    weight_cache: int = 0  # bytes of every candidate's fake-quant weights, cached (within a plan's limit)

    def peak(self, kind: str, rows: int, weight_cache: int | None = None) -> int:
        cache = self.weight_cache if weight_cache is None else weight_cache
        return self.fixed + cache + self.lines[kind].at(rows)

    def to_dict(self) -> dict:
        return {"fixed": self.fixed, "weight_cache": self.weight_cache,
                **{k: {"base": v.base, "per_row": v.per_row} for k, v in self.lines.items()}}  # fmt: skip


@dataclass(frozen=True)
class MemoryPlan:
    """Batches that fit: `max_batch` denoiser rows per output forward (and per Fisher chunk),
    `image_slots` slots per image batch, `decode_batch` images per decode, `cache_limit` bytes of
    prefix cache, `weight_cache_limit` bytes of cached fake-quant weights; `predicted` peak bytes of each
    kind at those sizes."""

    max_batch: int
    image_slots: int
    decode_batch: int
    cache_limit: int
    weight_cache_limit: int
    predicted: dict[str, int]


def fit(model: MemoryModel, max_bytes: int, *, rows_per_step: int, max_batch: int, slots: int, fisher: bool,
        images: bool, decode_batch: int = 64) -> MemoryPlan:  # fmt: skip
    """The largest batches (up to the requested ones) whose predicted peak stays within `max_bytes`.

    What is left beside the weights goes first to the smallest workable batch (one row for Fisher and
    output measurements; one step of rows, one slot, and one decoded image for image measurements), then
    to the fake-quant weight cache (up to half of the rest; uncached widths are computed at each use),
    then to the batches; a quarter of what remains (at most 2 GiB) is the slot prefix cache. ValueError
    in one line naming what the smallest batch needs when even that does not fit."""
    kind = "fisher" if fisher else "forward"
    least = 1 if fisher or not images else rows_per_step
    need = max(model.peak(kind, least, 0), model.peak("decode", 1, 0) if images else 0)
    if need > max_bytes:
        what = "one row" if least == 1 else f"one slot ({least} rows per step) and one decoded image"
        raise ValueError(f"--max-memory {_gib(max_bytes)}: nothing fits; the smallest batch needs {_gib(need)} "
                         f"(weights {_gib(model.fixed)}, {what} {_gib(need - model.fixed)})")  # fmt: skip
    wcache = min(model.weight_cache, (max_bytes - need) // 2)
    room = max_bytes - model.fixed - wcache
    rows = max(least, min(max_batch, model.lines[kind].rows_within(room)))
    decoded = max(1, min(decode_batch, model.lines["decode"].rows_within(room))) if images else 1
    image_slots = max(1, min(slots, rows // rows_per_step))
    cache = int(min(2 * 1024**3, max(0, room - model.lines[kind].at(rows)) // 4))
    predicted = {kind: model.peak(kind, rows, wcache) + (0 if fisher else cache)}
    if images:
        predicted["image"] = model.peak("forward", image_slots * rows_per_step, wcache)
        predicted["decode"] = model.peak("decode", decoded, wcache)
    return MemoryPlan(rows, image_slots, decoded, cache, wcache, predicted)


def probe(prof: Profiler, *, fisher: bool, images: bool, layers: list[str] = (), tensors: tuple[str, ...] = ("weight",)
          ) -> MemoryModel:  # fmt: skip
    """Measure the profiler's memory lines on its own model and reference (a few 1- and 2-row calls);
    Fisher's with the gradient hooks of `layers` × `tensors`, as the run will score them."""
    pipe, ref, den = prof.pipe, prof.ref, prof.denoiser
    device = next(den.parameters()).device
    rows = torch.arange(4) % ref.n_rows

    def forward(k: int) -> int:
        with torch.no_grad():
            return peak_bytes(lambda: ref.forward(den, rows[:k]), device)

    def backward(k: int) -> int:
        return peak_bytes(lambda: prof.fisher(list(layers), tensors, rows=k), device)

    def decode(k: int) -> int:
        lat = ref.latents[-1][:1].repeat(k, 1, 1, 1).to(device)
        with torch.no_grad():
            return peak_bytes(lambda: decode_images(pipe, lat, batch=k), device)

    saved, prof.session.weight_cache_limit = prof.session.weight_cache_limit, 0  # cache nothing while probing
    try:
        lines = {"forward": line_of(forward)}
        lines["fisher"] = line_of(backward) if fisher else lines["forward"]
        lines["decode"] = line_of(decode) if images else Line(0, 0)
    finally:
        prof.session.weight_cache_limit = saved
    fixed = resident_bytes(pipe, device)
    if images and device.type != "cpu":
        fixed += ref.images.numel() * 4  # the FP images, copied to the device for the image metrics
    return MemoryModel(fixed, lines, weight_cache_bytes(prof.session))


def weight_cache_bytes(session) -> int:
    """Bytes of a `QuantSession`'s fake-quant weights once every candidate width of every layer is cached."""
    n = len(session.candidates.of("weight"))
    return n * sum(st.module.weight.numel() * st.module.weight.element_size() for st in session.layers.values())


def resident_bytes(pipe, device: torch.device) -> int:
    """Bytes of the pipeline's parameters and buffers on `device` (what stays put while profiling)."""
    seen, total = set(), 0
    for comp in pipe.components.values():
        if isinstance(comp, torch.nn.Module):
            for t in [*comp.parameters(), *comp.buffers()]:
                if t.device == device and t.data_ptr() not in seen:
                    seen.add(t.data_ptr())
                    total += t.numel() * t.element_size()
    return total


def _gib(n: int) -> str:
    """Bytes for a message: GiB from 1 GiB up, else MiB."""
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"
