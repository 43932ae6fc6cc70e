"""Slot rows: `take_rows` gathers a slot's rows in the memory layout of the whole batch (a transposed or
batch-inner tensor keeps its strides) and passes non-batch-first values through; `assemble` puts the slot
outputs back into exactly the batch a single forward gives, in that forward's layout."""

from __future__ import annotations

import pytest
import torch

from mpsearch.profiling.rows import assemble, batch_size, take_rows

B, C, HW = 6, 3, 5


def proj_in_input(n: int = B) -> torch.Tensor:
    """[n, HW, C] viewed from a contiguous [n, C, HW]: the strided input of a linear-projection transformer."""
    return torch.randn(n, C, HW).permute(0, 2, 1)


def batch_inner(n: int = B) -> torch.Tensor:
    """[n, HW, C] whose batch dim is not the outermost in memory (a sequence-first tensor viewed batch-first)."""
    return torch.randn(HW, n, C).transpose(0, 1)


@pytest.mark.parametrize("make", [proj_in_input, batch_inner, lambda n=B: torch.randn(n, HW, C)])
def test_take_rows_keeps_values_and_memory_layout(make):
    torch.manual_seed(0)
    x = make()
    idx = torch.tensor([4, 1])
    got = take_rows(x, idx, B)
    assert torch.equal(got, x[idx])
    like = make(len(idx))  # a tensor of 2 rows built the way the batch was: its strides are the target
    assert got.stride() == like.stride()


def test_take_rows_of_a_non_dense_tensor_is_a_plain_gather():
    x = torch.randn(B, 2 * HW, C)[:, ::2]
    got = take_rows(x, torch.tensor([0, 5]), B)
    assert torch.equal(got, x[[0, 5]]) and got.is_contiguous()


def test_take_rows_walks_nested_args_and_passes_the_rest_through():
    torch.manual_seed(0)
    hidden, temb = proj_in_input(), torch.randn(B, 8)
    weight, scale = torch.randn(HW, C), torch.tensor(0.5)  # not batch-first: shared by every slot
    args = (hidden, [temb, weight], {"scale": scale, "mode": "sum", "n": 3, "none": None})
    idx = torch.tensor([2, 3, 5])
    got = take_rows(args, idx, B)
    assert isinstance(got, tuple) and isinstance(got[1], list) and isinstance(got[2], dict)
    assert torch.equal(got[0], hidden[idx]) and got[0].stride() == proj_in_input(3).stride()
    assert torch.equal(got[1][0], temb[idx])
    assert got[1][1] is weight and got[2]["scale"] is scale
    assert got[2]["mode"] == "sum" and got[2]["n"] == 3 and got[2]["none"] is None
    assert batch_size(args, {}) == B and batch_size((), {"x": hidden}) == B and batch_size((3, "a"), {}) == 0


def rowwise(x: torch.Tensor, cfg: float | None) -> tuple:
    """A row-wise block whose slot config changes its output: hidden states in the strided layout of its
    input, a per-row vector, a shared non-batch-first tensor, and a dict of a batch-first and a
    sequence-first tensor."""
    k = 1.0 if cfg is None else cfg
    y = (x * k + 1).permute(0, 2, 1).contiguous().permute(0, 2, 1)  # [n, HW, C] stored as [n, C, HW]
    return y, x.sum((1, 2)) * k, torch.arange(4.0), {"res": x * k, "seq": x.transpose(0, 1) * k}


def test_assemble_rebuilds_the_single_forward_batch_exactly():
    """6 slots of R = 2 rows: slots 0, 2, 5 still share the full-precision input (computed once, on slot 0),
    slots 1 and 3 have diverged (computed together), slot 4 runs its own config. The assembled outputs are
    what one forward over all rows gives, value for value and stride for stride."""
    torch.manual_seed(0)
    S, R = 6, 2
    base = torch.randn(R, HW, C)
    x = base.repeat(S, 1, 1)
    x[1 * R:2 * R] += torch.randn(R, HW, C)
    x[3 * R:4 * R] += torch.randn(R, HW, C)
    x = x.transpose(1, 2).contiguous().transpose(1, 2)  # strided, as the blocks see it
    cfg_of = {4: 0.5}
    same, parts = [0, 2, 5], [([0], None), ([1, 3], None), ([4], 0.5)]
    outs = []
    for slots, cfg in parts:
        idx = torch.cat([torch.arange(s * R, (s + 1) * R) for s in slots])
        outs.append(rowwise(take_rows(x, idx, S * R), cfg))
    got = assemble(outs, parts, same, S, R)

    per_row_cfg = torch.tensor([cfg_of.get(s, 1.0) for s in range(S) for _ in range(R)])
    want_y = torch.cat([rowwise(x[i:i + 1], float(per_row_cfg[i]))[0] for i in range(S * R)])
    want_sum = x.sum((1, 2)) * per_row_cfg
    y, row_sum, shared, out = got
    assert torch.equal(y, want_y) and y.stride() == rowwise(x, None)[0].stride()
    assert torch.equal(row_sum, want_sum)
    assert shared is outs[0][2]  # not batch-first: passed through from the first part
    assert torch.equal(out["res"], x * per_row_cfg[:, None, None])
    # `seq` is [HW, n, C]: its first dim is not the batch, so it passes through from the first part too
    assert out["seq"] is outs[0][3]["seq"]


def test_assemble_keeps_a_diffusers_output_whole():
    """The denoiser's `UNet2DConditionOutput` (a dict subclass) comes back as one, with every slot's rows."""
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

    torch.manual_seed(0)
    S, R = 3, 2
    x = torch.randn(S * R, 4)
    parts = [([1], None), ([0, 2], None)]  # nothing shared: every slot diverged or runs alone
    outs = [UNet2DConditionOutput(sample=x[torch.cat([torch.arange(s * R, (s + 1) * R) for s in slots])] * 2)
            for slots, _ in parts]
    got = assemble(outs, parts, [], S, R)
    assert isinstance(got, UNet2DConditionOutput) and torch.equal(got.sample, x * 2)
