import pytest

from solvers import available_solvers, get_solver, register_solver, solve


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
