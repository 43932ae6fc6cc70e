"""Which profile `mpsearch demo` / `solve` read for each bundled model, and that `make demo`'s CLI refuses an
unknown model in one line."""

from pathlib import Path

from typer.testing import CliRunner

from mpsearch.cli import app
from mpsearch.evaluation.demo import PROFILE, PROFILE_DIT, PROFILES, profile_folder


def test_bundled_profile_names_resolve_to_the_shipped_profiles(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no ./profiles here
    assert profile_folder(None) == profile_folder("demo") == profile_folder("profiles/demo") == PROFILE
    assert profile_folder("demo-dit") == profile_folder(Path("profiles/demo-dit")) == PROFILE_DIT
    assert profile_folder("elsewhere") == Path("elsewhere")
    assert set(PROFILES) == {"demo", "demo-dit"}
    for folder in PROFILES.values():
        assert (folder / "meta.json").is_file() and (folder / "inventory.json").is_file()


def test_a_local_profile_of_that_name_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "profiles" / "demo-dit").mkdir(parents=True)
    (tmp_path / "profiles" / "demo-dit" / "meta.json").write_text("{}")
    assert profile_folder("profiles/demo-dit") == Path("profiles/demo-dit")


def test_demo_refuses_an_unknown_model_in_one_line():
    result = CliRunner().invoke(app, ["demo", "--model", "sd15"])
    assert result.exit_code == 2
    assert "error: --model sd15: choose among demo, demo-dit" in " ".join(result.output.split())
