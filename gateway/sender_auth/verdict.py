"""The verdict on one message's sender: SPF, every DKIM signature, DMARC, ARC.

Results are RFC 8601 words; every part carries a reason a person can read.
``Verdict.as_dict()`` is what is stored per email as ``authentication`` and
``Verdict.from_dict()`` reads it back.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

PASS, FAIL, SOFTFAIL, NEUTRAL, NONE = "pass", "fail", "softfail", "neutral", "none"
TEMPERROR, PERMERROR = "temperror", "permerror"
RESULTS = (PASS, FAIL, SOFTFAIL, NEUTRAL, NONE, TEMPERROR, PERMERROR)


@dataclass(frozen=True)
class SpfResult:
    result: str
    #: the domain checked (MAIL FROM's, or HELO's for a null sender); None if none was
    domain: str | None
    reason: str
    #: "mailfrom" or "helo": which identity ``domain`` is
    scope: str | None = None


@dataclass(frozen=True)
class DkimResult:
    result: str
    domain: str | None  # d=
    selector: str | None  # s=
    reason: str


@dataclass(frozen=True)
class DmarcResult:
    result: str
    #: the policy in force for this From domain (sp= for a subdomain when the
    #: organizational record has one): "none", "quarantine", "reject"; None without a record
    policy: str | None
    #: which authenticated identifier is aligned with the From domain
    aligned: dict[str, bool]
    domain: str | None  # the RFC5322.From domain
    reason: str
    org_domain: str | None = None
    #: the record's pct= (the share of failing mail the owner wants the policy applied to)
    pct: int | None = None


@dataclass(frozen=True)
class ArcResult:
    result: str
    reason: str
    #: the sealing domains, oldest (i=1) first
    sealers: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Verdict:
    spf: SpfResult
    dkim: list[DkimResult]
    dmarc: DmarcResult
    arc: ArcResult

    def as_dict(self) -> dict:
        return {
            "spf": asdict(self.spf),
            "dkim": [asdict(d) for d in self.dkim],
            "dmarc": asdict(self.dmarc),
            "arc": asdict(self.arc),
        }

    @classmethod
    def from_dict(cls, data: dict) -> "Verdict":
        return cls(
            spf=SpfResult(**data["spf"]),
            dkim=[DkimResult(**d) for d in data["dkim"]],
            dmarc=DmarcResult(**data["dmarc"]),
            arc=ArcResult(**data["arc"]),
        )
