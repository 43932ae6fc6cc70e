"""What every profile importer shares: the registry of formats and the all-or-nothing folder writer.

An importer turns another tool's sensitivity logs into an mpsearch profile folder (meta.json,
inventory.json, measurements.jsonl) that `mpsearch solve` reads without the model's weights. It is a
function `(src, out, *, model=None) -> Profile` registered with `@register_importer("name")`;
`mpsearch import-profile NAME DIR --out PROFILE` runs it.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mpsearch.profiling.store import COLUMNS, Profile, ProfileError
from solvers.registry import Registry

__all__ = ["IMPORTERS", "import_profile", "register_importer", "write_profile"]

Importer = Callable[..., Profile]
IMPORTERS: Registry[Importer] = Registry("profile format")


def register_importer(name: str) -> Callable[[Importer], Importer]:
    """Decorator: make an importer reachable as `import_profile(name, ...)`."""
    return IMPORTERS.register(name)


def import_profile(fmt: str, src: str | Path, out: str | Path, **options: Any) -> Profile:
    """Import `src` (logs in format `fmt`) as the profile folder `out`; see the format's importer."""
    return IMPORTERS.lookup(fmt)(Path(src), Path(out), **options)


def _line(row: dict[str, Any]) -> str:
    value = row.get("value")
    row = {k: row[k] for k in COLUMNS} | {"value": value if value is None or math.isfinite(value) else None}
    return json.dumps(row, separators=(",", ":"))


def write_profile(out: Path, meta: dict[str, Any], inventory: Any, rows: list[dict[str, Any]]) -> Profile:
    """Write a profile folder all at once: into a hidden folder beside `out`, read back and checked, then
    renamed into place; `out` must not exist or be an empty folder. Returns the profile as read back."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ProfileError(f"{out} already exists and is not an empty folder: choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    try:
        tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the profile is an ordinary folder
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
        inventory.save(tmp / "inventory.json")
        (tmp / "measurements.jsonl").write_text("".join(_line(r) + "\n" for r in rows))
        Profile.load(tmp)  # the folder must read back as a valid profile before it takes `out`'s place
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Profile.load(out)
