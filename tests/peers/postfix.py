"""A throwaway Postfix on 127.0.0.1 that relays all mail to one port: the
upstream MTA in front of the gateway, as in docs/deploy.md.

``PostfixRelay.create(dir, target)`` writes its own ``main.cf`` and
``master.cf`` into ``dir``, with the queue, data and log there too, and starts
it on a free port. Deferred mail is retried every 2-4 s, so a test can watch a
451 being retried; a 5xx bounces at once. Outcomes are the ``status=sent``,
``status=deferred`` and ``status=bounced`` lines of ``dir/maillog``. A bounce
goes to the envelope sender, which is relayed to the target too: submit with an
empty sender when a test should not see it.

Needs root and the ``postfix`` binary (``scripts/test-deps.sh`` installs it).
``missing()`` says why it cannot run here, for a skip.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

_PATH = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"

_MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {d}/spool
data_directory = {d}/data
mail_owner = postfix
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = relay.test.invalid
# Nothing is delivered here: every recipient is relayed to the target.
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
relayhost = [127.0.0.1]:{target}
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
smtp_tls_security_level = none
smtp_host_lookup = native
disable_dns_lookups = yes
maillog_file = {d}/maillog
maillog_file_prefixes = {d}
# Fast retries, so that a test sees a deferred message go through in seconds.
queue_run_delay = 2s
minimal_backoff_time = 2s
maximal_backoff_time = 4s
bounce_queue_lifetime = 0
notify_classes =
"""

# Only the services a relay uses; none chrooted, so that the folder needs no
# copy of /etc and /lib.
_MASTER_CF = """\
{port} inet  n  -  n  -  -     smtpd
pickup    unix  n  -  n  60  1  pickup
cleanup   unix  n  -  n  -  0   cleanup
qmgr      unix  n  -  n  300 1  qmgr
rewrite   unix  -  -  n  -  -   trivial-rewrite
bounce    unix  -  -  n  -  0   bounce
defer     unix  -  -  n  -  0   bounce
trace     unix  -  -  n  -  0   bounce
verify    unix  -  -  n  -  1   verify
flush     unix  n  -  n  1000? 0 flush
proxymap  unix  -  -  n  -  -   proxymap
showq     unix  n  -  n  -  -   showq
error     unix  -  -  n  -  -   error
retry     unix  -  -  n  -  -   error
discard   unix  -  -  n  -  -   discard
smtp      unix  -  -  n  -  -   smtp
relay     unix  -  -  n  -  -   smtp
anvil     unix  -  -  n  -  1   anvil
scache    unix  -  -  n  -  1   scache
postlog   unix-dgram n - n  -  1   postlogd
"""


def missing() -> str | None:
    """Why Postfix cannot be started here, or None."""
    if shutil.which("postfix", path=_PATH) is None:
        return "postfix not installed (scripts/test-deps.sh installs it)"
    if os.geteuid() != 0:
        return "a test Postfix needs root"
    return None


def _run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run([shutil.which(cmd[0], path=_PATH) or cmd[0], *cmd[1:]],
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PostfixRelay:
    dir: Path
    port: int
    target: int

    @classmethod
    def create(cls, d: Path, target: int) -> "PostfixRelay":
        relay = cls(Path(d).resolve(), free_port(), target)
        relay._configure()
        relay.start()
        return relay

    @property
    def maillog(self) -> Path:
        return self.dir / "maillog"

    def _configure(self) -> None:
        d = self.dir
        # Postfix's own user works in DIR.
        d.mkdir(parents=True, exist_ok=True)
        d.chmod(0o755)
        (d / "spool").mkdir(exist_ok=True)
        (d / "data").mkdir(exist_ok=True)
        shutil.chown(d / "data", "postfix", "postfix")
        (d / "main.cf").write_text(_MAIN_CF.format(d=d, target=self.target))
        (d / "master.cf").write_text(_MASTER_CF.format(port=self.port))

    def start(self) -> None:
        # `postfix start` creates the queue folders with their owners first.
        r = _run("postfix", "-c", str(self.dir), "start")
        if r.returncode:
            raise RuntimeError(f"postfix start failed: {r.stdout}{r.stderr} ({self._log_tail()})")
        end = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                if time.monotonic() > end:
                    raise RuntimeError(f"postfix did not listen on {self.port}; {self._log_tail()}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        _run("postfix", "-c", str(self.dir), "stop")

    def queue(self) -> str:
        """What is waiting in the queue (postqueue -p)."""
        return _run("postqueue", "-c", str(self.dir), "-p").stdout

    def _log_tail(self) -> str:
        try:
            return f"{self.maillog}:\n" + "\n".join(self.maillog.read_text().splitlines()[-15:])
        except OSError:
            return f"no log at {self.maillog}"
