"""What a solve reads: a profile's measurements, its header (meta) and the model's inventory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from mpsearch.model import Inventory, inventory
from mpsearch.profiling.metrics import get_metric
from mpsearch.profiling.store import Profile, check_inventory, read_inventory


def load_profile(profile: Any) -> tuple[pd.DataFrame, dict[str, Any], Inventory]:
    """(measurements, meta, inventory) of a profile folder, a `Profile` object or `(df, inventory[, meta])`.

    A folder's meta.json, inventory.json and rows must agree (model, fingerprint, layers, sizes);
    anything malformed or mixed is a `ProfileError` naming the file (and line)."""
    if isinstance(profile, tuple):  # (df, inventory) or (df, inventory, meta)
        df, inv, *rest = profile
        return df, dict(rest[0]) if rest else {}, inv
    if isinstance(profile, (str, Path)):
        profile = Profile.load(profile)
    df, meta = profile.df, dict(profile.meta)
    folder = getattr(profile, "path", None)
    inv_file = Path(folder) / "inventory.json" if folder else None
    if inv_file is not None and inv_file.is_file():
        inv, where = read_inventory(inv_file), str(inv_file)
    else:
        model = meta.get("model") or None
        inv = inventory(model, resolution=meta.get("resolution"))  # "demo"/"demo-dit": a bundled model
        where = f"{folder or 'profile'} (inventory of {inv.model!r})"
    if "layers" in meta:
        check_inventory(meta, inv, where)
    return df, meta, inv


def profile_name(profile: Any, meta: dict[str, Any]) -> str:
    """How a plan names the profile it came from: its folder, else the profile's own name."""
    return str(profile) if isinstance(profile, (str, Path)) else meta.get("name", "")


def group_metrics(df: pd.DataFrame, meta: dict[str, Any]) -> dict[str, str]:
    """MixDQ's pairing of layer groups with metrics: the profile's first quality and content metric."""
    measured = list(dict.fromkeys(df["metric"]))
    declared = meta.get("metrics") if isinstance(meta.get("metrics"), dict) else {}
    kinds = {m: (declared.get(m) or {}).get("kind") or get_metric(m).kind for m in measured}
    out = {}
    for group in ("quality", "content"):
        names = [m for m in measured if kinds[m] == group]
        if not names:
            raise ValueError(f"the profile has no {group} metric; MixDQ pairs quality layers with a quality "
                             "metric and content layers with a content metric")
        out[group] = "sqnr" if "sqnr" in names else "ssim" if "ssim" in names else names[0]
    return out
