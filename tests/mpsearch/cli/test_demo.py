"""`mpsearch demo` (`mpsearch/cli/demo.py`): its options, and a bad budget as one error line, exit 2,
nothing written. (The whole job is `make demo`: minutes on 2 cores, too slow for a unit test.)"""

from typer.testing import CliRunner

from mpsearch.cli import app

runner = CliRunner()


def test_demo_help_names_its_options():
    result = runner.invoke(app, ["demo", "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    for option in ("--out", "--budget", "--n-prompts"):
        assert option in result.output


def test_a_bad_budget_is_one_error_line(tmp_path):
    out = tmp_path / "demo"
    for budget, says in (("nonsense", "cannot read budget 'nonsense'"),
                         ("0.1bits", "budget 0.1bits is infeasible: the smallest feasible is 2bits")):  # fmt: skip
        result = runner.invoke(app, ["demo", "--out", str(out), "--budget", "3bits", "--budget", budget])
        assert result.exit_code == 2, result.output
        assert result.stderr.splitlines()[-1].startswith(f"error: {says}")
        assert result.stderr.count("error:") == 1
        assert not out.exists()
