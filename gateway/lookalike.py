"""Look-alike senders: does a sender resemble a queue's known sender without being it?

Pure functions, no I/O. A queue learns its known senders (org domains of verified,
accepted mail, and the display names they used); `check()` compares one mail's From
address and display name with them and returns a `Finding` naming the known
domain or display name it imitates, or None.

Domains are compared by their organizational domain (the registrable domain under
the Public Suffix List, `publicsuffixlist`), with the reserved test TLDs
(`.example`, `.test`, `.invalid`, `.localhost`) counted as public suffixes, so
`a.example` and `b.example` are two organizations while `billing.supplier.example`
is `supplier.example`. Every domain is IDNA-normalised (UTS #46): the A-label
(`xn--...`) and U-label forms of a name are the same domain; comparisons of names
use the Unicode form.

Rules, for a sender whose org domain is not known (a known org domain: None):

* **confusable** (`lookalike_domain`): the registrable label has the same skeleton
  as a known one under Unicode's confusables.txt (UTS #39 skeleton, data from
  `confusable-homoglyphs`): `supp1ier` ~ `supplier`, `rn` ~ `m`, Cyrillic `р`/`е`/`а`
  in an IDN homograph. Labels of 3 characters or more (below that a skeleton match is
  a coincidence between unrelated short names).
* **same name, other suffix** (`lookalike_domain`): the same registrable label under
  another public suffix (`supplier.com` for `supplier.example`), for labels of 5
  characters or more: short names are registered by unrelated owners under many TLDs.
* **embedded** (`lookalike_domain`): the known org domain spelled inside another
  organization's domain, its dots kept, hyphenated or dropped:
  `supplier.example.com`, `supplier.example.co`, `supplier-example.com`,
  `supplierexample.com`, `secure-supplier-example.net` (labels of 3 or more).
* **edit distance** (`lookalike_domain`): the registrable labels are within
  Damerau-Levenshtein distance (optimal string alignment: insert, delete, substitute,
  swap two adjacent characters) 1 when the shorter label has 5 to 9 characters, 2
  when it has 10 or more, 0 below 5 (no rule): `suppller`, `suplier`, `supplierr`,
  `suppiler`. Below 5 characters one edit is a fifth of the name or more and the
  space of short names is dense (`abc` / `abd`, `acme` / `acne` are different
  companies); from 10 characters two edits still leave 80% of the name, which is
  the typosquatter's range (`invoicebureau` / `invoicebureua`). Distances are taken
  on the plain labels and on their skeletons, so `supp1ierr` counts as one edit.
* **display name** (`lookalike_display_name`): the display name, normalised (NFKC,
  skeleton, casefolded, diacritics, punctuation and spaces dropped), equals a known
  sender's while the address is not that sender's (its org domain; for freemail
  providers its full address, since anyone can have one there), or the display name
  spells a known org domain or an address at one (`"billing@supplier.example"
  <x@evil.example>`). Generic role names (`Accounts`, `Billing`, `Invoices`, ...)
  and names under 4 characters identify nobody and are not compared.

False positives prevented: a known org domain or any subdomain of it, case and
trailing dots, A-label vs U-label of the same name, unrelated domains, short labels
(`abc`/`abd`), senders at well-known freemail providers for the domain rules
(`gmx.de` next to a known `gmx.com`, `ymail.com` / `gmail.com`), generic display
names. False positives allowed (the mail goes to review, the queue then learns the
domain): a supplier's second domain under another TLD (`acme-trading.de` beside
`acme-trading.com`), an unrelated company one typo away from a known name of 5+
characters, ASCII names whose skeletons collide (`m` looks like `rn`: `corn-mill` /
`com-mill`, `modern` / `modem`), a personal display name shared by two people.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from email.utils import parseaddr
from typing import Literal, NamedTuple

import idna

from gateway.public_suffix import registrable

__all__ = ["Finding", "KnownSenders", "check", "org_domain", "skeleton", "damerau_levenshtein"]

# RFC 2606 / RFC 6761 reserved names: public suffixes for our purposes, whatever the
# PSL says (it has none of them, and `accept_unknown` is a library default).

# Providers where anyone can have an address: the org domain says nothing about who
# the sender is. A sender there never gets `lookalike_domain` (gmx.de is not a
# look-alike of gmx.com), and its identity for the display-name rule is the address.
FREEMAIL_DOMAINS = frozenset(
    """
    gmail.com googlemail.com ymail.com rocketmail.com msn.com icloud.com me.com mac.com
    aim.com proton.me protonmail.com protonmail.ch pm.me web.de t-online.de freenet.de
    mail.com email.com ya.ru mail.ru bk.ru inbox.ru list.ru rambler.ru zoho.com
    zohomail.com fastmail.com fastmail.fm tutanota.com tuta.io tutamail.com hey.com
    qq.com 163.com 126.com yeah.net sina.com naver.com daum.net hanmail.net orange.fr
    wanadoo.fr free.fr laposte.net sfr.fr libero.it virgilio.it tiscali.it alice.it
    seznam.cz wp.pl o2.pl onet.pl interia.pl posteo.de mailbox.org rediffmail.com
    btinternet.com sky.com comcast.net verizon.net att.net
    """.split()
)
# Providers with national domains under many suffixes (yahoo.co.jp, hotmail.fr, ...).
FREEMAIL_LABELS = frozenset({"yahoo", "hotmail", "outlook", "live", "aol", "yandex", "gmx"})

# Role names many senders share; a match on one identifies nobody.
GENERIC_NAMES = frozenset(
    """
    accounts accountspayable accountsreceivable accounting accountant billing bills
    invoice invoices invoicing finance payments payment noreply donotreply reply info
    information sales support service customerservice admin administrator office
    team mail mailer postmaster orders order notifications notification
    buchhaltung rechnung rechnungen rechnungswesen finanzbuchhaltung
    facturation factures facture comptabilite compta fatturazione fatture
    contabilita contabilidad facturas factura boekhouding facturen factuur
    """.split()
)

MIN_SKELETON_LABEL = 3
MIN_SWAP_LABEL = 5
MIN_EMBED_LABEL = 3
MIN_NAME = 4


def _max_distance(length: int) -> int:
    """Largest edit distance that counts for labels whose shorter one has ``length``."""
    if length >= 10:
        return 2
    if length >= 5:
        return 1
    return 0


class Finding(NamedTuple):
    """Why a sender looks like a known one: ``reason`` is ``lookalike_domain`` (``known``
    is the known org domain, A-label form) or ``lookalike_display_name`` (``known`` is
    the known display name as learned, or a known org domain the name spells)."""

    reason: Literal["lookalike_domain", "lookalike_display_name"]
    known: str
    detail: str


# --- domains --------------------------------------------------------------------------

_DOTS = str.maketrans({"\u3002": ".", "\uff0e": ".", "\uff61": "."})
_LDH = re.compile(r"[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?\Z")


def _label_to_ascii(label: str) -> str:
    """Lenient per-label fallback for names the strict UTS #46 codec refuses."""
    label = unicodedata.normalize("NFKC", label).casefold()
    if label.isascii():
        return label
    return "xn--" + label.encode("punycode").decode("ascii")


def _label_to_unicode(label: str) -> str:
    if label.startswith("xn--"):
        try:
            return label[4:].encode("ascii").decode("punycode")
        except (UnicodeError, ValueError):
            return label
    return label


@functools.lru_cache(maxsize=4096)
def _normalise(domain: str) -> tuple[str, str]:
    """(A-label form, U-label form), lowercase, no trailing dot. ValueError if no domain."""
    d = domain.strip().translate(_DOTS).rstrip(".")
    if not d or len(d) > 253 or d.startswith("[") or any(c in d for c in " @<>\\\"()[],;:"):
        raise ValueError(f"not a domain name: {domain!r}")
    try:
        a = idna.encode(d, uts46=True, transitional=False).decode("ascii")
        u = idna.decode(a)
    except (idna.IDNAError, UnicodeError, ValueError):
        labels = d.split(".")
        if any(not lb for lb in labels):
            raise ValueError(f"not a domain name: {domain!r}") from None
        try:
            a = ".".join(_label_to_ascii(lb) for lb in labels)
        except UnicodeError:
            raise ValueError(f"not a domain name: {domain!r}") from None
        if any(lb.isascii() and not _LDH.match(lb) for lb in a.split(".")):
            raise ValueError(f"not a domain name: {domain!r}")
        u = ".".join(_label_to_unicode(lb) for lb in a.split("."))
    a, u = a.lower(), u.casefold()
    if any(not lb or len(lb) > 63 for lb in a.split(".")):
        raise ValueError(f"not a domain name: {domain!r}")
    return a, u


def org_domain(domain: str) -> str:
    """The organizational domain of ``domain`` (RFC 7489 section 3.2): its public suffix
    plus one label, in A-label form, lowercase, without a trailing dot.

    ``billing.Supplier.Example.`` -> ``supplier.example``; ``mail.shop.co.uk`` ->
    ``shop.co.uk``; ``www.пример.рф`` -> ``xn--e1afmkfd.xn--p1ai``. A domain that is
    itself a public suffix (``co.uk``) is returned as it is. ValueError if ``domain``
    is not a domain name (empty, an address literal, empty labels).
    """
    a = _normalise(domain)[0]
    return registrable(a) or a


@dataclass(frozen=True, slots=True)
class _Org:
    ascii: str  # org domain, A-labels
    unicode: str  # org domain, U-labels
    label: str  # registrable label, Unicode
    suffix: str  # public suffix, Unicode
    skel: str  # skeleton of label

    def shown(self) -> str:
        return self.ascii if self.ascii == self.unicode else f"{self.ascii} ({self.unicode})"


@functools.lru_cache(maxsize=8192)
def _org(domain: str) -> tuple[_Org, str] | None:
    """The sender's org and its full Unicode domain, or None when the domain has no
    registrable label (a public suffix) or is not a domain."""
    try:
        a, u = _normalise(domain)
    except ValueError:
        return None
    oa = registrable(a)
    if oa is None:
        return None
    ou = ".".join(u.split(".")[-(oa.count(".") + 1) :])
    label, suffix = ou.split(".", 1)
    return _Org(oa, ou, label, suffix, skeleton(label)), u


def _is_freemail(org: _Org) -> bool:
    return org.ascii in FREEMAIL_DOMAINS or org.label in FREEMAIL_LABELS


# --- confusables skeleton -------------------------------------------------------------


@functools.cache
def _prototypes() -> dict[str, str]:
    """One representative per confusables.txt class, for each single character.

    `confusable-homoglyphs` ships Unicode's confusables.txt as a symmetric map (each
    source -> prototype line stored both ways). Prototypes are never sources (the file
    is idempotent), so each class is a star: the centre, the node with two or more
    neighbours or a multi-character sequence, is the prototype. A two-node class is
    ambiguous; either node serves as the representative (skeletons are compared, not
    shown), the smaller code point is taken.
    """
    from confusable_homoglyphs.confusables import confusables_data

    def clean(s: str) -> str:  # the package keeps the bidi marks around RTL characters
        return s.replace("\u200e", "").replace("\u200f", "")

    adj: dict[str, set[str]] = {}
    for key, entries in confusables_data.items():
        k = clean(key)
        for entry in entries:
            c = clean(entry["c"])
            if k and c and k != c:
                adj.setdefault(k, set()).add(c)
                adj.setdefault(c, set()).add(k)
    table: dict[str, str] = {}
    for k, others in adj.items():
        if len(k) != 1 or len(others) != 1:
            continue
        (o,) = others
        if len(o) != 1 or len(adj[o]) > 1 or o < k:
            table[k] = o
    return table


def _map(s: str, table: dict[str, str]) -> str:
    for _ in range(4):  # two-node classes may point into a multi-character prototype
        t = unicodedata.normalize("NFD", "".join(table.get(c, c) for c in s))
        if t == s:
            break
        s = t
    return s


@functools.lru_cache(maxsize=16384)
def skeleton(text: str) -> str:
    """UTS #39 skeleton, made case-insensitive: NFD, confusables mapping, casefold, and
    the mapping again (``0`` maps to ``O``, which folds to ``o``; ``I`` maps to ``l``
    before folding could make it ``i``). Equal skeletons: the strings look alike."""
    table = _prototypes()
    s = _map(unicodedata.normalize("NFD", text), table)
    return _map(unicodedata.normalize("NFD", s.casefold()), table)


# --- edit distance --------------------------------------------------------------------


def damerau_levenshtein(a: str, b: str, limit: int | None = None) -> int:
    """Optimal-string-alignment distance (insertions, deletions, substitutions, adjacent
    transpositions). With ``limit``, any result above it is returned as ``limit + 1``."""
    if a == b:
        return 0
    cap = (max(len(a), len(b)) if limit is None else limit) + 1
    if abs(len(a) - len(b)) >= cap:
        return cap
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        cur = [i] + [0] * len(b)
        ca = a[i - 1]
        for j in range(1, len(b) + 1):
            cb = b[j - 1]
            v = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb))
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                v = min(v, prev2[j - 2] + 1)
            cur[j] = v
        if min(cur) >= cap:
            return cap
        prev2, prev = prev, cur
    return min(prev[-1], cap)


def _deletions(s: str, depth: int) -> set[str]:
    """``s`` with up to ``depth`` characters deleted (symmetric-delete candidate index:
    two strings within OSA distance d share a string d deletions or fewer from each)."""
    out = {s}
    frontier = {s}
    for _ in range(depth):
        frontier = {w[:i] + w[i + 1 :] for w in frontier for i in range(len(w))}
        out |= frontier
    return out


# --- display names --------------------------------------------------------------------

_DOMAINISH = re.compile(r"(?:[^\s@<>()\[\]\"',;:]+@)?((?:[^\s@<>()\[\]\"',;:.]+\.)+[^\s@<>()\[\]\"',;:.]{2,})")


@functools.lru_cache(maxsize=8192)
def _name_keys(name: str) -> frozenset[str]:
    """Display name for comparison: NFKC, skeleton, casefolded, without marks,
    punctuation, spaces and invisible characters. Two keys: skeleton before and after
    casefolding, since confusables.txt maps ``I`` to ``l`` but ``i`` to itself
    (``SUPPLIER`` must match ``Supplier``, ``SuppIier`` too)."""
    generic = _generic_keys()
    return frozenset(k for k in _raw_name_keys(name) if len(k) >= MIN_NAME and k not in generic)


def _raw_name_keys(name: str) -> frozenset[str]:
    s = unicodedata.normalize("NFKC", name)
    keys = (skeleton(s), skeleton(s.casefold()))
    return frozenset("".join(c for c in k if unicodedata.category(c)[0] not in "MPZC") for k in keys)


@functools.cache
def _generic_keys() -> frozenset[str]:
    return frozenset(k for n in GENERIC_NAMES for k in _raw_name_keys(n))


def _identity(address: str) -> str | None:
    """Who a sender is, as far as its address tells: the org domain, or for freemail
    providers the whole address (lowercase)."""
    local, _, domain = address.strip().rpartition("@")
    got = _org(domain)
    if got is None:
        return None
    org, _ = got
    if local and _is_freemail(org):
        return f"{local.lower()}@{org.ascii}"
    return org.ascii


# --- known senders --------------------------------------------------------------------


@dataclass(frozen=True, init=False, eq=False)
class KnownSenders:
    """A queue's known senders, normalised and indexed for `check()`.

    ``KnownSenders(domains=["supplier.example", ...], names=[("Supplier Ltd",
    "billing@supplier.example"), ...])``: ``domains`` are sender domains of verified,
    accepted mail (any subdomain; reduced to org domains); ``names`` are (display name,
    address or domain) pairs seen in such mail, whose org domains count as known too.
    Entries that are not domain names are ignored. Build once per queue and reuse:
    building indexes every label (well under a second for 1,000 domains).

    ``domains``: frozenset of org domains (A-labels); ``names``: frozenset of
    (display name, identity) where identity is an org domain or, for freemail
    providers, the address.
    """

    domains: frozenset[str]
    names: frozenset[tuple[str, str]]

    def __init__(self, domains: Iterable[str] = (), names: Iterable[tuple[str, str]] = ()) -> None:
        orgs: dict[str, _Org] = {}
        pairs: set[tuple[str, str]] = set()
        for d in domains:
            got = _org(d.rpartition("@")[2])
            if got is not None:
                orgs[got[0].ascii] = got[0]
        for name, where in names:
            got = _org(where.rpartition("@")[2])
            if got is None:
                continue
            orgs[got[0].ascii] = got[0]
            ident = _identity(where) if "@" in where else got[0].ascii
            if name and name.strip() and ident:
                pairs.add((name.strip(), ident))
        object.__setattr__(self, "domains", frozenset(orgs))
        object.__setattr__(self, "names", frozenset(pairs))
        object.__setattr__(self, "_orgs", orgs)

        by_label: dict[str, list[_Org]] = {}
        by_skel: dict[str, list[_Org]] = {}
        near: dict[str, set[str]] = {}
        by_tokens: dict[str, list[tuple[tuple[str, ...], _Org]]] = {}
        by_joined: dict[str, list[_Org]] = {}
        for org in orgs.values():
            by_label.setdefault(org.label, []).append(org)
            if len(org.label) >= MIN_SKELETON_LABEL:
                by_skel.setdefault(org.skel, []).append(org)
            depth = _max_distance(len(org.label))
            if depth:
                for s in {org.label, org.skel}:
                    for v in _deletions(s, depth):
                        near.setdefault(v, set()).add(org.ascii)
            if len(org.label) >= MIN_EMBED_LABEL:
                tokens = tuple(t for t in re.split(r"[.-]", org.unicode) if t)
                by_tokens.setdefault(tokens[0], []).append((tokens, org))
                by_joined.setdefault("".join(tokens), []).append(org)
        object.__setattr__(self, "_by_label", by_label)
        object.__setattr__(self, "_by_skel", by_skel)
        object.__setattr__(self, "_near", near)
        object.__setattr__(self, "_by_tokens", by_tokens)
        object.__setattr__(self, "_by_joined", by_joined)

        by_name: dict[str, tuple[str, set[str]]] = {}
        for name, ident in sorted(pairs):
            for key in _name_keys(name):
                by_name.setdefault(key, (name, set()))[1].add(ident)
        object.__setattr__(self, "_by_name", {k: (n, frozenset(i)) for k, (n, i) in by_name.items()})

    def __repr__(self) -> str:
        return f"KnownSenders({len(self.domains)} domains, {len(self.names)} names)"


# --- the check ------------------------------------------------------------------------


def _domain_finding(sender: _Org, full: str, known: KnownSenders) -> Finding | None:
    orgs: dict[str, _Org] = known._orgs  # type: ignore[attr-defined]
    best: tuple[tuple[int, int, str], Finding] | None = None

    def offer(rank: int, dist: int, org: _Org, detail: str) -> None:
        nonlocal best
        key = (rank, dist, org.ascii)
        if best is None or key < best[0]:
            best = (key, Finding("lookalike_domain", org.ascii, detail))

    me = sender.shown()
    if len(sender.label) >= MIN_SKELETON_LABEL:
        for org in known._by_skel.get(sender.skel, ()):  # type: ignore[attr-defined]
            if org.label != sender.label:
                offer(0, 0, org, f"{me} looks like known sender domain {org.shown()}: "
                      f"the same characters under Unicode confusables (skeleton {sender.skel!r})")
    if len(sender.label) >= MIN_SWAP_LABEL:
        for org in known._by_label.get(sender.label, ()):  # type: ignore[attr-defined]
            offer(1, 0, org, f"{me} is known sender domain {org.shown()} under another "
                  f"public suffix ({sender.suffix} for {org.suffix})")

    tokens = [t for t in re.split(r"[.-]", full) if t]
    for i, tok in enumerate(tokens):
        for run, org in known._by_tokens.get(tok, ()):  # type: ignore[attr-defined]
            if tuple(tokens[i : i + len(run)]) == run:
                offer(2, 0, org, f"{full} spells known sender domain {org.shown()} inside "
                      f"another organization's domain ({me})")
        for org in known._by_joined.get(tok, ()):  # type: ignore[attr-defined]
            offer(2, 0, org, f"{full} spells known sender domain {org.shown()} with its dots "
                  f"dropped (organization {me})")

    depth = _max_distance(len(sender.label))
    if depth:
        near: dict[str, set[str]] = known._near  # type: ignore[attr-defined]
        seen: set[str] = set()
        for s in {sender.label, sender.skel}:
            for v in _deletions(s, depth):
                seen |= near.get(v, set())
        for name in seen:
            org = orgs[name]
            limit = _max_distance(min(len(sender.label), len(org.label)))
            if not limit:
                continue
            dist = min(
                damerau_levenshtein(sender.label, org.label, limit),
                damerau_levenshtein(sender.skel, org.skel, limit),
            )
            if 0 < dist <= limit:
                offer(3, dist, org, f"{me} is {dist} edit{'s' if dist > 1 else ''} "
                      f"(Damerau-Levenshtein) from known sender domain {org.shown()}")
    return best[1] if best else None


def _name_finding(display_name: str, sender: _Org | None, ident: str | None,
                  known: KnownSenders) -> Finding | None:
    where = sender.shown() if sender else "an address without a usable domain"
    for key in sorted(_name_keys(display_name)):
        hit = known._by_name.get(key)  # type: ignore[attr-defined]
        if hit is None:
            continue
        name, idents = hit
        if ident not in idents:
            owners = ", ".join(sorted(idents))
            return Finding("lookalike_display_name", name,
                           f"display name {display_name.strip()!r} matches known sender "
                           f"{name!r} of {owners}, but the address is at {where}")
        return None
    for m in _DOMAINISH.finditer(unicodedata.normalize("NFKC", display_name)):
        got = _org(m.group(1))
        if got is None:
            continue
        org = got[0]
        if org.ascii in known.domains and not _is_freemail(org) and (
            sender is None or org.ascii != sender.ascii
        ):
            return Finding("lookalike_display_name", org.ascii,
                           f"display name {display_name.strip()!r} names known sender domain "
                           f"{org.shown()}, but the address is at {where}")
    return None


def check(from_addr: str | None, display_name: str | None, known: KnownSenders) -> Finding | None:
    """Whether the sender (``from_addr``, an address or a From header value, and its
    display name) resembles one of ``known``'s senders without being it.

    A sender whose org domain is known returns None (freemail providers excepted:
    there the address is compared). Otherwise domain rules come first (a look-alike
    domain is the stronger signal), then the display name. Never raises on malformed
    input: what cannot be parsed is not compared.
    """
    sender: _Org | None = None
    full = ""
    ident: str | None = None
    if from_addr:
        name, addr = parseaddr(from_addr)
        if not addr and "@" in from_addr:
            addr = from_addr.strip().strip("<>")
        if display_name is None and name:
            display_name = name
        got = _org(addr.rpartition("@")[2]) if "@" in addr else None
        if got is not None:
            sender, full = got
            ident = _identity(addr)
    if sender is not None and not _is_freemail(sender):
        if sender.ascii in known.domains:
            return None
        found = _domain_finding(sender, full, known)
        if found is not None:
            return found
    if display_name and display_name.strip():
        return _name_finding(display_name, sender, ident, known)
    return None
