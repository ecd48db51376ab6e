"""Recognise structured e-invoices: Factur-X / ZUGFeRD PDFs and bare XRechnung,
Peppol or CII XMLs (issue 17, items 3 and 6).

``detect(data, filename, content_type)`` returns an :class:`EInvoice` or ``None``.
It is pure (no database, no I/O besides reading the XSD files shipped with
drafthorse), never raises on hostile input and bounds its work:

* PDFs over ``MAX_PDF_BYTES`` are not opened; the EmbeddedFiles name tree is
  walked to at most ``MAX_NAME_TREE_NODES`` nodes and depth ``MAX_NAME_TREE_DEPTH``,
  the catalog's ``/AF`` array (PDF/A-3 associated files) and the file-attachment
  annotations of the first ``MAX_PDF_PAGES_SCANNED`` pages are looked at, and an
  embedded file is decompressed to at most ``MAX_XML_BYTES``;
* XML over ``MAX_XML_BYTES`` is not parsed; the parser resolves no entities,
  loads no DTD and touches no network, and a document that declares a DTD at all
  (``<!DOCTYPE``/``<!ENTITY``: billion laughs, XXE) is refused;
* validation runs only while the time budget (``budget`` seconds, default
  ``DEFAULT_BUDGET``) lasts, otherwise ``valid`` is ``None`` with the reason.

Validation: CII (Factur-X / ZUGFeRD 2.x / XRechnung CII) against the official
Factur-X XSD of its profile as shipped by the drafthorse package (EN 16931's for
XRechnung, EXTENDED's for unknown guideline IDs), plus the required business terms;
UBL (XRechnung UBL, Peppol BIS) and ZUGFeRD 1.0 have no XSD here: well-formedness
and the required business terms only. ``valid`` is ``None`` when nothing was
validated, else a bool; ``errors`` holds the first few problems.
"""

from __future__ import annotations

import io
import logging
import re
import threading
import time
import zlib
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

__all__ = ["EInvoice", "detect", "iban_changed", "normalise_iban", "EMBEDDED_NAMES"]

log = logging.getLogger(__name__)

MAX_PDF_BYTES = 64 * 1024 * 1024
MAX_XML_BYTES = 16 * 1024 * 1024
MAX_PDF_PAGES_SCANNED = 5
MAX_ANNOTATIONS_PER_PAGE = 200
MAX_NAME_TREE_NODES = 2_000
MAX_NAME_TREE_DEPTH = 16
MAX_EMBEDDED_CANDIDATES = 8
MAX_ERRORS = 5
SNIFF_BYTES = 64 * 1024
DEFAULT_BUDGET = 5.0

# The file names the standards give the embedded XML, lower-cased; the value is the
# preference order (Factur-X / ZUGFeRD 2.1+, ZUGFeRD 2.0, ZUGFeRD 1.0, XRechnung).
EMBEDDED_NAMES = {"factur-x.xml": 0, "zugferd-invoice.xml": 1, "xrechnung.xml": 2}

NS_CII = "urn:un:unece:uncefact:data:standard:CrossIndustryInvoice:100"
NS_ZUGFERD1 = "urn:ferd:CrossIndustryDocument:invoice:1p0"
NS_UBL_INVOICE = "urn:oasis:names:specification:ubl:schema:xsd:Invoice-2"
NS_UBL_CREDITNOTE = "urn:oasis:names:specification:ubl:schema:xsd:CreditNote-2"
NS_CAC = "urn:oasis:names:specification:ubl:schema:xsd:CommonAggregateComponents-2"
NS_CBC = "urn:oasis:names:specification:ubl:schema:xsd:CommonBasicComponents-2"

_ROOTS = {
    (NS_CII, "CrossIndustryInvoice"): "CII",
    (NS_ZUGFERD1, "CrossIndustryDocument"): "CII",
    (NS_UBL_INVOICE, "Invoice"): "UBL",
    (NS_UBL_CREDITNOTE, "CreditNote"): "UBL",
}
_SNIFF = re.compile(rb"<(?:[A-Za-z_][\w.-]*:)?(CrossIndustryInvoice|CrossIndustryDocument|Invoice|CreditNote)[\s>/]")
_IBAN = re.compile(r"^[A-Z]{2}[0-9]{2}[A-Z0-9]{11,30}$")


@dataclass(frozen=True)
class EInvoice:
    """A recognised e-invoice.

    ``syntax`` is "CII" or "UBL"; ``profile`` a name from the guideline ID
    (``None`` when unknown: ``guideline_id`` keeps the raw one); ``fields`` the
    issue's key fields; ``xml`` the invoice XML (the embedded file for a PDF, the
    input itself for a bare XML); ``embedded_name`` the embedded file's name as the
    PDF gives it (``None`` for a bare XML)."""

    syntax: str
    profile: str | None
    fields: dict[str, Any]
    xml: bytes = field(repr=False)
    embedded_name: str | None = None
    guideline_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The document's ``einvoice`` object: {"syntax", "profile", **fields}."""
        return {"syntax": self.syntax, "profile": self.profile, **self.fields}

    @property
    def iban(self) -> str | None:
        return self.fields.get("iban")

    @property
    def seller_vat_id(self) -> str | None:
        return (self.fields.get("seller") or {}).get("vat_id")


# --------------------------------------------------------------------------- API


def detect(data: bytes, filename: str | None, content_type: str, *, budget: float = DEFAULT_BUDGET) -> EInvoice | None:
    """The e-invoice in ``data`` (a Factur-X/ZUGFeRD PDF or a bare UBL/CII XML), or
    ``None``. Decides by content; ``filename`` and ``content_type`` only break ties.
    Never raises."""
    deadline = time.monotonic() + max(0.0, budget)
    try:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            return None
        data = bytes(data)
        if _looks_like_pdf(data):
            return _from_pdf(data, deadline)
        if _looks_like_xml(data, filename, content_type):
            return _from_xml(data, None, deadline)
        return None
    except (Exception, RecursionError) as exc:  # hostile input must not break ingest
        log.debug("einvoice detection failed: %r", exc)
        return None


def normalise_iban(value: str | None) -> str | None:
    """Upper-case, without spaces or other separators; ``None`` for nothing."""
    if not value or not isinstance(value, str):
        return None
    cleaned = re.sub(r"[\s\-./]", "", value).upper()
    return cleaned or None


def iban_changed(previous_ibans_for_seller: set[str] | frozenset[str], einvoice: EInvoice | dict | None) -> bool:
    """True when the e-invoice names a payee IBAN and the seller had IBANs before,
    none of them this one (issue 17 item 6, reason ``iban_changed``). A first
    invoice of a seller (no earlier IBAN) or one without an IBAN is not a change.
    Takes an :class:`EInvoice` or its ``as_dict()``."""
    if einvoice is None:
        return False
    fields = einvoice.as_dict() if isinstance(einvoice, EInvoice) else einvoice
    current = normalise_iban(fields.get("iban") if isinstance(fields, dict) else None)
    if current is None:
        return False
    seen = {n for n in (normalise_iban(i) for i in previous_ibans_for_seller or ()) if n}
    return bool(seen) and current not in seen


# --------------------------------------------------------------------------- sniffing


def _looks_like_pdf(data: bytes) -> bool:
    # Readers accept the header anywhere in the first KiB; an XML that merely
    # mentions "%PDF-" early on stays XML.
    return b"%PDF-" in data[:1024] and not data[:1024].lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"<")


def _looks_like_xml(data: bytes, filename: str | None, content_type: str | None) -> bool:
    head = data[:SNIFF_BYTES]
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            head = head.decode("utf-16", "ignore").encode("utf-8")
        except Exception:
            return False
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if not stripped.startswith(b"<"):
        return False
    return _SNIFF.search(head) is not None


# --------------------------------------------------------------------------- PDF


def _from_pdf(data: bytes, deadline: float) -> EInvoice | None:
    if len(data) > MAX_PDF_BYTES:
        return None
    candidates = _pdf_embedded_xml(data)
    for name, xml in candidates:
        found = _from_xml(xml, name, deadline)
        if found is not None:
            return found
    return None


def _pdf_embedded_xml(data: bytes) -> list[tuple[str, bytes]]:
    """(name, bytes) of the embedded XML files worth trying, known names first."""
    from pypdf import PdfReader  # imported here: pypdf is not needed to sniff XML

    logging.getLogger("pypdf").setLevel(logging.ERROR)
    reader = PdfReader(io.BytesIO(data), strict=False)
    if reader.is_encrypted:
        try:
            if not reader.decrypt(""):
                return []
        except Exception:
            return []
    root = _resolve(reader.trailer.get("/Root"))
    if not isinstance(root, dict):
        return []
    specs: list[tuple[str, Any]] = []
    names = _resolve(root.get("/Names"))
    if isinstance(names, dict):
        _walk_name_tree(_resolve(names.get("/EmbeddedFiles")), specs, [0], 0)
    for spec in _as_list(root.get("/AF"))[:MAX_NAME_TREE_NODES]:
        specs.append(("", spec))
    pages = _pdf_pages(reader)
    for page in pages:
        for annot in _as_list(page.get("/Annots"))[:MAX_ANNOTATIONS_PER_PAGE]:
            annot = _resolve(annot)
            if isinstance(annot, dict) and annot.get("/Subtype") == "/FileAttachment":
                specs.append(("", annot.get("/FS")))

    known: list[tuple[int, str, Any]] = []
    other: list[tuple[str, Any]] = []
    seen_ids: set[int] = set()
    for tree_name, spec in specs:
        spec_obj = _resolve(spec)
        if not isinstance(spec_obj, dict) or id(spec_obj) in seen_ids:
            continue
        seen_ids.add(id(spec_obj))
        name = _spec_name(spec_obj) or tree_name
        base = name.replace("\\", "/").rsplit("/", 1)[-1]
        rank = EMBEDDED_NAMES.get(base.lower())
        if rank is not None:
            known.append((rank, base, spec_obj))
        elif base.lower().endswith(".xml"):
            other.append((base, spec_obj))
    known.sort(key=lambda item: item[0])
    out: list[tuple[str, bytes]] = []
    for name, spec_obj in [(n, s) for _, n, s in known] + other:
        if len(out) >= MAX_EMBEDDED_CANDIDATES:
            break
        content = _embedded_bytes(spec_obj)
        if content:
            out.append((name, content))
    return out


def _pdf_pages(reader) -> list[dict]:
    """The first few page dictionaries, walking /Pages by hand (bounded)."""
    out: list[dict] = []
    root = _resolve(reader.trailer.get("/Root"))
    stack = [(_resolve(root.get("/Pages")) if isinstance(root, dict) else None, 0)]
    visited = 0
    while stack and len(out) < MAX_PDF_PAGES_SCANNED and visited < MAX_NAME_TREE_NODES:
        node, depth = stack.pop()
        visited += 1
        if not isinstance(node, dict) or depth > MAX_NAME_TREE_DEPTH:
            continue
        if node.get("/Type") == "/Page" or "/Kids" not in node:
            out.append(node)
            continue
        kids = _as_list(node.get("/Kids"))[:MAX_NAME_TREE_NODES]
        stack.extend((_resolve(k), depth + 1) for k in reversed(kids))
    return out


def _walk_name_tree(node, out: list, count: list[int], depth: int) -> None:
    if not isinstance(node, dict) or depth > MAX_NAME_TREE_DEPTH:
        return
    count[0] += 1
    if count[0] > MAX_NAME_TREE_NODES:
        return
    pairs = _as_list(node.get("/Names"))
    for i in range(0, min(len(pairs), 2 * MAX_NAME_TREE_NODES) - 1, 2):
        key = _resolve(pairs[i])
        out.append((str(key) if key is not None else "", pairs[i + 1]))
    for kid in _as_list(node.get("/Kids"))[:MAX_NAME_TREE_NODES]:
        if count[0] > MAX_NAME_TREE_NODES:
            return
        _walk_name_tree(_resolve(kid), out, count, depth + 1)


def _spec_name(spec: dict) -> str:
    for key in ("/UF", "/F"):
        value = _resolve(spec.get(key))
        if value is not None and not isinstance(value, dict):
            return str(value)
    return ""


def _embedded_bytes(spec: dict) -> bytes | None:
    ef = _resolve(spec.get("/EF"))
    if not isinstance(ef, dict):
        return None
    stream = _resolve(ef.get("/UF")) or _resolve(ef.get("/F"))
    if stream is None or not hasattr(stream, "get_data"):
        return None
    params = _resolve(stream.get("/Params"))
    if isinstance(params, dict):
        size = _resolve(params.get("/Size"))
        if isinstance(size, int) and size > MAX_XML_BYTES:
            return None
    raw = getattr(stream, "_data", None)
    filters = _resolve(stream.get("/Filter"))
    filter_list = [str(_resolve(f)) for f in _as_list(filters)] if filters is not None else []
    if isinstance(raw, (bytes, bytearray)) and len(raw) > MAX_XML_BYTES:
        return None
    if isinstance(raw, (bytes, bytearray)) and filter_list in ([], ["/FlateDecode"]) and not stream.get("/DecodeParms"):
        if not filter_list:
            return bytes(raw)
        inflater = zlib.decompressobj()
        try:
            out = inflater.decompress(bytes(raw), MAX_XML_BYTES + 1)
        except zlib.error:
            return None
        return out if len(out) <= MAX_XML_BYTES else None
    out = stream.get_data()  # other filters: pypdf's own output limits apply
    return out if isinstance(out, bytes) and len(out) <= MAX_XML_BYTES else None


def _resolve(obj):
    from pypdf.generic import IndirectObject

    for _ in range(8):
        if not isinstance(obj, IndirectObject):
            break
        obj = obj.get_object()
    return obj


def _as_list(obj) -> list:
    obj = _resolve(obj)
    if obj is None:
        return []
    if isinstance(obj, list):
        return list(obj)
    return [obj]


# --------------------------------------------------------------------------- XML


def _parse(xml: bytes):
    """The root element, or None: oversized, a DTD declared, or not well-formed."""
    from lxml import etree

    if len(xml) > MAX_XML_BYTES:
        return None
    head = xml[:SNIFF_BYTES]
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        head = head.decode("utf-16", "ignore").encode("utf-8")
    if b"<!DOCTYPE" in head or b"<!ENTITY" in head:
        return None
    parser = etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_comments=True,
        remove_pis=True,
    )
    try:
        root = etree.fromstring(xml, parser)
    except Exception:
        return None
    tree = root.getroottree()
    if tree.docinfo.internalDTD is not None or tree.docinfo.doctype:
        return None
    return root


def _from_xml(xml: bytes, embedded_name: str | None, deadline: float) -> EInvoice | None:
    root = _parse(xml)
    if root is None or not isinstance(root.tag, str):
        return None
    ns, _, local = root.tag[1:].partition("}") if root.tag.startswith("{") else ("", "", root.tag)
    syntax = _ROOTS.get((ns, local))
    if syntax is None:
        return None
    errors: list[str] = []
    if syntax == "UBL":
        guideline, fields, required = _ubl_fields(root, local, errors)
    else:
        guideline, fields, required = _cii_fields(root, ns, errors)
    profile = _profile(guideline)
    for term, value in required:
        if value in (None, ""):
            errors.append(f"missing {term}")
    schema_skipped = False
    if syntax == "CII" and ns == NS_CII:
        schema_errors = _validate_cii(root, profile, guideline, deadline)
        if schema_errors is None:
            schema_skipped = True
        else:
            errors = schema_errors + errors
    iban_error = _iban_problem(fields.get("iban"))
    if iban_error:
        errors.append(iban_error)
    # False on any problem; None when the schema could not be run and nothing else
    # was wrong; True otherwise (UBL and ZUGFeRD 1.0: the required terms only).
    valid: bool | None = False if errors else (None if schema_skipped else True)
    if schema_skipped:
        errors.append("schema validation skipped: time budget spent or schema unavailable")
    fields["valid"] = valid
    fields["errors"] = errors[:MAX_ERRORS]
    return EInvoice(
        syntax=syntax,
        profile=profile,
        fields=fields,
        xml=xml,
        embedded_name=embedded_name,
        guideline_id=guideline,
    )


def _profile(guideline: str | None) -> str | None:
    if not guideline:
        return None
    g = guideline.strip().lower()
    if "xrechnung" in g:
        return "XRECHNUNG EXTENSION" if "extension" in g else "XRECHNUNG"
    if "peppol.eu:2017:poacc:billing:3.0" in g:
        return "PEPPOL BIS Billing 3.0"
    if g.startswith("urn:ferd:crossindustrydocument:invoice:1p0:"):
        level = g.rsplit(":", 1)[-1].upper()
        return f"ZUGFeRD 1.0 {level}" if level in ("BASIC", "COMFORT", "EXTENDED") else None
    if "extended-ctc-fr" in g:
        return "EXTENDED-CTC-FR"
    if "minimum" in g:
        return "MINIMUM"
    if "basicwl" in g:
        return "BASIC WL"
    if "extended" in g:
        return "EXTENDED"
    if re.search(r"[:#]basic$", g) or g.endswith("1p0:basic"):
        return "BASIC"
    if g == "urn:cen.eu:en16931:2017":
        return "EN 16931"
    return None


# ----- element helpers: CII and ZUGFeRD 1.0 share local names across namespaces


def _local(el) -> str:
    tag = el.tag
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _kids(el, name: str) -> list:
    if el is None:
        return []
    return [c for c in el if _local(c) == name]


def _path_all(el, path: str) -> list:
    nodes = [el] if el is not None else []
    for step in path.split("/"):
        nodes = [k for n in nodes for k in _kids(n, step)]
        if not nodes:
            break
    return nodes


def _path(el, *paths: str):
    for path in paths:
        nodes = _path_all(el, path)
        if nodes:
            return nodes[0]
    return None


def _text(el) -> str | None:
    if el is None or el.text is None:
        return None
    text = " ".join(el.text.split())
    return text or None


def _amount(el, errors: list[str], term: str) -> str | None:
    text = _text(el)
    if text is None:
        return None
    try:
        value = Decimal(text)
    except (InvalidOperation, ValueError):
        errors.append(f"{term}: not a decimal: {text[:40]!r}")
        return None
    if not value.is_finite():
        errors.append(f"{term}: not a decimal: {text[:40]!r}")
        return None
    return text


def _cii_date(el, errors: list[str], term: str) -> str | None:
    """udt:DateTimeString format 102 (YYYYMMDD) as ISO 8601; other formats kept."""
    if el is None:
        return None
    string = _path(el, "DateTimeString")
    text = _text(string if string is not None else el)
    if text is None:
        return None
    fmt = string.get("format") if string is not None else None
    match = re.fullmatch(r"(\d{4})(\d{2})(\d{2})", text)
    if match and fmt in (None, "102"):
        year, month, day = match.groups()
        if 1 <= int(month) <= 12 and 1 <= int(day) <= 31:
            return f"{year}-{month}-{day}"
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        return text
    errors.append(f"{term}: unreadable date {text[:20]!r} (format {fmt})")
    return None


def _cii_fields(root, ns: str, errors: list[str]):
    if ns == NS_ZUGFERD1:
        context, doc, tx = "SpecifiedExchangedDocumentContext", "HeaderExchangedDocument", "SpecifiedSupplyChainTradeTransaction"
        agreement, settlement = "ApplicableSupplyChainTradeAgreement", "ApplicableSupplyChainTradeSettlement"
        summation = "SpecifiedTradeSettlementMonetarySummation"
    else:
        context, doc, tx = "ExchangedDocumentContext", "ExchangedDocument", "SupplyChainTradeTransaction"
        agreement, settlement = "ApplicableHeaderTradeAgreement", "ApplicableHeaderTradeSettlement"
        summation = "SpecifiedTradeSettlementHeaderMonetarySummation"
    guideline = _text(_path(root, f"{context}/GuidelineSpecifiedDocumentContextParameter/ID"))
    transaction = _path(root, tx)
    seller = _path(transaction, f"{agreement}/SellerTradeParty")
    buyer = _path(transaction, f"{agreement}/BuyerTradeParty")
    settle = _path(transaction, settlement)
    currency = _text(_path(settle, "InvoiceCurrencyCode"))
    vat_id = None
    for reg in _path_all(seller, "SpecifiedTaxRegistration/ID"):
        if (reg.get("schemeID") or "").upper() == "VA":
            vat_id = _text(reg)
            break
    totals_el = _path(settle, summation)
    tax_amounts = _kids(totals_el, "TaxTotalAmount")
    tax_el = next((t for t in tax_amounts if currency and t.get("currencyID") == currency), None)
    if tax_el is None and tax_amounts:
        tax_el = tax_amounts[0]
    iban = None
    for account in _path_all(settle, "SpecifiedTradeSettlementPaymentMeans/PayeePartyCreditorFinancialAccount/IBANID"):
        iban = normalise_iban(_text(account))
        if iban:
            break
    number = _text(_path(root, f"{doc}/ID"))
    issue = _cii_date(_path(root, f"{doc}/IssueDateTime"), errors, "BT-2 issue date")
    fields = {
        "seller": {"name": _text(_path(seller, "Name")), "vat_id": vat_id},
        "buyer": {"name": _text(_path(buyer, "Name"))},
        "invoice_number": number,
        "issue_date": issue,
        "due_date": _cii_date(_path(settle, "SpecifiedTradePaymentTerms/DueDateDateTime"), errors, "BT-9 due date"),
        "currency": currency,
        "totals": {
            "net": _amount(_path(totals_el, "TaxBasisTotalAmount"), errors, "BT-109 net total"),
            "tax": _amount(tax_el, errors, "BT-110 tax total"),
            "gross": _amount(_path(totals_el, "GrandTotalAmount"), errors, "BT-112 gross total"),
        },
        "iban": iban,
    }
    required = [
        ("BT-24 guideline ID", guideline),
        ("BT-1 invoice number", number),
        ("BT-2 issue date", issue),
        ("BT-5 currency", currency),
        ("BT-27 seller name", fields["seller"]["name"]),
        ("BT-112 gross total", fields["totals"]["gross"]),
    ]
    return guideline, fields, required


def _ubl_fields(root, local: str, errors: list[str]):
    def c(tag):
        return f"{{{NS_CBC}}}{tag}"

    def a(tag):
        return f"{{{NS_CAC}}}{tag}"

    def find(el, *steps):
        for step in steps:
            if el is None:
                return None
            el = el.find(step)
        return el

    def party(role):
        return find(root, a(role), a("Party"))

    def party_name(p):
        return _text(find(p, a("PartyLegalEntity"), c("RegistrationName"))) or _text(find(p, a("PartyName"), c("Name")))

    guideline = _text(root.find(c("CustomizationID")))
    seller, buyer = party("AccountingSupplierParty"), party("AccountingCustomerParty")
    vat_id = None
    for scheme in seller.findall(a("PartyTaxScheme")) if seller is not None else []:
        if (_text(find(scheme, a("TaxScheme"), c("ID"))) or "").upper() == "VAT":
            vat_id = _text(scheme.find(c("CompanyID")))
            break
    currency = _text(root.find(c("DocumentCurrencyCode")))
    tax_el = None
    for total in root.findall(a("TaxTotal")):
        amount = total.find(c("TaxAmount"))
        if amount is not None and (tax_el is None or (currency and amount.get("currencyID") == currency)):
            tax_el = amount
            if currency and amount.get("currencyID") == currency:
                break
    monetary = root.find(a("LegalMonetaryTotal"))
    iban = None
    due = _text(root.find(c("DueDate")))
    for means in root.findall(a("PaymentMeans")):
        due = due or _text(means.find(c("PaymentDueDate")))
        candidate = normalise_iban(_text(find(means, a("PayeeFinancialAccount"), c("ID"))))
        if iban is None and candidate and _IBAN.match(candidate):
            iban = candidate
    number = _text(root.find(c("ID")))
    issue = _iso_date(_text(root.find(c("IssueDate"))), errors, "BT-2 issue date")
    type_code = "InvoiceTypeCode" if local == "Invoice" else "CreditNoteTypeCode"
    line = "InvoiceLine" if local == "Invoice" else "CreditNoteLine"
    fields = {
        "seller": {"name": party_name(seller), "vat_id": vat_id},
        "buyer": {"name": party_name(buyer)},
        "invoice_number": number,
        "issue_date": issue,
        "due_date": _iso_date(due, errors, "BT-9 due date"),
        "currency": currency,
        "totals": {
            "net": _amount(find(monetary, c("TaxExclusiveAmount")), errors, "BT-109 net total"),
            "tax": _amount(tax_el, errors, "BT-110 tax total"),
            "gross": _amount(find(monetary, c("TaxInclusiveAmount")), errors, "BT-112 gross total"),
        },
        "iban": iban,
    }
    required = [
        ("BT-24 CustomizationID", guideline),
        ("BT-1 invoice number", number),
        ("BT-2 issue date", issue),
        (f"BT-3 {type_code}", _text(root.find(c(type_code)))),
        ("BT-5 currency", currency),
        ("BG-4 seller", None if seller is None else "x"),
        ("BT-27 seller name", fields["seller"]["name"]),
        ("BG-7 buyer", None if buyer is None else "x"),
        ("BT-44 buyer name", fields["buyer"]["name"]),
        ("BG-22 LegalMonetaryTotal", None if monetary is None else "x"),
        ("BT-115 payable amount", _text(find(monetary, c("PayableAmount")))),
        ("BT-110 TaxTotal", None if tax_el is None else "x"),
        (f"BG-25 {line}", None if root.find(a(line)) is None else "x"),
    ]
    return guideline, fields, required


def _iso_date(text: str | None, errors: list[str], term: str) -> str | None:
    if text is None:
        return None
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        return text
    errors.append(f"{term}: not an ISO date: {text[:20]!r}")
    return None


def _iban_problem(iban: str | None) -> str | None:
    if iban is None:
        return None
    if not _IBAN.match(iban):
        return f"BT-84 IBAN {iban[:40]!r}: not an IBAN"
    rearranged = iban[4:] + iban[:4]
    digits = "".join(str(int(ch, 36)) for ch in rearranged)
    if int(digits) % 97 != 1:
        return f"BT-84 IBAN {iban}: check digits do not match"
    return None


# --------------------------------------------------------------------------- XSD

# Factur-X 1.0.07 XSDs (= ZUGFeRD 2.x) as shipped in drafthorse/schema/.
_XSD_BY_PROFILE = {
    "MINIMUM": "MINIMUM",
    "BASIC WL": "BASICWL",
    "BASIC": "BASIC",
    "EN 16931": "EN16931",
    "XRECHNUNG": "EN16931",
    "EXTENDED": "EXTENDED",
    "XRECHNUNG EXTENSION": "EXTENDED",
    "EXTENDED-CTC-FR": "EXTENDED",
}
_schemas: dict[str, Any] = {}
_schemas_lock = threading.Lock()


def _schema(level: str):
    with _schemas_lock:
        if level in _schemas:
            return _schemas[level]
        schema = None
        try:
            import importlib.util

            from lxml import etree

            spec = importlib.util.find_spec("drafthorse")
            if spec is not None and spec.submodule_search_locations:
                path = Path(list(spec.submodule_search_locations)[0]) / "schema" / f"Factur-X_1.0.07_{level}.xsd"
                parser = etree.XMLParser(resolve_entities=False, no_network=True)
                schema = etree.XMLSchema(etree.parse(str(path), parser))
        except Exception as exc:  # a broken install: say nothing was validated
            log.warning("einvoice: cannot load the %s XSD: %r", level, exc)
            schema = None
        _schemas[level] = schema
        return schema


def _validate_cii(root, profile: str | None, guideline: str | None, deadline: float) -> list[str] | None:
    """Schema errors (empty when valid), or None when not validated."""
    if time.monotonic() > deadline:
        return None
    level = _XSD_BY_PROFILE.get(profile or "")
    if level is None:
        level = "EN16931" if (guideline or "").startswith("urn:cen.eu:en16931:2017") else "EXTENDED"
    schema = _schema(level)
    if schema is None or time.monotonic() > deadline:
        return None
    try:
        if schema.validate(root):
            return []
        out = []
        for entry in schema.error_log:
            out.append(f"XSD {level} line {entry.line}: {entry.message}"[:300])
            if len(out) >= MAX_ERRORS:
                break
        return out or [f"XSD {level}: invalid"]
    except Exception as exc:
        return [f"XSD {level}: validation failed: {exc!r}"[:300]]
