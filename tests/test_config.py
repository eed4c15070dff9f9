"""Settings, its coercions and rules, and the three loaders (mapping, TOML, opensips.cfg)."""

from __future__ import annotations

import dataclasses

import pytest
from golden_cases import GOLDEN
from hypothesis import given
from hypothesis import strategies as st

from midgram.config import (
    ALIASES,
    PARAMETERS,
    OpensipsCfg,
    Origin,
    Settings,
    load_settings,
    load_toml,
    merge,
    parse_opensips_cfg,
    read_config,
)
from midgram.engine.tracing import parse_bwlist
from midgram.errors import AddressError, ConfigError, ConfigFileError
from midgram.wire.address import UdpAddress, UnixAddress, default_socket_name


def _error(values: dict[str, object]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        Settings.from_mapping(values)
    return info.value


# --- The parameter table ---------------------------------------------------------------------


def test_every_default_passes_its_own_check() -> None:
    defaults = Settings()
    for parameter in PARAMETERS:
        assert getattr(defaults, parameter.name) == parameter.default, parameter.name
        assert parameter.description
        assert isinstance(parameter.origin, Origin)


def test_every_alias_names_a_parameter() -> None:
    names = {p.name for p in PARAMETERS}
    assert set(ALIASES.values()) <= names
    assert not set(ALIASES) & names


def test_defaults() -> None:
    settings = Settings()
    assert settings.socket_name is None
    assert settings.address is None
    assert settings.children_count == 1
    assert settings.socket_timeout == 2000
    assert settings.socket_buf_size == 65457
    assert settings.unix_socket_mode == 0o660
    assert settings.pretty_printing is False
    assert settings.json_errors is False
    assert settings.allow_from == ()
    assert settings.log_level == "info"
    assert settings.warnings() == ()
    assert Settings.from_mapping({}) == settings


@pytest.mark.parametrize(
    ("runtime_dir", "expected"),
    [
        ("/run/user/1000", "/run/user/1000/midgram.sock"),
        ("/run/user/1000/", "/run/user/1000/midgram.sock"),
        (None, "/tmp/midgram-1000.sock"),
        ("", "/tmp/midgram-1000.sock"),
    ],
)
def test_default_socket_name(runtime_dir: str | None, expected: str) -> None:
    assert default_socket_name(runtime_dir, 1000) == expected


# --- Coercion of each parameter --------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "field", "expected"),
    [
        ({"children_count": 0}, "children_count", 0),
        ({"children_count": "4"}, "children_count", 4),
        ({"children_count": " 256 "}, "children_count", 256),
        ({"socket_timeout": 0}, "socket_timeout", 0),
        ({"socket_timeout": "600000"}, "socket_timeout", 600_000),
        ({"socket_buf_size": 1024}, "socket_buf_size", 1024),
        ({"socket_buf_size": 1_048_576}, "socket_buf_size", 1_048_576),
        ({"unix_socket_mode": 0o600}, "unix_socket_mode", 0o600),
        ({"unix_socket_mode": "0600"}, "unix_socket_mode", 0o600),
        ({"unix_socket_mode": "660"}, "unix_socket_mode", 0o660),
        ({"unix_socket_mode": "0o640"}, "unix_socket_mode", 0o640),
        ({"unix_socket_mode": 0o777}, "unix_socket_mode", 0o777),
        ({"unix_socket_user": "opensips"}, "unix_socket_user", "opensips"),
        ({"unix_socket_user": "www-data"}, "unix_socket_user", "www-data"),
        ({"unix_socket_user": "host$"}, "unix_socket_user", "host$"),
        ({"unix_socket_user": "1000"}, "unix_socket_user", 1000),
        ({"unix_socket_user": 0}, "unix_socket_user", 0),
        ({"unix_socket_user": -1}, "unix_socket_user", None),
        ({"unix_socket_group": "-1"}, "unix_socket_group", None),
        ({"unix_socket_group": "_opensips"}, "unix_socket_group", "_opensips"),
        ({"trace_destination": "udp:10.0.0.2:9060"}, "trace_destination", "udp:10.0.0.2:9060"),
        ({"hep_id": "[a]10.0.0.2;transport=udp"}, "hep_id", ("[a]10.0.0.2;transport=udp",)),
        ({"hep_id": ["[a]h1", "[b]h2:1"]}, "hep_id", ("[a]h1", "[b]h2:1")),
        ({"homer5_on": 0}, "homer5_on", False),
        ({"homer5_on": "off"}, "homer5_on", False),
        ({"homer5_delim": "|"}, "homer5_delim", "|"),
        ({"hep_capture_id": "2001"}, "hep_capture_id", 2001),
        ({"hep_capture_id": 2**32 - 1}, "hep_capture_id", 2**32 - 1),
        ({"trace_bwlist": "b: ps, which"}, "trace_bwlist", "b: ps, which"),
        ({"allow_from": "10.0.0.0/8"}, "allow_from", ("10.0.0.0/8",)),
        (
            {"allow_from": "10.0.0.0/8, 192.168.1.0/24"},
            "allow_from",
            ("10.0.0.0/8", "192.168.1.0/24"),
        ),
        ({"allow_from": ["::1", "10.0.0.7"]}, "allow_from", ("::1/128", "10.0.0.7/32")),
        ({"allow_from": ("2001:DB8::/32",)}, "allow_from", ("2001:db8::/32",)),
        ({"allow_from": "10.0.0.0/8 10.0.0.0/8"}, "allow_from", ("10.0.0.0/8",)),
        ({"allow_from": ""}, "allow_from", ()),
        ({"allow_from": []}, "allow_from", ()),
        ({"log_level": "DEBUG"}, "log_level", "debug"),
        ({"log_level": "warn"}, "log_level", "warning"),
        ({"log_level": "notice"}, "log_level", "info"),
        ({"log_level": -3}, "log_level", "critical"),
        ({"log_level": -1}, "log_level", "error"),
        ({"log_level": 0}, "log_level", "error"),
        ({"log_level": 1}, "log_level", "warning"),
        ({"log_level": "3"}, "log_level", "info"),
        ({"log_level": 4}, "log_level", "debug"),
    ],
)
def test_coercion(values: dict[str, object], field: str, expected: object) -> None:
    assert getattr(Settings.from_mapping(values), field) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, True),
        (False, False),
        (0, False),
        (1, True),
        (2, True),  # OpenSIPS: any non-zero int
        (-1, True),
        ("yes", True),
        ("no", False),
        ("true", True),
        ("False", False),
        ("ON", True),
        ("off", False),
        ("1", True),
        ("0", False),
        ("7", True),
    ],
)
@pytest.mark.parametrize("field", ["pretty_printing", "json_errors", "allow_any"])
def test_booleans(field: str, value: object, expected: bool) -> None:
    assert getattr(Settings.from_mapping({field: value}), field) is expected


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        ({"children_count": -1}, "must be between 0 and 256"),
        ({"children_count": 257}, "must be between 0 and 256"),
        ({"children_count": True}, "must be an integer, not bool"),
        ({"children_count": 1.5}, "must be an integer, not float"),
        ({"children_count": "two"}, "must be an integer, not str"),
        ({"socket_timeout": 600_001}, "must be between 0 and 600000 ms"),
        ({"socket_buf_size": 1023}, "must be between 1024 and 1048576 bytes"),
        ({"socket_buf_size": 1_048_577}, "must be between 1024 and 1048576 bytes"),
        ({"unix_socket_mode": 0o1000}, "01000 is more than 0777"),
        ({"unix_socket_mode": 660}, "01224 is more than 0777 (did you mean 0660?)"),
        ({"unix_socket_mode": "0800"}, "must be an octal mode"),
        ({"unix_socket_mode": "rw-rw----"}, "must be an octal mode"),
        ({"unix_socket_mode": -1}, "a mode cannot be negative"),
        ({"unix_socket_mode": True}, "must be an octal mode"),
        ({"unix_socket_user": "no spaces"}, "not a valid user name or number"),
        ({"unix_socket_user": ""}, "not a valid user name or number"),
        ({"unix_socket_user": "-dash"}, "not a valid user name or number"),
        ({"unix_socket_user": "x" * 33}, "not a valid user name or number"),
        ({"unix_socket_group": "a:b"}, "not a valid group name or number"),
        ({"unix_socket_group": -2}, "a numeric group id must be 0.."),
        ({"unix_socket_group": 2**32}, "a numeric group id must be 0.."),
        ({"unix_socket_group": 1.0}, "must be an integer"),
        ({"trace_destination": ""}, "must be udp:host:port, or the name of a proto_hep hep_id"),
        ({"trace_destination": "[hep_dst]"}, "must be udp:host:port, or the name of a"),
        ({"trace_destination": "udp:10.0.0.2"}, "no port specified"),
        ({"trace_destination": "tcp:10.0.0.2:9060"}, "midgram sends HEP over UDP only"),
        ({"hep_id": "hep_dst"}, "must be [name]host:port;transport=udp;version=3"),
        ({"hep_id": ["[a]h1", "[a]h2"]}, "a hep_id named 'a' is already defined"),
        ({"hep_id": 5}, "must be a string or a list of strings"),
        ({"homer5_delim": 1}, "must be a string, not int"),
        ({"hep_capture_id": -1}, "must be between 0 and 4294967295"),
        ({"hep_capture_id": 2**32}, "must be between 0 and 4294967295"),
        ({"trace_destination": 5}, "must be a string, not int"),
        ({"socket_name": 8080}, "must be a string, not int"),
        ({"pretty_printing": "maybe"}, "must be a boolean"),
        ({"pretty_printing": 1.0}, "must be a boolean"),
        ({"allow_from": "10.1.2.3/8"}, "has host bits set; did you mean 10.0.0.0/8?"),
        ({"allow_from": "example.com"}, "not a network"),
        ({"allow_from": "10.0.0.0/33"}, "not a network"),
        ({"allow_from": 10}, "must be a list of CIDRs"),
        ({"allow_from": ["10.0.0.0/8", 5]}, "must be a list of CIDRs"),
        ({"log_level": "verbose"}, "must be debug, info, warning, error, critical"),
        ({"log_level": 5}, "or an OpenSIPS level -3..4"),
        ({"log_level": True}, "or an OpenSIPS level -3..4"),
    ],
)
def test_bad_values(values: dict[str, object], reason: str) -> None:
    error = _error(values)
    name = next(iter(values))
    assert error.parameter == name
    assert reason in error.reason
    assert name in str(error)


def test_bad_cidr_names_the_entry() -> None:
    error = _error({"allow_from": "10.0.0.0/8, 10.1.2.3/8"})
    assert (error.parameter, error.value) == ("allow_from", "10.1.2.3/8")


def test_socket_name_errors_are_address_errors() -> None:
    with pytest.raises(AddressError) as info:
        Settings.from_mapping({"socket_name": "udp:127.0.0.1:80"})
    assert info.value.parameter == "socket_name"
    assert (
        info.value.reason == "invalid port number; must be in [1024,65535], or 0 for any free port"
    )


def test_address_property() -> None:
    assert Settings(socket_name="udp:[::1]:8080").address == UdpAddress("::1", 8080)
    assert Settings(socket_name="/run/mi.sock").address == UnixAddress("/run/mi.sock")
    assert Settings(socket_name="@mi").address == UnixAddress("mi", abstract=True)


def test_direct_construction_is_validated_like_from_mapping() -> None:
    with pytest.raises(ConfigError, match="must be between 0 and 256"):
        Settings(children_count=1000)
    settings = Settings(socket_name="/run/mi.sock")
    with pytest.raises(ConfigError, match="must be between 1024"):
        dataclasses.replace(settings, socket_buf_size=10)


def test_settings_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Settings().children_count = 3  # type: ignore[misc]


def test_to_mapping_round_trips() -> None:
    settings = Settings.from_mapping(
        {"socket_name": "udp:10.0.0.1:9000", "allow_from": "10.0.0.0/8", "mode": "0600"}
    )
    assert Settings.from_mapping(settings.to_mapping()) == settings
    assert list(settings.to_mapping()) == [p.name for p in PARAMETERS]


# --- unix_socket_mode = 0 --------------------------------------------------------------------


@pytest.mark.parametrize("zero", [0, "0", "0000"])
def test_mode_zero_becomes_0600_with_a_warning(zero: object) -> None:
    settings = Settings.from_mapping({"unix_socket_mode": zero})
    assert settings.unix_socket_mode == 0o600
    assert settings.warnings() == (
        "cannot specify unix_socket_mode = 0, forcing it to rw------- (0600)",
    )


def test_warnings_do_not_affect_equality() -> None:
    assert Settings(unix_socket_mode=0) == Settings(unix_socket_mode=0o600)


@given(st.integers(1, 0o777))
def test_mode_octal_text_round_trips(mode: int) -> None:
    assert Settings.from_mapping({"mode": f"0{mode:o}"}).unix_socket_mode == mode
    assert Settings.from_mapping({"mode": mode}).unix_socket_mode == mode


# --- Other warnings ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "warning"),
    [
        (
            {"socket_name": "udp:127.0.0.1:8080", "unix_socket_user": "opensips"},
            "unix_socket_user has no effect on a UDP socket",
        ),
        (
            {"socket_name": "udp:127.0.0.1:8080", "unix_socket_group": 5},
            "unix_socket_group has no effect on a UDP socket",
        ),
        (
            {"socket_name": "/run/mi.sock", "allow_from": "10.0.0.0/8"},
            "allow_from has no effect on a UNIX socket (it filters UDP senders)",
        ),
        (
            {"socket_name": "/run/mi.sock", "allow_any": True},
            "allow_any has no effect on a UNIX socket (it filters UDP senders)",
        ),
        (
            {"socket_name": "@mi", "unix_socket_group": "opensips"},
            "unix_socket_group has no effect on an abstract socket (there is no file to own)",
        ),
        (
            {"trace_bwlist": "b: ps"},
            "trace_bwlist has no effect without trace_destination",
        ),
    ],
)
def test_warnings(values: dict[str, object], warning: str) -> None:
    assert Settings.from_mapping(values).warnings() == (warning,)


def test_no_warnings_for_a_usual_setup() -> None:
    settings = Settings.from_mapping(
        {
            "socket_name": "/run/opensips/opensips_mi.sock",
            "unix_socket_group": "opensips",
            "trace_destination": "hep_dst",
            "trace_bwlist": "b: ps, which",
            "hep_id": "[hep_dst]10.0.0.2:9060;transport=udp",
        }
    )
    assert settings.warnings() == ()


# --- UDP rules: buffer size and difference 9 (docs/compatibility.md) ------------------------


def test_udp_buffer_is_limited_to_a_datagram() -> None:
    ok = Settings.from_mapping({"socket_name": "udp:127.0.0.1:8080", "socket_buf_size": 65507})
    assert ok.socket_buf_size == 65507
    error = _error({"socket_name": "udp:127.0.0.1:8080", "socket_buf_size": 65508})
    assert error.parameter == "socket_buf_size"
    assert "at most 65507" in error.reason
    # A UNIX socket has no such limit.
    unix = Settings.from_mapping({"socket_name": "/run/mi.sock", "socket_buf_size": 1_000_000})
    assert unix.socket_buf_size == 1_000_000


@pytest.mark.parametrize(
    "socket_name",
    [
        "udp:127.0.0.1:8080",
        "udp:127.1.2.3:8080",
        "udp:[::1]:8080",
        "udp:localhost:8080",
    ],
)
def test_loopback_udp_needs_no_allow_list(socket_name: str) -> None:
    assert Settings.from_mapping({"socket_name": socket_name}).socket_name == socket_name


@pytest.mark.parametrize(
    "socket_name",
    [
        "udp:0.0.0.0:8080",
        "udp:[::]:8080",
        "udp:10.0.0.1:8080",
        "udp:mi.example.com:8080",
        "udp:localhost.example.com:8080",
    ],
)
def test_network_udp_needs_allow_from_or_allow_any(socket_name: str) -> None:
    error = _error({"socket_name": socket_name})
    assert error.parameter == "socket_name"
    assert error.value == socket_name
    assert "allow_from" in error.reason
    assert "allow_any = true" in error.reason
    assert "no authentication" in error.reason
    with_list = Settings.from_mapping({"socket_name": socket_name, "allow_from": "10.0.0.0/8"})
    assert with_list.allow_from == ("10.0.0.0/8",)
    assert Settings.from_mapping({"socket_name": socket_name, "allow_any": "yes"}).allow_any


def test_empty_allow_from_does_not_open_the_socket() -> None:
    error = _error({"socket_name": "udp:0.0.0.0:8080", "allow_from": ""})
    assert error.parameter == "socket_name"


# --- trace_bwlist grammar (docs/tracing.md, "trace_bwlist") -----------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("b: ps, which", (False, ("ps", "which"))),
        ("w: sip_trace", (True, ("sip_trace",))),
        ("W:ps", (True, ("ps",))),
        ("  B  :  ps  ,  which  ", (False, ("ps", "which"))),
        ("b:core:ps,uptime", (False, ("core:ps", "uptime"))),
    ],
)
def test_parse_bwlist(text: str, expected: tuple[bool, tuple[str, ...]]) -> None:
    assert parse_bwlist(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty mi command list!"),
        ("ps, which", "missing list type: either blacklist( b ) or whitelist ( w )!"),
        ("x: ps", "Invalid list type <x>! Either b (blacklist) or w (whitelist)!"),
        ("bw: ps", "Invalid list type <bw>! Either b (blacklist) or w (whitelist)!"),
        (": ps", "Invalid list type <>! Either b (blacklist) or w (whitelist)!"),
        # Only spaces are trimmed from the type, not tabs.
        ("\tb: ps", "Invalid list type <\tb>! Either b (blacklist) or w (whitelist)!"),
        ("b:", "no command in list!"),
        ("b: ps,,which", "can't find mi command []!"),
        ("b: ps,", "can't find mi command []!"),
        ("b: ", "can't find mi command []!"),
        ("b: ps,\twhich", "can't find mi command [\twhich]!"),
        ("b: get statistics", "can't find mi command [get statistics]!"),
    ],
)
def test_parse_bwlist_errors(text: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_bwlist(text)
    assert info.value.reason.startswith(reason)
    assert info.value.parameter == "trace_bwlist"
    assert info.value.value == text


def test_bad_bwlist_is_refused_at_load() -> None:
    error = _error({"trace_destination": "udp:10.0.0.2:9060", "trace_bwlist": "b: ps,,which"})
    assert error.parameter == "trace_bwlist"


_commands = st.lists(st.from_regex(r"[a-z_][a-z0-9_:]{0,12}", fullmatch=True), min_size=1)


@given(st.sampled_from("wWbB"), _commands, st.integers(0, 3))
def test_bwlist_round_trips(kind: str, names: list[str], pad: int) -> None:
    space = " " * pad
    text = f"{space}{kind}{space}:{space}" + f"{space},{space}".join(names) + space
    assert parse_bwlist(text) == (kind in "wW", tuple(names))


# --- Parameter names: aliases, unknown names, duplicates -------------------------------------


def test_aliases() -> None:
    settings = Settings.from_mapping(
        {
            "socket": "/run/mi.sock",
            "children": 4,
            "mode": "0600",
            "user": "opensips",
            "group": "1000",
            "timeout": 500,
            "pretty": 1,
            "buf_size": 4096,
        }
    )
    assert settings == Settings(
        socket_name="/run/mi.sock",
        children_count=4,
        unix_socket_mode=0o600,
        unix_socket_user="opensips",
        unix_socket_group=1000,
        socket_timeout=500,
        pretty_printing=True,
        socket_buf_size=4096,
    )


@pytest.mark.parametrize(
    ("name", "suggestion"),
    [
        ("socket_nmae", "socket_name"),
        ("children_cout", "children_count"),
        ("pretty_print", "pretty_printing"),
        ("allowfrom", "allow_from"),
    ],
)
def test_unknown_parameter_suggests_a_close_name(name: str, suggestion: str) -> None:
    error = _error({name: 1})
    assert error.parameter == name
    assert error.reason == f"unknown parameter; did you mean {suggestion!r}?"


def test_unknown_parameter_without_a_close_name() -> None:
    error = _error({"frobnicate": 1})
    assert error.reason == "unknown parameter"


def test_parameter_given_twice_under_two_spellings() -> None:
    error = _error({"socket": "/a", "socket_name": "/b"})
    assert error.parameter == "socket_name"
    assert error.reason == "given twice, as 'socket' and as 'socket_name'"


def test_none_means_not_given() -> None:
    settings = Settings.from_mapping({"children_count": None, "socket_name": None})
    assert settings == Settings()


# --- merge -----------------------------------------------------------------------------------


def test_merge_later_layers_win_and_none_does_not_override() -> None:
    defaults = {"children_count": 1, "socket_timeout": 2000}
    file_layer = {"children_count": 4, "socket_name": "/run/mi.sock", "socket_timeout": 100}
    cli_layer = {"children": 8, "socket": None, "timeout": None}
    assert merge(defaults, file_layer, cli_layer) == {
        "children_count": 8,
        "socket_timeout": 100,
        "socket_name": "/run/mi.sock",
    }


def test_merge_keeps_unknown_names_for_from_mapping_to_report() -> None:
    merged = merge({"sokcet_name": "/x"})
    assert merged == {"sokcet_name": "/x"}
    with pytest.raises(ConfigError, match="did you mean 'socket_name'"):
        Settings.from_mapping(merged)


def test_merge_refuses_a_layer_that_spells_a_parameter_twice() -> None:
    with pytest.raises(ConfigError, match="given twice"):
        merge({"mode": 0o600, "unix_socket_mode": 0o640})


def test_load_settings() -> None:
    settings = load_settings({"socket_name": "/a", "children_count": 2}, {"children": "3"})
    assert (settings.socket_name, settings.children_count) == ("/a", 3)


# --- TOML ------------------------------------------------------------------------------------


def test_toml_top_level_keys() -> None:
    text = """
socket_name = "udp:127.0.0.1:8080"
children_count = 4
unix_socket_mode = 0o600
allow_from = ["10.0.0.0/8"]
pretty_printing = true
"""
    assert load_toml(text) == {
        "socket_name": "udp:127.0.0.1:8080",
        "children_count": 4,
        "unix_socket_mode": 0o600,
        "allow_from": ["10.0.0.0/8"],
        "pretty_printing": True,
    }
    settings = Settings.from_mapping(load_toml(text))
    assert settings.unix_socket_mode == 0o600
    assert settings.allow_from == ("10.0.0.0/8",)


def test_toml_mi_datagram_table_and_other_tables_ignored() -> None:
    text = """
[mi_datagram]
socket_name = "/run/mi.sock"
unix_socket_mode = "0640"

[logging]
format = "json"
"""
    assert load_toml(text) == {"socket_name": "/run/mi.sock", "unix_socket_mode": "0640"}


def test_toml_top_level_key_beside_the_table_is_refused() -> None:
    text = 'children_count = 2\n[mi_datagram]\nsocket_name = "/run/mi.sock"\n'
    with pytest.raises(ConfigError) as info:
        load_toml(text)
    assert info.value.parameter == "children_count"
    assert "outside the [mi_datagram] table" in info.value.reason


def test_toml_mi_datagram_must_be_a_table() -> None:
    with pytest.raises(ConfigError, match="must be a table"):
        load_toml('mi_datagram = "x"\n')


def test_toml_syntax_error_shows_the_line() -> None:
    with pytest.raises(ConfigError) as info:
        load_toml('socket_name = "/x"\nchildren_count = \n')
    assert info.value.parameter == "TOML"
    assert info.value.value == "children_count ="
    assert "line 2" in info.value.reason
    assert isinstance(info.value.__cause__, ValueError)


def test_toml_unknown_key_reported_by_from_mapping() -> None:
    with pytest.raises(ConfigError, match="did you mean 'children_count'"):
        Settings.from_mapping(load_toml("child_count = 2\n"))


# --- opensips.cfg ----------------------------------------------------------------------------

# The configuration the golden OpenSIPS captures were made with, as an operator writes one.
REFERENCE_CFG = (GOLDEN / "opensips-3.6" / "opensips.cfg").read_text()


def test_reference_cfg() -> None:
    cfg = parse_opensips_cfg(REFERENCE_CFG)
    assert cfg.params == {
        "socket_name": "/run/opensips/opensips_mi.sock",
        "children_count": 1,
        "unix_socket_mode": 0o660,
        "unix_socket_group": "opensips",
        "pretty_printing": 0,
        "trace_destination": "hep_dst",
        "trace_bwlist": "b: ps, which",
    }
    assert cfg.hep_ids == {"hep_dst": "127.0.0.1:9060;transport=udp;version=3"}
    assert cfg.includes == ()
    assert cfg.warnings() == ()
    settings = Settings.from_mapping(cfg.layer())
    assert settings.unix_socket_mode == 0o660
    assert settings.unix_socket_group == "opensips"
    assert settings.pretty_printing is False


def test_cfg_comments_of_every_kind() -> None:
    text = """
# modparam("mi_datagram", "children_count", 2)
// modparam("mi_datagram", "children_count", 3)
/* modparam("mi_datagram", "children_count", 4)
   modparam("mi_datagram", "children_count", 5) */
modparam("mi_datagram", "children_count", 6) # trailing comment
modparam("mi_datagram", /* inline */ "socket_timeout", 7) // trailing
"""
    assert parse_opensips_cfg(text).params == {"children_count": 6, "socket_timeout": 7}


def test_cfg_comment_markers_inside_strings_are_text() -> None:
    text = """modparam("mi_datagram", "socket_name", "/run/a#b//c/*d*/.sock")"""
    assert parse_opensips_cfg(text).params == {"socket_name": "/run/a#b//c/*d*/.sock"}


def test_cfg_several_modparams_per_line_and_last_wins() -> None:
    text = (
        'modparam("mi_datagram","children_count",2) modparam("mi_datagram","children_count",3);'
        'modparam("mi_datagram", "socket_name", "/a");modparam("mi_datagram", "socket_name", "/b")'
    )
    assert parse_opensips_cfg(text).params == {"children_count": 3, "socket_name": "/b"}


def test_cfg_whitespace_and_newlines_inside_modparam() -> None:
    text = 'modparam (\n\t"mi_datagram" ,\n  "children_count" ,\n 4\n)\n'
    assert parse_opensips_cfg(text).params == {"children_count": 4}


@pytest.mark.parametrize(
    ("literal", "value"),
    [
        ("0600", 0o600),
        ("0", 0),
        ("600", 600),
        ("0x1ff", 0o777),
        ("-1", -1),
        ("+5", 5),
        ("08", 8),
    ],
)
def test_cfg_numbers(literal: str, value: int) -> None:
    text = f'modparam("mi_datagram", "unix_socket_mode", {literal})'
    assert parse_opensips_cfg(text).params == {"unix_socket_mode": value}


@pytest.mark.parametrize(
    ("literal", "value"),
    [
        ("'/run/mi.sock'", "/run/mi.sock"),
        (r"'a\nb'", r"a\nb"),  # single quotes: no escapes
        (r'"a\"b"', 'a"b'),
        (r'"a\tb\\c"', "a\tb\\c"),
        (r'"a\qb"', r"a\qb"),
    ],
)
def test_cfg_strings(literal: str, value: str) -> None:
    text = f'modparam("mi_datagram", "socket_name", {literal})'
    assert parse_opensips_cfg(text).params == {"socket_name": value}


def test_cfg_single_quoted_module_and_name() -> None:
    text = "modparam('mi_datagram', 'children_count', 2)"
    assert parse_opensips_cfg(text).params == {"children_count": 2}


def test_cfg_module_name_is_an_anchored_case_insensitive_regex() -> None:
    text = """
modparam("mi_datagram|mi_fifo", "children_count", 2)
modparam("MI_DATAGRAM", "socket_timeout", 3)
modparam("mi_.*", "pretty_printing", 1)
modparam("datagram", "socket_name", "/not/ours")
modparam("mi_datagram2", "socket_name", "/not/ours/either")
modparam("mi_datagram(", "socket_name", "/bad/regex")
modparam("mi_fifo", "fifo_name", "/tmp/fifo")
"""
    assert parse_opensips_cfg(text).params == {
        "children_count": 2,
        "socket_timeout": 3,
        "pretty_printing": 1,
    }


def test_cfg_other_modules_and_unknown_names() -> None:
    text = """
modparam("tm", "fr_timeout", 5)
modparam("mi_datagram", "no_such_param", "x")
"""
    cfg = parse_opensips_cfg(text)
    # Passed through so that Settings.from_mapping can name the bad parameter.
    assert cfg.params == {"no_such_param": "x"}
    with pytest.raises(ConfigError, match="unknown parameter"):
        Settings.from_mapping(cfg.params)


def test_cfg_malformed_modparams_are_skipped() -> None:
    text = """
modparam("mi_datagram", "children_count")
modparam("mi_datagram", "socket_timeout", )
modparam("mi_datagram", children_count, 3)
modparam("mi_datagram", "children_count", 4
modparam "mi_datagram", "children_count", 5
modparam("mi_datagram", "socket_name", "/ok")
"""
    assert parse_opensips_cfg(text).params == {"socket_name": "/ok"}


def test_cfg_hep_ids() -> None:
    text = """
modparam("proto_hep", "hep_id", "[a]10.0.0.2;transport=tcp;version=3")
modparam("proto_hep", "hep_id", "[b] 10.0.0.3:9060")
modparam("proto_hep", "hep_id", "no brackets")
modparam("proto_hep", "hep_capture_id", 5)
modparam("mi_datagram", "trace_destination", "c")
"""
    cfg = parse_opensips_cfg(text)
    assert cfg.hep_ids == {"a": "10.0.0.2;transport=tcp;version=3", "b": "10.0.0.3:9060"}
    assert cfg.warnings() == (
        "trace_destination 'c' names no proto_hep hep_id in this file: "
        "OpenSIPS would silently trace nothing",
    )


def test_cfg_includes_are_listed_not_followed() -> None:
    text = 'include_file "mi.cfg"\nimport_file "other.cfg"\n'
    assert parse_opensips_cfg(text).includes == ("mi.cfg", "other.cfg")


def test_cfg_empty() -> None:
    assert parse_opensips_cfg("") == OpensipsCfg({}, {}, ())


def test_cfg_unterminated_comment_and_quote() -> None:
    text = 'modparam("mi_datagram", "children_count", 2) /* never closed\nmodparam("x'
    assert parse_opensips_cfg(text).params == {"children_count": 2}


def test_layers_cfg_then_cli() -> None:
    cfg = parse_opensips_cfg(REFERENCE_CFG)
    settings = load_settings(cfg.layer(), {"socket": "@mi-test", "children": 0})
    assert settings.address == UnixAddress("mi-test", abstract=True)
    assert settings.children_count == 0
    assert settings.unix_socket_mode == 0o660
    # Group on an abstract socket means nothing.
    assert settings.warnings() == (
        "unix_socket_group has no effect on an abstract socket (there is no file to own)",
    )


@given(st.text(max_size=200))
def test_cfg_parser_never_raises(text: str) -> None:
    assert isinstance(parse_opensips_cfg(text), OpensipsCfg)


# --- Tracing: trace_destination, hep_id and the proto_hep modparams -------------------------


def test_tracing_defaults_are_proto_heps() -> None:
    settings = Settings()
    assert settings.trace_target is None
    assert settings.hep_id == ()
    assert settings.homer5_on is True
    assert settings.homer5_delim == ":"
    assert settings.hep_capture_id == 1


@pytest.mark.parametrize(
    ("values", "host", "port", "name"),
    [
        ({"trace_destination": "udp:127.0.0.1:9060"}, "127.0.0.1", 9060, "udp:127.0.0.1:9060"),
        ({"trace_destination": "udp:[::1]:9061"}, "::1", 9061, "udp:[::1]:9061"),
        (
            {"trace_to": "udp:collector.example:1"},
            "collector.example",
            1,
            "udp:collector.example:1",
        ),
        (
            {"trace_destination": "hep_dst", "hep_id": "[hep_dst]10.0.0.2;transport=udp"},
            "10.0.0.2",
            9060,
            "hep_dst",
        ),
        (
            {
                "trace_destination": "b",
                "hep_id": ["[a]10.0.0.1;transport=tcp", "[b] [::1]:9 ;Transport=UDP; version=3;"],
            },
            "::1",
            9,
            "b",
        ),
    ],
)
def test_trace_target(values: dict[str, object], host: str, port: int, name: str) -> None:
    target = Settings.from_mapping(values).trace_target
    assert target is not None
    assert target.address == UdpAddress(host, port)
    assert target.name == name


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        ({"trace_destination": "hep_dst"}, "names no hep_id: define it, e.g. hep_id = "),
        (
            {"trace_destination": "c", "hep_id": ["[a]h;transport=udp", "[b]h;transport=udp"]},
            "names no hep_id (defined: a, b)",
        ),
        (
            {"trace_destination": "a", "hep_id": "[a]10.0.0.2:9060"},
            "hep_id 'a' sends over TCP (proto_hep's default when no transport is given), and "
            "midgram traces over UDP only: add ;transport=udp to it",
        ),
        (
            {"trace_destination": "a", "hep_id": "[a]10.0.0.2;transport=tls"},
            "hep_id 'a' sends over TLS",
        ),
        (
            {"trace_destination": "a", "hep_id": "[a]10.0.0.2;transport=udp;version=2"},
            "hep_id 'a' is HEP version 2, which carries no MI data (OpenSIPS adds none below "
            "version 3): use version=3",
        ),
        (
            {"trace_destination": "a", "hep_id": "[a]10.0.0.2;transport=udp;version=1"},
            "hep_id 'a' is HEP version 1",
        ),
    ],
)
def test_unusable_trace_destination(values: dict[str, object], reason: str) -> None:
    error = _error(values)
    assert error.parameter == "trace_destination"
    assert error.value == values["trace_destination"]
    assert error.reason.startswith(reason)


def test_a_tcp_hep_id_that_is_not_the_destination_is_fine() -> None:
    settings = Settings.from_mapping(
        {"trace_destination": "mi", "hep_id": ["[sip]10.0.0.2", "[mi]10.0.0.3;transport=udp"]}
    )
    assert settings.trace_target is not None
    assert settings.trace_target.address == UdpAddress("10.0.0.3", 9060)


CFG_WITH_HEP = """
loadmodule "proto_hep.so"
modparam("proto_hep", "hep_id", "[sip_dst]10.0.0.9:9060")
modparam("proto_hep", "hep_id", "[hep_dst] 127.0.0.1:9061; transport=udp; version=3")
modparam("proto_hep", "homer5_on", 0)
modparam("proto_hep", "homer5_delim", "|")
modparam("proto_hep", "hep_capture_id", 2001)
modparam("proto_hep", "hep_max_retries", 3)
modparam("mi_datagram", "socket_name", "udp:127.0.0.1:8080")
modparam("mi_datagram", "trace_destination", "hep_dst")
modparam("mi_datagram", "trace_bwlist", "w: uptime")
"""


def test_cfg_proto_hep_modparams() -> None:
    cfg = parse_opensips_cfg(CFG_WITH_HEP)
    assert cfg.hep_params == {"homer5_on": 0, "homer5_delim": "|", "hep_capture_id": 2001}
    settings = Settings.from_mapping(cfg.layer())
    assert settings.hep_id == (
        "[sip_dst]10.0.0.9:9060",
        "[hep_dst]127.0.0.1:9061; transport=udp; version=3",
    )
    assert settings.homer5_on is False
    assert settings.homer5_delim == "|"
    assert settings.hep_capture_id == 2001
    assert settings.trace_target is not None
    assert settings.trace_target.address == UdpAddress("127.0.0.1", 9061)


def test_cli_trace_to_overrides_the_cfg_destination() -> None:
    cfg = parse_opensips_cfg(CFG_WITH_HEP)
    settings = load_settings(cfg.layer(), {"trace_to": "udp:[::1]:9999"})
    assert settings.trace_target is not None
    assert settings.trace_target.address == UdpAddress("::1", 9999)
    assert settings.hep_capture_id == 2001


def test_toml_tracing() -> None:
    text = """
[mi_datagram]
socket_name = "udp:127.0.0.1:8080"
trace_destination = "hep_dst"
trace_bwlist = "b: ps"
hep_id = ["[hep_dst]127.0.0.1:9060;transport=udp"]
homer5_on = false
hep_capture_id = 7
"""
    settings = Settings.from_mapping(load_toml(text))
    assert settings.trace_target is not None
    assert settings.trace_target.address == UdpAddress("127.0.0.1", 9060)
    assert settings.homer5_on is False
    assert settings.hep_capture_id == 7


# --- a config file of either kind (issue 10 item 6) -----------------------------------------


def test_a_toml_file_not_named_toml_is_read_as_toml() -> None:
    found = read_config(b'children_count = 3\nsocket_name = "/run/mi.sock"\n', "midgram.conf")
    assert found.format == "TOML"
    assert found.layer == {"children_count": 3, "socket_name": "/run/mi.sock"}


def test_an_opensips_cfg_named_anything_is_read_as_one() -> None:
    found = read_config(b'modparam("mi_datagram", "children_count", 3)\n', "opensips.toml.bak")
    assert found.format == "opensips.cfg"
    assert found.layer == {"children_count": 3}


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "TOML with neither parameters nor a [mi_datagram] table"),
        ("# nothing yet\n[mi_datagram]\n", "TOML with neither parameters"),
        ('loadmodule "mi_fifo.so"\nmodparam("mi_fifo", "fifo_name", "/x")\n', "opensips.cfg"),
    ],
)
def test_a_config_file_that_gives_no_parameter_is_refused(text: str, why: str) -> None:
    with pytest.raises(ConfigFileError) as info:
        read_config(text.encode(), "/etc/midgram/mi.conf")
    assert str(info.value).startswith("/etc/midgram/mi.conf: no midgram parameter in it (")
    assert why in str(info.value)


def test_neither_toml_nor_an_opensips_cfg_names_the_file_and_both_formats() -> None:
    with pytest.raises(ConfigFileError) as info:
        read_config(b'loadmodule "mi_datagram.so"\nmodparm("mi_datagram", "x", 1)\n', "mi.conf")
    message = str(info.value)
    assert message.startswith("mi.conf: not valid TOML: ")
    assert "line 1" in message
    assert message.endswith("nor is it an opensips.cfg (no modparam(...) in it)")
