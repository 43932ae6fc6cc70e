"""The evaluation report of a small evaluation (tiny pipeline, one prompt per split, one step, a checkpoint):
report.md, grid.png, pareto.png, bitmap.png and results.json, whose numbers are the evaluation's."""

from __future__ import annotations

import json
import math

import pytest
from PIL import Image

from mpsearch.evaluation.evaluator import evaluate
from mpsearch.evaluation.report import write_report
from mpsearch.model import inventory
from mpsearch.planning.plan import LayerBits, Plan

PROMPTS = {"calib": ["a red circle at the top left"], "heldout": ["a green triangle at the bottom right"]}
TILE = 96  # the grid's tile (pixels), `report.image_grid`'s default
DPI, PANEL = 110, (4.2, 3.4)  # the Pareto plot: one panel (inches) per image metric and split, at 110 dpi


@pytest.fixture(scope="module")
def report(tiny_pipe_factory, tmp_path_factory):
    """(evaluation, report folder): W8 content layers, W4 quality ones, baselines and the reloaded checkpoint."""
    pipe = tiny_pipe_factory()
    inv = inventory(pipe)
    plan = Plan({l.name: LayerBits(8 if l.group == "content" else 4) for l in inv.layers}, model=inv.model,
                fingerprint=inv.fingerprint, format="packed", budget="60%")  # fmt: skip
    plan.predict(inv)
    tmp = tmp_path_factory.mktemp("report")
    ev = evaluate(plan, model=pipe, prompts=PROMPTS, steps=1, guidance=3.0, checkpoint=tmp / "ckpt")
    path = write_report(ev, tmp / "report")
    assert path == tmp / "report" / "report.md"
    return ev, tmp / "report"


def _cell(text: str) -> float | None:
    return None if text == "–" else math.inf if text == "∞" else float(text)


def test_results_json_is_the_evaluation(report):
    ev, folder = report
    results = json.loads((folder / "results.json").read_text())
    assert results == json.loads(json.dumps(ev.to_dict(), default=str))
    assert results["results"] == ev.rows()  # numbers as measured, not rounded
    assert results["export"]["matches_prediction"] is True
    assert results["export"]["tensor_bytes"] == ev.plan.predicted["bytes"]


def test_the_results_table_has_every_row_and_number(report):
    ev, folder = report
    text = (folder / "report.md").read_text()
    lines = text.splitlines()
    header = next(ln for ln in lines if ln.startswith("| candidate | split | bytes |"))
    metrics = [c.strip() for c in header.strip("|").split("|")][5:]
    fp16 = next(c.bytes for c in ev.candidates if c.kind == "fp")
    rows = ev.rows()
    for r in rows:
        line = next(ln for ln in lines if ln.startswith(f"| {r['name']} | {r['split']} |"))
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[2:5] == [f"{r['bytes']:,}", f"{r['bytes'] / fp16:.1%}", str(r["mean_w_bits"])]
        for name, cell in zip(metrics, cells[5:], strict=True):
            want = r.get(name)
            assert (_cell(cell) is None if want is None else _cell(cell) == pytest.approx(want, rel=1e-3)), \
                (r["name"], r["split"], name, cell)
    start = lines.index(header) + 2  # after the header and its |---| line
    table = lines[start:lines.index("", start)]
    assert len(table) == len(rows) == len(ev.prompts) * len(ev.candidates)
    assert "| uniform-w4 | heldout |" in text


def test_the_bytes_section_and_histogram_are_the_plans(report):
    ev, folder = report
    text = (folder / "report.md").read_text()
    e = ev.export
    assert f"| predicted (cost model, `packed`) | {e['predicted_bytes']:,} |" in text
    assert f"| written tensors | {e['tensor_bytes']:,} |" in text
    assert f"| file | {e['file_bytes']:,} (" in text
    assert "Written tensors equal the prediction: **True**." in text
    assert f"predicted {ev.plan.predicted['bytes']:,} bytes" in text
    n8 = sum(lay.group == "content" for lay in ev.inventory.layers)
    assert f"Weight-bit histogram (layers): W4: {len(ev.inventory) - n8}, W8: {n8}." in text


def test_the_grid_shows_every_candidates_images_with_the_same_seeds(report):
    ev, folder = report
    text = (folder / "report.md").read_text()
    for f, alt in (("grid.png", "grid"), ("pareto.png", "pareto"), ("bitmap.png", "bits")):
        assert f"![{alt}]({f})" in text
        assert Image.open(folder / f).format == "PNG"
    grid = Image.open(folder / "grid.png").convert("RGB")
    cols = [c for c in ev.candidates if c.images]
    rows = [(split, k) for split, ps in ev.prompts.items() for k in range(len(ps))]
    assert grid.width == len(cols) * TILE and grid.height % len(rows) == 0
    row_h = grid.height // len(rows)  # a tile and its caption
    for r, (split, k) in enumerate(rows):
        for c, cand in enumerate(cols):
            tile = grid.crop((c * TILE, r * row_h, (c + 1) * TILE, r * row_h + TILE))
            want = cand.images[split][k].convert("RGB").resize((TILE, TILE), Image.NEAREST)
            assert tile.tobytes() == want.tobytes(), (cand.name, split)


def test_the_pareto_plot_has_a_panel_per_image_metric_and_split(report):
    ev, folder = report
    from mpsearch.profiling.metrics import METRICS

    image_metrics = {n for n, m in METRICS.items() if m.stage == "image"} | {"pixel_mse"}
    shown = {k for r in ev.rows() for k, v in r.items() if k in image_metrics and v is not None}
    w, h = Image.open(folder / "pareto.png").size
    assert (w, h) == (pytest.approx(len(shown) * PANEL[0] * DPI, abs=1), pytest.approx(len(ev.prompts) * PANEL[1] * DPI, abs=1))


def test_the_bit_map_draws_each_layers_weight_bits_in_its_groups_colour(report):
    """Bars one layer wide and `w_bits` high: each group's painted area is Σ of its layers' bits (W4 for
    the quality layers, W8 for the content ones here), up to the legend swatches and anti-aliased edges."""
    import numpy as np

    from mpsearch.evaluation.report import GROUP_COLORS

    ev, folder = report
    px = np.asarray(Image.open(folder / "bitmap.png").convert("RGB")).astype(int)
    area = {g: int((np.abs(px - [int(c[i:i + 2], 16) for i in (1, 3, 5)]).sum(-1) < 10).sum())
            for g, c in GROUP_COLORS.items()}  # fmt: skip
    bits = {g: sum(ev.plan.layers[lay.name].w_bits for lay in ev.inventory.layers if lay.group == g)
            for g in GROUP_COLORS}  # fmt: skip
    n = {g: sum(lay.group == g for lay in ev.inventory.layers) for g in GROUP_COLORS}
    assert bits == {"quality": 4 * n["quality"], "content": 8 * n["content"]}
    assert area["content"] / area["quality"] == pytest.approx(bits["content"] / bits["quality"], rel=0.05)


def test_without_a_profile_the_report_says_why_there_is_no_predicted_loss(report):
    _, folder = report
    text = (folder / "report.md").read_text()
    assert "## Predicted vs measured loss" in text
    assert "Predicted loss not shown: no profile: pass --profile" in text


def test_predicted_vs_measured_ranks_the_plans_and_flags_the_additive_model(report):
    import dataclasses

    from mpsearch.evaluation.report import predicted_vs_measured

    ev, _ = report
    plans = [c for c in ev.candidates if c.plan is not None and c.kind != "checkpoint"]  # the plan's images again
    measured = {c.name: 1 - sum(m["ssim"] for m in c.metrics.values()) / len(c.metrics) for c in plans}
    names = sorted(measured, key=measured.get)  # best measured first
    assert len(names) >= 3 and len(set(measured.values())) == len(names)
    # predicted in the reverse order: rank agreement -1, and the predicted best is the measured worst
    predicted = {n: float(i) for i, n in enumerate(reversed(names))}
    plan = dataclasses.replace(ev.plan, solver={"rerank": {
        "metric": "ssim", "chosen": 1, "predicted_best": 0, "cost": {"prompts": 8, "renders": 3, "seconds": 2.5},
        "candidates": [{"how": "ilp", "predicted_loss": 0.01, "measured_ssim": 0.8},
                       {"how": "weights mse×4", "predicted_loss": 0.02, "measured_ssim": 0.9}]}})
    ev2 = dataclasses.replace(ev, plan=plan, predicted={"profile": "profiles/x", "loss": predicted,
                                                         "missing": {"random": "layer 'a': W3A16 is not an option"}})
    lines = predicted_vs_measured(ev2)
    for n in names:
        assert f"| {n} | {predicted[n]:.4g} | {measured[n]:.4g} |" in lines
    assert f"Rank agreement (Spearman) over {len(names)} plans: -1.00." in lines
    assert any(ln.startswith(f"The plan predicted best ({names[-1]}) is not the one measured best ({names[0]})")
               for ln in lines)
    assert any(ln.startswith("| random | – (layer 'a': W3A16 is not an option) |") for ln in lines)
    assert "| 1 (kept) | weights mse×4 | 0.02 | 0.9 |" in lines and "kept #1, predicted best #0." in " ".join(lines)


def test_spearman_uses_average_ranks_for_ties():
    from mpsearch.evaluation.report import spearman

    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486832980505138)  # scipy.stats.spearmanr
    assert spearman([1, 2], [1, 2]) is None and spearman([1, 1, 1], [1, 2, 3]) is None
