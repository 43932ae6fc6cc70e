"""What a solve reads: the shipped demo profile folder, tuples, and MixDQ's metric pairing."""

from pathlib import Path

import pandas as pd
import pytest

from mpsearch.planning.inputs import group_metrics, load_profile, profile_name
from mpsearch.profiling.store import Profile

DEMO = Path(__file__).resolve().parents[3] / "profiles" / "demo"


def test_a_profile_folder_gives_its_rows_meta_and_saved_inventory():
    df, meta, inv = load_profile(DEMO)
    assert set(df.loc[df.tensor != "unit", "layer"]) == set(inv.names)  # every layer measured, none foreign
    assert meta["model"] == "demo" and inv.model == "demo"
    same = load_profile(Profile.load(DEMO))
    assert same[2].names == inv.names and len(same[0]) == len(df)
    assert profile_name(DEMO, meta) == str(DEMO) and profile_name(same, {"name": "x"}) == "x"


def test_tuples_pass_through():
    df = pd.DataFrame({"metric": ["sqnr"]})
    assert load_profile((df, "inv")) == (df, {}, "inv")
    assert load_profile((df, "inv", {"a": 1}))[1] == {"a": 1}


def test_group_metrics_pairs_quality_and_content_metrics():
    df = pd.DataFrame({"metric": ["mse", "adherence", "sqnr", "ssim"]})
    assert group_metrics(df, {}) == {"quality": "sqnr", "content": "ssim"}  # preferred when measured
    assert group_metrics(df[df.metric.isin(["mse", "adherence"])], {}) == {"quality": "mse", "content": "adherence"}
    declared = {"metrics": {"mine": {"kind": "content"}}}  # a plug-in's kind as the profile declared it
    assert group_metrics(pd.DataFrame({"metric": ["mse", "mine"]}), declared)["content"] == "mine"
    with pytest.raises(ValueError, match="the profile has no content metric"):
        group_metrics(pd.DataFrame({"metric": ["sqnr"]}), {})
