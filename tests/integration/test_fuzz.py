"""Bad-input fuzzing of the whole receiver over HTTP: random headers and bodies never give a
500, and no row is ever stored without a valid signature. Signed but hostile JSON (deep
nesting, huge numbers, duplicate keys, NUL escapes) gets a clear 400 or is stored.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import sign
from webhook_worker.config import Settings
from webhook_worker.receiver.app import create_app

URL = "/webhooks/stripe"
FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

header_text = st.one_of(
    st.text(max_size=200),
    st.builds(
        lambda t, parts: f"t={t}," + ",".join(parts),
        st.one_of(st.integers(), st.text(max_size=12)),
        st.lists(
            st.builds(
                lambda k, v: f"{k}={v}",
                st.sampled_from(["v1", "v0", "v2", "t", "", "V1"]),
                st.text(alphabet="0123456789abcdefXYZ\u00e9\u2603=,", max_size=70),
            ),
            max_size=4,
        ),
    ),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
event_like = st.fixed_dictionaries(
    {},
    optional={
        "id": st.one_of(st.text(max_size=20), st.builds(lambda s: f"evt_{s}", st.text())),
        "type": st.one_of(st.text(max_size=30), st.integers(), st.none()),
        "created": st.one_of(st.integers(), st.text(max_size=5), st.floats(allow_nan=False)),
        "livemode": st.one_of(st.booleans(), st.text(max_size=3)),
        "account": st.one_of(st.none(), st.text(max_size=10), st.integers()),
        "api_version": st.one_of(st.none(), st.text(max_size=10)),
        "data": json_values,
    },
)


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://receiver") as c:
            yield c


async def _rows(db: asyncpg.Connection) -> int:
    return int(await db.fetchval("SELECT count(*) FROM stripe_events"))


@FUZZ
@given(header=st.one_of(st.none(), header_text), body=st.binary(max_size=2048))
async def test_random_headers_and_bodies_never_500_and_store_nothing(
    client: httpx.AsyncClient, db: asyncpg.Connection, header: str | None, body: bytes
) -> None:
    before = await _rows(db)
    headers = {} if header is None else {"Stripe-Signature": header}
    try:
        response = await client.post(URL, content=body, headers=headers)
    except UnicodeEncodeError:
        return  # httpx itself refuses non-latin-1 header values: nothing reached the app
    assert response.status_code == 400, response.text
    assert await _rows(db) == before


@FUZZ
@given(event=event_like)
async def test_signed_arbitrary_json_is_stored_or_400_never_500(
    client: httpx.AsyncClient, db: asyncpg.Connection, event: dict[str, object]
) -> None:
    before = await _rows(db)
    body = json.dumps(event).encode()
    response = await client.post(URL, content=body, headers={"Stripe-Signature": sign(body)})
    assert response.status_code in (200, 400), response.text
    grew = await _rows(db) - before
    if response.status_code == 400:
        assert grew == 0
    else:
        assert response.json()["received"] is True
        assert grew == (0 if response.json()["duplicate"] else 1)
        assert isinstance(event.get("id"), str) and str(event["id"]).startswith("evt_")


@pytest.mark.parametrize(
    "body",
    [
        b'{"id":"evt_dup","id":"evt_dup2","type":"x.y","created":1}',
        b'{"id":"evt_dupkeys","type":"a.b","type":"c.d","created":1,"data":{"k":1,"k":2}}',
        b'{"id":"evt_bignum","type":"x.y","created":1,"data":{"n":1e999999}}',
        b'{"id":"evt_neg","type":"x.y","created":-1}',
        b'{"id":"evt_nul","type":"x\\u0000y","created":1}',
        b'{"id":"evt_nested","type":"x.y","created":1,"data":' + b"[" * 5000 + b"]" * 5000 + b"}",
        b'{"id":"evt_bom","type":"x.y"}\xef\xbb\xbf',
        b"\xef\xbb\xbf" + b'{"id":"evt_bom2","type":"x.y"}',
    ],
)
async def test_hostile_json_gets_a_clear_answer(
    client: httpx.AsyncClient, db: asyncpg.Connection, body: bytes
) -> None:
    response = await client.post(URL, content=body, headers={"Stripe-Signature": sign(body)})
    assert response.status_code in (200, 400), response.text
    stored = await _rows(db)
    assert stored == (1 if response.status_code == 200 else 0)
    if response.status_code == 400:
        assert response.json().get("error") or response.json().get("reason")
