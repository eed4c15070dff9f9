"""``midgram serve`` as a newcomer and an operator meet it: ``--app``, ``--config``, the
start-up banner, logging, and the errors on the way (issue 10).

The server runs as the installed ``midgram`` script (``BIN/midgram``), not ``python -m
midgram``: ``-m`` would put the current folder on the import path and hide what a user of
the script sees.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from servers import ANY_UDP, ANY_UDP6, ROOT, ServerProcess, started_server

from midgram.config.settings import Settings
from midgram.engine.registry import Registry
from midgram.errors import ConfigError
from midgram.server.wiring import serve

BIN = Path(sys.executable).parent
MIDGRAM = str(BIN / "midgram")
README = (ROOT / "README.md").read_text()
DEADLINE = 30.0


def user_env(**extra: str) -> dict[str, str]:
    """A user's environment: no PYTHONPATH of the tests."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(extra)
    return env


def run_serve(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``midgram serve ARGS`` expected to end by itself (an error at start)."""
    return subprocess.run(
        [MIDGRAM, "serve", *args],
        cwd=cwd,
        env=env or user_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=False,
    )


# --- --app with the README's example (issue 10 item 4) ---------------------------------------


def readme_embed_example() -> str:
    match = re.search(r"<!-- example: embed-serve -->\n```python\n(.*?)^```", README, re.S | re.M)
    assert match is not None
    return match.group(1)


def test_app_serves_the_readme_example_from_its_folder(folder: Path) -> None:
    own = folder / "own.sock"
    (folder / "yourmodule.py").write_text(
        readme_embed_example().replace("/run/calls/mi.sock", str(own))
    )
    target = str(folder / "mi.sock")
    command = [MIDGRAM, "serve", "--app", "yourmodule:mi", "--socket", target]
    with started_server(command, target, folder=str(folder), cwd=folder, env=user_env()) as server:
        assert server.call("calls_active")["result"] == {"active": 3}
        assert server.call("call_limit", {"limit": "5"})["result"] == {
            "limit": 5,
            "scope": "global",
        }
        assert not own.exists()  # the module's own serve() did not run


def test_app_whose_module_serves_when_imported_is_refused_in_one_line(folder: Path) -> None:
    unguarded = re.sub(
        r'^if __name__ == "__main__":.*\n    ', "", readme_embed_example(), flags=re.M
    ).replace("/run/calls/mi.sock", str(folder / "own.sock"))
    assert unguarded.rstrip().endswith("mi)")
    assert "__main__" not in unguarded
    (folder / "yourmodule.py").write_text(unguarded)
    done = run_serve("--app", "yourmodule:mi", "--socket", str(folder / "mi.sock"), cwd=folder)
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("midgram:")]
    assert len(errors) == 1, done.stderr
    assert 'if __name__ == "__main__":' in errors[0]
    assert "Traceback" not in done.stderr
    assert not (folder / "own.sock").exists()


def test_serving_a_registry_again_with_other_workers_says_what_to_do(folder: Path) -> None:
    registry = Registry()
    registry.stats.allocate(2)  # as a first serve() with children_count = 2 leaves it
    with pytest.raises(ConfigError, match="children_count = 2, or serve a new Registry"):
        serve(Settings(socket_name=str(folder / "mi.sock"), children_count=1), registry)
    assert not (folder / "mi.sock").exists()


# --- --config: TOML or opensips.cfg by content (issue 10 items 6 and 15) ---------------------


def test_a_toml_config_named_conf_is_served_as_written(folder: Path) -> None:
    target = str(folder / "mi.sock")
    config = folder / "midgram.conf"
    config.write_text(f'socket_name = "{target}"\nchildren_count = 2\n')
    command = [MIDGRAM, "serve", "--config", str(config)]
    with started_server(command, target, folder=str(folder), cwd=folder, env=user_env()) as server:
        assert len(server.worker_pids()) == 2
        assert "no modparam" not in server.log()


@pytest.mark.parametrize(
    "text",
    ['loadmodule "mi_fifo.so"\nmodparam("mi_fifo", "fifo_name", "/tmp/fifo")\n', "# empty\n"],
    ids=["opensips-cfg", "toml"],
)
def test_a_config_without_midgram_parameters_is_an_error_naming_it(folder: Path, text: str) -> None:
    config = folder / "midgram.conf"
    config.write_text(text)
    done = run_serve("--config", str(config), cwd=folder, env=user_env(XDG_RUNTIME_DIR=str(folder)))
    assert done.returncode == 2, done.stderr
    assert f"{config}: no midgram parameter in it" in done.stderr
    assert "listening" not in done.stderr
    assert not (folder / "midgram.sock").exists()  # the default socket was never bound


def test_a_toml_syntax_error_names_the_file(folder: Path) -> None:
    config = folder / "midgram.toml"
    config.write_text('socket_name = "/tmp/x.sock"\nchildren_count = \n')
    done = run_serve("--config", str(config), cwd=folder)
    assert done.returncode == 2, done.stderr
    assert f"{config}: not valid TOML: " in done.stderr
    assert "'children_count ='" in done.stderr


# --- the start-up banner (issue 10 items 8 and 9) ---------------------------------------------


def banner_commands(server: ServerProcess) -> list[str]:
    """The commands the banner suggests (its `call it:` and `or:` lines)."""
    server.wait_for_log("stop it:")
    found = re.findall(r"^\s+(?:call it|or):\s+(.*)$", server.log(), re.M)
    assert found, server.log()
    return found


def run_in(shell: str, line: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [shell, "-c", line], env=env, capture_output=True, text=True, timeout=DEADLINE, check=False
    )


def started_as(command: list[str], folder: Path, env: dict[str, str], cwd: Path) -> Any:
    target = str(folder / "mi.sock")
    return started_server(
        [*command, "--socket", target], target, folder=str(folder), cwd=cwd, env=env
    )


def test_the_banner_shows_the_path_it_was_started_by_when_midgram_is_not_on_path(
    folder: Path,
) -> None:
    env = user_env(PATH="/usr/bin:/bin", HOME=str(folder))
    assert shutil.which("midgram", path=env["PATH"]) is None
    # As `make run` starts it: a path relative to the checkout.
    with started_as(["bin/midgram", "serve"], folder, env, cwd=BIN.parent) as server:
        call, _ = banner_commands(server)
        assert call.startswith(f"{MIDGRAM} call uptime")
        done = run_in("bash", call, env)
    assert done.returncode == 0, done.stderr
    assert "Up since" in done.stdout


def test_the_banner_says_midgram_when_that_is_the_program_on_path(folder: Path) -> None:
    env = user_env(PATH=f"{BIN}{os.pathsep}/usr/bin:/bin", HOME=str(folder))
    with started_as(["midgram", "serve"], folder, env, cwd=folder) as server:
        call, _ = banner_commands(server)
    assert call.startswith("midgram call uptime")


def test_the_banner_of_python_m_midgram_says_so(folder: Path) -> None:
    env = user_env(PATH="/usr/bin:/bin", HOME=str(folder))
    with started_as([sys.executable, "-m", "midgram", "serve"], folder, env, cwd=folder) as server:
        call, _ = banner_commands(server)
        done = run_in("bash", call, env)
    assert call.startswith(f"{sys.executable} -m midgram call uptime")
    assert done.returncode == 0, done.stderr


def _shell(name: str) -> Any:
    reason = f"{name} is not installed (apt-get install {name})"
    return pytest.param(name, marks=pytest.mark.skipif(not shutil.which(name), reason=reason))


SHELLS = [_shell("bash"), _shell("zsh")]


def _socket(kind: str, folder: Path) -> str:
    return {
        "path with a space": f"{folder}/my mi.sock",
        "abstract": f"@midgram-banner-{os.getpid()}",
        "udp ipv4": ANY_UDP,
        "udp ipv6": ANY_UDP6,
        "udp name": "udp:localhost:0",
    }[kind]


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize(
    "kind", ["path with a space", "abstract", "udp ipv4", "udp ipv6", "udp name"]
)
def test_every_command_the_banner_suggests_runs_as_pasted(
    folder: Path, kind: str, shell: str
) -> None:
    env = user_env(PATH=f"{BIN}{os.pathsep}/usr/bin:/bin", HOME=str(folder))  # opensips-cli too
    target = _socket(kind, folder)
    command = [MIDGRAM, "serve", "--socket", target]
    with started_server(command, target, folder=str(folder), cwd=folder, env=env) as server:
        suggested = banner_commands(server)
        for line in suggested:
            done = run_in(shell, line, env)
            assert done.returncode == 0, f"{line}\n{done.stderr}"
            assert "Up since" in done.stdout, line
    opensips_cli = [line for line in suggested if line.startswith("opensips-cli")]
    if kind in ("abstract", "udp ipv6"):
        assert not opensips_cli  # it cannot reach those: the banner says why instead
        assert re.search(r"^\s+\(opensips-cli .*\)$", server.log(), re.M)
    else:
        assert len(opensips_cli) == 1


def help_examples(*command: str) -> list[str]:
    text = subprocess.run(
        [MIDGRAM, *command, "--help"], capture_output=True, text=True, check=True
    ).stdout
    examples = text.split("Examples:")[1].split("\n\n")[0]
    return [line.strip() for line in examples.splitlines() if line.strip()]


@pytest.mark.parametrize("shell", SHELLS)
def test_the_examples_of_call_help_run_as_pasted(shell: str, folder: Path) -> None:
    examples = help_examples("call")
    assert any("[::1]" in line for line in examples)
    env = user_env(PATH=f"{BIN}{os.pathsep}/usr/bin:/bin", HOME=str(folder))
    for line in examples:
        assert line.startswith("midgram call ")
        done = run_in(shell, line.replace("midgram call ", "midgram call --dry-run ", 1), env)
        assert done.returncode == 0, f"{line}\n{done.stderr}"


# --- papercuts (issue 10 item 15) -----------------------------------------------------------


@pytest.mark.parametrize(
    ("timeout", "message"),
    [
        ("601s", "bad value for socket_timeout: 601000: must be between 0 and 600000 ms"),
        ("700000", "bad value for socket_timeout: 700000: must be between 0 and 600000 ms"),
        ("1.5ms", "'1.5ms': must be whole ms"),
        ("2 minutes", "'2 minutes': not a duration: write 500ms, 2s or 2.5s (a bare number is ms)"),
    ],
)
def test_serve_timeout_takes_units_and_a_bare_number_is_ms(
    folder: Path, timeout: str, message: str
) -> None:
    done = run_serve("--timeout", timeout, "--socket", str(folder / "mi.sock"), cwd=folder)
    assert done.returncode == 2
    assert message in done.stderr


def test_both_timeouts_say_their_unit_in_their_help() -> None:
    serve_help = " ".join(run_help("serve").split())
    assert "500ms or 2s; a bare number is milliseconds" in serve_help
    call_help = " ".join(run_help("call").split())
    assert "2.5s or 500ms; a bare number is seconds" in call_help


def run_help(command: str) -> str:
    return subprocess.run(
        [MIDGRAM, command, "--help"], capture_output=True, text=True, check=True
    ).stdout


def test_serve_help_documents_its_exit_statuses(folder: Path) -> None:
    text = run_help("serve")
    assert "Exit status:" in text
    documented = dict(re.findall(r"^ +(\d+) +(\S.*)$", text.split("Exit status:")[1], re.M))
    assert set(documented) == {"0", "1", "2", "4"}
    # 0, 2 and 4 as they happen (1 needs workers that keep dying: test_supervisor's).
    target = str(folder / "mi.sock")
    command = [MIDGRAM, "serve", "--socket", target]
    with started_server(command, target, folder=str(folder), cwd=folder, env=user_env()) as server:
        assert run_serve("--socket", target, cwd=folder).returncode == 4  # in use
        assert server.stop(signal.SIGINT) == 0
    assert run_serve("--children", "300", cwd=folder).returncode == 2
