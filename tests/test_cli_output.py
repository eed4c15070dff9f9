"""The CLI's pure parts: the params rule, the output formats, error lines and exit codes."""

from __future__ import annotations

import errno

import click
import pytest
import yaml

from midgram.cli.clicktypes import Duration
from midgram.cli.failures import EXIT_STATUS_HELP, describe, exit_status
from midgram.cli.output import auto_format, render, use_colour
from midgram.cli.params import ParamsError, parse_json_params, parse_words
from midgram.errors import (
    AddressError,
    BadReply,
    ClientError,
    ConfigError,
    ConfigFileError,
    ConnectError,
    InvalidParams,
    InvalidRequest,
    LoadgenError,
    MIError,
    ParseError,
    PlainTextError,
    RemoteError,
    ReplyTimeout,
    RequestTooLarge,
    SocketInUse,
    TransportError,
)

PS = {
    "Processes": [
        {"ID": 0, "PID": 10, "Type": "attendant"},
        {"ID": 1, "PID": 11, "Type": "MI Datagram"},
    ]
}

# --- params --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("words", "params"),
    [
        ([], None),
        (["uptime"], ["uptime"]),
        (["level=3"], {"level": "3"}),
        (["level:=3"], {"level": 3}),
        (["level:=-1", "pid:=12"], {"level": -1, "pid": 12}),
        (['statistics:=["core:", "shmem:"]'], {"statistics": ["core:", "shmem:"]}),
        ([":=5", "x"], [5, "x"]),
        ([':={"a":1}'], [{"a": 1}]),
        (["-1"], ["-1"]),
        (["sip:alice@example.com;transport=udp"], ["sip:alice@example.com;transport=udp"]),
        (["a b=c"], ["a b=c"]),
        ([':="a=b"'], ["a=b"]),
        (["name="], {"name": ""}),
        (["x.y-z_1=v"], {"x.y-z_1": "v"}),
        (["k=v=w"], {"k": "v=w"}),
        # Arrays (issue 10 item 10): name[]=, or a name given more than once.
        (["statistics[]=all"], {"statistics": ["all"]}),
        (["statistics=core:", "statistics=shmem:"], {"statistics": ["core:", "shmem:"]}),
        (["ids[]:=1", "ids[]:=2", "on:=true"], {"ids": [1, 2], "on": True}),
        (["a=1", "a[]=2"], {"a": ["1", "2"]}),
        (["a[]:=[1]"], {"a": [[1]]}),
        (["x[]"], ["x[]"]),
    ],
)
def test_words_to_params(words: list[str], params: object) -> None:
    assert parse_words(words) == params


@pytest.mark.parametrize(
    ("words", "message"),
    [
        (["a=1", "b"], "cannot be mixed"),
        (["a=1", "b", "a=2"], "cannot be mixed"),
        (["a:=nope"], "not valid JSON"),
        ([":=[1,"], "not valid JSON"),
    ],
)
def test_bad_words(words: list[str], message: str) -> None:
    with pytest.raises(ParamsError, match=message):
        parse_words(words)


def test_json_params() -> None:
    assert parse_json_params('{"a": [1]}') == {"a": [1]}
    assert parse_json_params("[1, 2]") == [1, 2]
    assert parse_json_params("[]") is None
    for bad in ("5", '"x"', "{"):
        with pytest.raises(ParamsError):
            parse_json_params(bad)


# --- formats -------------------------------------------------------------------------------


def test_json_is_compact_one_line() -> None:
    assert render(PS, "json") == (
        '{"Processes":[{"ID":0,"PID":10,"Type":"attendant"},'
        '{"ID":1,"PID":11,"Type":"MI Datagram"}]}'
    )
    assert render(2**70, "json") == str(2**70)


def test_pretty_without_colour_is_indented_json() -> None:
    assert render({"a": [1, "é"]}, "pretty") == '{\n  "a": [\n    1,\n    "é"\n  ]\n}'


def test_pretty_with_colour_is_the_same_text_in_colour() -> None:
    value = {"a": [1, "x", None, True, {}], "b": {"c": 1.5}}
    coloured = render(value, "pretty", colour=True)
    assert "\x1b[" in coloured
    plain = coloured
    while "\x1b[" in plain:
        start = plain.index("\x1b[")
        plain = plain[:start] + plain[plain.index("m", start) + 1 :]
    assert plain == render(value, "pretty")


def test_yaml_is_safe_plain_yaml() -> None:
    text = render(PS, "yaml")
    assert "!!" not in text
    assert yaml.safe_load(text) == PS
    assert render("OK", "yaml") == "OK"


def test_lines() -> None:
    assert render(PS, "lines").splitlines() == [
        "Processes[0].ID: 0",
        "Processes[0].PID: 10",
        "Processes[0].Type: attendant",
        "Processes[1].ID: 1",
        "Processes[1].PID: 11",
        "Processes[1].Type: MI Datagram",
    ]
    assert render(["uptime", "ps"], "lines") == "uptime\nps"
    assert render("OK", "lines") == "OK"
    assert render({"a": {}, "b": None}, "lines") == "a: {}\nb: null"


def test_table_of_records() -> None:
    assert render(PS, "table").splitlines() == [
        "ID  PID  Type",
        "--  ---  -----------",
        "0   10   attendant",
        "1   11   MI Datagram",
    ]


def test_table_of_an_object_and_of_values() -> None:
    assert render({"core:rcv": 3, "shmem:used": 40}, "table").splitlines() == [
        "name        value",
        "----------  -----",
        "core:rcv    3",
        "shmem:used  40",
    ]
    assert render(["a", "b"], "table").splitlines() == ["value", "-----", "a", "b"]
    assert render("OK", "table").splitlines() == ["value", "-----", "OK"]


def test_table_with_uneven_records() -> None:
    rows = render([{"a": 1}, {"b": [1, 2]}], "table").splitlines()
    assert rows == ["a  b", "-  -----", "1", "   [1,2]"]


def test_auto_format_and_colour(monkeypatch: pytest.MonkeyPatch) -> None:
    assert auto_format(None, tty=True) == "pretty"
    assert auto_format(None, tty=False) == "json"
    assert auto_format("yaml", tty=True) == "yaml"
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert use_colour(True)
    assert not use_colour(False)
    monkeypatch.setenv("NO_COLOR", "1")
    assert not use_colour(True)


# --- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (RemoteError(-32601, "Method not found"), 1),
        (PlainTextError("500 Internal error"), 1),
        (BadReply("x"), 1),
        (ClientError("x"), 1),
        (MIError(404, "Not found"), 1),  # its code is a wire code, not an exit status
        (LoadgenError("x"), 1),
        (ReplyTimeout("/x.sock", 1.5), 3),
        (ConnectError("/x.sock", "No such file or directory", errno.ENOENT), 4),
        (AddressError("target", "udp:x", "no port specified"), 2),
        (ConfigError("children_count", 300, "must be between 0 and 256"), 2),
        (ConfigFileError("/etc/mi.toml", "not valid TOML"), 2),
        (RequestTooLarge("udp:127.0.0.1:8080", 70_000, "Message too long"), 2),
        (TransportError("cannot bind", "/x.sock"), 4),
        (SocketInUse("another server answers", "/x.sock"), 4),
    ],
)
def test_exit_statuses(error: Exception, status: int) -> None:
    assert exit_status(error) == status


def test_code_is_a_wire_code_and_only_errors_with_one_have_it() -> None:
    assert InvalidParams("x").code == -32602
    assert (ParseError("x").code, InvalidRequest("x").code) == (-32700, -32600)
    assert RemoteError(-32601, "Method not found").code == -32601
    for error in (ConfigError("p", 1, "r"), TransportError("t"), ReplyTimeout("/x", 1)):
        assert not hasattr(error, "code"), error


def test_every_exit_code_is_documented() -> None:
    for code in (0, 1, 2, 3, 4, 130):
        assert f"  {code} " in EXIT_STATUS_HELP


@pytest.mark.parametrize(
    ("error", "line"),
    [
        (
            ConnectError("/run/x.sock", "No such file or directory", errno.ENOENT),
            "no socket at /run/x.sock: is the server running? is the path right?",
        ),
        (
            ConnectError("/run/x.sock", "Connection refused", errno.ECONNREFUSED),
            "no server listens on /run/x.sock: is it running? is the path right?",
        ),
        (
            ConnectError("udp:127.0.0.1:9", "Connection refused", errno.ECONNREFUSED),
            "no server listens on udp:127.0.0.1:9: is it running? is the port right?",
        ),
        (
            ConnectError("/run/x.sock", "Permission denied", errno.EACCES),
            "permission denied on /run/x.sock: run as a user who may write to the socket "
            "(the server's unix_socket_mode/user/group)",
        ),
        (
            ConnectError("udp:nowhere.invalid:9", "cannot resolve the host: Name unknown", -2),
            "cannot reach udp:nowhere.invalid:9: cannot resolve the host: Name unknown",
        ),
        (
            ReplyTimeout("/run/x.sock", 0.25),
            "no reply from /run/x.sock within 0.25 s: is the server busy or stuck? "
            "try a longer --timeout",
        ),
        (
            RemoteError(-32602, "Invalid params", "Too few or too many parameters"),
            "ps: error -32602: Invalid params (Too few or too many parameters): "
            "run `midgram which ps` for the parameters it takes",
        ),
        (RemoteError(404, "unknown MI command"), "ps: error 404: unknown MI command"),
    ],
)
def test_error_lines(error: ClientError, line: str) -> None:
    assert describe(error, target="/run/x.sock", method="ps") == line


@pytest.mark.parametrize(
    ("error", "dialect", "hint"),
    [
        (RemoteError(-32601, "Method not found"), "opensips", "type `which` for the server's"),
        (
            RemoteError(-32602, "Invalid params", "Too few or too many parameters"),
            "opensips",
            "type `which ps` for the parameters it takes",
        ),
        (
            RemoteError(500, "Method Not Found"),
            "kamailio",
            "type `system.listMethods` for the server's commands",
        ),
        (ReplyTimeout("/x.sock", 1), "opensips", "start the shell with a longer --timeout"),
    ],
)
def test_hints_in_the_shell_say_what_to_type_there(
    error: ClientError, dialect: str, hint: str
) -> None:
    line = describe(error, method="ps", dialect=dialect, in_shell=True)
    assert hint in line
    assert "midgram " not in line


def test_plain_text_and_bad_reply_lines() -> None:
    line = describe(PlainTextError("500 Internal error"), target="/x.sock")
    assert line.startswith("/x.sock replied '500 Internal error': ")
    assert "socket_buf_size" in line
    assert "--dialect" in describe(BadReply("reply is not JSON"))
    assert "Kamailio" in describe(ReplyTimeout("/k.sock", 1), dialect="kamailio")


# --- durations (issue 10 item 15) ----------------------------------------------------------


@pytest.mark.parametrize(
    ("unit", "text", "value"),
    [
        ("ms", "500", 500),
        ("ms", "500ms", 500),
        ("ms", "2s", 2000),
        ("ms", "0.3s", 300),
        ("ms", " 2 S ", 2000),
        ("s", "2", 2.0),
        ("s", "2.5s", 2.5),
        ("s", "500ms", 0.5),
        ("s", ".25", 0.25),
    ],
)
def test_durations(unit: str, text: str, value: float) -> None:
    converted = Duration(unit, whole=unit == "ms").convert(text, None, None)
    assert converted == value
    assert type(converted) is type(value)


@pytest.mark.parametrize("text", ["", "ms", "2h", "--1", "1e3", "2 s s"])
def test_not_durations(text: str) -> None:
    with pytest.raises(click.BadParameter, match="not a duration"):
        Duration("s").convert(text, None, None)


def test_a_positive_duration_refuses_zero_and_less() -> None:
    for text in ("0", "-1s", "0ms"):
        with pytest.raises(click.BadParameter, match="must be more than 0"):
            Duration("s", positive=True).convert(text, None, None)
    assert Duration("ms", whole=True).convert("-5", None, None) == -5  # Settings refuses it
