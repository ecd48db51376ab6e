"""Mailbox names and flags on the IMAP wire: quoted, modified UTF-7, and never a
CR, LF or NUL (a line break in an argument would let the server run the rest of
it as a command of its own, as the stdlib's CVE-2025-15366)."""

from __future__ import annotations

import pytest

from gateway.config import IMAPSettings, load_settings, settings_from_dict
from gateway.errors import ConfigError
from gateway.ingress.imap_client import IMAPArgumentError, IMAPConnection, quote_mailbox
from tests.ingress.conftest_imap import (  # noqa: F401 - fixtures
    PASSWORD,
    Gateway,
    Mailbox,
    account,
    dovecot,
    eventually,
    imap_user,
    make_mail,
)

ODD_NAME = 'Rechnungen "2026" März'


# --- the quoting ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, wire",
    [
        (ODD_NAME, '"Rechnungen \\"2026\\" M&AOQ-rz"'),
        ("back\\slash", '"back\\\\slash"'),
        ("R&D", '"R&-D"'),
        ("日本語", '"&ZeVnLIqe-"'),  # RFC 3501 5.1.3's own example
        ("a\tb", '"a&AAk-b"'),  # other controls are 7-bit safe in modified BASE64
    ],
)
def test_quote_mailbox(name, wire):
    assert quote_mailbox(name) == wire


@pytest.mark.parametrize("name", ["INBOX\r\nA1 DELETE INBOX", "a\nb", "a\rb", "a\x00b", ""])
def test_quote_mailbox_refuses_line_breaks_and_nul(name):
    with pytest.raises(IMAPArgumentError):
        quote_mailbox(name)


async def test_client_refuses_a_flag_that_is_not_an_atom_before_sending():
    # No connection is opened: the refusal comes before anything reaches a socket.
    conn = IMAPConnection(IMAPSettings(name="x", host="127.0.0.1", tls="none", username="u", password="p", queue="q"))
    for flags in ("$Ok\r\nA1 DELETE INBOX", "$Ok\nx", "(paren", 'quo"te', ""):
        with pytest.raises(IMAPArgumentError):
            await conn.add_flags([1], flags)


# --- the config refuses them first ------------------------------------------------------------


def _acct(**over) -> dict:
    return {"name": "ap", "host": "127.0.0.1", "tls": "none", "username": "u", "password": "p", "queue": "invoices", **over}


def _data(**over) -> dict:
    return {
        "organizations": [{"name": "acme"}],
        "queues": [{"name": "invoices", "organization": "acme"}],
        "imap": [_acct(**over)],
    }


@pytest.mark.parametrize(
    "over, key",
    [
        ({"folders": ["INBOX", "Bills\r\nA1 DELETE INBOX"]}, "imap.0.folders"),
        ({"folders": ["a\x00b"]}, "imap.0.folders"),
        ({"folders": [""]}, "imap.0.folders"),
        ({"after": "move:Done\nA1 DELETE INBOX"}, "imap.0.after"),
        ({"after": "move:a\rb"}, "imap.0.after"),
        ({"after": "flag:$Done\r\nA1 DELETE INBOX"}, "imap.0.after"),
        ({"after": "flag:two words"}, "imap.0.after"),
        ({"after": "flag:(x)"}, "imap.0.after"),
    ],
)
def test_config_refuses_unsendable_names(tmp_path, over, key):
    with pytest.raises(ConfigError) as e:
        settings_from_dict(_data(**over), tmp_path)
    assert f"  {key}: " in str(e.value), str(e.value)


def test_config_error_names_the_file_and_key(tmp_path):
    cfg = tmp_path / "gw.toml"
    cfg.write_text(
        '[[organizations]]\nname = "acme"\n[[queues]]\nname = "invoices"\norganization = "acme"\n'
        '[[imap]]\nname = "ap"\nhost = "127.0.0.1"\ntls = "none"\nusername = "u"\npassword = "p"\n'
        'queue = "invoices"\nafter = "move:Done\\r\\nA1 DELETE INBOX"\n'
    )
    with pytest.raises(ConfigError) as e:
        load_settings(cfg)
    text = str(e.value)
    assert text.startswith(f"{cfg}: invalid configuration") and "imap.0.after:" in text and "CR, LF or NUL" in text


@pytest.mark.parametrize("over", [{"after": f"move:{ODD_NAME}"}, {"after": "flag:\\Flagged"}, {"after": "flag:$Invoiced"},
                                  {"folders": ["INBOX", ODD_NAME, "Eingänge/2026"]}])
def test_config_accepts_names_imap_can_carry(tmp_path, over):
    settings_from_dict(_data(**over), tmp_path)


# --- against Dovecot ----------------------------------------------------------------------------


async def _list(box: Mailbox) -> list[bytes]:
    conn = await box._conn()
    try:
        resp = await conn._call(conn.client.list('""', "*"), "LIST")
        return [bytes(line) for line in resp.lines[:-1]]
    finally:
        await conn.close()


async def test_odd_folder_name_polled_and_moved_to_on_dovecot(dovecot, imap_user, make_settings, sqlite_url):
    """Poll a folder called ``Rechnungen "2026" März`` and move what was ingested
    to ``Erledigt "2026" März``: both exist under exactly that name afterwards."""
    box = Mailbox(dovecot, imap_user)
    conn = await box._conn()
    try:
        await conn._call(conn.client.create(quote_mailbox(ODD_NAME)), "CREATE")
    finally:
        await conn.close()
    await box.append(make_mail("One"), make_mail("Two"), folder=ODD_NAME)
    target = 'Erledigt "2026" März'
    acct = account(dovecot, imap_user, folders=[ODD_NAME], after=f"move:{target}")
    settings = make_settings(sqlite_url, imap=[acct])
    async with Gateway(settings) as gw:
        await gw.start_pollers()

        async def two():
            return await gw.uploads() == 2

        await eventually(two)

        async def moved():
            return len(await box.flags(target)) == 2

        await eventually(moved)
        await gw.stop_pollers()
    assert await box.flags(ODD_NAME) == {}
    listed = b"\n".join(await _list(box))
    # The server holds the names as the config spells them: quoted, modified UTF-7.
    assert b'"Rechnungen \\"2026\\" M&AOQ-rz"' in listed, listed
    assert b'"Erledigt \\"2026\\" M&AOQ-rz"' in listed, listed
    assert b"DELETE" not in listed
