import os
import subprocess
import sys
from pathlib import Path

import pytest

from solvers import Registry, available_solvers, get_solver, register_solver, solve

ROOT = Path(__file__).resolve().parents[2]


def test_builtin_solvers_registered():
    assert {"ilp", "mixdq", "evolution", "bruteforce"} <= set(available_solvers())


def test_unknown_solver_names_the_choices():
    with pytest.raises(ValueError, match="available"):
        get_solver("nope")


def test_register_and_dispatch():
    @register_solver("_test_echo")
    def echo(problem, **kw):
        return kw

    assert solve(None, "_test_echo", x=1) == {"x": 1}


def test_registry_duplicate_rule_and_lookup_error():
    reg = Registry("widget", error=KeyError, unknown="no {kind} {name!r}; have: {names}")
    one, two = object(), object()
    assert reg.add("a", one) is one
    assert reg.add("a", one) is one  # the same entry again: a no-op
    with pytest.raises(ValueError, match="widget 'a' is already registered"):
        reg.add("a", two)
    assert reg.add("a", two, replace=True) is two and reg.lookup("a") is two
    reg.register("b")(one)
    assert reg.names() == ["a", "b"]
    with pytest.raises(KeyError, match="no widget 'c'; have: a, b"):
        reg.lookup("c")


def test_builtin_solvers_declare_what_they_consume():
    ilp, mixdq, evolution = get_solver("ilp"), get_solver("mixdq"), get_solver("evolution")
    assert (ilp.consumes, ilp.budget, ilp.budget_kinds, ilp.prunes) == ("problem", "ceiling", None, True)
    assert {"backend", "time_limit", "gap"} <= ilp.option_names()
    assert (mixdq.budget, mixdq.budget_kinds, mixdq.weight_only, mixdq.prunes) == ("target", ("bits",), False, False)
    assert (mixdq.act_cost, mixdq.image_pick) == ("abits", True) and not ilp.image_pick
    assert mixdq.accepts("bits") and not mixdq.accepts("bytes")
    assert {"backend", "group_metric", "band"} <= mixdq.option_names() and "time_limit" not in mixdq.option_names()
    assert evolution.consumes == "steps" and {"config", "seed"} == evolution.option_names()


def test_a_solver_declares_a_known_contract():
    with pytest.raises(ValueError, match="consumes must be one of"):
        register_solver("_test_bad", consumes="images")(lambda problem: None)
    assert "_test_bad" not in available_solvers()


def test_import_solvers_loads_no_torch_diffusers_or_pandas():
    code = ("import sys, solvers; bad = [m for m in ('torch', 'diffusers', 'pandas') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
