"""Recipient → queue, with plus-addressing. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable


@dataclass(frozen=True)
class Route:
    queue: str
    address: str  # the queue address it matched
    tag: str | None  # the "+tag" of local+tag@domain, if any


class Router:
    def __init__(self, queues: Iterable) -> None:
        """``queues``: objects with ``name`` and ``addresses`` (config QueueSettings)."""
        self._by_address: dict[str, str] = {}
        for q in queues:
            for a in q.addresses:
                self._by_address[a.lower()] = q.name

    def route(self, address: str) -> Route | None:
        addr = address.strip().strip("<>").lower()
        if addr in self._by_address:
            return Route(self._by_address[addr], addr, None)
        local, at, domain = addr.rpartition("@")
        if not at or "+" not in local:
            return None
        base, _, tag = local.partition("+")
        base_addr = f"{base}@{domain}"
        if base and base_addr in self._by_address:
            return Route(self._by_address[base_addr], base_addr, tag or None)
        return None

    def route_all(self, addresses: Iterable[str]) -> list[Route]:
        """One route per queue, first match wins, in address order."""
        seen: set[str] = set()
        out = []
        for a in addresses:
            r = self.route(a)
            if r and r.queue not in seen:
                seen.add(r.queue)
                out.append(r)
        return out
