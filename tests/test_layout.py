"""The rules of the house, checked on the source: no import cycles between modules of mpsearch/ and
solvers/ (module-level imports, and function-level ones too outside the CLI), no private name imported
across modules, every module with its mirror test file, no function over 80 lines."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("mpsearch", "solvers")


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(module: str, path: Path, modules: dict[str, Path], *, nested: bool):
    """(target module, imported names) of each import in `module`; function-level ones when `nested`."""
    tree = ast.parse(path.read_text())
    is_pkg = path.name == "__init__.py"
    nodes = ast.walk(tree) if nested else tree.body
    for node in nodes:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in modules:
                    yield alias.name, []
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".") if is_pkg else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in modules:
                    yield sub, []
                elif base in modules:
                    yield base, [alias.name]


def _graph(nested: bool) -> dict[str, set[str]]:
    modules = _modules()
    graph = {m: set() for m in modules}
    for m, path in modules.items():
        if nested and m.startswith("mpsearch.cli"):
            continue  # the CLI imports its verbs lazily; nothing imports the CLI
        for target, _ in _imports(m, path, modules, nested=nested):
            if target != m:
                graph[m].add(target)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                return stack[stack.index(t):] + [t]
            if t not in state and (found := visit(t)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_no_import_cycle_at_module_level():
    assert _cycle(_graph(nested=False)) is None


def test_no_private_name_crosses_modules():
    modules = _modules()
    crossing = [f"{m} imports {target}.{name}" for m, path in modules.items()
                for target, names in _imports(m, path, modules, nested=True) for name in names
                if name.startswith("_") and not name.startswith("__") and target != m]  # fmt: skip
    assert crossing == []


def test_the_checker_sees_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_through_function_level_imports():
    """A function-level import hides a cycle from Python, not from the reader: none outside the CLI."""
    assert _cycle(_graph(nested=True)) is None


MIRROR_PENDING: set[str] = set()  # modules whose mirror test is still to come (none)


def test_every_module_has_its_mirror_test_file():
    """Tests mirror the package: `mpsearch/<pkg>/<mod>.py` is tested in `tests/mpsearch/<pkg>/test_<mod>.py`,
    so a module's tests are found by its path (`__init__.py`, `__main__.py`: re-exports and `python -m` glue)."""
    missing = {p.relative_to(ROOT).as_posix() for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")
               if p.stem not in ("__init__", "__main__")
               and not (ROOT / "tests" / p.relative_to(ROOT).parent / f"test_{p.name}").is_file()}  # fmt: skip
    assert missing <= MIRROR_PENDING, sorted(missing - MIRROR_PENDING)


MAX_FUNCTION_LINES = 80


def test_no_function_is_longer_than_80_lines():
    """A function a reader must scroll through does several things: split it by meaning (benchmarks and
    tests are scripts, not held to it)."""
    long = [f"{path.relative_to(ROOT).as_posix()}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1})"
            for path in _modules().values() for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]  # fmt: skip
    assert not long, long
