"""One table of money cases for both tiers: the unit tier (tests/test_money_rules.py, the
in-memory store, no service) and the integration tier (tests/test_money_flows.py and
tests/test_money_rules_postgres.py: real deliveries, worker and Postgres).

`FLOWS`: refunds, refund failures and disputes after one purchase, in delivery order, with
the ledger rows, balances and statuses they must leave. `PURCHASES`: which user a paid
event credits and how many credits, by the resolver's order and the credit rules.
`NOTE_CASES`: credit notes (and the charge events of their refunds) after a paid invoice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from webhook_worker.ops.sample_events import (
    BASIL,
    PRE_BASIL,
    charge_refunded_event,
    checkout_session_event,
    credit_note_event,
    dispute_event,
    invoice_line,
    invoice_paid_event,
    invoice_payment_paid_event,
    new_id,
    payment_intent_succeeded_event,
    refund_event,
)

T0 = 1_750_000_000  # every flow's clock: Stripe's `created`, in seconds
Ids = dict[str, str]
Build = Callable[[Ids], dict[str, Any]]


def refunded(
    at: int,
    amount_refunded: int,
    *,
    amount: int = 1000,
    amount_captured: int | None = None,
    **kw: Any,
) -> Build:
    return lambda ids: charge_refunded_event(
        payment_intent=ids["pi"],
        amount=amount,
        amount_captured=amount_captured,
        amount_refunded=amount_refunded,
        created=T0 + at,
        **kw,
    )


def refund_failed(
    at: int, amount: int, *, refund: str = "re", created: int = 0, **kw: Any
) -> Build:
    return lambda ids: refund_event(
        payment_intent=ids["pi"],
        refund_id=ids.setdefault(refund, new_id("re")),
        amount=amount,
        refund_created=T0 + created,
        created=T0 + at,
        **kw,
    )


def disputed(
    at: int,
    amount: int,
    event_type: str,
    status: str,
    *,
    currency: str = "usd",
    moved: list[int] | None = None,
) -> Build:
    """A dispute event; `moved`: its balance transactions' amounts (- withdrawn, + back)."""
    return lambda ids: dispute_event(
        payment_intent=ids["pi"],
        dispute_id=ids.setdefault("dp", new_id("dp")),
        amount=amount,
        status=status,
        event_type=event_type,
        created=T0 + at,
        currency=currency,
        balance_transactions=moved,
    )


def without(build: Build, key: str) -> Build:
    """`build`'s event with `key` taken out of its object (a foreign or malformed one)."""

    def built(ids: Ids) -> dict[str, Any]:
        event = build(ids)
        del event["data"]["object"][key]
        return event

    return built


CREATED, CLOSED = "charge.dispute.created", "charge.dispute.closed"
REINSTATED = "charge.dispute.funds_reinstated"
DONE = ("completed", None)
STALE = ("completed", "stale_event")
NOT_OURS = ("ignored", "no_payment_intent")
FAILED = ("failed", None)  # the tiers record the error differently; the status is what counts


@dataclass(frozen=True)
class Flow:
    name: str
    events: list[Build]
    rows: list[tuple[str, int, int]]  # (type, amount, balance_after) after the PURCHASE
    statuses: list[tuple[str, str | None]]  # per event: (status, status_reason)
    credits: int = 100
    amount_total: int = 1000
    spent: int = 0  # credits the user spends before the events
    presentment: tuple[int, str] | None = None  # basil Adaptive Pricing: what the customer paid


FLOWS = [
    Flow(
        "issue 25 #1: a dispute partially won after a partial refund (funds_reinstated, status "
        "lost, -1000 and +400) gives nothing back: the merchant kept nothing",
        [
            refunded(10, 400),
            disputed(20, 1000, CREATED, "needs_response", moved=[-1000]),
            disputed(30, 1000, CLOSED, "lost", moved=[-1000]),
            disputed(40, 1000, REINSTATED, "lost", moved=[-1000, 400]),
        ],
        [("REFUND", -4, 6), ("DISPUTE", -6, 0)],
        [DONE, DONE, DONE, DONE],
        credits=10,
    ),
    Flow(
        "a dispute partially won with nothing refunded keeps what was not reinstated",
        [
            disputed(20, 1000, CREATED, "needs_response", moved=[-1000]),
            disputed(40, 1000, REINSTATED, "lost", moved=[-1000, 400]),
        ],
        [("DISPUTE", -10, 0), ("DISPUTE_REVERSAL", 4, 4)],
        [DONE, DONE],
        credits=10,
    ),
    Flow(
        "issue 25 #2: Adaptive Pricing, a lost dispute of EUR 930 of a USD 1000 session takes "
        "all: the customer paid 930 EUR",
        [
            disputed(10, 930, CREATED, "needs_response", currency="eur"),
            disputed(20, 930, CLOSED, "lost", currency="eur"),
        ],
        [("DISPUTE", -10, 0)],
        [DONE, DONE],
        credits=10,
        presentment=(930, "eur"),
    ),
    Flow(
        "issue 25 #2: Adaptive Pricing, GBP 790 disputed in full takes all",
        [disputed(10, 790, CREATED, "needs_response", currency="gbp")],
        [("DISPUTE", -10, 0)],
        [DONE],
        credits=10,
        presentment=(790, "gbp"),
    ),
    Flow(
        "a failed refund or a dispute with no payment intent is not ours: ignored, nothing moves",
        [
            without(refund_failed(10, 500), "payment_intent"),
            without(disputed(10, 1000, CREATED, "needs_response"), "payment_intent"),
        ],
        [],
        [NOT_OURS, NOT_OURS],
    ),
    Flow(
        "a failed refund or a dispute without its own id is malformed: failed, nothing moves",
        [
            without(refund_failed(10, 500), "id"),
            without(disputed(10, 1000, CREATED, "needs_response"), "id"),
        ],
        [],
        [FAILED, FAILED],
    ),
    Flow(
        "refund a third: the share is rounded down, in integers (33 of 100)",
        [refunded(10, 333)],
        [("REFUND", -33, 67)],
        [DONE],
    ),
    Flow(
        "full refund, basil",
        [refunded(10, 1000, api_version=BASIL)],
        [("REFUND", -100, 0)],
        [DONE],
    ),
    Flow(
        "pre-basil partial capture 600 of 1000 releases 400: nothing was refunded",
        [refunded(10, 400, amount_captured=600, api_version=PRE_BASIL)],
        [],
        [DONE],
        credits=500,
    ),
    Flow(
        "pre-basil partial capture, then a real refund of 300 of the 600 captured",
        [
            refunded(10, 400, amount_captured=600, api_version=PRE_BASIL),
            refunded(20, 700, amount_captured=600, api_version=PRE_BASIL),
        ],
        [("REFUND", -250, 250)],
        [DONE, DONE],
        credits=500,
    ),
    Flow(
        "basil partial capture 600 of 1000, a real refund of 300",
        [refunded(20, 300, amount_captured=600, api_version=BASIL)],
        [("REFUND", -250, 250)],
        [DONE],
        credits=500,
    ),
    Flow(
        "basil partial capture then a dispute: charge.captured tells the captured amount",
        [
            disputed(30, 600, CREATED, "needs_response"),
            refunded(20, 0, amount_captured=600, api_version=BASIL, event_type="charge.captured"),
        ],
        [("DISPUTE", -300, 200), ("DISPUTE", -200, 0)],
        [DONE, DONE],
        credits=500,
    ),
    Flow(
        "pre-basil cancelled authorization (captured false, refunded true)",
        [refunded(10, 1000, amount_captured=0, captured=False, api_version=PRE_BASIL)],
        [],
        [DONE],
    ),
    Flow(
        "refund 50 %, it fails, refund 30 %: net debit 30 %",
        [
            refunded(10, 500),
            refund_failed(20, 500, created=10),
            refunded(30, 300),
        ],
        [("REFUND", -50, 50), ("REFUND_REVERSAL", 50, 100), ("REFUND", -30, 70)],
        [DONE, DONE, DONE],
    ),
    Flow(
        "out of order: newest refund first, then the stale snapshot and the old failure",
        [
            refunded(30, 300),
            refunded(10, 500),
            refund_failed(20, 500, created=10),
        ],
        [("REFUND", -30, 70)],
        [DONE, STALE, DONE],
    ),
    Flow(
        "one failure sent three ways (charge.refund.updated, refund.updated, refund.failed)",
        [
            refunded(10, 400),
            refund_failed(20, 400, created=10, event_type="charge.refund.updated"),
            refund_failed(20, 400, created=10, event_type="refund.updated"),
            refund_failed(21, 400, created=10, event_type="refund.failed"),
        ],
        [("REFUND", -40, 60), ("REFUND_REVERSAL", 40, 100)],
        [DONE, DONE, STALE, STALE],
    ),
    Flow(
        "a canceled refund gives back too; a succeeded refund.updated moves nothing",
        [
            refunded(10, 200),
            refund_failed(15, 200, created=10, status="succeeded", event_type="refund.updated"),
            refund_failed(20, 200, created=10, status="canceled"),
        ],
        [("REFUND", -20, 80), ("REFUND_REVERSAL", 20, 100)],
        [DONE, ("completed", "refund_not_failed"), DONE],
    ),
    Flow(
        "dispute opened then won",
        [disputed(10, 1000, CREATED, "needs_response"), disputed(50, 1000, CLOSED, "won")],
        [("DISPUTE", -100, 0), ("DISPUTE_REVERSAL", 100, 100)],
        [DONE, DONE],
    ),
    Flow(
        "dispute opened then lost: nothing more",
        [disputed(10, 1000, CREATED, "needs_response"), disputed(50, 1000, CLOSED, "lost")],
        [("DISPUTE", -100, 0)],
        [DONE, DONE],
    ),
    Flow(
        "dispute lost delivered before its created: the created is stale",
        [disputed(50, 1000, CLOSED, "lost"), disputed(10, 1000, CREATED, "needs_response")],
        [("DISPUTE", -100, 0)],
        [DONE, STALE],
    ),
    Flow(
        "funds reinstated give the dispute back once",
        [
            disputed(10, 1000, CREATED, "needs_response"),
            disputed(60, 1000, REINSTATED, "won"),
            disputed(50, 1000, CLOSED, "won"),
        ],
        [("DISPUTE", -100, 0), ("DISPUTE_REVERSAL", 100, 100)],
        [DONE, DONE, STALE],
    ),
    Flow(
        "an inquiry withdraws nothing",
        [disputed(10, 1000, CREATED, "warning_needs_response")],
        [],
        [("completed", "dispute_inquiry")],
    ),
    Flow(
        "dispute of spent credits: never below zero, the shortfall is given up when won",
        [disputed(10, 1000, CREATED, "needs_response"), disputed(50, 1000, CLOSED, "won")],
        [("DISPUTE", -20, 0), ("DISPUTE_REVERSAL", 20, 20)],
        [DONE, DONE],
        spent=80,
    ),
    Flow(
        "refund 40 % then a dispute of the whole charge: never more than the purchase",
        [refunded(10, 400), disputed(20, 1000, CREATED, "needs_response")],
        [("REFUND", -40, 60), ("DISPUTE", -60, 0)],
        [DONE, DONE],
    ),
    Flow(
        "refund of spent credits, then it fails: the shortfall goes first",
        [refunded(10, 1000), refund_failed(20, 1000, created=10)],
        [("REFUND", -30, 0), ("REFUND_REVERSAL", 30, 30)],
        [DONE, DONE],
        spent=70,
    ),
]


# --- purchases: who is credited, and how many credits ---------------------------------------

Refs = dict[str, str]  # u0, uuid0, email0, … of the users that exist before the events
Event = Callable[[Refs], dict[str, Any]]
FAILED = ("failed", None)


def session(**kw: Any) -> Event:
    return lambda refs: checkout_session_event(**{k: _ref(v, refs) for k, v in kw.items()})


def _ref(value: Any, refs: Refs) -> Any:
    """`"{u0}"`-style placeholders filled with the users' real ids, uuids and emails."""
    if isinstance(value, str):
        return value.format(**refs)
    if isinstance(value, dict):
        return {k: _ref(v, refs) for k, v in value.items()}
    return value


def in_currency(build: Event, currency: str) -> Event:
    def built(refs: Refs) -> dict[str, Any]:
        event = build(refs)
        event["data"]["object"]["currency"] = currency
        return event

    return built


def same_session(first: Event, event_type: str) -> list[Event]:
    """A session's event, then another event of the same session (same ids, new event id)."""
    kept: dict[str, Any] = {}

    def one(refs: Refs) -> dict[str, Any]:
        kept["event"] = first(refs)
        return kept["event"]

    def other(refs: Refs) -> dict[str, Any]:
        event = {**kept["event"], "id": new_id("evt"), "type": event_type}
        event["data"] = {"object": {**kept["event"]["data"]["object"], "payment_status": "paid"}}
        return event

    return [one, other]


def intent_then_session(credits: int) -> list[Event]:
    pi = new_id("pi")
    return [
        lambda refs: payment_intent_succeeded_event(
            credits=credits, payment_intent=pi, metadata={"user_id": refs["u0"]}
        ),
        lambda refs: checkout_session_event(
            credits=credits, payment_intent=pi, client_reference_id=refs["u0"]
        ),
    ]


def invoice(api_version: str, **kw: Any) -> Event:
    def built(refs: Refs) -> dict[str, Any]:
        price = kw.get("price_id", "price_monthly")
        line = invoice_line(
            price=price,
            amount=1000,
            api_version=api_version,
            price_metadata=kw.get("price_metadata"),
        )
        return invoice_paid_event(
            customer=new_id("cus"),
            lines=[line],
            api_version=api_version,
            subscription_metadata={"user_id": refs["u0"]},
        )

    return built


def invoiced_session(api_version: str, invoice_first: bool) -> list[Event]:
    """issue 25 #3: a `mode: payment` session with a post-payment invoice
    (`invoice_creation.enabled`, `invoice: in_X`) and that invoice's `invoice.paid`
    (`billing_reason: manual`, no subscription), in either order."""
    customer = new_id("cus").replace("_test_", "_T")  # a Stripe customer id: cus_ + [A-Za-z0-9]
    invoice_id, pi = new_id("in"), new_id("pi")

    def session_event(refs: Refs) -> dict[str, Any]:
        return checkout_session_event(
            credits=10,
            client_reference_id=refs["u0"],
            customer=customer,
            payment_intent=pi,
            invoice=invoice_id,
            api_version=api_version,
        )

    def invoice_event(refs: Refs) -> dict[str, Any]:
        line = invoice_line(
            price="price_pp",
            amount=1000,
            api_version=api_version,
            price_metadata={"credits": "10"},
        )
        return invoice_paid_event(
            customer=customer,
            lines=[line],
            invoice_id=invoice_id,
            payment_intent=pi,
            billing_reason="manual",
            one_off=True,
            api_version=api_version,
        )

    return [invoice_event, session_event] if invoice_first else [session_event, invoice_event]


def taxed_session(amount_total: int, **kw: Any) -> Event:
    return lambda refs: checkout_session_event(
        credits=None, amount_total=amount_total, client_reference_id=refs["u0"], **kw
    )


@dataclass(frozen=True)
class PurchaseCase:
    name: str
    users: list[str | None]  # the emails of the users that exist before the events
    events: list[Event]
    balances: dict[str, int]  # "u0"… or the email of a user the events create
    statuses: list[tuple[str, str | None]]  # per event, in delivery order
    env: dict[str, str] = field(default_factory=dict)  # settings beyond the defaults


AGAIN = ("completed", "already_credited")
PRICED = {"CREDIT_PRICES": "usd:100"}

PURCHASES = [
    PurchaseCase(
        "issue 25 #3: a session and its post-payment invoice before basil: credited once",
        ["a@example.com"],
        invoiced_session(PRE_BASIL, invoice_first=False),
        {"u0": 10},
        [DONE, AGAIN],
    ),
    PurchaseCase(
        "issue 25 #3: a post-payment invoice before its session, basil (PRICE_CREDITS): once",
        ["a@example.com"],
        invoiced_session(BASIL, invoice_first=True),
        {"u0": 10},
        [AGAIN, DONE],
        env={"PRICE_CREDITS": "price_pp:10"},
    ),
    PurchaseCase(
        "issue 25 #3: a session and its post-payment invoice, basil: once",
        ["a@example.com"],
        invoiced_session(BASIL, invoice_first=False),
        {"u0": 10},
        [DONE, AGAIN],
        env={"PRICE_CREDITS": "price_pp:10"},
    ),
    PurchaseCase(
        "issue 25 #4: by amount, 20 % VAT added on top buys no more credits",
        ["a@example.com"],
        [taxed_session(1200, amount_tax=200)],
        {"u0": 10},
        [DONE],
        env=PRICED,
    ),
    PurchaseCase(
        "issue 25 #4: by amount, shipping buys no credits",
        ["a@example.com"],
        [taxed_session(1500, amount_shipping=500)],
        {"u0": 10},
        [DONE],
        env=PRICED,
    ),
    PurchaseCase(
        "by amount, a tax included in the price stays in the amount sold",
        ["a@example.com"],
        [taxed_session(1000, amount_tax=167, tax_on_top=False)],
        {"u0": 10},
        [DONE],
        env=PRICED,
    ),
    PurchaseCase(
        "client_reference_id comes before every email",
        ["a@example.com", "b@example.com"],
        [session(client_reference_id="{u1}", email="a@example.com", credits=10)],
        {"u0": 0, "u1": 10},
        [DONE],
    ),
    PurchaseCase(
        "a template placeholder is skipped; metadata.user_uuid matches",
        ["a@example.com"],
        [session(client_reference_id="{{CHECKOUT_SESSION_ID}}", metadata={"user_uuid": "{uuid0}"})],
        {"u0": 10},
        [DONE],
    ),
    PurchaseCase(
        "no user: one is created by email, matched case-insensitively the next time",
        [],
        [session(email="New.Buyer@Example.com", credits=5), session(email="new.buyer@example.com")],
        {"new.buyer@example.com": 15},
        [DONE, DONE],
    ),
    PurchaseCase(
        "unpaid at completion, paid later: credited once, by the async event",
        ["a@example.com"],
        same_session(
            session(client_reference_id="{u0}", payment_status="unpaid"),
            "checkout.session.async_payment_succeeded",
        ),
        {"u0": 10},
        [("ignored", "awaiting_payment"), DONE],
    ),
    PurchaseCase(
        "the same session twice (completed and async succeeded): credited once",
        ["a@example.com"],
        same_session(
            session(client_reference_id="{u0}"), "checkout.session.async_payment_succeeded"
        ),
        {"u0": 10},
        [DONE, ("completed", "already_credited")],
    ),
    PurchaseCase(
        "by price: amount_total // the currency's price, zero-decimal jpy",
        ["a@example.com"],
        [in_currency(session(client_reference_id="{u0}", credits=None, amount_total=1000), "jpy")],
        {"u0": 6},
        [DONE],
        env={"CREDIT_PRICES": "usd:100,jpy:150"},
    ),
    PurchaseCase(
        "a payment intent and its Checkout Session: one purchase",
        ["a@example.com"],
        intent_then_session(7),
        {"u0": 7},
        [DONE, ("completed", "already_credited")],
    ),
    PurchaseCase(
        "above MAX_CREDITS_PER_EVENT: failed, nothing credited",
        ["a@example.com"],
        [session(client_reference_id="{u0}", credits=5000)],
        {"u0": 0},
        [FAILED],
        env={"MAX_CREDITS_PER_EVENT": "1000"},
    ),
    PurchaseCase(
        "invoice.paid from basil on: the line's price id through PRICE_CREDITS",
        ["a@example.com"],
        [invoice(BASIL, price_id="price_pro")],
        {"u0": 1000},
        [DONE],
        env={"PRICE_CREDITS": "price_pro:1000"},
    ),
    PurchaseCase(
        "invoice.paid before basil: the embedded price's metadata.credits",
        ["a@example.com"],
        [invoice(PRE_BASIL, price_metadata={"credits": "300"})],
        {"u0": 300},
        [DONE],
    ),
]


# --- credit notes (tests/test_subscriptions.py on Postgres, tests/test_money_rules.py in memory)


@dataclass(frozen=True)
class NoteCase:
    """Steps after a paid invoice of 900 (1000 credits): `invoice`, `link` (basil's
    invoice_payment.paid; nothing before basil), `note:<refunded>:<refund>` (a credit note of
    that amount refunding it all), `charge:<cumulative refunded>`, `fail:<refund>:<amount>`,
    `again:<step>` (the same delivery), `resend:<step>` (a new event id), `replay:<step>`
    (forced). `rows`: the ledger after SUBSCRIPTION_CREDIT, other than USAGE."""

    name: str
    steps: list[str]
    rows: list[tuple[str, int]]
    balance: int
    spent: int = 0


NOTE_CASES = [
    NoteCase("full", ["invoice", "link", "note:900:re_a"], [("REFUND", -1000)], 0),
    NoteCase("partial", ["invoice", "link", "note:300:re_a"], [("REFUND", -333)], 667),
    NoteCase(
        "two credit notes add up",
        ["invoice", "link", "note:300:re_a", "note:300:re_b"],
        [("REFUND", -333), ("REFUND", -333)],
        334,
    ),
    NoteCase(
        "never below zero: 800 credits were spent",
        ["invoice", "link", "note:900:re_a", "again:2"],
        [("REFUND", -200)],
        0,
        spent=800,
    ),
    NoteCase(
        "delivered twice, resent and replayed: once",
        ["invoice", "link", "note:300:re_a", "again:2", "resend:2", "replay:2"],
        [("REFUND", -333)],
        667,
    ),
    NoteCase(
        "before its invoice: waits, then applies",
        ["note:300:re_a", "invoice", "link"],
        [("REFUND", -333)],
        667,
    ),
    NoteCase(
        "before its invoice payment is linked: waits, then applies",
        ["invoice", "note:300:re_a", "link"],
        [("REFUND", -333)],
        667,
    ),
    NoteCase(
        "credit note, then charge.refunded of the same refund: once",
        ["invoice", "link", "note:300:re_a", "charge:300"],
        [("REFUND", -333)],
        667,
    ),
    NoteCase(
        "charge.refunded, then the credit note of the same refund: once",
        ["invoice", "link", "charge:300", "note:300:re_a"],
        [("REFUND", -333)],
        667,
    ),
    NoteCase(
        "a refund without a credit note, then a credit note: the next charge catches up",
        ["invoice", "link", "charge:300", "note:300:re_b", "charge:600"],
        [("REFUND", -333), ("REFUND", -333)],
        334,
    ),
    NoteCase(
        "the credit note's refund fails before any charge event: given back",
        ["invoice", "link", "note:300:re_a", "fail:re_a:300"],
        [("REFUND", -333), ("REFUND_REVERSAL", 333)],
        1000,
    ),
    NoteCase(
        "the credit note's refund fails: given back",
        ["invoice", "link", "note:300:re_a", "charge:300", "fail:re_a:300"],
        [("REFUND", -333), ("REFUND_REVERSAL", 333)],
        1000,
    ),
]


NOTE_TIME = 1_767_225_600


def note_step(
    step: str, n: int, invoice: dict[str, Any], pi: str, sent: list[dict[str, Any]]
) -> dict[str, Any] | None:
    """The event one NoteCase step delivers; None: nothing to deliver."""
    kind, _, arg = step.partition(":")
    obj = invoice["data"]["object"]
    version = invoice["api_version"]
    created = NOTE_TIME + n  # later steps are newer
    if kind == "invoice":
        return invoice
    if kind == "link":
        if version != BASIL:
            return None  # before basil the invoice names its payment intent
        return invoice_payment_paid_event(invoice=obj["id"], payment_intent=pi, amount=900)
    if kind == "note":
        refunded, refund_id = arg.split(":")
        return credit_note_event(
            invoice=obj["id"],
            amount=int(refunded),
            refund_id=refund_id,
            credit_note_id=f"cn_{refund_id}_{obj['id']}",
            customer=obj["customer"],
            api_version=version,
            created=created,
        )
    if kind == "charge":
        return charge_refunded_event(
            payment_intent=pi,
            amount=900,
            amount_refunded=int(arg),
            created=created,
            api_version=version,
        )
    if kind == "fail":
        refund_id, amount = arg.split(":")
        return refund_event(
            payment_intent=pi,
            refund_id=refund_id,
            amount=int(amount),
            event_type="refund.failed",
            refund_created=NOTE_TIME,
            created=created,
        )
    if kind == "again":
        return sent[int(arg)]
    assert kind == "resend"
    return {**sent[int(arg)], "id": new_id("evt")}
