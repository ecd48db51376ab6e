"""A throwaway Dovecot IMAP server on 127.0.0.1.

``Dovecot.create(dir, users)`` writes a configuration, a self-signed
certificate and a password file into ``dir`` and starts Dovecot's master on
two free ports: plain IMAP (with STARTTLS) and implicit TLS. Mail is kept in
Maildirs under ``dir/mail/USER``; stopping and starting the same instance keeps
the mail, its UIDs and its UIDVALIDITY, which is how tests drop a connection.

Needs root (the master process runs as root and hands mail to the ``mail``
user) and the ``dovecot`` binary (``scripts/test-deps.sh`` installs
``dovecot-imapd``). ``missing()`` says why it cannot run here, for a skip.
"""

from __future__ import annotations

import imaplib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

_CONF = """\
base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = yes
ssl_cert = <{d}/cert.pem
ssl_key = <{d}/key.pem
disable_plaintext_auth = no
# Dovecot 2.3 checks an XOAUTH2/OAUTHBEARER bearer token against the passdb as
# if it were the password, so the OAuth2 tests need no token server.
auth_mechanisms = plain login xoauth2 oauthbearer
# Tests fail logins on purpose; without these, every later login from
# 127.0.0.1 (other tests' mailboxes) would wait up to 15 s: the per-IP penalty
# is off when its anvil socket is unusable (Dovecot's documented switch).
auth_failure_delay = 0
first_valid_uid = 1
mail_location = maildir:{d}/mail/%u
mail_uid = mail
mail_gid = mail
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {d}/passwd
}}
userdb {{
  driver = static
  args = uid=mail gid=mail home={d}/home/%u
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {tls_port}
  }}
}}
service anvil {{
  chroot =
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
protocol imap {{
  # Many pollers and helper clients of one test log in as the same user.
  mail_max_userip_connections = 100
}}
"""


def missing() -> str | None:
    """Why Dovecot cannot be started here, or None."""
    if shutil.which("dovecot", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None:
        return "dovecot not installed (scripts/test-deps.sh installs dovecot-imapd)"
    if os.geteuid() != 0:
        return "a test Dovecot needs root (its master hands mail to the mail user)"
    return None


def _binary(name: str) -> str:
    return shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") or name


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


@dataclass
class Dovecot:
    dir: Path
    port: int
    tls_port: int
    users: dict[str, str] = field(default_factory=dict)

    @classmethod
    def create(cls, d: Path, users: dict[str, str]) -> "Dovecot":
        """Configure ``d`` (created if needed) and start a server on free ports."""
        server = cls(Path(d).resolve(), free_port(), free_port(), dict(users))
        server._configure()
        server.start_again()
        return server

    @property
    def cert(self) -> Path:
        return self.dir / "cert.pem"

    @property
    def conf(self) -> Path:
        return self.dir / "dovecot.conf"

    @property
    def log(self) -> Path:
        return self.dir / "dovecot.log"

    def _configure(self) -> None:
        d = self.dir
        for sub in ("run", "state", "mail", "home"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        for sub in ("mail", "home"):
            shutil.chown(d / sub, "mail", "mail")
        # The unprivileged auth process reads DIR/passwd: it must be able to
        # walk down to it (mkdtemp folders are 0700). Only folders below the
        # temporary root are opened up, never anything above it.
        tmp = Path(tempfile.gettempdir()).resolve()
        for p in (d, *d.parents) if d.is_relative_to(tmp) else (d,):
            if p == tmp:
                break
            p.chmod(p.stat().st_mode | 0o055)
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
             "-keyout", str(d / "key.pem"), "-out", str(self.cert)],
            check=True, capture_output=True, timeout=60,
        )
        (d / "passwd").write_text("".join(f"{u}:{{PLAIN}}{pw}\n" for u, pw in self.users.items()))
        self.conf.write_text(_CONF.format(d=d, port=self.port, tls_port=self.tls_port))

    def start_again(self) -> None:
        """Start on this folder and configuration (mail, UIDs and UIDVALIDITY kept)."""
        end = time.monotonic() + 20
        # The master keeps the stdio it was started with: a pipe would never
        # reach EOF. What it has to say goes to its log.
        while subprocess.run([_binary("dovecot"), "-c", str(self.conf)], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30).returncode != 0:
            if self._master_alive() and port_open(self.port):
                break  # an earlier attempt won
            if time.monotonic() > end:  # the old master may still be on its way out: retried till here
                raise RuntimeError(f"dovecot did not start; {self._log_tail()}")
            time.sleep(0.1)
        while not (port_open(self.port) and port_open(self.tls_port)):
            if time.monotonic() > end:
                raise RuntimeError(f"dovecot did not listen on {self.port}/{self.tls_port}; {self._log_tail()}")
            time.sleep(0.05)
        self._warm_up()

    def _warm_up(self) -> None:
        # With the penalty socket unusable, the auth process spends ~5 s on its
        # first login failing to reach it: paid here rather than inside a test.
        user, password = next(reversed(self.users.items()))
        imap = imaplib.IMAP4("127.0.0.1", self.port, timeout=30)
        try:
            imap.login(user, password)
        finally:
            imap.logout()

    def stop(self) -> None:
        """Stop the master and every IMAP session it started.

        Stopping the master alone leaves logged-in imap processes serving their
        clients; a test dropping the connection needs them gone too.
        """
        master = self._master_pid()
        sessions = self._sessions(master) if master else []
        if master:
            try:
                os.kill(master, signal.SIGTERM)
            except OSError:
                pass
        end = time.monotonic() + 15
        while (self._master_alive() or port_open(self.port) or port_open(self.tls_port)) and time.monotonic() < end:
            time.sleep(0.05)
        for pid in sessions:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass

    def reset_uidvalidity(self, user: str) -> None:
        """Drop Dovecot's index and UID list of ``user``, keeping the messages:
        the next start gives the mailbox a new UIDVALIDITY. Call while stopped."""
        for p in (self.dir / "mail" / user).rglob("dovecot*"):
            p.unlink() if p.is_file() else shutil.rmtree(p)
        time.sleep(1.1)  # UIDVALIDITY is a timestamp in seconds: make sure the new one differs

    def _master_pid(self) -> int | None:
        try:
            return int((self.dir / "run" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _master_alive(self) -> bool:
        pid = self._master_pid()
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
            return True
        except OSError:
            return False

    @staticmethod
    def _sessions(master: int) -> list[int]:
        """The imap processes that are children of this server's master."""
        pids = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                text = stat.read_text()
            except OSError:
                continue
            name, _, rest = text.partition("(")[2].rpartition(")")
            fields = rest.split()
            if len(fields) > 1 and name == "imap" and fields[1] == str(master):
                pids.append(int(stat.parent.name))
        return pids

    def _log_tail(self) -> str:
        try:
            return f"{self.log}:\n" + "\n".join(self.log.read_text().splitlines()[-15:])
        except OSError:
            return f"no log at {self.log}"

