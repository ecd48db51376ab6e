"""SQLite's temporary files stay in memory: nothing lands outside the storage root.

SQLite opens its temp files under SQLITE_TMPDIR and unlinks them at once, so a
directory listing shows nothing either way; the open descriptors of the
process do. The check runs in a child process with SQLITE_TMPDIR pointed at
an empty folder, so SQLite's temp directory is that folder from its start.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from gateway.storage.db import sqlite_pragmas

SCRIPT = textwrap.dedent(
    """
    import asyncio, os, sys
    from sqlalchemy import text
    from gateway.storage.db import create_engine
    from gateway.storage.rows import SqliteWriter

    tmpdir, db = sys.argv[1], sys.argv[2]

    def open_in_tmpdir():
        found = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                continue
            if target.startswith(tmpdir):
                found.append(target)
        return found

    async def main():
        engine = create_engine(f"sqlite+aiosqlite:///{db}", sqlite_synchronous="normal")
        seen = []
        async with engine.connect() as conn:
            await conn.execute(text("CREATE TEMP TABLE big AS WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 50000) SELECT i, randomblob(64) AS b FROM n"))
            await conn.execute(text("CREATE INDEX temp.big_b ON big(b)"))
            (await conn.execute(text("SELECT * FROM big ORDER BY b DESC"))).all()
            seen += open_in_tmpdir()
        await engine.dispose()
        writer = SqliteWriter(db, "normal")
        con = writer._connect()
        con.execute("CREATE TEMP TABLE t2 AS SELECT 1 AS x")
        con.execute("CREATE TEMP TABLE t3 AS WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000) SELECT randomblob(100) FROM n")
        seen += open_in_tmpdir()
        print(repr(seen))

    asyncio.run(main())
    """
)


def test_temp_store_is_memory_on_every_connection():
    assert "PRAGMA temp_store=MEMORY" in sqlite_pragmas("normal")


def test_no_sqlite_temp_file_outside_the_storage_root(tmp_path):
    tmpdir = tmp_path / "systemtmp"
    tmpdir.mkdir()
    env = {**os.environ, "SQLITE_TMPDIR": str(tmpdir), "TMPDIR": str(tmpdir)}
    p = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmpdir), str(tmp_path / "g.db")],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]", p.stdout
    assert list(tmpdir.iterdir()) == []
