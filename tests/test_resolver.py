"""User resolution: classification (pure) and every lookup path against a real Postgres."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.worker_support import deliver, drain, new_user, status_of
from webhook_worker.config import Settings
from webhook_worker.errors import PermanentError
from webhook_worker.money.user_reference import Candidate, UserNotFound, candidates, classify
from webhook_worker.ops.sample_events import checkout_session_event
from webhook_worker.worker import resolver
from webhook_worker.worker.resolver import resolve_user

KNOWN_UUID = "5f1c8a52-8a2e-4d55-9a53-0e2d9b1d3c7a"


def session(**kwargs: Any) -> dict[str, Any]:
    """A checkout.session object with every source empty unless given."""
    kwargs.setdefault("email", None)
    obj: dict[str, Any] = checkout_session_event(**kwargs)["data"]["object"]
    return obj


# --- classify ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("alice@example.com", Candidate("email", "alice@example.com")),
        (
            "  Alice.O'Neil+shop@Mail.Example.CO.uk ",
            Candidate("email", "Alice.O'Neil+shop@Mail.Example.CO.uk"),
        ),
        (KNOWN_UUID.upper(), Candidate("uuid", KNOWN_UUID)),
        ("{" + KNOWN_UUID + "}", Candidate("uuid", KNOWN_UUID)),
        (KNOWN_UUID.replace("-", ""), Candidate("uuid", KNOWN_UUID)),
        ("42", Candidate("integer", "42")),
        (" 007 ", Candidate("integer", "7")),
        (42, Candidate("integer", "42")),
    ],
)
def test_classify_recognises_values(raw: object, expected: Candidate) -> None:
    assert classify(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "   ",
        "null",
        "NULL",
        "None",
        "none",
        "undefined",
        "nil",
        "<email>",
        "<EMAIL>",
        "{CHECKOUT_SESSION_ID}",
        "{{customer.email}}",
        "{{ user_id }}",
        "${email}",
        "%EMAIL%",
        "[email]",
        "0",
        "-1",
        "00000000-0000-0000-0000-000000000000",
        "9223372036854775808",
        "user@",
        "@example.com",
        "user@localhost",
        "a b@example.com",
        "{{email}}@example.com",
        "<user@example.com>",
        "userélan@example.com",
        "١٢٣",
        "²",
        None,
        True,
        False,
        0,
        -3,
        1.5,
        2**63,
        [],
        {},
    ],
)
def test_classify_calls_placeholders_placeholders(raw: object) -> None:
    assert classify(raw).kind == "placeholder"


@given(st.text())
def test_classify_never_raises_on_any_string(raw: str) -> None:
    result = classify(raw)
    assert result.kind in {"email", "uuid", "integer", "opaque", "placeholder"}
    if result.kind == "integer":
        assert 0 < int(result.value) < 2**63
    if result.kind == "email":
        assert "@" in result.value and result.value == result.value.strip()


@given(
    st.one_of(
        st.none(), st.booleans(), st.integers(), st.floats(), st.binary(), st.lists(st.text())
    )
)
def test_classify_never_raises_on_other_json_values(raw: object) -> None:
    assert classify(raw).kind in {"integer", "placeholder"}


def test_candidates_follow_the_contract_order() -> None:
    obj = session(
        client_reference_id="1",
        metadata={"user_id": "2", "user_uuid": KNOWN_UUID, "email": "m@example.com"},
        email="d@example.com",
    )
    assert [source for source, _ in candidates(obj)] == [
        "client_reference_id",
        "metadata.user_id",
        "metadata.user_uuid",
        "metadata.email",
        "customer_details.email",
        "customer_email",
    ]


# --- resolve_user against Postgres ---------------------------------------------------------


async def test_integer_client_reference_id(db: asyncpg.Connection) -> None:
    user = await new_user(db, "int@example.com")
    found = await resolve_user(db, session(client_reference_id=str(user)))
    assert (found.user_id, found.source, found.created) == (user, "client_reference_id", False)


async def test_metadata_user_id_integer(db: asyncpg.Connection) -> None:
    user = await new_user(db, "meta@example.com")
    found = await resolve_user(db, session(metadata={"user_id": str(user)}))
    assert (found.user_id, found.source) == (user, "metadata.user_id")


async def test_uuid_matches_users_uuid(db: asyncpg.Connection) -> None:
    user = await new_user(db, "uuid@example.com", uuid=KNOWN_UUID)
    found = await resolve_user(db, session(metadata={"user_uuid": KNOWN_UUID.upper()}))
    assert (found.user_id, found.source) == (user, "metadata.user_uuid")


async def test_email_matches_case_insensitively(db: asyncpg.Connection) -> None:
    user = await new_user(db, "Alice@Example.COM")
    found = await resolve_user(db, session(email="alice@example.com"))
    assert (found.user_id, found.source, found.created) == (user, "customer_details.email", False)
    assert await db.fetchval("SELECT count(*) FROM users") == 1


async def test_placeholders_are_skipped(db: asyncpg.Connection) -> None:
    user = await new_user(db, "real@example.com")
    obj = session(
        client_reference_id="{CHECKOUT_SESSION_ID}",
        metadata={"user_id": "null", "user_uuid": "undefined", "email": "<email>"},
        email="real@example.com",
    )
    found = await resolve_user(db, obj)
    assert (found.user_id, found.source) == (user, "customer_details.email")


async def test_first_source_wins(db: asyncpg.Connection) -> None:
    first = await new_user(db, "first@example.com")
    await new_user(db, "second@example.com")
    obj = session(client_reference_id=str(first), email="second@example.com")
    assert (await resolve_user(db, obj)).user_id == first


async def test_unknown_id_falls_through_to_the_next_source(db: asyncpg.Connection) -> None:
    user = await new_user(db, "next@example.com")
    obj = session(client_reference_id="999999", metadata={"email": "NEXT@example.com"})
    found = await resolve_user(db, obj)
    assert (found.user_id, found.source) == (user, "metadata.email")


async def test_stripe_customer_id(db: asyncpg.Connection) -> None:
    user = await new_user(db, "cust@example.com", stripe_customer_id="cus_known123")
    found = await resolve_user(db, session(customer="cus_known123"))
    assert (found.user_id, found.source) == (user, "customer")


async def test_customer_id_is_remembered_when_free(db: asyncpg.Connection) -> None:
    user = await new_user(db, "remember@example.com")
    await resolve_user(db, session(client_reference_id=str(user), customer="cus_new456"))
    assert await db.fetchval("SELECT stripe_customer_id FROM users WHERE id = $1", user) == (
        "cus_new456"
    )


async def test_customer_id_of_another_user_is_never_stolen(db: asyncpg.Connection) -> None:
    owner = await new_user(db, "owner@example.com", stripe_customer_id="cus_taken789")
    other = await new_user(db, "other@example.com")
    found = await resolve_user(db, session(client_reference_id=str(other), customer="cus_taken789"))
    assert found.user_id == other  # an explicit id beats the customer id
    rows = await db.fetch("SELECT id, stripe_customer_id FROM users ORDER BY id")
    assert [(r["id"], r["stripe_customer_id"]) for r in rows] == [
        (owner, "cus_taken789"),
        (other, None),
    ]


async def test_upsert_by_email_when_nothing_matches(db: asyncpg.Connection) -> None:
    found = await resolve_user(db, session(email="New.Buyer@Example.com", customer="cus_fresh1"))
    assert (found.source, found.created) == ("upsert", True)
    row = await db.fetchrow(
        "SELECT email, stripe_customer_id FROM users WHERE id = $1", found.user_id
    )
    assert (row["email"], row["stripe_customer_id"]) == ("New.Buyer@Example.com", "cus_fresh1")
    again = await resolve_user(db, session(email="new.buyer@example.com"))
    assert (again.user_id, again.created) == (found.user_id, False)
    assert await db.fetchval("SELECT count(*) FROM users") == 1


async def test_a_host_users_column_without_default_fails_creation_naming_it(
    db: asyncpg.Connection,
) -> None:
    await db.execute("ALTER TABLE users ADD COLUMN display_name TEXT")
    await db.execute("ALTER TABLE users ALTER COLUMN display_name SET NOT NULL")
    with pytest.raises(PermanentError, match=r"users\.display_name is NOT NULL without a default"):
        await resolve_user(db, session(email="nobody.yet@example.com"))
    assert await db.fetchval("SELECT count(*) FROM users") == 0


async def test_two_racing_upserts_of_one_new_email_end_with_one_user(database_url: str) -> None:
    first, second = await asyncpg.connect(database_url), await asyncpg.connect(database_url)
    try:
        for index in range(20):
            email = f"race{index}@example.com"
            a, b = await asyncio.gather(
                resolve_user(first, session(email=email)),
                resolve_user(second, session(email=email.upper())),
            )
            assert a.user_id == b.user_id
            assert sorted([a.created, b.created]) == [False, True]
        assert await first.fetchval("SELECT count(*) FROM users") == 20
    finally:
        await first.close()
        await second.close()


async def test_no_user_and_no_email_raises_user_not_found(db: asyncpg.Connection) -> None:
    with pytest.raises(UserNotFound, match=r"^user_not_found"):
        await resolve_user(db, session(client_reference_id="null", customer="cus_unknown"))
    assert await db.fetchval("SELECT count(*) FROM users") == 0


@pytest.mark.parametrize(
    "raw",
    ["user_2abcDEF123", "cjld2cjxh0000qzrmn831i7rn", "usr-01HZX3", "acct:42x"],
)
def test_opaque_ids_are_classified_for_text_keys(raw: str) -> None:
    assert classify(raw) == Candidate("opaque", raw)


@pytest.mark.parametrize("raw", ["undefined", "customer", "user_", "a1", "NaN"])
def test_words_and_short_values_are_not_opaque_ids(raw: str) -> None:
    assert classify(raw).kind == "placeholder"


def test_metadata_tenant_id_scopes_the_email_candidates_only() -> None:
    session = {
        "client_reference_id": "42",
        "customer_email": "a@example.com",
        "metadata": {"tenant_id": 7, "email": "b@example.com"},
    }
    found = dict(candidates(session))
    assert found["client_reference_id"] == Candidate("integer", "42")
    assert found["metadata.email"] == Candidate("email", "b@example.com", "7")
    assert found["customer_email"] == Candidate("email", "a@example.com", "7")
    assert resolver.tenant_of({"metadata": {"tenant_id": "{TENANT}"}}) is None
    assert resolver.tenant_of({"metadata": {"tenant_id": "null"}}) is None


def test_user_not_found_names_what_was_tried_and_never_an_email() -> None:
    """issue 25: the error says which references were tried (ids and the customer as given,
    an email only as `<given>`), so the stored error and its log line hold no email."""
    session = checkout_session_event(
        client_reference_id="999999", email="someone@example.com", customer="cus_Q1x"
    )["data"]["object"]
    error = str(resolver.not_found(session))
    assert error.startswith("user_not_found: tried client_reference_id=999999, ")
    assert "customer_email=<given>" in error and "customer=cus_Q1x" in error
    assert "someone@example.com" not in error


async def test_the_stored_user_not_found_names_the_references_tried(
    db: asyncpg.Connection, settings: Settings
) -> None:
    event = checkout_session_event(client_reference_id="999999", email=None, customer="cus_Q2y")
    [event_id] = await deliver(db, settings, event)
    await drain(settings)
    error = (await status_of(db, event_id))["error_message"]
    assert error.startswith("user_not_found: tried client_reference_id=999999, customer=cus_Q2y")
