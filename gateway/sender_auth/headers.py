"""Authentication-Results (RFC 8601): the one we write, and the ones a mail arrives with.

``authentication_results(verdict, authserv_id)`` renders our verdict as the field's
value. Inbound fields are read, never believed by default:
``claims_our_id(raw, our_id)`` tells whether any of them pretends to be ours
(forged, to be ignored and recorded), and ``trusted_upstream(raw, trusted_ids)``
reads the topmost one only, and only when its authserv-id is on the trusted list
(the mailbox provider that delivered an IMAP or replayed mail).
"""

from __future__ import annotations

import re

from gateway.sender_auth.verdict import Verdict

REASON_LIMIT = 200

# RFC 2045 token (RFC 8601 "value" when not quoted); RFC 5322 dot-atom local-part.
_TOKEN = re.compile(r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+")
_LOCAL = re.compile(r"[!#$%&'*+\-/=?^_`{|}~0-9A-Za-z]+(\.[!#$%&'*+\-/=?^_`{|}~0-9A-Za-z]+)*")
_DOMAIN = re.compile(r"[0-9A-Za-z]([0-9A-Za-z\-]*[0-9A-Za-z])?(\.[0-9A-Za-z]([0-9A-Za-z\-]*[0-9A-Za-z])?)*")


# --- reading header fields -------------------------------------------------


def header_fields(raw: bytes) -> list[tuple[str, str]]:
    """The message's header fields in order, unfolded: (name, value). Bytes that
    are not UTF-8 become U+FFFD; lines that are not fields are skipped."""
    ends = [i for i in (raw.find(b"\r\n\r\n"), raw.find(b"\n\n")) if i >= 0]
    block = (raw[: min(ends)] if ends else raw).decode("utf-8", "replace")
    fields: list[tuple[str, str]] = []
    for line in re.split(r"\r?\n", block):
        if line[:1] in (" ", "\t"):
            if fields:
                name, value = fields[-1]
                fields[-1] = (name, value + line)
            continue
        name, sep, value = line.partition(":")
        if sep and name and name == name.strip() and " " not in name:
            fields.append((name, value.strip()))
    return fields


def _fields_named(raw: bytes, wanted: str) -> list[str]:
    return [v for n, v in header_fields(raw) if n.lower() == wanted]


# --- tokenizing an Authentication-Results value ----------------------------


def _tokens(text: str) -> list[tuple[str, str]]:
    """("atom"|"qs"|"comment"|";"|"=", text) tokens; whitespace dropped."""
    out: list[tuple[str, str]] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in " \t\r\n":
            i += 1
        elif c == "(":
            depth, j, buf = 1, i + 1, []
            while j < n and depth:
                if text[j] == "\\" and j + 1 < n:
                    buf.append(text[j + 1])
                    j += 2
                    continue
                depth += {"(": 1, ")": -1}.get(text[j], 0)
                if depth:
                    buf.append(text[j])
                j += 1
            out.append(("comment", "".join(buf).strip()))
            i = j
        elif c == '"':
            j, buf = i + 1, []
            while j < n and text[j] != '"':
                if text[j] == "\\" and j + 1 < n:
                    j += 1
                buf.append(text[j])
                j += 1
            out.append(("qs", "".join(buf)))
            i = j + 1
        elif c in ";=":
            out.append((c, c))
            i += 1
        else:
            j = i
            while j < n and text[j] not in ' \t\r\n();="':
                j += 1
            out.append(("atom", text[i:j]))
            i = j
    return out


def authserv_id(value: str) -> str | None:
    """The authserv-id an Authentication-Results value starts with (lower-case)."""
    for kind, text in _tokens(value):
        if kind in ("atom", "qs"):
            return text.strip().lower() or None
        if kind != "comment":
            return None
    return None


def parse(value: str) -> dict:
    """{"authserv_id", "results": [{"method", "result", "comment", "reason",
    "props": {"header.d": ...}}]}; clauses that do not parse are left out."""
    tokens = _tokens(value)
    ident = authserv_id(value)
    groups: list[list[tuple[str, str]]] = [[]]
    for tok in tokens:
        if tok[0] == ";":
            groups.append([])
        else:
            groups[-1].append(tok)
    results = []
    for group in groups[1:]:
        clause = _clause(group)
        if clause is not None:
            results.append(clause)
    return {"authserv_id": ident, "results": results}


def _clause(group: list[tuple[str, str]]) -> dict | None:
    words = [t for t in group if t[0] != "comment"]
    if len(words) < 3 or words[0][0] != "atom" or words[1][0] != "=" or words[2][0] not in ("atom", "qs"):
        return None
    method = words[0][1].split("/", 1)[0].strip().lower()
    clause = {"method": method, "result": words[2][1].lower(), "comment": None, "reason": None, "props": {}}
    # the comment right after the result, if any
    seen = 0
    for t in group:
        if t[0] != "comment":
            seen += 1
        elif seen == 3:
            clause["comment"] = t[1]
            break
    rest = words[3:]
    i = 0
    while i + 2 < len(rest) and rest[i][0] == "atom" and rest[i + 1][0] == "=":
        name, val = rest[i][1].lower(), rest[i + 2]
        i += 3
        # a value like "a b"@example.org arrives as a quoted string and an atom
        text = val[1]
        if val[0] == "qs" and i < len(rest) and rest[i][0] == "atom" and rest[i][1].startswith("@"):
            text += rest[i][1]
            i += 1
        if name == "reason":
            clause["reason"] = text
        elif "." in name:
            clause["props"].setdefault(name, text)
    return clause


# --- inbound headers: forged ones, trusted ones ----------------------------


def claims_our_id(raw: bytes, our_id: str) -> bool:
    """Whether any inbound Authentication-Results field claims ``our_id``: it can
    only be forged (ours is added after this check), so it is ignored and recorded."""
    ours = our_id.strip().lower()
    return any(authserv_id(v) == ours for v in _fields_named(raw, "authentication-results"))


def _domain_part(value: str | None) -> str | None:
    if not value:
        return None
    return value.rpartition("@")[2].strip().strip(".").lower() or None


def _policy_from_comment(comment: str | None) -> str | None:
    m = re.search(r"\bp=(none|quarantine|reject)\b", comment or "", re.IGNORECASE)
    return m.group(1).lower() if m else None


def trusted_upstream(raw: bytes, trusted_ids) -> dict | None:
    """The verdict of the topmost Authentication-Results field, when its
    authserv-id is one of ``trusted_ids``; None otherwise (no field, or the
    topmost is not from a trusted server: lower fields are never read, anyone
    upstream of the trusted server could have written them).

    Shape: {"authserv_id", "header", "spf", "dkim", "dmarc", "arc"} with the
    parts our ``Verdict.as_dict()`` has (None or [] for a method not reported)."""
    fields = _fields_named(raw, "authentication-results")
    if not fields:
        return None
    top = fields[0]
    trusted = {t.strip().lower() for t in trusted_ids}
    parsed = parse(top)
    if parsed["authserv_id"] is None or parsed["authserv_id"] not in trusted:
        return None
    out: dict = {"authserv_id": parsed["authserv_id"], "header": top, "spf": None, "dkim": [], "dmarc": None, "arc": None}
    for r in parsed["results"]:
        reason = r["reason"] or r["comment"] or ""
        props = r["props"]
        if r["method"] == "spf" and out["spf"] is None:
            domain = _domain_part(props.get("smtp.mailfrom")) or _domain_part(props.get("smtp.helo"))
            out["spf"] = {"result": r["result"], "domain": domain, "reason": reason}
        elif r["method"] == "dkim":
            domain = _domain_part(props.get("header.d")) or _domain_part(props.get("header.i"))
            out["dkim"].append({"result": r["result"], "domain": domain, "selector": props.get("header.s"), "reason": reason})
        elif r["method"] == "dmarc" and out["dmarc"] is None:
            policy = (props.get("policy.dmarc") or "").lower() or _policy_from_comment(r["comment"])
            out["dmarc"] = {
                "result": r["result"],
                "policy": policy,
                "aligned": None,
                "domain": _domain_part(props.get("header.from")),
                "reason": reason,
            }
        elif r["method"] == "arc" and out["arc"] is None:
            out["arc"] = {"result": r["result"], "reason": reason}
    return out


# --- the field we write ------------------------------------------------------


def _reason(text: str) -> str:
    text = re.sub(r"[^\x20-\x7e]", "?", text)[:REASON_LIMIT]
    return ' reason="' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _pvalue(value: str) -> str:
    """A property value: as it is when it is a token or local-part@domain,
    a quoted-string otherwise (never anything that could end the clause)."""
    local, at, domain = value.rpartition("@")
    if at and _DOMAIN.fullmatch(domain) and (not local or _LOCAL.fullmatch(local)):
        return value
    if not at and _TOKEN.fullmatch(value):
        return value
    text = re.sub(r"[^\x20-\x7e]", "?", value)[:REASON_LIMIT]
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def authentication_results(verdict: Verdict, authserv_id: str, fold: str | None = None) -> str:
    """The value of the Authentication-Results field for ``verdict`` (without the
    field name). Clauses are joined by "; ", or by ";" + ``fold`` (e.g. "\\r\\n\\t")."""
    if not _TOKEN.fullmatch(authserv_id or ""):
        raise ValueError(f"authserv-id {authserv_id!r} is not a token (a host name, for instance)")
    clauses = []
    s = verdict.spf
    spf = f"spf={s.result}" + _reason(s.reason)
    if s.domain:
        spf += f" smtp.{'helo' if s.scope == 'helo' else 'mailfrom'}={_pvalue(s.domain)}"
    clauses.append(spf)
    if not verdict.dkim:
        clauses.append("dkim=none" + _reason("no DKIM signature"))
    for d in verdict.dkim:
        dk = f"dkim={d.result}" + _reason(d.reason)
        if d.domain:
            dk += f" header.d={_pvalue(d.domain)}"
        if d.selector:
            dk += f" header.s={_pvalue(d.selector)}"
        clauses.append(dk)
    m = verdict.dmarc
    dmarc = f"dmarc={m.result}" + _reason(m.reason)
    if m.policy:
        dmarc += f" policy.dmarc={m.policy}"
    if m.domain:
        dmarc += f" header.from={_pvalue(m.domain)}"
    clauses.append(dmarc)
    clauses.append(f"arc={verdict.arc.result}" + _reason(verdict.arc.reason))
    separator = "; " if fold is None else ";" + fold
    return authserv_id + separator + separator.join(clauses)
