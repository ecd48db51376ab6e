"""`gateway keys create/list/revoke`: printed once, stored hashed, revocable."""

from __future__ import annotations

import asyncio
import json

from click.testing import CliRunner
from sqlalchemy import select

from gateway.api.keys import find_active_key
from gateway.cli import main
from gateway.config import load_settings
from gateway.runtime import open_runtime
from gateway.storage import models as m

CONFIG = """
[storage]
database_url = "sqlite+aiosqlite:///{db}"
root = "{root}"

[smtp]
enabled = false

[http]
enabled = false

[workers]
enabled = false

[logging]
format = "json"
level = "warning"

[[organizations]]
name = "acme"

[[queues]]
name = "invoices"
organization = "acme"
addresses = ["invoices@ap.example.com"]
"""


def _run(cfg, *args):
    return CliRunner().invoke(main, ["--config", str(cfg), *args], catch_exceptions=False)


async def _lookup(cfg, key: str):
    async with open_runtime(load_settings(cfg)) as rt:
        async with rt.sessions() as s:
            found = await find_active_key(s, key)
            stored = (await s.scalars(select(m.ApiKey))).all()
            return found, [(k.key_hash, k.prefix) for k in stored]


def test_keys_create_list_revoke(tmp_path):
    cfg = tmp_path / "config.toml"
    cfg.write_text(CONFIG.format(db=tmp_path / "g.db", root=tmp_path / "storage"))

    r = _run(cfg, "keys", "create", "--organization", "acme", "--scope", "upload.read", "--scope", "task.edit", "--name", "erp", "--json")
    assert r.exit_code == 0, r.output
    created = json.loads(r.stdout)
    assert set(created) == {"id", "key", "organization", "scopes"}
    assert created["organization"] == "acme" and created["scopes"] == ["upload.read", "task.edit"]
    key = created["key"]
    assert key.startswith("gw_") and len(key) > 40

    found, stored = asyncio.run(_lookup(cfg, key))
    assert found is not None and found.id == created["id"]
    assert all(key not in h and h != key for h, _ in stored)  # only a hash is kept
    assert stored[0][1] == key[:11]

    # Without --json the key alone goes to stdout (for `KEY=$(gateway keys create ...)`).
    r = _run(cfg, "keys", "create", "--organization", "acme", "--scope", "upload.create")
    assert r.exit_code == 0 and r.stdout.strip().startswith("gw_") and len(r.stdout.strip().splitlines()) == 1

    r = _run(cfg, "keys", "list", "--json")
    assert r.exit_code == 0
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [x["id"] for x in rows] == [created["id"], created["id"] + 1]
    assert rows[0]["name"] == "erp" and rows[0]["revoked_at"] is None
    assert key not in r.stdout

    r = _run(cfg, "keys", "revoke", str(created["id"]), "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["revoked_at"]
    found, _ = asyncio.run(_lookup(cfg, key))
    assert found is None
    r = _run(cfg, "keys", "list")
    assert "revoked" in r.stdout and "active" in r.stdout

    # Mistakes: unknown organization (1), unknown scope (2), unknown key id (1).
    assert _run(cfg, "keys", "create", "--organization", "nope", "--scope", "upload.read").exit_code == 1
    assert _run(cfg, "keys", "create", "--organization", "acme", "--scope", "admin").exit_code == 2
    assert _run(cfg, "keys", "revoke", "999").exit_code == 1
