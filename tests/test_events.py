"""Envelope parsing: the fields the receiver stores, and every way a body is not an event."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from webhook_worker.envelope import parse_envelope
from webhook_worker.errors import PayloadError
from webhook_worker.ops.sample_events import checkout_session_event, encode_event


def _reason(body: bytes) -> str:
    with pytest.raises(PayloadError) as info:
        parse_envelope(body)
    return info.value.reason


def _event(**fields: object) -> bytes:
    event = {"id": "evt_test_1", "type": "charge.refunded", "created": 1_700_000_000}
    event.update(fields)
    return orjson.dumps(event)


def test_a_sample_event_parses_into_its_envelope() -> None:
    event = checkout_session_event(account="acct_123")
    body = encode_event(event)
    row = parse_envelope(body)
    assert row.event_id == event["id"]
    assert row.type == "checkout.session.completed"
    assert row.livemode is False
    assert row.api_version == event["api_version"]
    assert row.account == "acct_123"
    assert row.stripe_created_at == datetime.fromtimestamp(event["created"], tz=UTC)
    assert row.raw_json == body.decode()


def test_optional_fields_may_be_absent() -> None:
    row = parse_envelope(b'{"id":"evt_1","type":"x.y"}')
    assert (row.account, row.api_version, row.stripe_created_at, row.livemode) == (
        None,
        None,
        None,
        False,
    )


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"not json", "not_json"),
        (b"", "not_json"),
        (b"[1, 2]", "not_an_object"),
        (b'"evt_1"', "not_an_object"),
        (_event(id=None), "bad_event_id"),
        (_event(id="ch_123"), "bad_event_id"),
        (_event(id="evt_"), "bad_event_id"),
        (_event(id="evt_a b"), "bad_event_id"),
        (_event(id=12), "bad_event_id"),
        (_event(type=None), "missing_type"),
        (_event(type=""), "missing_type"),
        (_event(type=5), "bad_type"),
        (_event(type="a\nb"), "bad_type"),
        (_event(created="yesterday"), "bad_created"),
        (_event(created=1.5), "bad_created"),
        (_event(created=True), "bad_created"),
        (_event(created=10**15), "bad_created"),
        (_event(livemode="false"), "bad_livemode"),
        (_event(account=["acct_1"]), "bad_account"),
        (_event(api_version=20240620), "bad_api_version"),
    ],
)
def test_bodies_that_are_no_event_are_refused(body: bytes, reason: str) -> None:
    assert _reason(body) == reason


def test_an_escaped_nul_in_any_string_is_refused() -> None:
    body = _event(data={"object": {"metadata": {"note": "a\x00b"}}})
    assert b"\\u0000" in body
    assert _reason(body) == "nul_character"


def test_an_escaped_nul_in_a_key_is_refused() -> None:
    assert _reason(_event(data={"k\x00": 1})) == "nul_character"


def test_an_escaped_backslash_before_u0000_is_text_and_accepted() -> None:
    body = _event(data={"note": "\\u0000"})
    assert parse_envelope(body).raw_json == body.decode()


def test_a_huge_created_integer_is_refused() -> None:
    assert _reason(b'{"id":"evt_1","type":"x","created":123456789012345678901234567890}') == (
        "bad_created"
    )


def test_a_number_beyond_a_double_is_refused() -> None:
    assert _reason(b'{"id":"evt_1","type":"x","data":1e400}') == "not_json"


def test_deep_nesting_is_refused_without_crashing() -> None:
    body = b'{"id":"evt_1","type":"x","data":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert _reason(body) == "not_json"


def test_invalid_utf8_and_lone_surrogates_are_refused() -> None:
    assert _reason(b'{"id":"evt_1","type":"\xff"}') == "not_json"
    assert _reason(b'{"id":"evt_1","type":"x","d":"\\ud800"}') == "not_json"


@given(st.binary(max_size=512))
def test_arbitrary_bytes_raise_only_payload_error(body: bytes) -> None:
    try:
        parse_envelope(body)
    except PayloadError as exc:
        assert exc.reason


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children),
    max_leaves=20,
)


@given(
    st.dictionaries(st.sampled_from(["id", "type", "created", "livemode", "account"]), json_values)
)
def test_arbitrary_envelopes_raise_only_payload_error(event: dict[str, object]) -> None:
    try:
        body = orjson.dumps(event)
    except orjson.JSONEncodeError:
        return  # integers beyond 64 bits cannot be encoded; the parser sees them as floats
    try:
        row = parse_envelope(body)
    except PayloadError:
        return
    assert row.event_id.startswith("evt_")
    assert row.type
