"""Property-based run of schemathesis against the live server's OpenAPI document.

Every operation gets generated valid and invalid requests (bounded: a fixed seed
and a few examples each); no answer may be a 5xx, an undocumented status, or a
body or content type the schema does not describe. For a deeper run:
GATEWAY_SCHEMATHESIS_EXAMPLES=200 GATEWAY_SCHEMATHESIS_SEED=$RANDOM pytest tests/api/test_schemathesis.py
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from tests.api.conftest import mail

CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
        "ignored_auth",
    ]
)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_schemathesis_finds_no_server_error_and_no_schema_violation(db_url, make_api, tmp_path):
    api = await make_api(db_url, rate_limit_per_minute=1_000_000)
    # Something to find, so that generated ids hit real objects too.
    await api.ingest_mail(mail())
    await api.ingest_files("invoices", n=3)
    exe = Path(sys.executable).with_name("schemathesis")
    cmd = [
        str(exe),
        "run",
        f"{api.base}/api/v1/openapi.json",
        "--header",
        f"X-API-Key: {api.keys['acme']}",
        "--checks",
        CHECKS,
        "--max-examples",
        os.environ.get("GATEWAY_SCHEMATHESIS_EXAMPLES", "12"),
        "--seed",
        os.environ.get("GATEWAY_SCHEMATHESIS_SEED", "20261123"),
        "--phases",
        "examples,coverage,fuzzing",
        # One worker: with several, hypothesis describes strategies via ast.parse
        # from threads, which on CPython 3.11 can fail with "AST constructor
        # recursion depth mismatch" (a tool error, not an API finding), and the
        # run is reproducible from the seed only in one thread.
        "--workers",
        "1",
        "--request-timeout",
        "30",
        "--suppress-health-check",
        "all",
        "--no-color",
        "--output-sanitize",
        "false",
    ]
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=tmp_path,
        env={**os.environ, "SCHEMATHESIS_HOOKS": "", "NO_COLOR": "1"},
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 150)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    text = out.decode("utf-8", "replace")
    assert proc.returncode == 0, text[-12000:]
    assert "passed" in text.lower()
