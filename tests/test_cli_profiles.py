"""Profiles: a name for a target or a fleet of them, from a TOML file."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner
from servers import ANY_UDP, midgram_server

from midgram.cli import cli


def invoke(*args: str, profiles: Path) -> tuple[int, str, str]:
    env = {"MIDGRAM_PROFILES": str(profiles), "MIDGRAM_TARGET": None}
    result = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_a_profile_names_a_fleet(tmp_path: Path) -> None:
    with (
        midgram_server() as unix_server,
        midgram_server(socket=ANY_UDP) as udp_server,
    ):
        profiles = tmp_path / "profiles.toml"
        profiles.write_text(
            "[profiles]\n"
            f'one = "{unix_server.target}"\n'
            f'fleet = ["{unix_server.target}", "{udp_server.target}"]\n'
        )
        status, out, _ = invoke("call", "-p", "one", "-f", "json", "uptime", profiles=profiles)
        assert status == 0
        assert "Up time" in json.loads(out)
        status, out, _ = invoke(
            "call", "--profile", "fleet", "-f", "json", "pwd", profiles=profiles
        )
        assert status == 0
        per_target = json.loads(out)
        assert set(per_target) == {unix_server.target, udp_server.target}
        assert all(entry["status"] == "ok" for entry in per_target.values())
        # A target given both ways is called once.
        status, out, _ = invoke(
            "call", "-p", "fleet", "-t", udp_server.target, "-f", "json", "pwd", profiles=profiles
        )
        assert len(json.loads(out)) == 2


def test_profile_errors_are_usage_errors(tmp_path: Path) -> None:
    profiles = tmp_path / "profiles.toml"
    status, _, err = invoke("call", "-p", "x", "uptime", profiles=profiles)
    assert status == 2
    assert "no profiles file" in err
    profiles.write_text('[profiles]\nlocal = "/run/x.sock"\nbad = "udp:host"\n')
    status, _, err = invoke("call", "-p", "nope", "uptime", profiles=profiles)
    assert status == 2
    assert "profiles: bad, local" in err
    status, _, err = invoke("call", "-p", "bad", "uptime", profiles=profiles)
    assert status == 2
    assert "no port specified" in err
