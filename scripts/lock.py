#!/usr/bin/env python3
"""Write requirements.lock: the exact versions of the runtime dependency closure
installed in this venv (extras and dev tools excluded). `make` installs with it as
a constraints file, so a fresh machine gets the versions the tests passed with.

Run with the venv's python after changing dependencies: .venv/bin/python scripts/lock.py
"""

from __future__ import annotations

import re
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement


def _key(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(root: str) -> dict[str, str]:
    """Every distribution ``root`` needs at run time, with the extras it asks for."""
    env = default_environment()
    seen: dict[str, str] = {}
    done: set[tuple[str, str]] = set()
    todo: list[tuple[str, str]] = [(root, "")]
    while todo:
        name, extra = todo.pop()
        if (_key(name), extra) in done:
            continue
        done.add((_key(name), extra))
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            continue
        seen[_key(name)] = dist.version
        for spec in dist.requires or []:
            req = Requirement(spec)
            if req.marker and not req.marker.evaluate({**env, "extra": extra}):
                continue
            todo.append((req.name, ""))
            todo.extend((req.name, e) for e in req.extras)
    seen.pop(_key(root), None)
    return seen


if __name__ == "__main__":
    pins = closure("gateway")
    out = Path(__file__).resolve().parent.parent / "requirements.lock"
    out.write_text(
        "# Runtime dependency closure, pinned (scripts/lock.py); used as pip constraints.\n"
        + "".join(f"{k}=={v}\n" for k, v in sorted(pins.items()))
    )
    print(f"wrote {out} ({len(pins)} packages)")
