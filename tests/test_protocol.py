"""The sans-IO JSON-RPC core: decoding, validation, both output formats, the size rule."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import json_values

from midgram.errors import InvalidRequest, ParseError
from midgram.wire.jsonrpc import (
    DEFAULT_BUF_SIZE,
    Notification,
    Request,
    decode_request,
    encode_error,
    encode_result,
    encode_value,
    reply_fits,
)


def test_request_fields() -> None:
    call = decode_request(b'{"jsonrpc":"2.0","method":"which","params":["ps"],"id":"7"}')
    assert call == Request("which", ["ps"], "7")


@pytest.mark.parametrize("params", [b"[]", b"{}"])
def test_empty_params_mean_none(params: bytes) -> None:
    call = decode_request(b'{"jsonrpc":"2.0","method":"ps","params":' + params + b',"id":1}')
    assert call == Request("ps", None, 1)


def test_no_id_is_a_notification_and_null_id_is_not() -> None:
    assert decode_request(b'{"jsonrpc":"2.0","method":"ps"}') == Notification("ps", None)
    assert decode_request(b'{"jsonrpc":"2.0","method":"ps","id":null}') == Request("ps", None, None)


@pytest.mark.parametrize(
    ("data", "reply_id"),
    [
        (b'{"jsonrpc":"2.0","method":"ps","params":null,"id":3}', 3),
        (b'{"jsonrpc":"2.0","method":"ps","params":5,"id":3}', 3),
        (b'{"jsonrpc":"1.0","method":"ps","id":"x"}', "x"),
        (b'{"jsonrpc":2.0,"method":"ps","id":4}', 4),
        (b'{"method":"ps","id":5}', 5),
        (b'{"jsonrpc":"2.0","method":7,"id":6}', 6),
        (b'{"jsonrpc":"2.0","id":6}', 6),
        (b'{"jsonrpc":"2.0","method":"ps","id":true}', None),
        (b'{"jsonrpc":"2.0","method":"ps","id":[1]}', None),
        (b'{"jsonrpc":"2.0","method":"ps","params":null}', None),  # notification: id null
        (b'[{"jsonrpc":"2.0","method":"ps","id":1}]', None),
        (b'"ps"', None),
        (b"null", None),
    ],
)
def test_invalid_requests_carry_the_reply_id(data: bytes, reply_id: object) -> None:
    with pytest.raises(InvalidRequest) as info:
        decode_request(data)
    assert info.value.reply_id == reply_id


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"   \n",
        b"hello",
        b'{"jsonrpc":"2.0","method":"ps","id":1} trailing',  # difference 2: strict
        b'{"jsonrpc":"2.0","method":"ps","id":0x1F}',
        b'{"jsonrpc":"2.0","method":"ps","id":007}',
        b'{"a":1,}',
        b"{'a':1}",
        b'{"a":NaN}',
        b"\xef\xbb\xbf{}",
        b'{"jsonrpc":"2.0","method":"ps","id":',
    ],
)
def test_parse_errors(data: bytes) -> None:
    with pytest.raises(ParseError):
        decode_request(data)


def test_trailing_whitespace_is_fine_and_a_nul_ends_the_request() -> None:
    assert decode_request(b'{"jsonrpc":"2.0","method":"ps","id":1}\n \t').method == "ps"
    assert decode_request(b'{"jsonrpc":"2.0","method":"ps","id":1}\0junk').method == "ps"


def test_ids_are_echoed_exactly() -> None:
    big = 2**70
    call = decode_request(b'{"jsonrpc":"2.0","method":"ps","id":%d}' % big)
    assert isinstance(call, Request)
    assert call.id == big
    assert encode_result("OK", call.id).endswith(b',"id":%d}' % big)
    assert encode_result("OK", 1.5).endswith(b',"id":1.5}')


def test_member_names_are_case_sensitive() -> None:
    with pytest.raises(InvalidRequest):
        decode_request(b'{"JSONRPC":"2.0","method":"ps","id":1}')


# --- encoding --------------------------------------------------------------------------------


def test_compact_envelopes_match_opensips_bytes() -> None:
    assert (
        encode_result(["core:uptime", "core:version"], "42")
        == b'{"jsonrpc":"2.0","result":["core:uptime","core:version"],"id":"42"}'
    )
    assert encode_result("OK", None) == b'{"jsonrpc":"2.0","result":"OK","id":null}'
    assert encode_result({}, 1) == b'{"jsonrpc":"2.0","result":{},"id":1}'
    assert (
        encode_error(404, "Statistics Not Found", None, "abc")
        == b'{"jsonrpc":"2.0","error":{"code":404,"message":"Statistics Not Found"},"id":"abc"}'
    )
    assert encode_error(-32602, "Invalid params", "Too few or too many parameters", None) == (
        b'{"jsonrpc":"2.0","error":{"code":-32602,"message":"Invalid params",'
        b'"data":"Too few or too many parameters"},"id":null}'
    )


def test_string_escaping_matches_cjson() -> None:
    assert encode_value('b"\\/\n\x01\x7fé') == b'"b\\"\\\\/\\n\\u0001\x7f\xc3\xa9"'


def test_pretty_error_is_byte_exact() -> None:
    expected = (
        b'{\n\t"jsonrpc":\t"2.0",\n\t"error":\t{\n\t\t"code":\t-32602,\n'
        b'\t\t"message":\t"Invalid params",\n\t\t"data":\t"Too few or too many parameters"\n'
        b'\t},\n\t"id":\tnull\n}'
    )
    assert (
        encode_error(-32602, "Invalid params", "Too few or too many parameters", None, pretty=True)
        == expected
    )


def test_pretty_result_layout() -> None:
    result = {
        "Now": "Thu Aug 20 16:15:26 2026",
        "Processes": [{"ID": 0, "PID": 1}, {"ID": 1}],
        "empty": {},
        "none": [],
    }
    expected = (
        '{\n\t"jsonrpc":\t"2.0",\n\t"result":\t{\n'
        '\t\t"Now":\t"Thu Aug 20 16:15:26 2026",\n'
        '\t\t"Processes":\t[{\n\t\t\t\t"ID":\t0,\n\t\t\t\t"PID":\t1\n\t\t\t}, {\n'
        '\t\t\t\t"ID":\t1\n\t\t\t}],\n'
        '\t\t"empty":\t{\n\t\t},\n'
        '\t\t"none":\t[]\n'
        '\t},\n\t"id":\t7\n}'
    )
    assert encode_result(result, 7, pretty=True).decode() == expected
    assert (
        encode_result({}, 1, pretty=True)
        == b'{\n\t"jsonrpc":\t"2.0",\n\t"result":\t{\n\t},\n\t"id":\t1\n}'
    )


def test_values_orjson_refuses_are_still_encoded() -> None:
    assert encode_value([2**70, {"a": -(2**65)}]) == b'[%d,{"a":%d}]' % (2**70, -(2**65))
    assert encode_value({1: "x"}) == b'{"1":"x"}'


def test_non_json_values_raise_type_error() -> None:
    with pytest.raises(TypeError):
        encode_result({1, 2}, 1)
    with pytest.raises(TypeError):
        encode_result({1, 2}, 1, pretty=True)


# --- the size rule (docs/compatibility.md, "The size rule") ---------------------------------


def test_numeric_id_reply_limit_is_bufsize_minus_19() -> None:
    reply = encode_result("x" * 9, 1)
    assert len(reply) == 45
    assert reply_fits(reply, 1, 64)
    assert not reply_fits(reply, 1, 63)


@pytest.mark.parametrize("req_id", ["a", None])
def test_string_and_null_id_reply_limit_is_bufsize_minus_1(req_id: object) -> None:
    reply = encode_result("x" * 100, req_id)  # type: ignore[arg-type]
    assert reply_fits(reply, req_id, len(reply) + 1)  # type: ignore[arg-type]
    assert not reply_fits(reply, req_id, len(reply))  # type: ignore[arg-type]


def test_default_limit() -> None:
    body = "x" * (DEFAULT_BUF_SIZE - 19 - len(encode_result("", 1)))
    assert reply_fits(encode_result(body, 1), 1, DEFAULT_BUF_SIZE)
    assert not reply_fits(encode_result(body + "x", 1), 1, DEFAULT_BUF_SIZE)


# --- properties ------------------------------------------------------------------------------


@given(json_values)
def test_any_json_value_round_trips_compact(value: Any) -> None:
    assert json.loads(encode_value(value)) == value


@given(json_values)
def test_any_json_value_round_trips_pretty(value: Any) -> None:
    assert json.loads(encode_value(value, pretty=True)) == value
    reply = encode_result(value, 1, pretty=True)
    assert json.loads(reply) == {"jsonrpc": "2.0", "result": value, "id": 1}


@given(st.binary(max_size=300))
def test_any_bytes_decode_or_raise_protocol_errors(data: bytes) -> None:
    try:
        call = decode_request(data)
    except (ParseError, InvalidRequest):
        return
    assert isinstance(call, Request | Notification)
