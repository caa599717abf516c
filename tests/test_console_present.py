"""How the console shows values (webhook_worker/console/present.py): pure functions."""

from __future__ import annotations

from webhook_worker.console import present


def test_amounts_in_major_units_by_currency() -> None:
    assert present.money(123456, "usd") == "1,234.56 USD"
    assert present.money(1500, "jpy") == "1,500 JPY"
    assert present.money(1234, "kwd") == "1.234 KWD"
    assert present.money(-50, "eur") == "-0.50 EUR"
    assert present.money("not a number", "usd") == ""
    assert present.money(None, "usd") == ""


def test_credits_are_signed() -> None:
    assert [present.signed(v) for v in (25, -5, 0, None)] == ["+25", "\u22125", "0", ""]


def test_stripe_key_order_is_id_object_then_alphabetical() -> None:
    payload = {"type": "x", "data": {"z": 1, "object": "o", "id": "i", "a": 2}, "id": "e"}
    assert [k for k, _ in present.stripe_order(payload)] == ["id", "data", "type"]
    text = present.payload_text({"data": {"b": "<b>", "id": "cs_1"}, "object": "event"})
    assert text.index('"object"') < text.index('"data"')
    assert text.index('"id": "cs_1"') < text.index('"b"')
    assert '"<b>"' in text  # not \u003c


def test_dashboard_links_by_mode_and_account() -> None:
    live = present.dashboard_url("payments/pi_1", livemode=True, account=None)
    test = present.dashboard_url("payments/pi_1", livemode=False, account=None)
    connect = present.dashboard_url("events/evt_1", livemode=False, account="acct_9")
    assert live == "https://dashboard.stripe.com/payments/pi_1"
    assert test == "https://dashboard.stripe.com/test/payments/pi_1"
    assert connect == "https://dashboard.stripe.com/acct_9/test/events/evt_1"


def test_summary_reads_who_and_what_from_the_payload() -> None:
    payload = {
        "data": {
            "object": {
                "id": "ch_1", "object": "charge", "amount": 2500, "amount_refunded": 500,
                "currency": "eur", "payment_intent": "pi_1", "customer": "cus_1",
                "billing_details": {"email": "x@example.com"},
            }
        }
    }  # fmt: skip
    event = {"event_id": "evt_1", "type": "charge.refunded", "livemode": True, "account": None}
    facts = present.summary(event, payload)
    assert facts["amount"] == "5.00 EUR"  # what the refund moved
    assert (facts["charge"], facts["payment_intent"], facts["customer"]) == (
        "ch_1",
        "pi_1",
        "cus_1",
    )
    assert facts["email"] == "x@example.com"
    assert dict(facts["links"])["Payment"] == "https://dashboard.stripe.com/payments/pi_1"


def test_estimates_say_about_and_reasons_have_meanings() -> None:
    assert present.about(1_234_567) == "about 1.2 M"
    assert present.about(35_400) == "about 35 k"
    assert present.about(800) == "about 800"
    assert "does not handle" in present.reason_meaning("unhandled_type")
    assert present.reason_meaning("some_new_reason") == "some new reason"
    assert present.error_reason("user_not_found: no user matched") == "user_not_found"
    assert str(present.soft_breaks("a_b@c.d")) == "a_<wbr>b@<wbr>c.<wbr>d"
