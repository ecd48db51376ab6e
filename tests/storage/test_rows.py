import datetime as dt

import pytest
from sqlalchemy.dialects import sqlite

from gateway.storage.rows import _ts


@pytest.mark.parametrize(
    "value",
    [
        dt.datetime(2026, 11, 23, 10, 0, 0),
        dt.datetime(2026, 11, 23, 10, 0, 0, 123456, tzinfo=dt.timezone.utc),
        dt.datetime(2026, 11, 23, 23, 30, tzinfo=dt.timezone(dt.timedelta(hours=-5))),  # next day in UTC
        dt.datetime(999, 1, 2, 3, 4, 5, 6),  # a mail's Date can say anything
    ],
)
def test_timestamps_are_stored_as_sqlalchemy_stores_them(value):
    """The sqlite3 group writer stores datetimes as text; the rest of the gateway
    reads them back through SQLAlchemy's SQLite DATETIME, naive UTC."""
    naive_utc = value.astimezone(dt.timezone.utc).replace(tzinfo=None) if value.tzinfo else value
    bind = sqlite.DATETIME().bind_processor(sqlite.dialect())
    assert _ts(value) == bind(naive_utc)
    assert sqlite.DATETIME().result_processor(sqlite.dialect(), None)(_ts(value)) == naive_utc
    assert _ts(None) is None


async def test_every_sqlite_connection_gets_the_same_pragmas(tmp_path):
    """The group writer's sqlite3 connection and the engines' connections run the
    same set-up (WAL, durability, busy timeout, the larger WAL checkpoint)."""
    from sqlalchemy import text

    from gateway.storage.db import create_engine
    from gateway.storage.rows import SqliteWriter

    path = tmp_path / "g.db"
    writer = SqliteWriter(str(path), "full")
    con = writer._connect()
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    try:
        async with engine.connect() as conn:
            for pragma, want in [("journal_mode", "wal"), ("synchronous", 2), ("busy_timeout", 30000),
                                 ("wal_autocheckpoint", 10000), ("foreign_keys", 1)]:
                assert con.execute(f"PRAGMA {pragma}").fetchone()[0] == want, pragma
                assert (await conn.execute(text(f"PRAGMA {pragma}"))).scalar() == want, pragma
    finally:
        con.close()
        await engine.dispose()
