"""gateway.lookalike: look-alike sender domains and display names (issue 16 item 4).

Pure functions: no database, no network. Each rule has its examples, and so has each
false positive the module prevents or allows.
"""

from __future__ import annotations

import random
import string
import time

import pytest

from gateway.lookalike import (
    Finding,
    KnownSenders,
    check,
    damerau_levenshtein,
    org_domain,
    skeleton,
)


def idn(domain: str) -> str:
    return domain.encode("idna").decode("ascii")


@pytest.fixture(scope="module")
def known() -> KnownSenders:
    return KnownSenders(
        domains=["supplier.example", "acme-bank.example", "modern.example", "gmail.com",
                 "internationalfreight.example", "abc.example", "acme.example", "corn-mill.example",
                 "acme-trading.com", "gmx.com", "cortex.example", "müller-bau.example"],
        names=[
            ("Supplier Ltd", "billing@supplier.example"),
            ("Accounts", "accounts@supplier.example"),
            ("Accounts", "accounts@acme.example"),
            ("Payments", "pay@supplier.example"),
            ("Comptabilité", "compta@supplier.example"),
            ("Accounts Payable", "ap@supplier.example"),
            ("No-Reply", "noreply@supplier.example"),
            ("Jane Roe", "jane.roe@gmail.com"),
            ("ACME Group", "ap@acme.example"),
            ("ACME Group", "ap@acme-bank.example"),
        ],
    )


def domain_of(f: Finding | None) -> str | None:
    assert f is None or f.reason == "lookalike_domain", f
    return f.known if f else None


# --- org_domain ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("domain", "org"),
    [
        ("supplier.example", "supplier.example"),
        ("billing.supplier.example", "supplier.example"),
        ("Billing.SUPPLIER.Example.", "supplier.example"),
        ("a.example", "a.example"),
        ("b.example", "b.example"),
        ("x.y.test", "y.test"),
        ("mail.host.invalid", "host.invalid"),
        ("app.localhost", "app.localhost"),
        ("mail.shop.co.uk", "shop.co.uk"),
        ("www.example.com", "example.com"),
        ("www.пример.рф", "xn--e1afmkfd.xn--p1ai"),
        ("www.xn--e1afmkfd.xn--p1ai", "xn--e1afmkfd.xn--p1ai"),
        ("co.uk", "co.uk"),  # a public suffix itself: returned as it is
    ],
)
def test_org_domain(domain, org):
    assert org_domain(domain) == org


def test_test_tlds_are_public_suffixes_so_siblings_are_different_orgs():
    assert org_domain("a.example") != org_domain("b.example")
    assert org_domain("mail.a.example") == org_domain("a.example")


@pytest.mark.parametrize("bad", ["", ".", "a..b.example", "[192.0.2.1]", "user@host.example", "a b.example"])
def test_org_domain_refuses_what_is_not_a_domain(bad):
    with pytest.raises(ValueError):
        org_domain(bad)


# --- building blocks ----------------------------------------------------------------------


def test_skeleton_maps_confusables_and_ignores_case():
    assert skeleton("supp1ier") == skeleton("supplier") == skeleton("SUPP|IER".lower())
    assert skeleton("rnodern") == skeleton("modern")
    assert skeleton("suррlier") == skeleton("supplier")  # Cyrillic р
    assert skeleton("0range") == skeleton("orange")
    assert skeleton("supplier") != skeleton("supplies")


def test_damerau_levenshtein_counts_a_swap_as_one_edit():
    assert damerau_levenshtein("supplier", "suppiler") == 1
    assert damerau_levenshtein("supplier", "suplier") == 1
    assert damerau_levenshtein("supplier", "supplierr") == 1
    assert damerau_levenshtein("supplier", "suppller") == 1
    assert damerau_levenshtein("supplier", "spuplire") == 2
    assert damerau_levenshtein("abc", "xyzzy", limit=1) == 2  # capped at limit + 1


# --- rule: confusable skeleton ------------------------------------------------------------


@pytest.mark.parametrize(
    ("sender", "want"),
    [
        ("billing@supp1ier.example", "supplier.example"),  # 1 for l
        ("billing@supp|ier.example", None),  # not a domain name: not compared
        ("billing@rnodern.example", "modern.example"),  # rn for m
        ("billing@suррlier.example", "supplier.example"),  # Cyrillic р, Unicode form
        ("billing@" + idn("suррlier.example"), "supplier.example"),  # the same, xn-- form
        ("billing@" + idn("аcme-bank.example"), "acme-bank.example"),  # Cyrillic а
        ("billing@gmai1.com", "gmail.com"),  # a known freemail domain is still imitated
    ],
)
def test_confusable_domain(known, sender, want):
    f = check(sender, None, known)
    assert domain_of(f) == want
    if want:
        assert "confusable" in f.detail and want in f.detail


def test_idn_homograph_detail_shows_both_forms(known):
    f = check("x@" + idn("аcme-bank.example"), None, known)
    assert idn("аcme-bank.example") in f.detail and "аcme-bank.example" in f.detail


# --- rule: edit distance ------------------------------------------------------------------


@pytest.mark.parametrize(
    "sender",
    ["suppller.example", "suplier.example", "supplierr.example", "suppiler.example",
     "supplier.co.uk".replace("supplier", "suppiier"),  # 1 edit and another suffix
     "internationalfrieght.example",  # swap in a 20-letter label
     "internatlonalfreigt.example",  # two edits in a label of 10 or more
     "müler-bau.example"],  # IDN, compared in Unicode
)
def test_edit_distance_domain(known, sender):
    f = check(f"x@{sender}", None, known)
    assert f is not None and f.reason == "lookalike_domain"
    assert "edit" in f.detail or "confusable" in f.detail


def test_edit_distance_thresholds(known):
    # 5-9 letters: one edit counts, two do not
    assert domain_of(check("x@suplire.example", None, known)) is None
    # 10 or more: two count, three do not
    assert domain_of(check("x@internatlonalfrieghtt.example", None, known)) is None
    f = check("x@suppller.example", None, known)
    assert f == ("lookalike_domain", "supplier.example",
                 "suppller.example is 1 edit (Damerau-Levenshtein) from known sender domain supplier.example")


# --- rule: same name elsewhere ------------------------------------------------------------


@pytest.mark.parametrize(
    "sender",
    [
        "supplier-example.com",  # dot hyphenated
        "supplierexample.com",  # dot dropped
        "supplier.example.com",  # known domain as a subdomain of another org
        "supplier.example.co",
        "billing.supplier.example.evil.net",
        "secure-supplier-example.net",
        "supplier.com",  # TLD swapped
        "supplier.co.uk",
    ],
)
def test_known_domain_spelled_elsewhere(known, sender):
    assert domain_of(check(f"billing@{sender}", None, known)) == "supplier.example"


# --- rule: display name -------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["Supplier Ltd", "SUPPLIER LTD", "supplier ltd.", "Supplier  Ltd", "Supp1ier Ltd",
     "SuppIier Ltd", "Suррlier Ltd", "Suppliér Ltd", "\"Supplier Ltd\"", "Supplier\u200bLtd"],
)
def test_display_name_of_a_known_sender_from_another_domain(known, name):
    f = check("ap@evil.example", name, known)
    assert f is not None
    assert f.reason == "lookalike_display_name" and f.known == "Supplier Ltd"
    assert "evil.example" in f.detail and "supplier.example" in f.detail


def test_display_name_from_a_from_header_value(known):
    f = check("Supplier Ltd <ap@evil.example>", None, known)
    assert f is not None and f.reason == "lookalike_display_name" and f.known == "Supplier Ltd"


def test_display_name_without_a_usable_address(known):
    for addr in (None, "", "undisclosed", "x@[192.0.2.1]"):
        f = check(addr, "Supplier Ltd", known)
        assert f is not None and f.reason == "lookalike_display_name"


def test_display_name_that_spells_a_known_domain_or_address(known):
    f = check("x@evil.example", "billing@supplier.example", known)
    assert f == ("lookalike_display_name", "supplier.example", f.detail)
    f = check("x@evil.example", "Invoices (supplier.example)", known)
    assert f is not None and f.known == "supplier.example"
    # from the known domain itself: fine
    assert check("billing@supplier.example", "billing@supplier.example", known) is None


def test_lookalike_domain_wins_over_display_name(known):
    f = check("ap@supp1ier.example", "Supplier Ltd", known)
    assert f.reason == "lookalike_domain"


def test_freemail_identity_is_the_address(known):
    # Jane uses gmail: her name from another gmail address is a look-alike, from hers it is not
    f = check("jane.roe.invoices@gmail.com", "Jane Roe", known)
    assert f is not None and f.reason == "lookalike_display_name" and "jane.roe@gmail.com" in f.detail
    assert check("Jane.Roe@gmail.com", "Jane Roe", known) is None
    assert check("someone@gmail.com", "Someone Else", known) is None


def test_display_name_shared_by_two_known_domains(known):
    assert check("ap@acme-bank.example", "ACME Group", known) is None
    assert check("ap@acme.example", "ACME Group", known) is None
    assert check("ap@evil.example", "ACME Group", known).known == "ACME Group"


# --- false positives prevented ------------------------------------------------------------


@pytest.mark.parametrize(
    "sender",
    [
        "billing@supplier.example",  # the known domain
        "billing@SUPPLIER.Example",  # case
        "billing@supplier.example.",  # trailing dot
        "billing@invoices.billing.supplier.example",  # subdomain: the same organization
        "x@" + idn("müller-bau.example"),  # the A-label of a known IDN
        "x@MÜLLER-BAU.example",
        "x@totally-unrelated.example",
        "x@abd.example",  # short label: abc / abd
        "x@acne.example",  # 4 letters: acme / acne
        "x@abc.com",  # short label, other TLD
        "x@acme.de",
        "x@suppliers-guild.example",  # not within reach of supplier
        "x@gmx.de",  # freemail: a provider's other domains
        "x@googlemail.com",
        "x@yahoo.co.uk",
        "x@example.com",
        "x@com",  # a public suffix: not compared
        "x@",
        "not an address",
        None,
    ],
)
def test_not_a_lookalike_domain(known, sender):
    assert check(sender, None, known) is None


def test_known_domain_returns_none_whatever_the_display_name(known):
    assert check("ap@acme.example", "Supplier Ltd", known) is None
    assert check("ap@billing.supplier.example", "ACME Group", known) is None


@pytest.mark.parametrize("name", ["Accounts", "ACCOUNTS", "Billing", "Invoices", "Buchhaltung", "Payments", "Comptabilité",
                                  "Accounts Payable", "No-Reply", "AB", "", "  "])
def test_generic_or_short_display_names_are_not_compared(known, name):
    assert check("ap@evil.example", name, known) is None


def test_the_owners_display_name_and_unknown_names_are_fine(known):
    assert check("billing@supplier.example", "Supplier Ltd", known) is None
    assert check("ap@evil.example", "Evil Corp", known) is None
    assert check("ap@evil.example", "Supplier GmbH", known) is None  # another name


def test_known_senders_normalises_and_ignores_junk():
    k = KnownSenders(domains=["Billing.Supplier.Example.", "", "[192.0.2.1]", "co.uk", "x@Acme.Example"],
                     names=[("Supplier Ltd", "ap@billing.supplier.example"), ("", "a@b.example"), ("X", "junk")])
    assert k.domains == {"supplier.example", "acme.example", "b.example"}
    assert k.names == {("Supplier Ltd", "supplier.example")}
    assert check("x@supp1ier.example", None, k).known == "supplier.example"
    assert check("x@anything.example", None, KnownSenders()) is None


# --- false positives allowed (review, then the queue learns the domain) -------------------


def test_allowed_false_positives(known):
    # a supplier's second domain under another TLD
    assert domain_of(check("x@acme-trading.de", None, known)) == "acme-trading.com"
    # ASCII names whose skeletons collide: m looks like rn
    assert domain_of(check("x@com-mill.example", None, known)) == "corn-mill.example"
    assert domain_of(check("x@modem.example", None, known)) == "modern.example"
    # an unrelated company one typo from a known name of 5+ letters
    assert domain_of(check("x@vortex.example", None, known)) == "cortex.example"


# --- speed --------------------------------------------------------------------------------


def test_check_is_fast_with_1000_known_domains():
    rnd = random.Random(16)

    def word(a: int, b: int) -> str:
        return "".join(rnd.choice(string.ascii_lowercase) for _ in range(rnd.randint(a, b)))

    suffixes = ["com", "de", "co.uk", "example", "net", "fr"]
    domains = [f"{word(4, 12)}{rnd.choice(['', '-' + word(3, 8)])}.{rnd.choice(suffixes)}" for _ in range(1000)]
    k = KnownSenders(domains=[*domains, "supplier.example"],
                     names=[(f"{word(4, 9)} {word(3, 9)}", d) for d in domains])
    senders = [f"ap@{word(4, 20)}.{rnd.choice(suffixes)}" for _ in range(200)]
    senders += [f"ap@{d.replace('.', '-', 1)}" for d in domains[:50]]
    senders += ["ap@supp1ier.example", "ap@suplier.example", "ap@supplier-example.com"]
    start = time.perf_counter()
    for s in senders:  # distinct domains: the caches do not help
        check(s, f"{word(4, 9)} {word(3, 9)}", k)
    per_call = (time.perf_counter() - start) / len(senders)
    assert per_call < 0.005, f"{per_call * 1000:.2f} ms per check()"
    assert check("ap@supp1ier.example", None, k).known == "supplier.example"
