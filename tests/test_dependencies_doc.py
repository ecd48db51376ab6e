"""docs/dependencies.md stays in step with requirements.lock and the installed
packages, and the licence verdicts it prints are the right ones."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from email.message import Message

import pytest

from tests.conftest import ROOT

SCRIPT = ROOT / "scripts" / "dependencies.py"


@pytest.fixture(scope="module")
def deps():
    spec = importlib.util.spec_from_file_location("dependencies_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_document_is_what_the_script_writes_now(deps):
    # Through the command line, as a person would run it after changing the lock.
    p = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    doc = (ROOT / "docs" / "dependencies.md").read_text()
    assert doc == deps.render()
    pinned = [name for name, _ in deps.read_lock()]
    table = doc.split("\n## ", 1)[0]  # the licence table; the advisory sections follow it
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| package |")]
    assert [r.split(" | ")[0].removeprefix("| ") for r in rows] == pinned
    assert "| aioimaplib | 2.0.3 | `GPL-3.0-only` | License-Expression | runtime | yes |" in doc


def test_every_pyproject_dependency_is_in_the_runtime_closure(deps):
    closure = deps.runtime_closure()
    # Direct ones and some only reached transitively (fastapi → starlette, httpx → httpcore).
    assert {"aioimaplib", "fastapi", "starlette", "httpcore", "sqlalchemy", "greenlet"} <= closure
    assert not {"pytest", "schemathesis", "setuptools"} & closure


def test_a_stale_document_fails_the_check(deps, tmp_path, monkeypatch):
    stale = tmp_path / "dependencies.md"
    stale.write_text(deps.render().replace("| 2.0.3 |", "| 1.0.0 |"))
    monkeypatch.setattr(deps, "DOC", stale)
    monkeypatch.setattr(deps, "ROOT", tmp_path)
    assert deps.main(["--check"]) == 1
    assert deps.main([]) == 0 and deps.main(["--check"]) == 0


def test_a_lock_pin_other_than_the_installed_version_refuses_to_document(deps, tmp_path, monkeypatch):
    lock = tmp_path / "requirements.lock"
    lock.write_text((ROOT / "requirements.lock").read_text().replace("aioimaplib==2.0.3", "aioimaplib==1.0.0"))
    monkeypatch.setattr(deps, "LOCK", lock)
    with pytest.raises(SystemExit, match="aioimaplib: requirements.lock pins 1.0.0, 2.0.3 is installed"):
        deps.render()
    lock.write_text("aioimaplib==2.0.3\n")
    with pytest.raises(SystemExit, match="runtime dependencies missing from requirements.lock: .*fastapi"):
        deps.render()


@pytest.mark.parametrize(
    ("expression", "ok"),
    [
        ("MIT", True),
        ("GPL-3.0-only", True),
        ("MPL-2.0", True),
        ("Apache-2.0 AND BSD-2-Clause", True),
        ("MIT OR GPL-2.0-only", True),
        ("GPL-2.0-only", False),
        ("MIT AND GPL-2.0-only", False),
        ("(MIT OR SSPL-1.0) AND BSD-4-Clause", False),
        ("(MIT OR SSPL-1.0) AND BSD-3-Clause", True),
        ("Apache-2.0 WITH LLVM-exception", True),
        ("UNKNOWN", False),
        ("MIT AND", False),
        ("(MIT", False),
        ("MIT MIT", False),
    ],
)
def test_compatibility_with_gpl3_or_later(deps, expression, ok):
    assert deps.compatible(expression) is ok


def _metadata(**fields) -> Message:
    m = Message()
    for name, value in fields.items():
        for v in value if isinstance(value, list) else [value]:
            m[name.replace("_", "-")] = v
    return m


def test_licence_is_read_from_expression_then_license_field_then_classifiers(deps):
    assert deps.licence_of(_metadata(License_Expression="MIT", License="GPL-2.0-only")) == ("MIT", "License-Expression")
    assert deps.licence_of(_metadata(License="BSD-3-Clause")) == ("BSD-3-Clause", "License")
    # A whole licence text in License is no expression; the classifiers decide.
    mit = "License :: OSI Approved :: MIT License"
    assert deps.licence_of(_metadata(License="Copyright (c) 2020 Someone\n\nPermission is hereby granted", Classifier=[mit])) == ("MIT", "classifiers")
    # "BSD License" says nothing about the clauses (4-clause is incompatible): unknown, and so flagged.
    assert deps.licence_of(_metadata(Classifier=["License :: OSI Approved :: BSD License"])) == ("UNKNOWN", "none")
    assert deps.licence_of(_metadata(Classifier=[mit, "License :: OSI Approved :: Apache Software License"])) == (
        "Apache-2.0 OR MIT",
        "classifiers",
    )


def test_floors_in_the_document_are_the_pyproject_floors_and_fix_every_snapshot_advisory(deps):
    """The advisory table names the floors pyproject.toml declares, and no floor
    is a version the audit's snapshot knows an advisory for."""
    import json
    import tomllib

    from packaging.requirements import Requirement
    from packaging.version import Version

    floors = {}
    for spec in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]:
        req = Requirement(spec)
        lows = [s.version for s in req.specifier if s.operator == ">="]
        if lows:
            floors[deps.key(req.name)] = lows[0]
    doc = (ROOT / "docs" / "dependencies.md").read_text()
    section = doc.split("## Known advisories", 1)[1].split("\n## ", 1)[0]
    named = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 3 and cells[0] not in ("package", "---"):
            named[cells[0]] = cells[1]
    assert set(named) >= {"aiosmtpd", "python-multipart", "starlette", "mail-parser"}
    for name, floor in named.items():
        assert floors.get(name) == floor, f"{name}: the document says {floor}, pyproject.toml {floors.get(name)}"

    snapshot = json.loads((ROOT / "scripts" / "advisories.json").read_text())
    for vuln in snapshot["vulns"]:
        for affected in vuln["affected"]:
            name = deps.key(affected["package"]["name"])
            if name not in floors:
                continue
            fixed = [e["fixed"] for r in affected["ranges"] for e in r["events"] if "fixed" in e]
            assert fixed and Version(floors[name]) >= max(map(Version, fixed)), (
                f"{name}>={floors[name]} admits a version affected by {vuln['id']} (fixed in {fixed})"
            )


def test_the_document_states_the_cpython_the_parser_needs(deps):
    doc = deps.render()
    section = doc.split("## The CPython the parser needs", 1)[1]
    for needed in ("gh-136063", "3.11.15", "3.12.13", "3.11.7"):
        assert needed in section
