"""scripts/audit.py: the advisory audit `make test` runs before the tests. It fails
on a pin with a known advisory, passes the real lock, and says plainly when no
advisory service answers (then the committed snapshot gates alone)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

SCRIPT = ROOT / "scripts" / "audit.py"
# A proxy nobody listens on: every outside request fails at once, as on a machine
# without network; the snapshot server on 127.0.0.1 is exempt (NO_PROXY).
OFFLINE = {"HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9"}


@pytest.fixture(scope="module")
def audit():
    spec = importlib.util.spec_from_file_location("audit_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="module")
def live(audit):
    """Skip unless OSV answers from here (this machine reaches no advisory service)."""
    why = audit.probe(audit.OSV_URL, b'{"package": {"name": "pip", "ecosystem": "PyPI"}, "version": "0"}')
    if why:
        pytest.skip(f"OSV unreachable from this machine ({why}): the live audit cannot be exercised")


def test_a_pin_with_a_known_advisory_fails_the_audit(tmp_path):
    lock = tmp_path / "requirements.txt"
    lock.write_text("aiosmtpd==1.4.4\npython-multipart==0.0.34\n")
    p = run("-r", str(lock), env=OFFLINE)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "FAILED" in p.stdout
    assert "aiosmtpd==1.4.4: CVE-2024-27305 GHSA-pr2m-px7j-xg65 (fixed in 1.4.5)" in p.stdout
    assert "GHSA-wgjv-9j3q-jhg8 (fixed in 1.4.6)" in p.stdout
    assert "python-multipart" not in p.stdout.split("FAILED", 1)[1]


def test_an_advisory_named_with_ignore_is_excused(tmp_path):
    lock = tmp_path / "requirements.txt"
    lock.write_text("aiosmtpd==1.4.5\n")
    assert run("-r", str(lock), "--offline").returncode == 1
    p = run("-r", str(lock), "--offline", "--ignore", "GHSA-wgjv-9j3q-jhg8")
    assert p.returncode == 0, p.stdout + p.stderr


def test_the_real_lock_passes_and_offline_is_said_plainly():
    p = run(env=OFFLINE)
    assert p.returncode == 0, p.stdout + p.stderr
    out = p.stdout
    assert "live OSV audit skipped" in out and "live PyPI audit skipped" in out
    assert "WARNING: no advisory service answered" in out
    assert "audit: ok" in out and "sources: snapshot" in out
    pins = [line for line in (ROOT / "requirements.lock").read_text().splitlines() if "==" in line]
    assert f"audit: {len(pins)} pins in requirements.lock" in out


def test_offline_flag_asks_no_service(tmp_path):
    p = run("--offline", env=OFFLINE)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "not asked (--offline)" in p.stdout
    assert "unreachable" not in p.stdout


def test_a_lock_line_that_is_not_an_exact_pin_is_an_error(tmp_path):
    lock = tmp_path / "requirements.txt"
    lock.write_text("aiosmtpd>=1.4\n")
    p = run("-r", str(lock), "--offline")
    assert p.returncode == 2
    assert "not an exact pin" in p.stderr


def test_refresh_without_osv_leaves_the_snapshot_alone(tmp_path):
    snapshot = tmp_path / "advisories.json"
    snapshot.write_text((ROOT / "scripts" / "advisories.json").read_text())
    before = snapshot.read_text()
    p = run("--refresh", "--snapshot", str(snapshot), env=OFFLINE)
    assert p.returncode == 2
    assert "unreachable" in p.stderr and "left as it is" in p.stderr
    assert snapshot.read_text() == before


@pytest.mark.parametrize(
    ("events", "version", "hit"),
    [
        ([{"introduced": "0"}, {"fixed": "1.4.5"}], "1.4.4", True),
        ([{"introduced": "0"}, {"fixed": "1.4.5"}], "1.4.4.post2", True),
        ([{"introduced": "0"}, {"fixed": "1.4.5"}], "1.4.5", False),
        ([{"introduced": "0.39.0"}, {"fixed": "0.49.1"}], "0.38.9", False),
        ([{"introduced": "0.39.0"}, {"fixed": "0.49.1"}], "0.39.0", True),
        ([{"introduced": "1.0"}, {"last_affected": "1.2"}], "1.2", True),
        ([{"introduced": "1.0"}, {"last_affected": "1.2"}], "1.2.1", False),
        ([{"introduced": "1.0"}], "9.9", True),  # no fix yet
        ([{"introduced": "0"}, {"fixed": "1.0"}, {"introduced": "2.0"}, {"fixed": "2.1"}], "1.5", False),
        ([{"introduced": "0"}, {"fixed": "1.0"}, {"introduced": "2.0"}, {"fixed": "2.1"}], "2.0.5", True),
    ],
)
def test_osv_range_matching(audit, events, version, hit):
    vuln = {"id": "X", "affected": [{"package": {"ecosystem": "PyPI", "name": "Some_Pkg"}, "ranges": [{"type": "ECOSYSTEM", "events": events}]}]}
    assert audit.affects(vuln, "some-pkg", version) is hit
    assert audit.affects(vuln, "other", version) is False


def test_matching_by_listed_versions(audit):
    vuln = {"id": "X", "affected": [{"package": {"ecosystem": "PyPI", "name": "pkg"}, "versions": ["1.0", "1.1"]}]}
    assert audit.affects(vuln, "pkg", "1.1") and not audit.affects(vuln, "pkg", "1.2")


def test_the_snapshot_is_well_formed_and_covers_the_packages_the_issue_names(audit):
    snapshot = audit.load_snapshot(audit.SNAPSHOT)
    ids = [v["id"] for v in snapshot["vulns"]]
    assert len(ids) == len(set(ids))
    named = {audit.key(a["package"]["name"]) for v in snapshot["vulns"] for a in v["affected"]}
    assert {"aiosmtpd", "python-multipart", "starlette"} <= named
    for v in snapshot["vulns"]:
        assert v["published"].endswith("Z")  # pip-audit parses RFC 3339
        assert any("fixed" in e for a in v["affected"] for r in a["ranges"] for e in r["events"])


def test_live_services_pass_the_lock_and_fail_a_vulnerable_pin(live, tmp_path):
    p = run()
    assert p.returncode == 0, p.stdout + p.stderr
    assert "OSV (live)" in p.stdout
    lock = tmp_path / "requirements.txt"
    lock.write_text("aiosmtpd==1.4.4\n")
    p = run("-r", str(lock))
    assert p.returncode == 1
    assert "[osv] aiosmtpd==1.4.4" in p.stdout


def test_snapshot_server_answers_osv_queries(audit):
    import urllib.request

    with audit.SnapshotOSV(audit.load_snapshot(audit.SNAPSHOT)["vulns"]) as server:
        query = json.dumps({"package": {"name": "aiosmtpd", "ecosystem": "PyPI"}, "version": "1.4.5"}).encode()
        request = urllib.request.Request(server.url, data=query)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(request, timeout=10) as response:
            vulns = json.load(response)["vulns"]
    assert [v["id"] for v in vulns] == ["GHSA-wgjv-9j3q-jhg8"]
