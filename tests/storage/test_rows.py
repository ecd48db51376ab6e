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
