from types import SimpleNamespace as NS

from gateway.routing import Router

router = Router(
    [
        NS(name="invoices", addresses=["invoices@ap.example.com"]),
        NS(name="receipts", addresses=["receipts@ap.example.com"]),
    ]
)


def test_exact_address_case_insensitive():
    r = router.route("Invoices@AP.example.com")
    assert r.queue == "invoices" and r.tag is None


def test_plus_addressing_keeps_tag():
    r = router.route("<invoices+acme-2026@ap.example.com>")
    assert (r.queue, r.tag, r.address) == ("invoices", "acme-2026", "invoices@ap.example.com")


def test_unknown_routes_nowhere():
    assert router.route("someone@ap.example.com") is None
    assert router.route("invoices@other.example.com") is None
    assert router.route("+x@ap.example.com") is None
    assert router.route("not-an-address") is None


def test_route_all_one_per_queue_in_order():
    routes = router.route_all(["x@y.z", "receipts@ap.example.com", "invoices+a@ap.example.com", "invoices@ap.example.com"])
    assert [r.queue for r in routes] == ["receipts", "invoices"]
