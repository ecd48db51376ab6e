"""IMAP credentials: where the secret comes from, and the XOAUTH2 SASL string.

A secret (password or OAuth2 access token) is read fresh on every login, so a
rotated password file or a token refreshed by ``password_command`` is picked up
without a restart. Nothing here ever puts the secret into an exception message or
a log line: errors name the file or the command, never what it printed.
"""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

from gateway.config import IMAPSettings
from gateway.errors import GatewayError

# A token helper (oauth2l, az, a vault client) that takes longer than this is hung.
COMMAND_TIMEOUT = 30.0


class IMAPSecretError(GatewayError):
    """The password or token could not be obtained (file unreadable, command failed)."""


def xoauth2_string(user: str, token: str) -> str:
    """The base64 SASL XOAUTH2 initial response (Google and Microsoft's format):
    ``user=<user>^Aauth=Bearer <token>^A^A``."""
    for name, value in (("user", user), ("token", token)):
        # ^A separates the fields; a control character would forge another one.
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
            raise IMAPSecretError(f"the XOAUTH2 {name} contains a control character")
    raw = f"user={user}\x01auth=Bearer {token}\x01\x01".encode("utf-8")
    return base64.b64encode(raw).decode("ascii")


def _read_file(path: Path) -> str:
    return path.read_text(encoding="utf-8")


async def _run_command(argv: list[str]) -> str:
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as e:
        raise IMAPSecretError(f"password_command {argv[0]!r} could not be started: {e.strerror}") from None
    try:
        out, err = await asyncio.wait_for(proc.communicate(), COMMAND_TIMEOUT)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise IMAPSecretError(f"password_command {argv[0]!r} did not finish within {COMMAND_TIMEOUT:.0f} s") from None
    if proc.returncode != 0:
        # stderr is the helper's own diagnostic, not its output; still cut it short.
        first = (err.decode("utf-8", "replace").strip().splitlines() or [""])[0][:200]
        raise IMAPSecretError(f"password_command {argv[0]!r} exited with status {proc.returncode}: {first}")
    return out.decode("utf-8", "replace")


async def read_secret(account: IMAPSettings) -> str:
    """The account's password or access token, without a trailing newline."""
    if account.password is not None:
        secret = account.password
    elif account.password_file is not None:
        try:
            secret = await asyncio.to_thread(_read_file, account.password_file)
        except OSError as e:
            raise IMAPSecretError(f"password_file {account.password_file} cannot be read: {e.strerror}") from None
        except UnicodeDecodeError:
            raise IMAPSecretError(f"password_file {account.password_file} is not UTF-8") from None
    else:
        assert account.password_command is not None  # the config allows exactly one source
        secret = await _run_command(account.password_command)
    # Files and commands end with a newline; a password never does.
    secret = secret.rstrip("\r\n")
    if not secret:
        raise IMAPSecretError(f"the {'token' if account.auth == 'xoauth2' else 'password'} for imap account {account.name!r} is empty")
    return secret
