"""DNS for sender verification: the nameservers the config names, bounded time, a cache.

``Resolver`` wraps a dnspython stub resolver that asks only the configured servers
(never /etc/resolv.conf), with a bounded LRU cache shared by every message and
thread (dnspython's cache locks itself). ``lookup`` answers a list of records,
``[]`` when the name or the type does not exist, and raises
``DnsTemporaryError`` for everything else (time-out, SERVFAIL, REFUSED, a broken
answer), which the checks turn into ``temperror``.

Each message gets a ``Lookups`` view (``resolver.for_message()``) with a time
budget: once the lookups of one message have spent it, the rest fail at once as
temporary errors, so a dead nameserver costs one message at most ``budget``
seconds, not one time-out per SPF include, signature and DMARC lookup.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Sequence

import dns.exception
import dns.name
import dns.nameserver
import dns.resolver


class DnsTemporaryError(Exception):
    """The DNS gave no usable answer this time (time-out, SERVFAIL, REFUSED...)."""


def parse_nameserver(spec: str) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]``, ``[v6]:port`` or a bare IPv6 address
    → (address, port). The host must be an IP address: a resolver cannot
    resolve its own nameserver's name."""
    text = spec.strip()
    port = 53
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"nameserver {spec!r}: expected [address]:port")
        if rest:
            port = _port(spec, rest[1:])
    elif text.count(":") == 1:
        host, _, p = text.partition(":")
        port = _port(spec, p)
    else:
        host = text
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"nameserver {spec!r}: not an IP address (host or host:port)") from None
    return str(address), port


def _port(spec: str, text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"nameserver {spec!r}: bad port {text!r}")
    return int(text)


class Resolver:
    """Stub resolver for the configured nameservers; thread-safe, shared."""

    def __init__(
        self,
        nameservers: Sequence[str] = ("127.0.0.1",),
        timeout: float = 2.0,
        cache_size: int = 10_000,
        budget: float | None = None,
    ) -> None:
        if not nameservers:
            raise ValueError("at least one nameserver is needed")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.nameservers = [parse_nameserver(n) for n in nameservers]
        self.timeout = float(timeout)
        #: seconds of DNS time one message may spend (default: twice the time-out)
        self.budget = float(budget) if budget is not None else 2 * self.timeout
        self.cache = dns.resolver.LRUCache(max_size=cache_size)
        r = dns.resolver.Resolver(configure=False)
        r.nameservers = [dns.nameserver.Do53Nameserver(a, p) for a, p in self.nameservers]
        r.timeout = self.timeout  # per try
        r.lifetime = self.timeout  # per lookup, all tries and servers together
        r.cache = self.cache
        r.use_edns(0, 0, 1232)
        self._resolver = r

    def lookup(self, name: str, rdtype: str, timeout: float | None = None) -> list:
        """The records of type ``rdtype`` at ``name`` (following CNAMEs);
        ``[]`` when the name or that type does not exist."""
        lifetime = self.timeout if timeout is None else max(0.01, min(self.timeout, timeout))
        try:
            answer = self._resolver.resolve(
                name, rdtype, raise_on_no_answer=False, lifetime=lifetime, search=False
            )
        except (dns.resolver.NXDOMAIN, dns.resolver.YXDOMAIN):
            return []
        except (dns.name.EmptyLabel, dns.name.LabelTooLong, dns.name.NameTooLong, dns.name.BadEscape):
            return []  # a name that cannot exist in the DNS has no records
        except dns.exception.Timeout as e:
            raise DnsTemporaryError(f"DNS time-out for {name} {rdtype}") from e
        except dns.resolver.NoNameservers as e:
            raise DnsTemporaryError(f"no nameserver answered {name} {rdtype} usefully") from e
        except dns.exception.DNSException as e:
            raise DnsTemporaryError(f"DNS error for {name} {rdtype}: {type(e).__name__}") from e
        return list(answer.rrset) if answer.rrset is not None else []

    def txt(self, name: str, timeout: float | None = None) -> list[bytes]:
        """Each TXT record at ``name`` with its strings joined (RFC 7208 3.3)."""
        return [b"".join(r.strings) for r in self.lookup(name, "TXT", timeout)]

    def for_message(self) -> "Lookups":
        return Lookups(self)


class Lookups:
    """One message's view of a ``Resolver``: the same lookups within a time budget."""

    def __init__(self, resolver: Resolver) -> None:
        self.resolver = resolver
        self.deadline = time.monotonic() + resolver.budget
        #: names whose lookup failed temporarily, in order
        self.failures: list[str] = []

    def _left(self, name: str, rdtype: str) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            self.failures.append(name)
            raise DnsTemporaryError(f"DNS time budget of this message spent before {name} {rdtype}")
        return left

    def lookup(self, name: str, rdtype: str, timeout: float | None = None) -> list:
        left = self._left(name, rdtype)
        try:
            return self.resolver.lookup(name, rdtype, left if timeout is None else min(timeout, left))
        except DnsTemporaryError:
            self.failures.append(name)
            raise

    def txt(self, name: str, timeout: float | None = None) -> list[bytes]:
        return [b"".join(r.strings) for r in self.lookup(name, "TXT", timeout)]

    @property
    def timeout(self) -> float:
        return self.resolver.timeout

