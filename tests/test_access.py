"""Access control, sans-IO: the rule grammar, the policy built from rules and the commands'
defaults (against the real user and group database), and the dispatcher's ``Guarded`` calls.

The real processes, as different users, are in tests/test_acl_serve.py.
"""

from __future__ import annotations

import logging
import pwd
from typing import Any

import orjson
import pytest

from midgram.config.settings import Settings
from midgram.engine.access import (
    AccessPolicy,
    Kind,
    build_policy,
    parse_principals,
    parse_rule,
)
from midgram.engine.builtins import READONLY_BUILTINS, with_builtins
from midgram.engine.dispatch import Dispatcher, Guarded, Outcome, Status
from midgram.engine.registry import Registry
from midgram.engine.runtime import LocalRuntime
from midgram.errors import ConfigError
from midgram.server.binding import UserDatabase

NOBODY = pwd.getpwnam("nobody")
ROOT_CREDENTIALS = (1, 0, 0)
NOBODY_CREDENTIALS = (2, NOBODY.pw_uid, NOBODY.pw_gid)
FORBIDDEN = b'{"jsonrpc":"2.0","error":{"code":403,"message":"Forbidden"},"id":7}'


def served(registry: Registry | None = None) -> Registry:
    return with_builtins(registry if registry is not None else Registry(), LocalRuntime())


def policy(*rules: str, registry: Registry | None = None, udp: bool = False) -> AccessPolicy:
    return build_policy(rules, served(registry), UserDatabase(), udp=udp)


def request(method: str, params: Any = None, req_id: Any = 7) -> bytes:
    call: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": req_id}
    if params is not None:
        call["params"] = params
    return orjson.dumps(call)


# --- the grammar ----------------------------------------------------------------------------


def test_a_rule_is_commands_then_principals() -> None:
    rule = parse_rule("kill, log_level ,reset_*: root, @opensips 1000,@0 10.0.0.0/8 ::1 *")
    assert rule.patterns == ("kill", "log_level", "reset_*")
    assert [(p.kind, p.value) for p in rule.principals] == [
        (Kind.USER, "root"),
        (Kind.GROUP, "opensips"),
        (Kind.USER, 1000),
        (Kind.GROUP, 0),
        (Kind.NETWORK, parse_principals("10.0.0.0/8")[0].value),
        (Kind.NETWORK, parse_principals("::1/128")[0].value),
        (Kind.ANYONE, None),
    ]


@pytest.mark.parametrize(
    ("rule", "why"),
    [
        ("kill root", "must be"),
        ("kill:", "names no one"),
        (": root", "names no command"),
        ("@: root", "names no set"),
        ("kill: 10.1.2.3/8", "did you mean 10.0.0.0/8"),
        ("kill: @", "not a group name"),
        ("kill: 99999999999", "at most"),
        ("kill: r!ot", "not a user, @group, network or *"),
    ],
)
def test_a_bad_rule_says_why(rule: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_rule(rule)
    # As a parameter, the error names it and the rule.
    with pytest.raises(ConfigError) as caught:
        Settings(acl=[rule])
    assert (caught.value.parameter, caught.value.value) == ("acl", rule)


def test_settings_take_one_rule_or_a_list() -> None:
    assert Settings(acl="kill: root").acl == ("kill: root",)
    assert Settings.from_mapping({"acl": ["kill: root", " ps: * "]}).acl == ("kill: root", "ps: *")
    with pytest.raises(ConfigError, match="a list of rules"):
        Settings.from_mapping({"acl": 3})


def test_principals_the_socket_cannot_tell_are_refused() -> None:
    with pytest.raises(ConfigError, match="a UDP socket cannot tell users or groups"):
        Settings(socket_name="udp:127.0.0.1:9000", acl=["kill: root, 127.0.0.1"])
    with pytest.raises(ConfigError, match="a UNIX socket has no source address"):
        Settings(socket_name="/run/x.sock", acl=["kill: root, 127.0.0.1"])
    with pytest.raises(ConfigError, match="a UNIX socket has no source address"):
        Settings(acl=["kill: 10.0.0.0/8"])  # the default socket is a UNIX one
    assert Settings(socket_name="udp:127.0.0.1:9000", acl=["kill: 127.0.0.2, *"]).acl


# --- the policy -----------------------------------------------------------------------------


def test_commands_no_rule_names_stay_open() -> None:
    built = policy("kill, log_level: root")
    assert set(built.guards) == {"kill", "log_level"}
    assert built.needs_credentials
    assert built.guards["kill"].uids == {0}


def test_the_first_rule_that_matches_decides() -> None:
    built = policy("kill: root", "*: root, nobody", "uptime: *")
    assert built.guards["kill"].uids == {0}
    assert built.guards["pwd"].uids == {0, NOBODY.pw_uid}
    assert "uptime" in built.guards  # "*" came first
    assert "uptime" not in policy("uptime: *", "*: root").guards


def test_globs_and_named_sets() -> None:
    built = policy("reset_*: root")
    assert set(built.guards) == {"reset_statistics", "reset_all_statistics"}
    built = policy("@readonly: *", "*: root")
    assert set(built.guards) == {c.name for c in served()} - READONLY_BUILTINS
    assert {
        "get_statistics",
        "list_statistics",
        "uptime",
        "version",
        "which",
        "ps",
        "help",
        "events_list",
        "subscribers_list",
    } == READONLY_BUILTINS


def test_anyone_needs_no_credentials() -> None:
    built = policy("kill: *")
    assert built.guards == {}
    assert not built.needs_credentials


@pytest.mark.parametrize(
    ("rule", "named"),
    [
        ("kil: root", "no MI command is named 'kil' (did you mean 'kill'?)"),
        ("dr_reload: root", "no MI command is named 'dr_reload' (see `midgram call which`)"),
        ("dr_*: root", "no MI command is named 'dr_*'"),
        ("@readonyl: root", "no command is in a set named @readonyl (the sets: @readonly)"),
        ("kill: no-such-user", "no user named 'no-such-user'"),
        ("kill: @no-such-group", "no group named 'no-such-group'"),
    ],
)
def test_unknown_commands_sets_users_and_groups_are_named(rule: str, named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        policy(rule)
    assert (caught.value.parameter, caught.value.value) == ("acl", rule)
    assert named in str(caught.value)


def test_a_group_is_its_gid_and_the_members_its_entry_lists() -> None:
    root_group = policy("kill: @root").guards["kill"]
    assert root_group.gids == {0}
    # A gid without an entry is a group all the same (a container's, say).
    assert policy("kill: @4000000").guards["kill"].gids == {4000000}
    # A numeric uid need not be in the database either.
    assert policy("kill: 4000000").guards["kill"].uids == {4000000}


def test_who_is_admitted() -> None:
    guard = policy("kill: root, @4000").guards["kill"]
    assert guard.admits(None, ROOT_CREDENTIALS)
    assert guard.admits(None, (9, 1234, 4000))  # by its group id
    assert not guard.admits(None, NOBODY_CREDENTIALS)
    assert not guard.admits(None, None)  # no credentials: only "anyone" would do
    udp = policy("kill: 127.0.0.2, 10.0.0.0/8", udp=True).guards["kill"]
    assert udp.admits(("127.0.0.2", 5000), None)
    assert udp.admits(("::ffff:10.1.2.3", 5000, 0, 0), None)  # v4-mapped counts as v4
    assert not udp.admits(("127.0.0.1", 5000), None)
    assert not udp.admits(None, ROOT_CREDENTIALS)
    assert not policy("kill: 127.0.0.2", udp=True).needs_credentials


def test_a_commands_own_default_until_a_rule_names_it() -> None:
    app = Registry()

    @app.command(acl="root")
    def restart() -> str:
        return "OK"

    @app.command(acl="*", sets={"readonly"})
    def status() -> str:
        return "fine"

    assert set(policy(registry=app).guards) == {"restart"}
    assert policy("restart: nobody", registry=app).guards["restart"].uids == {NOBODY.pw_uid}
    assert "restart" not in policy("restart: *", registry=app).guards
    assert "status" in policy("@readonly: root", registry=app).guards


def test_a_bad_default_is_refused_where_it_is_declared() -> None:
    app = Registry()
    with pytest.raises(ValueError, match="acl of MI command oops: names no one"):

        @app.command(acl=" , ")
        def oops() -> None:
            pass

    @app.command(acl="no-such-user")
    def typo() -> None:
        pass

    with pytest.raises(ConfigError, match=r"the acl of MI command typo.*no user named"):
        policy(registry=app)


def test_a_default_naming_users_on_udp_is_refused_to_everyone_with_a_warning() -> None:
    app = Registry()

    @app.command(acl="root, 127.0.0.1")
    def restart() -> None:
        pass

    built = policy(registry=app, udp=True)
    assert not built.guards["restart"].admits(("127.0.0.2", 1), None)
    assert built.guards["restart"].admits(("127.0.0.1", 1), None)
    assert built.warnings == (
        "MI command restart's default acl names root, which this socket cannot tell: only "
        "127.0.0.1 may call it (an acl rule naming restart overrides it)",
    )


# --- the dispatcher -------------------------------------------------------------------------


def dispatcher(*rules: str, registry: Registry | None = None) -> Dispatcher:
    commands = served(registry)
    return Dispatcher(commands, access=build_policy(rules, commands, UserDatabase(), udp=False))


def test_a_guarded_command_waits_for_its_caller() -> None:
    guarded = dispatcher("kill, log_level: root")
    for entry in (guarded.answer, guarded.handle):
        call = entry(request("kill"))
        assert isinstance(call, Guarded)
        assert guarded.registry.get("kill") is call.command
    # Refused before the params are looked at: a refused caller learns nothing of them.
    denied = guarded.answer(request("log_level", {"nonsense": 1}))
    assert isinstance(denied, Guarded)
    outcome = denied.run(None, NOBODY_CREDENTIALS)
    assert isinstance(outcome, Outcome)
    assert (outcome.reply, outcome.status) == (FORBIDDEN, Status.FORBIDDEN)


def test_a_guarded_call_runs_for_its_principals_as_answer_and_handle_would() -> None:
    guarded = dispatcher("log_level: root")
    plain = Dispatcher(served())
    data = request("log_level")
    by_answer = guarded.answer(data)
    assert isinstance(by_answer, Guarded)
    assert by_answer.run(None, ROOT_CREDENTIALS) == plain.answer(data)
    by_handle = guarded.handle(data)
    assert isinstance(by_handle, Guarded)
    outcome, expected = by_handle.run(None, ROOT_CREDENTIALS), plain.handle(data)
    assert isinstance(outcome, Outcome)  # never bare bytes: handle's callers want the record
    assert isinstance(expected, Outcome)
    assert outcome[:4] == expected[:4]
    assert outcome.command is guarded.registry.get("log_level")


def test_open_commands_keep_the_fast_paths() -> None:
    guarded = dispatcher("kill, log_level: root")
    assert guarded.answer(request("uptime"))[:28] == b'{"jsonrpc":"2.0","result":{"'  # type: ignore[index]
    bare = guarded._bare_handlers
    assert "uptime" in bare
    assert "kill" not in bare
    assert "kill" in guarded.registry.bare_handlers()  # the registry's own table is untouched


def test_a_refused_notification_gets_no_reply_and_unknown_methods_stay_unknown() -> None:
    guarded = dispatcher("kill: root")
    call = guarded.answer(b'{"jsonrpc":"2.0","method":"kill"}')
    assert isinstance(call, Guarded)
    assert call.run(None, NOBODY_CREDENTIALS) == Outcome(
        None, Status.FORBIDDEN, "kill", None, guarded.registry.get("kill")
    )
    unknown = guarded.answer(request("nope"))
    assert isinstance(unknown, Outcome)
    assert unknown.status is Status.UNKNOWN_METHOD


def test_a_refusal_is_logged_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="midgram.engine.dispatch")
    guarded = dispatcher("kill, log_level: root")
    for _ in range(3):
        call = guarded.answer(request("kill"))
        assert isinstance(call, Guarded)
        call.run("@client", NOBODY_CREDENTIALS)
    assert caplog.messages == [
        f"refused MI command kill to uid {NOBODY.pw_uid} (gid {NOBODY.pw_gid}, pid 2): not "
        "allowed by acl 'kill, log_level: root'"
    ]
