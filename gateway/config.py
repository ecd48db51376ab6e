"""TOML → typed settings.

Unknown keys are errors, and every error names the file and the dotted key, so a
typo in a deployment's config is caught at start-up and not discovered as a
silently ignored option.
"""

from __future__ import annotations

import copy
import ipaddress
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from gateway.errors import ConfigError

DEFAULT_CONFIG_NAME = "config.toml"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StorageSettings(_Section):
    database_url: str = "sqlite+aiosqlite:///var/gateway.db"
    root: Path = Path("var/storage")
    # "full" survives power loss; "normal" (WAL) only survives a process crash.
    sqlite_synchronous: Literal["full", "normal"] = "full"
    # Upper bound on ingests writing blobs and rows at once.
    ingest_concurrency: int = Field(8, ge=1, le=256)
    # How many message/rfc822 levels are opened to find nested attachments.
    max_nesting_depth: int = Field(3, ge=0, le=10)
    # Helper processes that parse messages and write their blobs (0: threads of
    # the daemon itself). See gateway/preparer.py.
    parse_processes: int = Field(1, ge=0, le=64)
    # Seconds a parse may take. Past it the helper process is killed and
    # restarted, and the mail is stored unparsed: its raw message becomes the
    # body document, whose task waits in "reviewing" (never a 451 loop).
    parse_timeout: float = Field(20.0, gt=0, le=3600)
    # Upgrade the schema on start-up (serve, replay) for SQLite; PostgreSQL
    # deployments usually run `gateway db upgrade` explicitly.
    auto_migrate: bool = True


class SMTPSettings(_Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(2525, ge=0, le=65535)
    hostname: str = "gateway.localhost"
    max_message_size: int = Field(40 * 1024 * 1024, ge=1024)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    require_tls: bool = False
    max_connections: int = Field(100, ge=1)
    max_connections_per_peer: int = Field(20, ge=1)
    max_messages_per_connection: int = Field(1000, ge=1)
    max_recipients: int = Field(100, ge=1)
    # Bytes of message data all sessions together may hold in memory (received
    # or being stored); None: max(256 MiB, max_message_size).
    max_buffered_bytes: int | None = Field(None, ge=1024)
    # Seconds a session may sit idle between commands.
    timeout: float = Field(300, gt=0)
    # On SIGTERM, seconds to let messages in flight finish before 421.
    shutdown_timeout: float = Field(30, ge=0)

    @model_validator(mode="after")
    def _tls_pair(self) -> "SMTPSettings":
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be set together")
        if self.require_tls and self.tls_cert is None:
            raise ValueError("require_tls needs tls_cert and tls_key")
        if self.max_buffered_bytes is not None and self.max_buffered_bytes < self.max_message_size:
            raise ValueError("max_buffered_bytes must be at least max_message_size")
        return self

    @property
    def buffer_budget(self) -> int:
        return self.max_buffered_bytes or max(256 * 1024 * 1024, self.max_message_size)


class HTTPSettings(_Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(8025, ge=0, le=65535)
    base_url: str = "http://127.0.0.1:8025"
    max_upload_size: int = Field(40 * 1024 * 1024, ge=1)
    # Requests per minute per API key.
    rate_limit_per_minute: int = Field(600, ge=1)
    # /healthz and /metrics need no key unless this is true.
    protect_health_and_metrics: bool = False
    # On SIGTERM, seconds for requests in flight (uploads) to finish.
    shutdown_timeout: float = Field(30, ge=0)

    @field_validator("base_url")
    @classmethod
    def _strip_slash(cls, v: str) -> str:
        return v.rstrip("/")


class WorkerSettings(_Section):
    enabled: bool = True
    concurrency: int = Field(4, ge=1, le=256)
    max_attempts: int = Field(5, ge=1)
    backoff_seconds: float = Field(30, ge=0)
    lease_seconds: float = Field(60, gt=0)
    # Fallback poll when no wake-up arrives (LISTEN/NOTIFY or in-process).
    poll_seconds: float = Field(5, gt=0)
    shutdown_timeout: float = Field(30, ge=0)


class OrganizationSettings(_Section):
    name: str = Field(min_length=1)


class WebhookProcessor(_Section):
    type: Literal["webhook"]
    url: str
    secret: str | None = None
    secret_file: Path | None = None
    timeout: float = Field(30, gt=0)
    headers: dict[str, str] = {}

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not (v.startswith("http://") or v.startswith("https://")):
            raise ValueError("url must start with http:// or https://")
        return v


class CommandProcessor(_Section):
    type: Literal["command"]
    argv: list[str] = Field(min_length=1)
    timeout: float = Field(300, gt=0)
    env: dict[str, str] = {}


class FolderProcessor(_Section):
    type: Literal["folder"]
    path: Path
    # Placeholders: {task_id} {upload_id} {document_id} {filename} {sha256}
    name_pattern: str = "{upload_id}-{task_id}-{filename}"
    # Permissions of each file dropped (whatever the daemon's umask): group-readable
    # by default, for an importer running as another user of the folder's group.
    mode: int = Field(0o640, ge=0, le=0o777)

    @field_validator("mode", mode="before")
    @classmethod
    def _mode(cls, v):
        # TOML writes 0o640; "0640" or "640" as a string are read as octal too.
        if isinstance(v, str):
            if not re.fullmatch(r"(0o?)?[0-7]{1,4}", v.strip()):
                raise ValueError("an octal mode such as 0o640 or \"0640\"")
            return int(v.strip().removeprefix("0o"), 8)
        if isinstance(v, int) and v > 0o777:  # `mode = 640` is decimal: 0o1200
            raise ValueError(f"{v} is not a file mode: write it in octal, mode = 0o{v}")
        return v


Processor = Annotated[
    Union[WebhookProcessor, CommandProcessor, FolderProcessor],
    Field(discriminator="type"),
]


class SenderPolicy(_Section):
    # What a sender must prove: nothing, an SPF or DKIM pass, or a DMARC pass.
    require: Literal["none", "spf_or_dkim", "dmarc"] = "none"
    # When it does not (or is denied, or looks like a known sender): hold every
    # task for a person, refuse the mail (SMTP 550 5.7.1), or let it through.
    on_failure: Literal["review", "reject", "accept"] = "review"
    # Address or domain patterns (fnmatch): "billing@supplier.example",
    # "supplier.example", "*.supplier.example". Allowed senders skip the checks.
    allow: list[str] = []
    deny: list[str] = []
    # Hold mail from a domain or display name that resembles a known sender's.
    lookalike: bool = True

    @field_validator("allow", "deny")
    @classmethod
    def _patterns(cls, v: list[str]) -> list[str]:
        return [p.strip().lower() for p in v if p.strip()]


class QueueSettings(_Section):
    name: str = Field(min_length=1)
    organization: str
    addresses: list[str] = []
    review: bool = False
    processors: list[Processor] = []
    # Which rendering of a multipart/alternative body the body task gets; the
    # other is stored too (kind "alternative").
    body_format: Literal["html", "text"] = "html"
    # "non_empty": a body task only when the body has visible text.
    body_task: Literal["always", "non_empty", "never"] = "non_empty"
    # "open": a forwarded message's body and files become documents and tasks;
    # "keep": the forwarded .eml itself is the task.
    forwarded: Literal["open", "keep"] = "open"
    sender_policy: SenderPolicy = SenderPolicy()

    @field_validator("addresses")
    @classmethod
    def _addresses(cls, v: list[str]) -> list[str]:
        out = []
        for a in v:
            a = a.strip().lower()
            if a.count("@") != 1 or a.startswith("@") or a.endswith("@"):
                raise ValueError(f"not an email address: {a!r}")
            out.append(a)
        return out


class AuthenticationSettings(_Section):
    # Verify SPF, DKIM, DMARC and ARC of every mail (gateway/sender_auth).
    enabled: bool = False
    # Our name in the Authentication-Results we write (default: [smtp] hostname).
    authserv_id: str | None = None
    # DNS servers asked, "host" or "host:port" (IP addresses); empty: /etc/resolv.conf.
    nameservers: list[str] = []
    timeout: float = Field(2.0, gt=0, le=30)  # seconds per lookup
    budget: float | None = Field(None, gt=0, le=120)  # DNS seconds per mail (default 2 x timeout)
    cache_size: int = Field(10_000, ge=1, le=10_000_000)
    # For IMAP and replay: upstream Authentication-Results (topmost only) trusted
    # from these authserv-ids (your mailbox provider's), for SPF and DMARC.
    trusted_authserv_ids: list[str] = []


class IMAPSettings(_Section):
    name: str = Field(min_length=1)
    host: str
    port: int = Field(993, ge=1, le=65535)
    tls: Literal["implicit", "starttls", "none"] = "implicit"
    tls_verify: bool = True
    tls_ca_file: Path | None = None
    username: str
    password: str | None = None
    password_file: Path | None = None
    password_command: list[str] | None = None
    auth: Literal["login", "xoauth2"] = "login"
    folders: list[str] = ["INBOX"]
    queue: str
    after: str = "seen"
    poll_interval: float = Field(60, gt=0)
    idle: bool = True
    batch_size: int = Field(20, ge=1, le=1000)
    max_message_size: int = Field(40 * 1024 * 1024, ge=1024)

    @field_validator("folders")
    @classmethod
    def _folders(cls, v: list[str]) -> list[str]:
        for name in v:
            _check_mailbox_name(name, "folder")
        return v

    @field_validator("after")
    @classmethod
    def _after(cls, v: str) -> str:
        if v in ("seen", "delete"):
            return v
        kind, _, arg = v.partition(":")
        if kind == "move" and arg:
            _check_mailbox_name(arg, "move target")
            return v
        if kind == "flag" and arg:
            _check_flag(arg)
            return v
        raise ValueError('after must be "seen", "delete", "move:Folder" or "flag:Keyword"')

    @model_validator(mode="after")
    def _checks(self) -> "IMAPSettings":
        secrets = [self.password, self.password_file, self.password_command]
        if sum(s is not None for s in secrets) != 1:
            raise ValueError("set exactly one of password, password_file, password_command")
        if self.tls == "none" and not _is_loopback(self.host):
            raise ValueError('tls = "none" is only allowed for a loopback host')
        return self


# A CR or LF ends an IMAP command line, so a name carrying one would have the
# server run the rest as a command of its own (as CVE-2025-15366 in the stdlib's
# imaplib); NUL is never allowed on the wire.
_IMAP_LINE_BREAKERS = re.compile(r"[\x00\r\n]")
# RFC 3501 flag-keyword = atom: printable ASCII without atom-specials.
_IMAP_FLAG = re.compile(r"\\?[!#$&'+,\-./0-9:;<=>?@A-Z\[^_`a-z|}~]+")


def _check_mailbox_name(name: str, what: str) -> None:
    if not name:
        raise ValueError(f"{what} name is empty")
    if _IMAP_LINE_BREAKERS.search(name):
        raise ValueError(f"{what} {name!r} contains CR, LF or NUL, which IMAP cannot carry in a mailbox name")


def _check_flag(flag: str) -> None:
    if _IMAP_LINE_BREAKERS.search(flag):
        raise ValueError(f"flag {flag!r} contains CR, LF or NUL")
    if not _IMAP_FLAG.fullmatch(flag):
        raise ValueError(f"flag {flag!r} is not an IMAP keyword (ASCII letters, digits and -_.$ etc.; no space, ( ) {{ % * \" \\ ])")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class LoggingSettings(_Section):
    # "auto": pretty on a terminal, JSON lines otherwise.
    format: Literal["auto", "json", "console"] = "auto"
    level: Literal["debug", "info", "warning", "error"] = "info"


class Settings(_Section):
    storage: StorageSettings = StorageSettings()
    smtp: SMTPSettings = SMTPSettings()
    http: HTTPSettings = HTTPSettings()
    workers: WorkerSettings = WorkerSettings()
    logging: LoggingSettings = LoggingSettings()
    organizations: list[OrganizationSettings] = []
    queues: list[QueueSettings] = []
    imap: list[IMAPSettings] = []
    authentication: AuthenticationSettings = AuthenticationSettings()
    # Where the file was read from; relative paths were resolved against its folder.
    source: Path | None = None

    @model_validator(mode="after")
    def _references(self) -> "Settings":
        orgs = {o.name for o in self.organizations}
        if len(orgs) != len(self.organizations):
            raise ValueError("organization names must be unique")
        names: set[str] = set()
        owner: dict[str, str] = {}
        for q in self.queues:
            if q.name in names:
                raise ValueError(f"queue name {q.name!r} is used twice")
            names.add(q.name)
            if q.organization not in orgs:
                raise ValueError(f"queue {q.name!r} names unknown organization {q.organization!r}")
            for a in q.addresses:
                if a in owner:
                    raise ValueError(f"address {a!r} belongs to queues {owner[a]!r} and {q.name!r}")
                owner[a] = q.name
        accounts: set[str] = set()
        for acct in self.imap:
            if acct.name in accounts:
                raise ValueError(f"imap account name {acct.name!r} is used twice")
            accounts.add(acct.name)
            if acct.queue not in names:
                raise ValueError(f"imap account {acct.name!r} names unknown queue {acct.queue!r}")
        return self

    def queue(self, name: str) -> QueueSettings | None:
        return next((q for q in self.queues if q.name == name), None)


def _resolve_paths(data: dict, base: Path) -> dict:
    """Make relative paths and SQLite URLs relative to the config file's folder."""
    storage = data.get("storage")
    if isinstance(storage, dict):
        url = storage.get("database_url")
        if isinstance(url, str) and url.startswith("sqlite") and ":///" in url:
            prefix, _, path = url.partition(":///")
            if path and path != ":memory:" and not path.startswith("/"):
                storage["database_url"] = f"{prefix}:///{(base / path)}"
        root = storage.get("root")
        if isinstance(root, str):
            storage["root"] = str(base / root)
    for section, keys in (("smtp", ("tls_cert", "tls_key")),):
        sec = data.get(section)
        if isinstance(sec, dict):
            for k in keys:
                if isinstance(sec.get(k), str):
                    sec[k] = str(base / sec[k])
    for q in data.get("queues", []) or []:
        for p in (q.get("processors", []) if isinstance(q, dict) else []) or []:
            if isinstance(p, dict):
                for k in ("path", "secret_file"):
                    if isinstance(p.get(k), str):
                        p[k] = str(base / p[k])
    for acct in data.get("imap", []) or []:
        if isinstance(acct, dict):
            for k in ("password_file", "tls_ca_file"):
                if isinstance(acct.get(k), str):
                    acct[k] = str(base / acct[k])
    if "storage" not in data:
        data["storage"] = {
            "database_url": f"sqlite+aiosqlite:///{base / 'var/gateway.db'}",
            "root": str(base / "var/storage"),
        }
    return data


def _format_error(path: Path, err: ValidationError) -> str:
    lines = [f"{path}: invalid configuration"]
    for e in err.errors():
        loc = ".".join(str(part) for part in e["loc"])
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"  {loc or '(top level)'}: {msg}")
    return "\n".join(lines)


def load_settings(path: str | os.PathLike | None = None) -> Settings:
    """Read and validate the config; ``path`` defaults to $GATEWAY_CONFIG, then ./config.toml."""
    if path is None:
        path = os.environ.get("GATEWAY_CONFIG") or DEFAULT_CONFIG_NAME
    p = Path(path).expanduser().resolve()
    try:
        with p.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: not valid TOML: {e}") from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot read: {e.strerror}") from None
    if "source" in data:
        raise ConfigError(f"{p}: invalid configuration\n  source: unknown key")
    data = _resolve_paths(data, p.parent)
    try:
        return Settings.model_validate({**data, "source": p})
    except ValidationError as e:
        raise ConfigError(_format_error(p, e)) from None


def settings_from_dict(data: dict, base: Path) -> Settings:
    """Build settings as if ``data`` had been read from a file in ``base`` (tests, tools)."""
    try:
        data = _resolve_paths(copy.deepcopy(data), base)
        return Settings.model_validate({**data, "source": base / "config.toml"})
    except ValidationError as e:
        raise ConfigError(_format_error(base / "config.toml", e)) from None
