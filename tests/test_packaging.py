"""A built wheel installs into a new venv and gives a working `gateway`, with no
dev-only imports at runtime and the migrations inside the package."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

from tests.conftest import ROOT

DEV_ONLY = ("pytest", "schemathesis", "hypothesis", "xdist", "trustme")


def run(*args, **kw):
    p = subprocess.run(args, capture_output=True, text=True, timeout=300, **kw)
    assert p.returncode == 0, (args, p.stdout[-2000:], p.stderr[-2000:])
    return p


def test_wheel_installs_and_runs_without_dev_packages(tmp_path):
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"), str(ROOT))
    (wheel,) = (tmp_path / "dist").glob("gateway-*.whl")
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", str(venv))
    py = venv / "bin" / "python"
    # Runtime dependencies come from this venv's site-packages (no network in a
    # test); the gateway itself only from the wheel.
    site = Path(run(str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip())
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run(str(py), "-m", "pip", "install", "--no-deps", "-q", str(wheel))

    work = tmp_path / "elsewhere"
    work.mkdir()
    (work / "config.toml").write_text(
        '[storage]\ndatabase_url = "sqlite+aiosqlite:///gw.db"\nroot = "storage"\n'
        '[[organizations]]\nname = "acme"\n'
        '[[queues]]\nname = "invoices"\norganization = "acme"\naddresses = ["invoices@ap.example.com"]\n'
    )
    assert "Email-ingestion gateway" in run(str(venv / "bin" / "gateway"), "--help", cwd=work).stdout
    out = run(str(py), "-m", "gateway", "db", "upgrade", cwd=work).stdout
    # "database at revision X (code: X)": the migrations shipped in the wheel.
    revs, _, code = out.strip().removeprefix("database at revision ").partition(" (code: ")
    assert revs and revs == code.rstrip(")"), out
    # Import every module of the installed package and see what came along.
    probe = (
        "import importlib, pkgutil, sys, gateway\n"
        "assert 'site-packages' in gateway.__file__, gateway.__file__\n"
        "for m in pkgutil.walk_packages(gateway.__path__, 'gateway.'):\n"
        "    if '.migrations' not in m.name and not m.name.endswith('__main__'): importlib.import_module(m.name)\n"
        f"bad = [n for n in sys.modules if n.split('.')[0] in {DEV_ONLY!r}]\n"
        "assert not bad, bad\n"
    )
    run(str(py), "-c", probe, cwd=work)
