#!/usr/bin/env python3
"""Write docs/dependencies.md: every runtime dependency pinned in requirements.lock,
with the version and licence its installed metadata declares, and whether that
licence can be combined with the gateway's GPL-3.0-or-later.

Run with the venv's python after changing requirements.lock:
    .venv/bin/python scripts/dependencies.py           # rewrite the document
    .venv/bin/python scripts/dependencies.py --check   # exit 1 if it is stale

The licence comes from the first of: the License-Expression field (PEP 639), the
License field when it is a short SPDX-like expression (older packages put whole
licence texts there), the "License ::" trove classifiers. A package whose
licence cannot be determined is flagged, like an incompatible one: nobody should
ship it without looking.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"
DOC = ROOT / "docs" / "dependencies.md"

PROJECT_LICENSE = "GPL-3.0-or-later"

# SPDX ids a GPL-3.0-or-later program may incorporate and be distributed with
# (FSF's list of GPL-compatible licences). GPL-2.0-only, Apache-1.1, BSD-4-Clause,
# EPL, CDDL, the SSPL and proprietary terms are absent on purpose.
COMPATIBLE = frozenset(
    {
        "0BSD", "Apache-2.0", "Artistic-2.0", "BSD-2-Clause", "BSD-3-Clause", "BSL-1.0", "CC0-1.0",
        "GPL-2.0-or-later", "GPL-3.0-only", "GPL-3.0-or-later", "HPND", "ISC",
        "LGPL-2.1-only", "LGPL-2.1-or-later", "LGPL-3.0-only", "LGPL-3.0-or-later",
        "MIT", "MIT-0", "MPL-2.0", "PSF-2.0", "Python-2.0", "Unlicense", "X11", "Zlib",
    }
)

# Trove classifiers as SPDX ids. Only unambiguous ones: "BSD License" names no
# clause count, and the 4-clause form is not GPL-compatible, so it stays unknown.
CLASSIFIERS = {
    "License :: OSI Approved :: MIT License": "MIT",
    "License :: OSI Approved :: MIT No Attribution License (MIT-0)": "MIT-0",
    "License :: OSI Approved :: Apache Software License": "Apache-2.0",
    "License :: OSI Approved :: ISC License (ISCL)": "ISC",
    "License :: OSI Approved :: Mozilla Public License 2.0 (MPL 2.0)": "MPL-2.0",
    "License :: OSI Approved :: Python Software Foundation License": "PSF-2.0",
    "License :: OSI Approved :: GNU General Public License v3 (GPLv3)": "GPL-3.0-only",
    "License :: OSI Approved :: GNU General Public License v3 or later (GPLv3+)": "GPL-3.0-or-later",
    "License :: OSI Approved :: GNU General Public License v2 (GPLv2)": "GPL-2.0-only",
    "License :: OSI Approved :: GNU General Public License v2 or later (GPLv2+)": "GPL-2.0-or-later",
    "License :: OSI Approved :: GNU Lesser General Public License v3 (LGPLv3)": "LGPL-3.0-only",
    "License :: OSI Approved :: GNU Lesser General Public License v3 or later (LGPLv3+)": "LGPL-3.0-or-later",
    "License :: OSI Approved :: GNU Lesser General Public License v2 or later (LGPLv2+)": "LGPL-2.1-or-later",
    "License :: OSI Approved :: Zope Public License": "ZPL-2.1",
    "License :: CC0 1.0 Universal (CC0 1.0) Public Domain Dedication": "CC0-1.0",
    "License :: OSI Approved :: The Unlicense (Unlicense)": "Unlicense",
}

# Known advisories and the CPython the parser needs: static text, kept here so the
# document stays generated (and checked) as a whole.
ADVISORIES = """
## Known advisories

`make test` runs `scripts/audit.py` before the tests: pip-audit checks every pin in
`requirements.lock` (runtime and the dev tool's own) against OSV and PyPI's
advisory feed where they answer, and always against `scripts/advisories.json`, a
committed snapshot of the advisories for the locked packages. It fails on any
advisory for a pinned version. Where no service answers, it says so on one line
and the snapshot gates alone: advisories published after the snapshot's date are
then missed until someone runs `scripts/audit.py --refresh` where OSV answers.

The floors in `pyproject.toml` are releases with the known advisories fixed:

| package | floor | advisories fixed by then |
|---|---|---|
| aiosmtpd | 1.4.6 | GHSA-pr2m-px7j-xg65 (SMTP smuggling, 1.4.5), GHSA-wgjv-9j3q-jhg8 (commands injected after STARTTLS, 1.4.6) |
| python-multipart | 0.0.30 | GHSA-59g5-xgcq-4qw3 (0.0.18), GHSA-wp53-j4wj-2cfg (0.0.22), GHSA-mj87-hwqh-73pj (0.0.26), GHSA-pp6c-gr5w-3c5g (0.0.27), GHSA-5rvq-cxj2-64vf (0.0.30): multipart and urlencoded parsing DoS, a path traversal |
| starlette | 1.3.1 | GHSA-f96h-pmfr-66vw (0.40.0), GHSA-2c2j-9gv5-cj73 (0.47.2), GHSA-7f5h-v6xp-fcq8 (0.49.1), GHSA-86qp-5c8j-p5mr (1.0.1), GHSA-x746-7m8f-x49c and GHSA-wqp7-x3pw-xc5r (1.1.0), GHSA-82w8-qh3p-5jfq (1.3.1) |
| h11 | 0.16.0 | GHSA-vqfr-h8mv-ghfj (lenient chunked encoding, request smuggling) |
| mail-parser | 4.2.0 | no published advisory; 4.2.0 is the first release whose `Received` parsing is a tokenizer instead of a list of backtracking regular expressions (SpamScope/mail-parser#150) |

## The CPython the parser needs

The gateway parses mail with the standard library's `email` package (mail-parser
wraps it), so some of its fixes are CPython's, not a dependency's:

| fix | what | first releases with it |
|---|---|---|
| gh-102988 (CVE-2023-27043), gh-121650 (CVE-2024-6923) | `parseaddr`/`getaddresses` misreading crafted addresses; newlines in headers not quoted on output | 3.11.10, 3.12.6 |
| gh-136063 | `email.message` legacy parameter parsing (`Content-Type`/`Content-Disposition` parameters, `get_param`, `get_filename`) quadratic in the header's length | 3.10.20, 3.11.15, 3.12.13 (March 2026); 3.13 and 3.14 in their bugfix releases after October 2025 |
| gh-143935, gh-144125 | header injection when folding long comments; `BytesGenerator` writing unsafely folded headers | 3.11.15, 3.12.13 |
| gh-136063 (rest) | the other quadratic spots of `email._header_value_parser` (address lists, encoded words) | no release yet: the rewrite (python/cpython#152521) is open |

So the parser wants CPython 3.11.15 or later on 3.11 (3.12.13 on 3.12). This
machine, CI's and the developers' run **3.11.7**, which has none of these fixes:
there the gateway's own cap on header size and header parameters, applied before
a header reaches the `email` package, is the guard against the quadratic
parsing, and the remaining `_header_value_parser` spots are bounded only by that
cap on any CPython. `scripts/audit.py` prints a note when it runs under a CPython
older than these releases; it does not fail on it.
"""

_EXPRESSION = re.compile(r"^[A-Za-z0-9.+\-() ]{1,100}$")
_TOKEN = re.compile(r"\(|\)|[A-Za-z0-9.+\-]+")


def key(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path | None = None) -> list[tuple[str, str]]:
    path = path or LOCK
    pins = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            if not sep:
                raise SystemExit(f"{path.name}: not an exact pin: {line!r}")
            pins.append((key(name), version.strip()))
    return pins


def runtime_closure(pyproject: Path = ROOT / "pyproject.toml") -> set[str]:
    """The distributions [project] dependencies pull in at run time (no extras of
    the gateway itself, so the dev tools stay out), from installed metadata."""
    env = default_environment()
    todo = [(Requirement(spec), "") for spec in tomllib.loads(pyproject.read_text())["project"]["dependencies"]]
    seen: set[str] = set()
    done: set[tuple[str, str]] = set()
    while todo:
        req, from_extra = todo.pop()
        if req.marker and not req.marker.evaluate({**env, "extra": from_extra}):
            continue
        for extra in ("", *sorted(req.extras)):
            if (key(req.name), extra) in done:
                continue
            done.add((key(req.name), extra))
            seen.add(key(req.name))
            try:
                dist = distribution(req.name)
            except PackageNotFoundError:
                continue
            todo.extend((Requirement(spec), extra) for spec in dist.requires or [])
    return seen


# Packages whose metadata names no licence the rules above can read, each
# checked by hand against the licence file it ships.
READ_FROM_LICENCE_FILE = {
    # metadata says "BSD-like"; dkimpy-1.1.8.dist-info/licenses/LICENSE is the zlib licence word for word
    "dkimpy": "Zlib",
    # metadata says "GPL"; LICENSE.txt is GPL version 3 (read as -only, the narrower)
    "extract-msg": "GPL-3.0-only",
    # metadata says "BSD"; LICENSE.txt / LICENSE.md are the two-clause text
    "olefile": "BSD-2-Clause",
    "oletools": "BSD-2-Clause",
    # metadata says "BSD"; LICENSE is the three-clause text
    "easygui": "BSD-3-Clause",
}


def licence_of(metadata) -> tuple[str, str]:
    """(SPDX expression or "UNKNOWN", which metadata field said so)."""
    name = (metadata.get("Name") or "").lower()
    if name in READ_FROM_LICENCE_FILE:
        return READ_FROM_LICENCE_FILE[name], "licence file (checked by hand)"
    expression = (metadata.get("License-Expression") or "").strip()
    if expression:
        return expression, "License-Expression"
    text = (metadata.get("License") or "").strip()
    if text and _EXPRESSION.match(text) and all(
        t in ("(", ")", "AND", "OR", "WITH") or t in COMPATIBLE or t in CLASSIFIERS.values() for t in _TOKEN.findall(text)
    ):
        return text, "License"
    ids = sorted({CLASSIFIERS[c] for c in metadata.get_all("Classifier") or [] if c in CLASSIFIERS})
    if ids:
        # Several licence classifiers on one package mean a choice between them.
        return " OR ".join(ids), "classifiers"
    return "UNKNOWN", "none"


def compatible(expression: str) -> bool:
    """Whether an SPDX expression allows distribution under GPL-3.0-or-later:
    every AND term must be, one OR alternative suffices, WITH exceptions only
    grant more. Anything unparsable or unknown is not."""
    tokens = _TOKEN.findall(expression)
    if "".join(tokens) != expression.replace(" ", ""):
        return False
    pos = 0

    def peek():
        return tokens[pos] if pos < len(tokens) else None

    def take():
        nonlocal pos
        pos += 1
        return tokens[pos - 1]

    def primary() -> bool:
        t = take() if peek() is not None else None
        if t == "(":
            value = disjunction()
            if take() != ")":
                raise ValueError
            return value
        if t is None or t in (")", "AND", "OR", "WITH"):
            raise ValueError
        if peek() == "WITH":
            take()
            take()
        return t in COMPATIBLE

    def conjunction() -> bool:
        value = primary()
        while peek() == "AND":
            take()
            value = primary() and value
        return value

    def disjunction() -> bool:
        value = conjunction()
        while peek() == "OR":
            take()
            value = conjunction() or value
        return value

    try:
        value = disjunction()
    except (ValueError, IndexError):
        return False
    return value and pos == len(tokens)


def render() -> str:
    closure = runtime_closure()
    rows, flagged, problems = [], [], []
    for name, pinned in read_lock():
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            problems.append(f"{name} is pinned in requirements.lock but not installed")
            continue
        if dist.version != pinned:
            problems.append(f"{name}: requirements.lock pins {pinned}, {dist.version} is installed")
        expression, source = licence_of(dist.metadata)
        ok = compatible(expression)
        if not ok:
            flagged.append(name)
        scope = "runtime" if name in closure else "not needed at run time"
        verdict = "yes" if ok else "**NO — incompatible or unknown**"
        rows.append(f"| {name} | {pinned} | `{expression}` | {source} | {scope} | {verdict} |")
    missing = sorted(closure - {n for n, _ in read_lock()})
    if missing:
        problems.append("runtime dependencies missing from requirements.lock: " + ", ".join(missing))
    if problems:
        raise SystemExit("cannot document dependencies:\n  " + "\n  ".join(problems))
    summary = (
        "No dependency is flagged."
        if not flagged
        else "**Flagged (incompatible with GPL-3.0-or-later, or licence unknown): " + ", ".join(flagged) + ".**"
    )
    return (
        "# Runtime dependencies and their licences\n"
        "\n"
        "Generated by `scripts/dependencies.py` from `requirements.lock` and the installed\n"
        "packages' metadata; `tests/test_dependencies_doc.py` fails when it is out of step.\n"
        "Do not edit by hand: run `.venv/bin/python scripts/dependencies.py`.\n"
        "\n"
        f"The gateway is distributed under `{PROJECT_LICENSE}` (see `LICENSE`): it imports\n"
        "aioimaplib, which is `GPL-3.0-only`, so the combined work is conveyed under\n"
        "GPL-3.0. Every dependency below must allow that; \"compatible\" follows the FSF's\n"
        "list of GPL-compatible licences (MPL-2.0 through its section 3.3, Apache-2.0 with\n"
        "GPL-3.0 but not GPL-2.0). Where a package declares no SPDX expression its\n"
        "licence is read from the `License` field or its trove classifiers (column \"from\").\n"
        "\n"
        f"{summary}\n"
        "\n"
        f"| package | version | licence | from | scope | compatible with {PROJECT_LICENSE} |\n"
        "|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n" + ADVISORIES
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/dependencies.md is not what would be written")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not DOC.exists() or DOC.read_text() != text:
            print(f"{DOC.relative_to(ROOT)} is stale: run .venv/bin/python scripts/dependencies.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(text)
    print(f"wrote {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
