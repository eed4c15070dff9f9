"""rpc.py: the client's sans-IO half (request bytes, reply decoding, dialects)."""

from __future__ import annotations

import json

import pytest
from golden_cases import KAMAILIO_UNIX, golden_files
from hypothesis import given
from hypothesis import strategies as st

from midgram.client.codec import (
    DIALECTS,
    check_params,
    decode_response,
    encode_request,
    get_dialect,
    make_params,
)
from midgram.errors import BadReply, PlainTextError, RemoteError
from midgram.wire.jsonrpc import encode_error, encode_result

OPENSIPS = DIALECTS["opensips"]
KAMAILIO = DIALECTS["kamailio"]


def test_request_member_order_and_no_empty_params() -> None:
    assert encode_request("uptime", None, 7) == b'{"jsonrpc":"2.0","method":"uptime","id":7}'
    assert encode_request("which", ["uptime"], 8) == (
        b'{"jsonrpc":"2.0","method":"which","params":["uptime"],"id":8}'
    )


def test_notification_has_no_id() -> None:
    assert b'"id"' not in encode_request("uptime", None)


def test_request_with_huge_integer_is_exact() -> None:
    data = encode_request("x", [2**70], 1)
    assert json.loads(data)["params"] == [2**70]


def test_make_params() -> None:
    assert make_params((), {}, OPENSIPS) is None
    assert make_params((1, "a"), {}, OPENSIPS) == [1, "a"]
    assert make_params((), {"level": 1}, OPENSIPS) == {"level": 1}
    with pytest.raises(TypeError, match="not both"):
        make_params((1,), {"a": 1}, OPENSIPS)
    with pytest.raises(TypeError, match="positional parameters only"):
        make_params((), {"a": 1}, KAMAILIO)


def test_check_params() -> None:
    assert check_params([], OPENSIPS) is None
    assert check_params({}, KAMAILIO) is None
    with pytest.raises(TypeError, match="list, a dict or None"):
        check_params("x", OPENSIPS)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="positional"):
        check_params({"a": 1}, KAMAILIO)


def test_dialects() -> None:
    assert get_dialect("kamailio").list_method == "system.listMethods"
    assert get_dialect(OPENSIPS) is OPENSIPS
    with pytest.raises(ValueError, match="opensips, kamailio"):
        get_dialect("asterisk")


@pytest.mark.parametrize("pretty", [False, True])
def test_decode_the_servers_own_replies(pretty: bool) -> None:
    ok = decode_response(encode_result({"a": [1, "b"]}, 5, pretty=pretty))
    assert ok.answers(5)
    assert ok.unwrap() == {"a": [1, "b"]}
    error = decode_response(encode_error(-32602, "Invalid params", "why", 6, pretty=pretty))
    assert error.answers(6)
    with pytest.raises(RemoteError) as caught:
        error.unwrap()
    assert (caught.value.code, caught.value.message, caught.value.data) == (
        -32602,
        "Invalid params",
        "why",
    )


def test_id_must_match_exactly() -> None:
    response = decode_response(b'{"jsonrpc":"2.0","result":1,"id":5}')
    assert not response.answers(6)
    assert not response.answers("5")
    assert not decode_response(b'{"jsonrpc":"2.0","result":1,"id":1.0}').answers(1)


def test_null_id_answers_only_for_errors() -> None:
    error = b'{"jsonrpc":"2.0","error":{"code":-32600,"message":"Invalid Request"},"id":null}'
    assert decode_response(error).answers(3)
    assert not decode_response(b'{"jsonrpc":"2.0","result":1,"id":null}').answers(3)
    # Kamailio answers notifications (and batches) without any id: never ours.
    assert not decode_response(b'{"jsonrpc":"2.0","result":{}}').answers(3)


@pytest.mark.parametrize("text", [b"400 Parse_error", b"500 Internal error"])
def test_plain_text_replies(text: bytes) -> None:
    with pytest.raises(PlainTextError) as caught:
        decode_response(text)
    assert caught.value.text == text.decode()
    assert caught.value.status == int(text[:3])


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"hello",
        b"[1,2]",
        b'{"jsonrpc":"2.0","id":1}',
        b'{"jsonrpc":"2.0","result":1,"error":{"code":1,"message":"x"},"id":1}',
        b'{"jsonrpc":"2.0","error":"bad","id":1}',
        b'{"jsonrpc":"2.0","error":{"code":"1","message":"x"},"id":1}',
        b'{"jsonrpc":"2.0","result":1,"id":[1]}',
        b'{"jsonrpc":"2.0","result":1,"id":true}',
        b'{"jsonrpc":"2.0","result":',
    ],
)
def test_bad_replies(data: bytes) -> None:
    with pytest.raises(BadReply):
        decode_response(data)


def test_invalid_utf8_is_replaced_not_fatal() -> None:
    response = decode_response(b'{"jsonrpc":"2.0","result":"a\xffb","id":1}')
    assert response.unwrap() == "a\ufffdb"


def test_big_integers_are_exact() -> None:
    assert (
        decode_response(b'{"jsonrpc":"2.0","result":123456789012345678901234,"id":1}').result
        == 123456789012345678901234
    )


def test_kamailio_golden_replies_decode() -> None:
    for path in golden_files(KAMAILIO_UNIX, "*.rsp"):
        request = json.loads(path.with_suffix(".req").read_bytes())
        response = decode_response(path.read_bytes())
        if isinstance(request, dict) and "id" in request and request["id"] is not None:
            assert response.answers(request["id"]), path.name


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(),
        lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
        max_leaves=20,
    ),
    st.integers(1, 2**31 - 1),
)
def test_any_result_round_trips(result: object, request_id: int) -> None:
    reply = json.dumps({"jsonrpc": "2.0", "result": result, "id": request_id}).encode()
    response = decode_response(reply)
    assert response.answers(request_id)
    assert response.unwrap() == result


@pytest.mark.parametrize(
    "number", [-(2**63) - 1, -(2**63), 2**63 - 1, 2**63, 2**64 - 1, 2**64, -(10**30), 10**30]
)
def test_integers_at_the_64_bit_edges_stay_exact(number: int) -> None:
    # orjson reads an integer below -2**63 (19 digits) as a float: hypothesis found one.
    reply = b'{"jsonrpc":"2.0","result":%d,"id":1}' % number
    result = decode_response(reply).unwrap()
    assert type(result) is int
    assert result == number
